"""Payload files: both formats, defaults, fixed seeds, seeded wildcards, and the checks made at start-up."""

from __future__ import annotations

import hashlib
import logging
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bayes_merger.config import PayloadsConfig
from bayes_merger.errors import ConfigError
from bayes_merger.webui.payloads import TXT2IMG_FIELDS, Payload, load_payloads

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path, run_seed: int = 42, **config) -> list[Payload]:
    return load_payloads(PayloadsConfig(dir=str(path), **config), run_seed)


def by_name(payloads: list[Payload]) -> dict[str, Payload]:
    return {p.name: p for p in payloads}


def _sha256_number(*parts: object) -> int:
    """The derivation rule of seeds and wildcard draws, written out: the first 8 bytes, big-endian, of the
    sha256 of the parts joined by the unit separator."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()[:8], "big")


@pytest.fixture
def cargo_folder(tmp_path: Path) -> Path:
    """A payload folder as the original tool laid it out: cargo.yaml + cargo/<name>.yaml."""
    write(tmp_path, "cargo.yaml", """\
        defaults:
          - cargo:
              - portrait
              - landscape
        negative_prompt: "lowres"
        steps: 20
        cfg_scale: 7
        width: 512
        height: 512
        sampler_name: Euler
        """)
    write(tmp_path, "cargo/portrait.yaml", """\
        portrait:
          prompt: "portrait of a woman"
          seed: 1234
          score_weight: 2.0
        """)
    write(tmp_path, "cargo/landscape.yaml", """\
        landscape:
          prompt: "a mountain lake"
          cfg_scale: 5
        """)
    # Not listed in cargo.yaml, so not used; templates are skipped too.
    write(tmp_path, "cargo/unused.yaml", "unused:\n  prompt: never\n")
    write(tmp_path, "cargo/payload.tmpl.yaml", "payloadname:\n  cfg: 7\n")
    return tmp_path


# --- the original format ---------------------------------------------------------------------


def test_original_cargo_folder_loads_the_listed_payloads_in_order_with_cargo_defaults(cargo_folder: Path) -> None:
    payloads = load(cargo_folder)

    assert [p.name for p in payloads] == ["portrait", "landscape"]
    portrait, landscape = payloads
    assert portrait.request["prompt"] == "portrait of a woman"
    assert portrait.request["steps"] == 20 and portrait.request["negative_prompt"] == "lowres"
    assert portrait.score_weight == 2.0 and landscape.score_weight == 1.0
    assert landscape.request["cfg_scale"] == 5
    assert "score_weight" not in portrait.request
    assert portrait.request["send_images"] is True and portrait.request["save_images"] is False


def test_pointing_at_the_cargo_subfolder_uses_the_cargo_file_beside_it(cargo_folder: Path) -> None:
    assert [p.name for p in load(cargo_folder / "cargo")] == ["portrait", "landscape"]


def test_pointing_at_the_cargo_file_itself_works(cargo_folder: Path) -> None:
    assert [p.name for p in load(cargo_folder / "cargo.yaml")] == ["portrait", "landscape"]


def test_cargo_listing_a_missing_payload_file_names_it(cargo_folder: Path) -> None:
    (cargo_folder / "cargo" / "landscape.yaml").unlink()

    with pytest.raises(ConfigError, match=r"cargo\.yaml lists the payload 'landscape'.*landscape\.yaml does not exist"):
        load(cargo_folder)


def test_the_original_templates_seed_minus_one_default_becomes_a_fixed_seed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "cargo.yaml", """\
        defaults:
          - cargo:
            - one
        prompt: ""
        steps: 20
        seed: -1
        subseed: -1
        subseed_strength: 0
        """)
    write(tmp_path, "cargo/one.yaml", "one:\n  prompt: a cat\n")

    with caplog.at_level(logging.WARNING):
        (payload,) = load(tmp_path)

    assert payload.request["seed"] >= 0 and payload.request["subseed"] >= 0
    assert "default seed -1 (random) replaced" in caplog.text


def test_a_folder_of_payload_files_without_cargo_loads_every_file_sorted(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "beta:\n  prompt: b\n  steps: 10\n")
    write(tmp_path, "a.yaml", "alpha:\n  prompt: a\n  steps: 10\n")
    # The oldest format: fields at the top level, the file stem names the payload.
    write(tmp_path, "c_flat.yaml", "prompt: c\nsteps: 10\n")

    assert [p.name for p in load(tmp_path)] == ["alpha", "beta", "c_flat"]


def test_a_top_level_key_that_is_not_a_payload_mapping_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "steps: 20\n")

    with pytest.raises(ConfigError, match=r"p\.yaml: top-level key 'steps' should be a payload name"):
        load(tmp_path)


# --- the list form ---------------------------------------------------------------------------


def test_list_form_file_loads_payloads_with_its_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", """\
        defaults:
          steps: 12
          width: 256
        payloads:
          - name: cat
            prompt: a cat
          - name: dog
            prompt: a dog
            width: 320
            score_weight: 0.25
        """)

    cat, dog = load(path)

    assert (cat.name, dog.name) == ("cat", "dog")
    assert cat.request["steps"] == dog.request["steps"] == 12
    assert (cat.request["width"], dog.request["width"]) == (256, 320)
    assert dog.score_weight == 0.25
    assert "name" not in cat.request


def test_only_a_checkpoint_the_webui_renders_with_is_warned_of_as_another(tmp_path: Path, caplog) -> None:
    # refiner_checkpoint "None" is no refiner (A1111's processing.py); hr_checkpoint_name is read with the hires fix only
    path = write(tmp_path, "set.yaml", """\
        payloads:
          - {name: none, prompt: a cat, refiner_checkpoint: "None", hr_checkpoint_name: other.safetensors}
          - {name: same, prompt: a cat, enable_hr: true, hr_checkpoint_name: Use same checkpoint}
          - {name: refiner, prompt: a cat, refiner_checkpoint: xl_refiner}
          - {name: hires, prompt: a cat, enable_hr: true, hr_checkpoint_name: other.safetensors}
        """)
    with caplog.at_level(logging.WARNING):
        load(path)
    warned = [r.getMessage() for r in caplog.records if "brings in another checkpoint" in r.getMessage()]
    assert len(warned) == 2 and "'refiner'" in warned[0] and "refiner_checkpoint" in warned[0], warned
    assert "'hires'" in warned[1] and "hr_checkpoint_name" in warned[1], warned


def test_list_form_payload_without_a_name_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - prompt: a cat\n")

    with pytest.raises(ConfigError, match=r"set\.yaml: payload #1 in 'payloads' needs a 'name'"):
        load(path)


def test_list_form_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "default:\n  steps: 2\npayloads:\n  - {name: a, prompt: a}\n")

    with pytest.raises(ConfigError, match="unknown top-level key 'default'"):
        load(path)


# --- defaults precedence ---------------------------------------------------------------------


def test_config_defaults_sit_between_file_defaults_and_the_payloads_own_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", """\
        defaults:
          steps: 30
          cfg_scale: 9
          width: 256
          sampler_name: Euler
        payloads:
          - name: own
            prompt: p
            steps: 5
          - name: inherits
            prompt: p
          - name: cleared
            prompt: p
            sampler_name: null
        """)
    defaults = OmegaConf.create({"steps": 10, "height": 128})  # what Hydra hands over

    payloads = by_name(load_payloads(PayloadsConfig(dir=str(path), defaults=defaults), 1))

    assert payloads["own"].request["steps"] == 5  # the payload's own field wins
    assert payloads["inherits"].request["steps"] == 10  # config defaults beat the file's defaults
    assert payloads["inherits"].request["cfg_scale"] == 9  # file defaults fill the rest
    assert payloads["inherits"].request["height"] == 128
    assert "sampler_name" not in payloads["cleared"].request  # null: the WebUI's own default


# --- wildcards -------------------------------------------------------------------------------


@pytest.fixture
def wildcard_set(tmp_path: Path) -> Path:
    write(tmp_path, "wildcards/n.txt", "\n".join(f"w{i}" for i in range(50)) + "\n")
    payloads = "\n".join(f"  - {{name: p{i}, prompt: '__n__ and __n__'}}" for i in range(4))
    return write(tmp_path, "set.yaml", f"defaults: {{steps: 1}}\npayloads:\n{payloads}\n")


def prompts(payloads: list[Payload]) -> list[str]:
    return [p.request["prompt"] for p in payloads]


def test_wildcards_are_resolved_from_the_wildcards_folder_beside_the_payloads(wildcard_set: Path) -> None:
    for prompt in prompts(load(wildcard_set)):
        first, second = prompt.split(" and ")
        assert first.startswith("w") and second.startswith("w") and "__" not in prompt


def test_wildcard_draws_are_the_same_on_every_load_with_the_same_run_seed(wildcard_set: Path) -> None:
    assert prompts(load(wildcard_set, run_seed=7)) == prompts(load(wildcard_set, run_seed=7))


def test_wildcard_draws_change_with_the_run_seed(wildcard_set: Path) -> None:
    # 8 draws from 50 lines: the chance that two seeds agree on all of them is 50**-8.
    assert prompts(load(wildcard_set, run_seed=1)) != prompts(load(wildcard_set, run_seed=2))


def test_each_wildcard_occurrence_and_payload_gets_its_own_draw(wildcard_set: Path) -> None:
    drawn = [part for prompt in prompts(load(wildcard_set)) for part in prompt.split(" and ")]
    assert len(set(drawn)) > 1


def test_wildcard_draws_are_pinned_so_resumed_runs_render_the_same_prompts(wildcard_set: Path) -> None:
    # The documented rule (line = sha256 of run seed, payload, field, occurrence), computed here: a change
    # in the derivation would silently change every resumed run's objective.
    first, second = (_sha256_number(42, "wildcard", "p0", "prompt", occurrence) % 50 for occurrence in (0, 1))
    assert prompts(load(wildcard_set, run_seed=42))[0] == f"w{first} and w{second}" == "w8 and w9"


def test_wildcard_lines_skip_blanks_and_comments_and_may_nest(tmp_path: Path) -> None:
    write(tmp_path, "wildcards/animal.txt", "# animals\n\n  a __colour__ cat  \n\n")
    write(tmp_path, "wildcards/colour.txt", "# only one colour\nblue\n")
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: 'photo of __animal__', steps: 1}\n")

    (payload,) = load(path)

    assert payload.request["prompt"] == "photo of a blue cat"


def test_wildcard_names_may_name_a_subfolder(tmp_path: Path) -> None:
    write(tmp_path, "wildcards/animals/birds.txt", "a heron\n")
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: '__animals/birds__ at dawn', steps: 1}\n")

    assert load(path)[0].request["prompt"] == "a heron at dawn"


def test_wildcard_names_may_hold_spaces_and_letters_of_any_script_and_a_face_is_no_wildcard(tmp_path: Path) -> None:
    # such names were left in the prompt, as text sent to the WebUI, even with their file there
    write(tmp_path, "wildcards/hair colour.txt", "red hair\n")
    write(tmp_path, "wildcards/färbe.txt", "blau\n")
    path = write(tmp_path, "set.yaml",
                 "payloads:\n  - {name: a, prompt: 'a girl, __hair colour__, __färbe__ dress ^__^', steps: 1}\n")

    assert load(path)[0].request["prompt"] == "a girl, red hair, blau dress ^__^"
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: 'a __eye colour__ gaze', steps: 1}\n")
    with pytest.raises(ConfigError, match="uses the wildcard '__eye colour__'"):
        load(path)


def test_the_hires_pass_draws_its_wildcards_as_the_first_pass(tmp_path: Path) -> None:
    # drawn apart, an hr_prompt written as the prompt rendered another subject in the second pass
    write(tmp_path, "wildcards/colour.txt", "".join(f"colour{n}\n" for n in range(20)))
    text = "a __colour__ and __colour__ cat"
    path = write(tmp_path, "set.yaml", f"payloads:\n  - {{name: a, prompt: '{text}', hr_prompt: '{text}', "
                                       f"negative_prompt: '__colour__', hr_negative_prompt: '__colour__', steps: 1}}\n")
    request = load(path)[0].request
    assert request["hr_prompt"] == request["prompt"] and request["hr_negative_prompt"] == request["negative_prompt"]


def test_wildcards_in_the_negative_prompt_are_resolved_too(tmp_path: Path) -> None:
    write(tmp_path, "wildcards/bad.txt", "blurry\n")
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: x, negative_prompt: '__bad__', steps: 1}\n")

    assert load(path)[0].request["negative_prompt"] == "blurry"


def test_unknown_wildcard_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "wildcards/color.txt", "red\n")
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: 'a __colr__ car', steps: 1}\n")

    with pytest.raises(ConfigError, match=r"set\.yaml: payload 'a' field 'prompt' uses the wildcard '__colr__'.*colr\.txt does not exist \(closest: 'color'\)"):
        load(path)


def test_wildcard_without_any_wildcards_folder_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: 'a __color__ car', steps: 1}\n")

    with pytest.raises(ConfigError, match="there is no wildcards folder"):
        load(path)


def test_a_wildcard_that_includes_itself_is_an_error_not_a_hang(tmp_path: Path) -> None:
    write(tmp_path, "wildcards/loop.txt", "again __loop__\n")
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: '__loop__', steps: 1}\n")

    with pytest.raises(ConfigError, match="nest more than"):
        load(path)


def test_configured_wildcards_dir_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1}\n")

    with pytest.raises(ConfigError, match="payloads.wildcards_dir .*missing is not a folder"):
        load(path, wildcards_dir=str(tmp_path / "missing"))


# --- seeds -----------------------------------------------------------------------------------


@pytest.fixture
def seedless(tmp_path: Path) -> Path:
    return write(tmp_path, "set.yaml", """\
        defaults: {steps: 1, batch_size: 2, n_iter: 2}
        payloads:
          - {name: cat, prompt: a cat}
          - {name: dog, prompt: a dog}
        """)


def test_payload_without_seed_gets_a_fixed_seed_and_consecutive_image_seeds(seedless: Path) -> None:
    cat = by_name(load(seedless))["cat"]

    seed = cat.request["seed"]
    assert 0 <= seed < 2**31
    assert cat.images == 4
    assert cat.seeds == (seed, seed + 1, seed + 2, seed + 3)


def test_derived_seeds_are_stable_and_differ_per_payload_and_run_seed(seedless: Path) -> None:
    first, again, other_run = by_name(load(seedless, 42)), by_name(load(seedless, 42)), by_name(load(seedless, 43))

    assert first["cat"].request["seed"] == again["cat"].request["seed"]
    assert first["cat"].request["seed"] != first["dog"].request["seed"]
    assert first["cat"].request["seed"] != other_run["cat"].request["seed"]


def test_derived_seeds_are_pinned_so_they_are_the_same_in_every_process(seedless: Path) -> None:
    # hashlib (sha256 of run seed, "seed", payload), not the per-process salted hash(); resumed runs rely on it.
    expected = _sha256_number(42, "seed", "cat") % 2**31
    assert by_name(load(seedless, 42))["cat"].request["seed"] == expected == 1657470752


def test_given_seed_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, seed: 5, batch_size: 3}\n")

    (payload,) = load(path)

    assert payload.request["seed"] == 5 and payload.seeds == (5, 6, 7)


def test_variation_seeds_share_the_seed_and_get_a_fixed_subseed(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, seed: 5, batch_size: 2, subseed_strength: 0.3}\n")

    (payload,) = load(path)

    assert payload.seeds == (5, 5)  # A1111 keeps the seed and varies the subseed
    assert payload.request["subseed"] >= 0


def test_seed_minus_one_in_a_payload_is_refused_by_default(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, seed: -1}\n")

    with pytest.raises(ConfigError, match=r"set\.yaml: payload 'a' field 'seed' is -1 \(random\).*allow_random_seeds"):
        load(path)


def test_seed_minus_one_is_allowed_on_request_with_a_noisy_objective_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, seed: -1, batch_size: 2}\n")

    with caplog.at_level(logging.WARNING):
        (payload,) = load(path, allow_random_seeds=True)

    assert payload.request["seed"] == -1 and payload.seeds == (-1, -1)
    assert "objective is noisy" in caplog.text


def test_seed_minus_one_in_the_config_defaults_is_refused_too(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1}\n")

    with pytest.raises(ConfigError, match=r"payloads\.defaults \(config\): default field 'seed' is -1"):
        load(path, defaults={"seed": -1})


def test_random_subseed_with_variation_strength_is_refused_by_default(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, subseed: -1, subseed_strength: 0.5}\n")

    with pytest.raises(ConfigError, match="field 'subseed' is -1"):
        load(path)


def test_seed_below_minus_one_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, seed: -7}\n")

    with pytest.raises(ConfigError, match="field 'seed' must be -1 \\(random\\) or a whole number >= 0"):
        load(path)


# --- validation ------------------------------------------------------------------------------


def test_unknown_key_is_kept_with_a_warning_naming_the_closest_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "set.yaml", "payloads:\n  - {name: a, prompt: a, steps: 1, cfg: 7, sampler_nme: Euler}\n")

    with caplog.at_level(logging.WARNING):
        (payload,) = load(path)

    assert "field 'cfg' is not a known txt2img field (did you mean 'cfg_scale'?)" in caplog.text
    assert "field 'sampler_nme' is not a known txt2img field (did you mean 'sampler_name'?)" in caplog.text
    assert payload.request["cfg"] == 7  # sent as written: A1111 ignores it, a fork might not


def test_unknown_key_in_shared_defaults_is_warned_about_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "set.yaml", """\
        defaults: {neg_prompt: ugly, steps: 1}
        payloads:
          - {name: a, prompt: a}
          - {name: b, prompt: b}
        """)

    with caplog.at_level(logging.WARNING):
        load(path)

    assert caplog.text.count("default field 'neg_prompt' is not a known txt2img field (did you mean 'negative_prompt'?)") == 1


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("steps", '"abc"', "must be a whole number, got 'abc'"),
        ("steps", '"20.5"', "must be a whole number, got '20.5'"),
        ("cfg_scale", '"nan"', "must be a number, got nan"),
        ("steps", "true", "must be a whole number, got True"),
        ("width", "512.5", "must be a whole number, got 512.5"),
        ("cfg_scale", '"seven"', "must be a number, got 'seven'"),
        ("restore_faces", '"yes"', "must be true or false"),
        ("styles", "style", "must be a list of text"),
        ("override_settings", "[1]", "must be a mapping"),
        ("score_weight", "-1", "must be a number >= 0"),
        ("steps", "0", "must be at least 1"),
    ],
)
def test_wrong_value_is_an_error_naming_file_payload_and_field(tmp_path: Path, field: str, value: str, expected: str) -> None:
    path = write(tmp_path, "cargo/bad.yaml", f"bad:\n  prompt: a cat\n  {field}: {value}\n")

    with pytest.raises(ConfigError, match=rf"bad\.yaml: payload 'bad' field '{field}' {expected}") as raised:
        load(path.parent)
    assert str(raised.value).endswith(".")


def test_numbers_written_as_text_are_the_numbers_as_the_webui_coerces_them(tmp_path: Path) -> None:
    # the reference: "Numbers given as strings are coerced"; the seeds and the image count are worked out here
    path = write(tmp_path, "set.yaml", """\
        defaults: {steps: "20", seed: " 7 "}
        payloads:
          - {name: a, prompt: a, cfg_scale: "6.5", batch_size: "2"}
        """)

    (payload,) = load(path)

    assert payload.request["steps"] == 20 and payload.request["cfg_scale"] == 6.5
    assert payload.request["batch_size"] == 2 and payload.seeds == (7, 8)


def test_wrong_value_in_shared_defaults_names_the_defaults_file(tmp_path: Path) -> None:
    path = write(tmp_path, "set.yaml", "defaults: {steps: many}\npayloads:\n  - {name: a, prompt: a}\n")

    with pytest.raises(ConfigError, match=r"set\.yaml: default field 'steps' must be a whole number"):
        load(path)


@pytest.mark.parametrize("prompt_line", ['prompt: ""', 'prompt: "   "', "steps: 20"])
def test_empty_or_missing_prompt_is_an_error(tmp_path: Path, prompt_line: str) -> None:
    write(tmp_path, "p.yaml", f"empty:\n  {prompt_line}\n  cfg_scale: 7\n")

    with pytest.raises(ConfigError, match=r"p\.yaml: payload 'empty' field 'prompt' is empty"):
        load(tmp_path)


def test_duplicate_payload_names_are_an_error_naming_both_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "same:\n  prompt: a\n")
    write(tmp_path, "b.yaml", "same:\n  prompt: b\n")

    with pytest.raises(ConfigError, match=r"payload name 'same' is defined twice, in .*a\.yaml and in .*b\.yaml"):
        load(tmp_path)


def test_payload_names_that_differ_only_in_case_are_an_error(tmp_path: Path) -> None:
    # images are named by the payload: on Windows and macOS t0001-Portrait-00.png and t0001-portrait-00.png
    # are one file, and one payload's images stood under the other's record
    write(tmp_path, "a.yaml", "Portrait:\n  prompt: a\nportrait:\n  prompt: b\n")

    with pytest.raises(ConfigError, match="payload names 'Portrait' and 'portrait' differ only in case"):
        load(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no payload files"):
        load(tmp_path)


def test_missing_payloads_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_invalid_yaml_is_an_error_with_its_line(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  steps: [1\n")

    with pytest.raises(ConfigError, match=r"p\.yaml is not valid YAML at line \d"):
        load(tmp_path)


def test_all_zero_score_weights_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  score_weight: 0\n")

    with pytest.raises(ConfigError, match="score_weight 0"):
        load(tmp_path)


def test_overriding_the_checkpoint_in_a_payload_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  override_settings: {sd_model_checkpoint: other.safetensors}\n")

    with pytest.raises(ConfigError, match="sd_model_checkpoint"):
        load(tmp_path)


def test_size_not_a_multiple_of_8_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  steps: 1\n  width: 500\n")

    with caplog.at_level(logging.WARNING):
        (payload,) = load(tmp_path)

    assert payload.request["width"] == 500
    assert "field 'width' is 500, not a multiple of 8" in caplog.text


def test_images_are_always_sent_back_and_never_saved_by_the_webui(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  steps: 1\n  save_images: true\n")

    with caplog.at_level(logging.WARNING):
        (payload,) = load(tmp_path)

    assert payload.request["save_images"] is False and payload.request["send_images"] is True
    assert "'save_images' is overridden" in caplog.text


def test_override_settings_are_always_restored_after_each_render(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # false would leave them in the WebUI's settings, saved to its config.json by the next POST /options
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  steps: 1\n  override_settings: {CLIP_stop_at_last_layers: 2}\n"
                              "  override_settings_restore_afterwards: false\nb:\n  prompt: y\n  steps: 1\n")

    with caplog.at_level(logging.WARNING):
        overriding, plain = load(tmp_path)

    assert overriding.request["override_settings_restore_afterwards"] is True
    assert "override_settings_restore_afterwards" not in plain.request  # the API's default, true, as before
    assert "'override_settings_restore_afterwards' is overridden" in caplog.text


def test_legacy_combined_sampler_names_pass_through(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "a:\n  prompt: x\n  steps: 1\n  sampler_name: DPM++ 2M Karras\n")

    assert load(tmp_path)[0].request["sampler_name"] == "DPM++ 2M Karras"


def test_known_fields_cover_the_a1111_txt2img_api() -> None:
    for name in ("prompt", "cfg_scale", "hr_negative_prompt", "alwayson_scripts", "infotext", "scheduler"):
        assert name in TXT2IMG_FIELDS
    assert "cfg" not in TXT2IMG_FIELDS


# --- the shipped examples --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["payloads", "payloads/cargo", "payloads/cargo.yaml", "payloads/demo.yaml"])
def test_shipped_examples_load_without_error_or_warning(target: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        payloads = load(REPO / target)

    assert payloads and all("__" not in p.request["prompt"] for p in payloads)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_shipped_demo_is_tiny(caplog: pytest.LogCaptureFixture) -> None:
    payloads = load(REPO / "payloads" / "demo.yaml")

    assert len(payloads) == 2
    for payload in payloads:
        assert payload.images == 2
        assert payload.request["width"] == payload.request["height"] == 64
        assert payload.request["steps"] <= 2
