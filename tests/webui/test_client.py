"""WebUIClient against the fake WebUI over real HTTP: the hand-off, generation, auth and error bodies."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import requests
import torch
from safetensors.torch import save_file

from bayes_merger.errors import ConfigError, StorageError, WebUIConnectionError, WebUIError
from bayes_merger.testing.fake_webui import FakeWebUI
from bayes_merger.webui.client import Generation, WebUIClient

TXT2IMG = "/sdapi/v1/txt2img"
OPTIONS = "/sdapi/v1/options"
ALL_MODES = ["a1111", "forge", "sdnext"]


def merge_writer(value: float) -> Callable[[Path], None]:
    """A stand-in for the merger: writes a tiny checkpoint with real SD key names at the given path."""

    def write(path: Path) -> None:
        generator = torch.Generator().manual_seed(round(value * 1000))
        shapes = {
            "model.diffusion_model.input_blocks.0.0.weight": (4, 4),
            "model.diffusion_model.middle_block.1.proj_in.weight": (2, 2),
            "model.diffusion_model.output_blocks.11.0.skip_connection.bias": (4,),
            "first_stage_model.decoder.conv_in.bias": (4,),
        }
        save_file({key: 0.1 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}, str(path))

    return write


def add_base_model(fake: FakeWebUI) -> None:
    """Give the fake a model of its own, loaded at start-up, as a real WebUI has."""
    merge_writer(0.9)(fake.checkpoint_dir / "base.safetensors")
    fake.restart(forget_selection=True)


PAYLOAD = {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "seed": 1234, "steps": 20,
           "width": 64, "height": 64}


# ------------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("fake_webui", ALL_MODES, indirect=True)
def test_load_then_txt2img_renders_with_the_merge(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.wait_until_ready()
        title = client.load_checkpoint(merge_writer(0.2), trial=3)
        generation = client.txt2img({**PAYLOAD, "batch_size": 2, "n_iter": 2})

    assert title.startswith("bm-run1-t0003.safetensors")
    assert fake_webui.loaded_model == "bm-run1-t0003.safetensors"
    assert isinstance(generation, Generation)
    assert generation.seeds == [1234, 1235, 1236, 1237]
    assert len(generation.images) == 4
    assert generation.info["sd_model_name"] == "bm-run1-t0003"
    assert generation.info["prompt"] == PAYLOAD["prompt"]


def test_title_that_gains_a_hash_after_the_load_is_still_recognised(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        title = client.load_checkpoint(merge_writer(0.2), trial=0)
        client.txt2img(PAYLOAD)

    selected_with = fake_webui.requests_to(OPTIONS, "POST")[-1].body["sd_model_checkpoint"]
    assert selected_with == "bm-run1-t0000.safetensors"  # as listed before the first load
    assert title == f"bm-run1-t0000.safetensors [{fake_webui.loaded_sha256[:10]}]"


@pytest.mark.parametrize("fake_webui", ["forge"], indirect=True)
def test_forge_loads_lazily_and_the_first_generation_confirms_the_merge(fake_webui, webui_config):
    add_base_model(fake_webui)
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.2), trial=0)
        assert fake_webui.loaded_model is None  # only recorded; nothing read yet
        generation = client.txt2img(PAYLOAD)

    assert fake_webui.loaded_model == "bm-run1-t0000.safetensors"
    assert generation.info["sd_model_name"] == "bm-run1-t0000"


@pytest.mark.parametrize("fake_webui", ["forge"], indirect=True)
def test_a_merge_forge_cannot_load_fails_its_trial_and_the_file_forge_renames_is_cleaned_up(fake_webui, webui_config):
    # measured on a real Forge: the lazy load fails inside txt2img with a 500, and Forge renames the file
    add_base_model(fake_webui)
    folder = fake_webui.checkpoint_dir
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(lambda path: path.write_bytes(b"\x08" + bytes(64)), trial=0)
        with pytest.raises(WebUIError, match=r"HTTP 500: ValueError: Failed to recognize model type!") as error:
            client.txt2img(PAYLOAD)
        assert not isinstance(error.value, WebUIConnectionError)  # that trial's failure, not a lost WebUI
        assert (folder / "bm-run1-t0000.safetensors.corrupted").is_file()
        client.load_checkpoint(merge_writer(0.2), trial=1)
        assert client.txt2img(PAYLOAD).info["sd_model_name"] == "bm-run1-t0001"

    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("bm-")) == ["bm-run1-t0001.safetensors"]


def test_each_image_comes_with_the_prompt_the_webui_rendered_it_from_its_styles_applied(fake_webui, webui_config):
    fake_webui.add_style("film", "{prompt}, 35mm film grain")
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        styled = client.txt2img({**PAYLOAD, "styles": ["film"], "batch_size": 2})
        plain = client.txt2img(PAYLOAD)

    assert styled.prompts == ["a lighthouse at dusk, 35mm film grain"] * 2
    assert plain.prompts == ["a lighthouse at dusk"]
    assert styled.images[0].tobytes() != plain.images[0].tobytes(), "the style is rendered"


def test_different_merges_render_different_images_and_the_same_merge_the_same(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        first = client.txt2img(PAYLOAD).images[0].tobytes()
        again = client.txt2img(PAYLOAD).images[0].tobytes()
        client.load_checkpoint(merge_writer(0.4), trial=1)
        other = client.txt2img(PAYLOAD).images[0].tobytes()

    assert first == again
    assert first != other


def test_a_prepended_grid_is_left_out_and_each_image_has_its_seed(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        generation = client.txt2img({**PAYLOAD, "batch_size": 3, "save_images": True})
        singles = [client.txt2img({**PAYLOAD, "seed": seed}).images[0].tobytes() for seed in (1234, 1235, 1236)]

    assert generation.info["index_of_first_image"] == 1
    assert generation.seeds == [1234, 1235, 1236]
    assert [image.tobytes() for image in generation.images] == singles


@pytest.mark.parametrize(("samples_format", "pil_format"), [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_png_jpeg_and_webp_bodies_are_decoded(fake_webui, webui_config, samples_format, pil_format):
    fake_webui.set_option("samples_format", samples_format)
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        image = client.txt2img(PAYLOAD).images[0]

    assert image.format == pil_format
    assert image.size == (64, 64)


def test_txt2img_before_any_load_does_not_need_a_merge(fake_webui, webui_config):
    add_base_model(fake_webui)
    with WebUIClient(webui_config(), "run1") as client:
        generation = client.txt2img(PAYLOAD)

    assert generation.info["sd_model_name"] == "base"


# ------------------------------------------------------------------------------ merge files


def test_old_merge_files_of_this_run_are_deleted_and_nothing_else(fake_webui, webui_config):
    folder = fake_webui.checkpoint_dir
    foreign = ["base.safetensors", "bm-otherrun-t0000.safetensors", "bm-run1-t0000.safetensors.bak", "notes.txt"]
    for name in foreign:
        (folder / name).write_bytes(b"not ours")
    (folder / "bm-run1-t0000.safetensors.tmp").write_bytes(b"left by a crash")

    with WebUIClient(webui_config(keep_last=0), "run1") as client:
        for trial in range(3):
            client.load_checkpoint(merge_writer(0.1 * trial), trial)

    assert sorted(p.name for p in folder.iterdir()) == sorted(foreign + ["bm-run1-t0002.safetensors"])


def test_keep_last_keeps_that_many_previous_merges(fake_webui, webui_config):
    with WebUIClient(webui_config(keep_last=2), "run1") as client:
        for trial in range(5):
            client.load_checkpoint(merge_writer(0.1 * trial), trial)
        left = sorted(p.name for p in fake_webui.checkpoint_dir.iterdir())
        client.remove_merges()

    assert left == [f"bm-run1-t000{t}.safetensors" for t in (2, 3, 4)]
    assert list(fake_webui.checkpoint_dir.iterdir()) == []


def test_loading_a_trial_again_overwrites_its_file_when_the_webui_has_another_loaded(fake_webui, webui_config):
    with WebUIClient(webui_config(keep_last=5), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=4)
        client.load_checkpoint(merge_writer(0.2), trial=5)
        title = client.load_checkpoint(merge_writer(0.3), trial=4)

    path = fake_webui.checkpoint_dir / "bm-run1-t0004.safetensors"
    assert title.startswith("bm-run1-t0004.safetensors")
    assert fake_webui.loaded_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_resuming_a_trial_the_webui_still_has_loaded_uses_a_fresh_file_name(fake_webui, webui_config):
    # A1111 does not reload a file name it has loaded, even with new content: the resumed
    # trial must not be scored with the interrupted attempt's weights
    with WebUIClient(webui_config(), "run1") as crashed:
        crashed.load_checkpoint(merge_writer(0.1), trial=7)
    fake_webui.restart()  # the WebUI reloads its remembered selection: our trial 7 file

    with WebUIClient(webui_config(), "run1") as resumed:
        title = resumed.load_checkpoint(merge_writer(0.5), trial=7)
        generation = resumed.txt2img(PAYLOAD)

    fresh = fake_webui.checkpoint_dir / "bm-run1-t0007-r2.safetensors"
    assert title.startswith(fresh.name)
    assert fake_webui.loaded_sha256 == hashlib.sha256(fresh.read_bytes()).hexdigest()
    assert generation.info["sd_model_name"] == "bm-run1-t0007-r2"
    assert [p.name for p in fake_webui.checkpoint_dir.iterdir()] == [fresh.name]


def test_a_writer_that_fails_leaves_no_temporary_file(fake_webui, webui_config):
    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with WebUIClient(webui_config(), "run1") as client, pytest.raises(StorageError, match="No space left on device"):
        client.load_checkpoint(broken, trial=0)

    assert list(fake_webui.checkpoint_dir.iterdir()) == []


def test_the_webui_sees_the_merge_only_once_it_is_complete(fake_webui, webui_config):
    listed_while_writing = []

    def write(path: Path) -> None:
        merge_writer(0.1)(path)
        requests.post(fake_webui.url + "/sdapi/v1/refresh-checkpoints", timeout=5)
        listed_while_writing.extend(m["filename"] for m in requests.get(fake_webui.url + "/sdapi/v1/sd-models", timeout=5).json())

    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(write, trial=0)

    assert listed_while_writing == []


def test_a_checkpoint_dir_the_webui_does_not_scan_is_named_in_the_error(fake_webui, webui_config, tmp_path):
    elsewhere = tmp_path / "not-scanned"
    elsewhere.mkdir()
    with WebUIClient(webui_config(checkpoint_dir=str(elsewhere)), "run1") as client:
        with pytest.raises(WebUIError, match="does not list bm-run1-t0000.safetensors") as error:
            client.load_checkpoint(merge_writer(0.1), trial=0)

    assert str(elsewhere) in str(error.value)


def test_check_checkpoint_dir_rejects_a_missing_folder(webui_config, tmp_path):
    missing = tmp_path / "nope"
    with WebUIClient(webui_config(checkpoint_dir=str(missing)), "run1") as client:
        with pytest.raises(ConfigError, match=str(missing)):
            client.check_checkpoint_dir()


def test_check_checkpoint_dir_rejects_a_read_only_folder(webui_config, tmp_path, monkeypatch):
    import errno

    from bayes_merger.webui import merge_files

    def refused(path, *args, **kwargs):  # what a folder without write permission answers (root is let in anyway)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(merge_files, "open_new", refused)
    with WebUIClient(webui_config(checkpoint_dir=str(folder)), "run1") as client:
        with pytest.raises(ConfigError, match=f"webui.checkpoint_dir {folder} is not writable: Permission denied"):
            client.check_checkpoint_dir()


def test_check_checkpoint_dir_accepts_a_writable_folder_and_leaves_it_clean(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.check_checkpoint_dir()

    assert list(fake_webui.checkpoint_dir.iterdir()) == []


# ----------------------------------------------------------------------------- samplers


class _Payload:
    def __init__(self, name: str, **request) -> None:
        self.name, self.request = name, {**PAYLOAD, **request}


@pytest.mark.parametrize("fake_webui", ALL_MODES, indirect=True)
def test_a_payload_with_a_sampler_the_webui_lacks_is_refused_before_the_run(fake_webui, webui_config):
    # A1111 and Forge would render it with another sampler all night; SD.Next would refuse every image
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("ok", sampler_name="DPM++ 2M")])
        with pytest.raises(ConfigError, match=r"Payload 'boat' .* no sampler 'DPM\+\+ 2M Karas' .*did you mean "
                                              r"'DPM\+\+ 2M'\?.*its samplers: Euler, Euler a"):
            client.check_payloads([_Payload("ok"), _Payload("boat", sampler_name="DPM++ 2M Karas")])


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_legacy_sampler_with_its_scheduler_in_the_name_is_accepted_and_renders_with_that_sampler(fake_webui,
                                                                                                     webui_config):
    payload = _Payload("legacy", sampler_name="DPM++ 2M Karras")
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([payload])
        client.load_checkpoint(merge_writer(0.1), trial=0)
        generation = client.txt2img(payload.request)

    assert generation.info["sampler_name"] == "DPM++ 2M"  # split, as A1111 does, not a fallback to Euler


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_scheduler_the_webui_lacks_is_refused(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("ok", scheduler="karras"), _Payload("label", scheduler="Karras")])
        client.check_payloads([_Payload("automatic", scheduler="")])  # A1111 renders "" with Automatic
        with pytest.raises(ConfigError, match=r"no scheduler 'karas' \(did you mean 'karras'\?\)"):
            client.check_payloads([_Payload("typo", scheduler="karas")])
        # an alias ends a legacy combined name, but the scheduler field takes a name or a label only
        # (A1111's schedulers_map): the field would render with Automatic
        client.check_payloads([_Payload("legacy alias", sampler_name="DPM++ 2M SGMUniform")])
        with pytest.raises(ConfigError, match=r"no scheduler 'SGMUniform' \(did you mean 'SGM Uniform'\?\)"):
            client.check_payloads([_Payload("alias", scheduler="SGMUniform")])

    assert {r.status for r in fake_webui.requests_to("/sdapi/v1/schedulers")} == {200}


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_sampler_alias_is_refused_because_the_api_renders_it_with_another_sampler(fake_webui, webui_config):
    # /samplers lists k_euler_a as an alias of "Euler a", but the API looks samplers up by name only
    alias = _Payload("alias", sampler_name="k_euler_a")
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(ConfigError, match=r"'k_euler_a' is an alias of its sampler 'Euler a', which its API does "
                                              r"not take \(it would render with its default sampler\): write 'Euler a'"):
            client.check_payloads([alias])
        client.load_checkpoint(merge_writer(0.1), trial=0)
        rendered = client.txt2img(alias.request)  # what the check spares the user: a night with another sampler

    assert rendered.info["sampler_name"] != "Euler a"


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_an_override_setting_the_webui_has_no_option_for_is_refused_before_the_run(fake_webui, webui_config):
    # A1111 looks every override_settings key up in its options: an unknown one is a 500 at every image
    typo = _Payload("typo", override_settings={"CLIP_stop_at_last_layer": 2})
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("ok", override_settings={"CLIP_stop_at_last_layers": 2})])
        with pytest.raises(ConfigError, match=r"Payload 'typo' .*override_settings names 'CLIP_stop_at_last_layer' "
                                              r"\(did you mean 'CLIP_stop_at_last_layers'\?\), which the WebUI has no "
                                              r"option for \(it would answer every image with 500 KeyError\)"):
            client.check_payloads([typo])
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError, match="HTTP 500: KeyError: 'CLIP_stop_at_last_layer'"):
            client.txt2img(typo.request)  # what the check spares the user: every trial failing


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_samples_format_the_api_cannot_send_is_refused_before_the_run(fake_webui, webui_config):
    # the API encodes in the WebUI's own samples_format: process_images sets a payload's override back first
    with WebUIClient(webui_config(), "run1") as client:
        overridden = _Payload("avif", override_settings={"samples_format": "avif"})
        client.check_payloads([overridden])
        client.load_checkpoint(merge_writer(0.1), trial=0)
        assert all(image.format == "PNG" for image in client.txt2img(overridden.request).images)
        fake_webui.set_option("samples_format", "avif")
        with pytest.raises(ConfigError, match=r"Payload 'png' .*saved as 'avif' \(samples_format\), which its API "
                                              r"cannot send .*set samples_format to png in its settings"):
            client.check_payloads([_Payload("png", override_settings={"samples_format": "png"})])
        with pytest.raises(WebUIError, match="HTTP 500: Invalid image format"):
            client.txt2img(_Payload("png", override_settings={"samples_format": "png"}).request)


@pytest.mark.parametrize("fake_webui", ["sdnext"], indirect=True)
def test_sdnext_without_schedulers_takes_sampler_names_whole_and_refuses_a_scheduler_it_would_ignore(
        fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("ok", sampler_name="Euler a")])
        with pytest.raises(ConfigError, match="no sampler 'DPM\\+\\+ 2M Karras'"):
            client.check_payloads([_Payload("legacy", sampler_name="DPM++ 2M Karras")])
        with pytest.raises(ConfigError, match=r"has no scheduler field \(no /sdapi/v1/schedulers: SD.Next, or A1111 "
                                              r"before 1.10\), so scheduler 'karras' would be ignored"):
            client.check_payloads([_Payload("scheduler", sampler_name="Euler a", scheduler="karras")])

    assert {r.status for r in fake_webui.requests_to("/sdapi/v1/schedulers")} == {404}


# the hires fix: A1111 reads its hr_* fields only with enable_hr true
HIRES = {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5}


def _assert_no_trial_began(fake: FakeWebUI) -> None:
    """Nothing of a trial reached the WebUI: no merge file written, no image asked for."""
    assert fake.requests_to(TXT2IMG) == []
    assert list(fake.checkpoint_dir.iterdir()) == []


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_hires_upscaler_the_webui_lacks_is_refused_before_the_run(fake_webui, webui_config):
    # A1111 looks hr_upscaler up among its latent modes, then its upscalers: another is a 500 at every image
    typo = _Payload("hires", **HIRES, hr_upscaler="R-ESRGAN 4x")
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(ConfigError) as refused:
            client.check_payloads([_Payload("ok"), typo])
        _assert_no_trial_began(fake_webui)
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError, match="HTTP 500: Exception: could not find upscaler named R-ESRGAN 4x"):
            client.txt2img(typo.request)  # what the check spares the user: every trial failing

    message = str(refused.value)
    assert message.startswith(f"Payload 'hires' cannot be rendered as written on the WebUI at {fake_webui.url}")
    assert ("it has no upscaler 'R-ESRGAN 4x' for the hires fix (hr_upscaler) (did you mean 'R-ESRGAN 4x+'?), so it "
            "would answer every image with 500 'could not find upscaler'; its upscalers: Latent, Latent (antialiased), "
            "Latent (bicubic), Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact), None, Lanczos, "
            "Nearest, DAT x2") in message
    assert "\n" not in message and message.endswith("SwinIR 4x.")


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_hires_sampler_the_api_cannot_create_is_refused_before_the_run(fake_webui, webui_config):
    # the second pass creates hr_sampler_name by name alone: no legacy split, no alias, no UI word
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(ConfigError, match=r"Payload 'typo' .*: it has no sampler 'DPM\+\+ 2M Karas' for the hires "
                                              r"fix \(hr_sampler_name\) \(did you mean 'DPM\+\+ 2M'\?\); its samplers: "
                                              r"Euler, Euler a"):
            client.check_payloads([_Payload("typo", **HIRES, hr_sampler_name="DPM++ 2M Karas")])
        with pytest.raises(ConfigError, match=r"hr_sampler_name 'Use same sampler' is a word of its UI, which its API "
                                              r"takes as a sampler's name \(it would answer every image with 500 'bad "
                                              r"sampler name'\); leave hr_sampler_name out to use the first pass's"):
            client.check_payloads([_Payload("same", **HIRES, hr_sampler_name="Use same sampler")])
        with pytest.raises(ConfigError, match=r"hr_sampler_name 'k_euler_a' is an alias of its sampler 'Euler a'"):
            client.check_payloads([_Payload("alias", **HIRES, hr_sampler_name="k_euler_a")])
        with pytest.raises(ConfigError, match=r"hr_sampler_name 'DPM\+\+ 2M Karras' names a scheduler too, which its "
                                              r"API does not split there .*: write 'DPM\+\+ 2M' and hr_scheduler "
                                              r"'Karras'"):
            client.check_payloads([_Payload("legacy", **HIRES, hr_sampler_name="DPM++ 2M Karras")])
        _assert_no_trial_began(fake_webui)
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError, match="HTTP 500: AssertionError: bad sampler name: Use same sampler"):
            client.txt2img({**PAYLOAD, **HIRES, "hr_sampler_name": "Use same sampler"})


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_hires_scheduler_the_webui_lacks_is_refused_before_the_run(fake_webui, webui_config):
    # A1111 renders the second pass with the sampler's default schedule instead, silently
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(ConfigError, match=r"Payload 'typo' .*: it has no scheduler 'karas' for the hires fix "
                                              r"\(hr_scheduler\) \(did you mean 'karras'\?\), so the hires pass would "
                                              r"use its sampler's default schedule; its schedulers: automatic, Automatic"):
            client.check_payloads([_Payload("typo", **HIRES, hr_scheduler="karas")])
        with pytest.raises(ConfigError, match=r"hr_scheduler 'Use same scheduler' is a word of its UI, .*leave "
                                              r"hr_scheduler out to use the first pass's scheduler"):
            client.check_payloads([_Payload("same", **HIRES, hr_scheduler="Use same scheduler")])

    _assert_no_trial_began(fake_webui)


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_payload_naming_a_script_the_webui_lacks_is_refused_before_the_run(fake_webui, webui_config, caplog):
    # A1111 looks script_name and each alwayson_scripts key up among its scripts' titles: 422 at every image
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("ok", script_name="X/Y/Z plot", alwayson_scripts={"Hypertile": {"args": []}}),
                               _Payload("none", script_name="", alwayson_scripts={})])
        with pytest.raises(ConfigError, match=r"Payload 'face' .*: it has no script 'ADetailer' \(script_name or "
                                              r"alwayson_scripts: an extension it lacks\?\), so it would answer every "
                                              r"image with 422 \"Script 'ADetailer' not found\"; its txt2img scripts: "
                                              r"prompt matrix, "):
            client.check_payloads([_Payload("face", alwayson_scripts={"ADetailer": {"args": []}})])
        with pytest.raises(ConfigError, match=r"no script 'x/y/z plots' .*\(did you mean 'x/y/z plot'\?\)"):
            client.check_payloads([_Payload("typo", script_name="x/y/z plots")])
        _assert_no_trial_began(fake_webui)
        # A1111 started with --nowebui lists none until a first txt2img: nothing to judge by, so nothing refused
        fake_webui.lists_scripts = False
        caplog.set_level(logging.INFO, logger="bayes_merger")
        client.check_payloads([_Payload("face", alwayson_scripts={"ADetailer": {"args": []}})])
        assert "alwayson_scripts are not checked before the run" in caplog.text
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError, match="HTTP 422: Script 'ADetailer' not found"):
            client.txt2img({**PAYLOAD, "alwayson_scripts": {"ADetailer": {"args": []}}})


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_refiner_or_hires_checkpoint_the_webui_lacks_is_refused_before_the_run(fake_webui, webui_config):
    # A1111's get_closet_checkpoint_match finds none: 500 "Could not find checkpoint" at every image
    merge_writer(0.3)(fake_webui.checkpoint_dir / "xl_refiner.safetensors")
    requests.post(fake_webui.url + "/sdapi/v1/refresh-checkpoints", timeout=10).raise_for_status()
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("name", refiner_checkpoint="xl_refiner.safetensors"),
                               _Payload("part", refiner_checkpoint="refiner"),
                               _Payload("hashed", **HIRES, hr_checkpoint_name="xl_refiner.safetensors [0123456789]"),
                               _Payload("no refiner", refiner_checkpoint="None"),
                               _Payload("same", **HIRES, hr_checkpoint_name="Use same checkpoint"),
                               _Payload("no hires", hr_checkpoint_name="missing.safetensors")])  # not read
        with pytest.raises(ConfigError, match=r"Payload 'typo' .*: it lists no checkpoint 'xl_refinr.safetensors' "
                                              r"\(refiner_checkpoint\) \(did you mean 'xl_refiner.safetensors'\?\), so "
                                              r"it would answer every image with 500 'Could not find checkpoint"):
            client.check_payloads([_Payload("typo", refiner_checkpoint="xl_refinr.safetensors")])
        with pytest.raises(ConfigError, match=r"lists no checkpoint 'other.safetensors' \(hr_checkpoint_name\)"):
            client.check_payloads([_Payload("hires", **HIRES, hr_checkpoint_name="other.safetensors")])
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError, match="HTTP 500: .*Could not find checkpoint with name xl_refinr.safetensors"):
            client.txt2img({**PAYLOAD, "refiner_checkpoint": "xl_refinr.safetensors"})
        assert len(client.txt2img({**PAYLOAD, "refiner_checkpoint": "refiner"}).images) == 1


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_a_hires_fix_the_webui_can_run_passes_and_renders(fake_webui, webui_config):
    latent = _Payload("latent", **HIRES, hr_upscaler="Latent (bicubic antialiased)", hr_sampler_name="DPM++ 2M",
                      hr_scheduler="karras")
    payloads = [latent, _Payload("model", **HIRES, hr_upscaler="R-ESRGAN 4x+", hr_scheduler="Karras"),
                _Payload("plain", **HIRES, hr_upscaler="None", hr_sampler_name=""),
                _Payload("defaults", **HIRES, hr_upscaler=None, hr_sampler_name=None, hr_scheduler=None)]
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads(payloads)
        client.load_checkpoint(merge_writer(0.1), trial=0)
        rendered = [client.txt2img(payload.request) for payload in payloads]

    assert all(len(generation.images) == 1 for generation in rendered)
    # checked against both of the WebUI's lists, not let through unread
    for listing in ("/sdapi/v1/upscalers", "/sdapi/v1/latent-upscale-modes"):
        assert [r.status for r in fake_webui.requests_to(listing)] == [200]


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_hires_fields_without_the_hires_fix_are_not_checked(fake_webui, webui_config):
    # A1111 reads no hr_* field without enable_hr: junk there renders as well as none
    off = _Payload("off", enable_hr=False, hr_upscaler="R-ESRGAN 4x", hr_sampler_name="Use same sampler",
                   hr_scheduler="karas")
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([off, _Payload("unset", hr_upscaler="nope")])
        assert fake_webui.requests_to("/sdapi/v1/upscalers") == []  # not even asked
        client.load_checkpoint(merge_writer(0.1), trial=0)
        client.txt2img(off.request)
        # the same fields with the hires fix on are what the check is for
        with pytest.raises(ConfigError, match="no upscaler 'R-ESRGAN 4x'"):
            client.check_payloads([_Payload("on", **{**off.request, "enable_hr": True})])


@pytest.mark.parametrize("fake_webui", ["sdnext"], indirect=True)
def test_a_webui_without_latent_upscale_modes_has_its_upscaler_unchecked_but_its_hires_sampler_checked(
        fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.check_payloads([_Payload("unknown list", **HIRES, hr_upscaler="Latent (bicubic)"),
                               _Payload("same", **HIRES, hr_scheduler="Use same scheduler")])
        with pytest.raises(ConfigError, match=r"no sampler 'Euler z' for the hires fix \(hr_sampler_name\) \(did you "
                                              r"mean 'Euler a'\?\)"):
            client.check_payloads([_Payload("typo", **HIRES, hr_sampler_name="Euler z")])
        with pytest.raises(ConfigError, match=r"has no scheduler field \(no /sdapi/v1/schedulers: SD.Next, or A1111 "
                                              r"before 1.10\), so hr_scheduler 'karras' would be ignored; remove it"):
            client.check_payloads([_Payload("ignored", **HIRES, hr_scheduler="karras")])

    assert {r.status for r in fake_webui.requests_to("/sdapi/v1/latent-upscale-modes")} == {404}


# --------------------------------------------------------------------- the WebUI's memory


def test_a_webui_keeping_several_models_in_memory_is_warned_about(fake_webui, webui_config, caplog):
    with WebUIClient(webui_config(), "run1") as client:
        client.check_memory_options()  # A1111's defaults: one model, no RAM cache
        assert "keeps more than one model" not in caplog.text
        fake_webui.set_option("sd_checkpoints_limit", 3)
        client.check_memory_options()

    assert "keeps more than one model in memory (sd_checkpoints_limit=3)" in caplog.text
    assert "Set sd_checkpoints_limit to 1" in caplog.text


# ------------------------------------------------------------------- a model that did not load


@pytest.mark.parametrize("fake_webui", ["a1111", "sdnext"], indirect=True)
def test_a_load_that_silently_failed_is_an_error_not_a_silent_fallback(fake_webui, webui_config):
    add_base_model(fake_webui)
    fake_webui.fail_loads(1)
    # a fresh A1111 names no checkpoint though it loaded one; SD.Next names it
    kept = "no model" if fake_webui.mode == "a1111" else r"base.safetensors \[[0-9a-f]{10}\]"
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(WebUIError, match=rf"kept '{kept}' instead of loading bm-run1-t0000"):
            client.load_checkpoint(merge_writer(0.1), trial=0)

    assert fake_webui.loaded_model == "base.safetensors"


@pytest.mark.parametrize(
    ("fake_webui", "keep_option"), [("a1111", True), ("forge", False)], indirect=["fake_webui"]
)
def test_a_generation_with_the_wrong_model_is_an_error(fake_webui, webui_config, keep_option):
    # the option names the merge but the old model generated: only info.sd_model_name tells
    add_base_model(fake_webui)
    with WebUIClient(webui_config(), "run1") as client:
        client.txt2img(PAYLOAD)  # Forge loads its start-up model only now
        fake_webui.fail_loads(1, keep_option=keep_option)
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError, match="generated with 'base' instead of the merge bm-run1-t0000.safetensors"):
            client.txt2img(PAYLOAD)


@pytest.mark.parametrize("fake_webui", ["a1111", "sdnext"], indirect=True)
def test_an_unknown_checkpoint_is_an_error_not_a_silent_fallback(fake_webui, webui_config):
    # the merge vanishes from the WebUI's list between the listing and the selection:
    # A1111 answers 500 "model not found", SD.Next keeps the old model and answers 200
    add_base_model(fake_webui)
    release = fake_webui.hold(OPTIONS, "POST")
    with WebUIClient(webui_config(), "run1") as client, ThreadPoolExecutor(1) as pool:
        loading = pool.submit(client.load_checkpoint, merge_writer(0.1), 0)
        fake_webui.wait_for_requests("/sdapi/v1/sd-models", 1)
        (fake_webui.checkpoint_dir / "bm-run1-t0000.safetensors").unlink()
        requests.post(fake_webui.url + "/sdapi/v1/refresh-checkpoints", timeout=5).raise_for_status()
        release.set()
        with pytest.raises(WebUIError) as error:
            loading.result(timeout=10)

    expected = "model 'bm-run1-t0000.safetensors' not found" if fake_webui.mode == "a1111" else "kept 'base.safetensors"
    assert expected in str(error.value)
    assert fake_webui.loaded_model == "base.safetensors"


# ----------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("fake_webui", [{"auth": "alice:s3cret-pw"}], indirect=True)
def test_auth_from_an_environment_variable_is_accepted(fake_webui, webui_config, monkeypatch):
    monkeypatch.setenv("BM_TEST_WEBUI_AUTH", "alice:s3cret-pw")
    with WebUIClient(webui_config(auth_env="BM_TEST_WEBUI_AUTH"), "run1") as client:
        client.wait_until_ready()
        client.load_checkpoint(merge_writer(0.1), trial=0)
        assert client.txt2img(PAYLOAD).images


@pytest.mark.parametrize(
    ("fake_webui", "auth", "message"),
    [
        ({"auth": "alice:s3cret-pw"}, "alice:wrong", "Incorrect username or password"),
        ({"auth": "alice:s3cret-pw"}, None, "Not authenticated"),
    ],
    indirect=["fake_webui"],
)
def test_wrong_or_missing_auth_is_one_error_with_the_servers_words(fake_webui, webui_config, auth, message):
    with WebUIClient(webui_config(auth=auth), "run1") as client:
        with pytest.raises(WebUIError, match=message) as error:
            client.wait_until_ready()

    assert error.value.status == 401
    assert "webui.auth" in str(error.value)


@pytest.mark.parametrize("fake_webui", [{"auth": "alice:s3cret-pw"}], indirect=True)
def test_the_password_never_appears_in_logs_errors_or_repr(fake_webui, webui_config, caplog):
    caplog.set_level(logging.DEBUG)
    with WebUIClient(webui_config(auth="alice:s3cret-pw"), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        client.txt2img(PAYLOAD)
        shown = repr(client)
    with WebUIClient(webui_config(auth="alice:wr0ng-pw"), "run1") as client:
        with pytest.raises(WebUIError) as error:
            client.load_checkpoint(merge_writer(0.1), trial=1)

    assert "bm-run1-t0000" in caplog.text  # the log did record the work
    for secret in ("s3cret-pw", "wr0ng-pw"):
        assert secret not in caplog.text
        assert secret not in str(error.value) and secret not in shown


def test_an_auth_variable_that_is_not_set_is_a_config_error(webui_config, monkeypatch):
    monkeypatch.delenv("BM_TEST_UNSET_AUTH", raising=False)
    with pytest.raises(ConfigError, match="BM_TEST_UNSET_AUTH"):
        WebUIClient(webui_config(auth_env="BM_TEST_UNSET_AUTH"), "run1")


def test_auth_without_a_colon_is_a_config_error_that_does_not_show_it(webui_config):
    with pytest.raises(ConfigError, match="user:password") as error:
        WebUIClient(webui_config(auth="justapassword"), "run1")

    assert "justapassword" not in str(error.value)


def test_credentials_in_the_url_are_refused(webui_config):
    with pytest.raises(ConfigError, match="auth_env") as error:
        WebUIClient(webui_config(url="http://bob:hunter2@127.0.0.1:7860"), "run1")

    assert "hunter2" not in str(error.value)


def test_a_run_id_that_cannot_name_a_file_is_refused(webui_config):
    with pytest.raises(ConfigError, match="run id"):
        WebUIClient(webui_config(), "../escape")


# ------------------------------------------------------------------------------ error bodies


def _txt2img_error(fake: FakeWebUI, config, request) -> WebUIError:
    with WebUIClient(config, "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        with pytest.raises(WebUIError) as error:
            client.txt2img(request)
    return error.value


@pytest.mark.parametrize(
    ("fake_webui", "message"),
    [("a1111", "steps: value is not a valid integer"),
     ("forge", "steps: Input should be a valid integer, unable to parse string as an integer")],
    indirect=["fake_webui"],
)
def test_a_422_validation_list_becomes_one_sentence_naming_the_field(fake_webui, webui_config, message):
    error = _txt2img_error(fake_webui, webui_config(), {**PAYLOAD, "steps": "abc"})

    assert error.status == 422
    assert str(error) == f"POST /sdapi/v1/txt2img failed with HTTP 422: {message}."
    assert len(fake_webui.requests_to(TXT2IMG)) == 1  # never retried


@pytest.mark.parametrize(
    ("fake_webui", "status", "body_key"),
    [("a1111", 500, "errors"), ("forge", 500, "message"), ("a1111", 400, "errors"), ("forge", 400, "detail"),
     ("sdnext", 500, "errors")],
    indirect=["fake_webui"],
)
def test_every_error_body_shape_becomes_one_error_with_the_servers_message(fake_webui, webui_config, status, body_key):
    fake_webui.fail_next(1, status=status, path="/sdapi/v1/progress", message="probe")
    shape = requests.get(fake_webui.url + "/sdapi/v1/progress", timeout=5).json()
    fake_webui.fail_next(1, status=status, path=TXT2IMG, message="CUDA out of memory")
    error = _txt2img_error(fake_webui, webui_config(), PAYLOAD)

    assert shape[body_key] == "probe"  # the shape this case is about
    assert error.status == status
    assert "CUDA out of memory" in str(error)
    assert str(error).startswith(f"POST /sdapi/v1/txt2img failed with HTTP {status}: ")
    assert "\n" not in str(error) and str(error).endswith(".")
    assert len(fake_webui.requests_to(TXT2IMG)) == 1  # a 500 or a 4xx is never retried


@pytest.mark.parametrize("fake_webui", ["sdnext"], indirect=True)
def test_sdnext_unknown_sampler_404_carries_its_message(fake_webui, webui_config):
    error = _txt2img_error(fake_webui, webui_config(), {**PAYLOAD, "sampler_name": "Euler z"})

    assert error.status == 404
    assert "Sampler not found" in str(error)


def test_an_html_error_page_from_a_proxy_is_reported_without_markup(fake_webui, webui_config):
    fake_webui.fail_next(1, status=500, path=TXT2IMG, body="<html><body><h1>500 Internal Server Error</h1></body></html>")
    error = _txt2img_error(fake_webui, webui_config(), PAYLOAD)

    assert str(error) == "POST /sdapi/v1/txt2img failed with HTTP 500: Internal Server Error."


def test_after_a_failed_load_nothing_is_generated_until_a_merge_loads(fake_webui, webui_config):
    add_base_model(fake_webui)
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        fake_webui.fail_loads(1)
        with pytest.raises(WebUIError, match="kept 'bm-run1-t0000.* instead of loading bm-run1-t0001"):
            client.load_checkpoint(merge_writer(0.2), trial=1)
        with pytest.raises(WebUIError, match="the last load_checkpoint failed"):
            client.txt2img(PAYLOAD)
        client.load_checkpoint(merge_writer(0.2), trial=1)

        assert client.txt2img(PAYLOAD).info["sd_model_name"] == "bm-run1-t0001"


def test_a_payload_held_in_an_omegaconf_node_is_sent_as_plain_json(fake_webui, webui_config):
    from omegaconf import OmegaConf

    request = OmegaConf.create({**PAYLOAD, "styles": ["a", "b"], "override_settings": {"CLIP_stop_at_last_layers": 2}})
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(merge_writer(0.1), trial=0)
        client.txt2img(request)

    sent = fake_webui.requests_to(TXT2IMG)[-1].body
    assert sent["styles"] == ["a", "b"] and sent["override_settings"] == {"CLIP_stop_at_last_layers": 2}


def test_a_probe_left_by_a_start_killed_during_it_is_not_taken_for_the_users_model_and_is_removed(fake_webui,
                                                                                                  webui_config):
    from safetensors.torch import save

    (fake_webui.checkpoint_dir / "bm-dead1-probe.safetensors").write_bytes(save({}))
    merge_writer(0.9)(fake_webui.checkpoint_dir / "zeta.safetensors")  # listed after the probe
    fake_webui.restart(forget_selection=True)
    with WebUIClient(webui_config(), "run1") as client:
        assert client.model_at_start() == "zeta.safetensors"
        removed = client.remove_leftovers(lambda run_id: run_id == "dead1")

    assert [p.name for p in removed] == ["bm-dead1-probe.safetensors"]


def test_a_resumed_run_removes_what_its_killed_session_left_half_written_or_staged_and_keeps_its_merge(
        fake_webui, webui_config):
    """kill -9 while the next trial's merge was written (pipelined): a checkpoint-sized file the resumed
    session, which has the same run id, never wrote over nor deleted (all night, on tmpfs)."""
    folder = fake_webui.checkpoint_dir
    left = [folder / "..bm-run1-t0006.safetensors.staged.tmp.4242.tmp", folder / ".bm-run1-t0007.safetensors.staged",
            folder / "bm-run1-t0005.safetensors.tmp"]
    for path in left:
        path.write_bytes(b"half a merge")
    merge_writer(0.3)(folder / "bm-run1-t0005.safetensors")  # the last merge, which the WebUI may still hold
    with WebUIClient(webui_config(), "run1") as client:
        removed = client.remove_leftovers(lambda run_id: False)

    assert sorted(removed) == sorted(left) and sorted(p.name for p in folder.iterdir()) == ["bm-run1-t0005.safetensors"]


def test_the_folder_write_test_is_named_as_the_runs_so_a_kill_that_leaves_it_is_cleaned(tmp_path, monkeypatch):
    from bayes_merger.webui import merge_files

    created, real = [], merge_files.open_new
    monkeypatch.setattr(merge_files, "open_new", lambda path: (created.append(path), real(path))[1])
    merge_files.MergeFiles(tmp_path, "run1", 0).check_writable()
    assert [merge_files.merge_run_id(path.name) for path in created] == ["run1"] and not list(tmp_path.iterdir())


def test_a_stale_probe_of_a_run_no_folder_knows_is_removed_and_a_fresh_one_left(fake_webui, webui_config):
    # a start killed while it probed, before its run.json: no run folder names its run, so "over" is unknown
    import os
    import time

    from safetensors.torch import save

    stale, fresh = (fake_webui.checkpoint_dir / f"bm-{run}-probe.safetensors" for run in ("killed1", "starting1"))
    for probe in (stale, fresh):
        probe.write_bytes(save({}))
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    with WebUIClient(webui_config(), "run1") as client:
        removed = client.remove_leftovers(lambda run_id: False)  # no run is known to be over

    assert removed == [stale] and fresh.exists()


@pytest.mark.parametrize("name, run_id", [
    ("bm-20260101-000000-ab12-t0003.safetensors", "20260101-000000-ab12"),
    ("bm-20260101-000000-ab12-t0003-r2.safetensors [0123456789]", "20260101-000000-ab12"),
    ("sub/bm-run1-t0012.safetensors.corrupted", "run1"),
    (".bm-run1-t0012.safetensors.tmp.4242.tmp", "run1"),
    ("bm-run1-t0012.safetensors.tmp", "run1"),
    ("bm-run1-probe.safetensors", "run1"),  # written at start, left by a kill during it
    (".bm-run1-probe.safetensors.tmp", "run1"),  # check_writable's, the same
    ("bm-run1-t12.safetensors", None),
    ("mybm-run1-t0012.safetensors", None),
    ("bm-run1-t0012.safetensors.bak", None),
    ("base.safetensors", None),
])
def test_merge_file_names_say_which_run_wrote_them(name, run_id):
    from bayes_merger.webui.merge_files import merge_run_id

    assert merge_run_id(name) == run_id
