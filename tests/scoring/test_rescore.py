"""Re-scoring a finished run's saved images, and the end-of-run finalists."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ConfigError
from bayes_merger.rescore import finalists, main, rescore_run, scorer_config
from bayes_merger.run_folder import ImageRecord, Trial, TrialLog, read_rescores, save_image
from bayes_merger.testing.tiny_clip import make_tiny_head

PROMPTS = {"portrait": "portrait of a __woman__ drawn as: an old woman", "castle": "a castle at dusk"}


class PromptLength:
    """Scores an image by the length of its prompt plus its index: shows which prompt it was given."""

    name = "promptlength"

    def score(self, images, contexts=None):  # noqa: ANN001, ANN201
        return [len(c.prompt) + c.index for c in contexts]


def _run_folder(run_dir: Path, scores: list[float | None]) -> Path:
    """A finished run: one trial per score (None: failed), two payloads of two saved images each."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = TrialLog(run_dir)
    rng = np.random.default_rng(0)
    for number, score in enumerate(scores):
        records = []
        if score is not None:
            for payload, prompt in PROMPTS.items():
                for index in range(2):
                    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                    path = save_image(run_dir, image, trial=number, payload=payload, index=index, prompt=prompt,
                                      seed=100 + index, weights="0.5")
                    records.append(ImageRecord(payload, index, 100 + index, score, path.relative_to(run_dir).as_posix()))
        log.append(Trial(trial=number, phase="init", status="ok" if score is not None else "failed",
                         params={"x": 0.5}, weights={"alpha": {"BASE": 0.5}, "beta": None}, alpha_string="0.5",
                         beta_string=None, score=score, error=None if score is not None else "boom",
                         payload_scores={}, images=tuple(records)))
    return run_dir


def test_rescore_writes_new_scores_beside_the_log_and_leaves_the_log_alone(tmp_path: Path) -> None:
    run_dir = _run_folder(tmp_path, [5.0, None, 6.0])
    before = (run_dir / "trials.jsonl").read_bytes()
    result = rescore_run(run_dir, ScorerConfig(), scorer=PromptLength())
    assert (run_dir / "trials.jsonl").read_bytes() == before
    assert result.path == run_dir / "rescore-promptlength.jsonl"
    lines = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert [line["trial"] for line in lines] == [0, 2]
    portrait, castle = len(PROMPTS["portrait"]), len(PROMPTS["castle"])
    first = lines[0]
    assert [image["score"] for image in first["images"]] == [portrait, portrait + 1, castle, castle + 1]
    assert first["payload_scores"] == {"portrait": portrait + 0.5, "castle": castle + 0.5}
    assert first["score"] == pytest.approx((portrait + castle + 1) / 2)
    assert first["original_score"] == 5.0
    assert read_rescores(run_dir) == {"promptlength": {0: first["score"], 2: lines[1]["score"]}}


def test_the_payloads_are_combined_with_the_weights_the_run_recorded_without_its_payload_files(tmp_path: Path) -> None:
    run_dir = _run_folder(tmp_path, [5.0])
    # run.json keeps the weights: the payload folder may have moved or changed since
    (run_dir / "run.json").write_text(json.dumps({"payload_weights": {"portrait": 3.0, "castle": 1.0}}))
    (line,) = [json.loads(text) for text in rescore_run(run_dir, ScorerConfig(), scorer=PromptLength())
               .path.read_text().splitlines()]
    portrait, castle = len(PROMPTS["portrait"]) + 0.5, len(PROMPTS["castle"]) + 0.5
    assert line["score"] == pytest.approx((3 * portrait + castle) / 4)


def test_top_k_rescores_only_the_best_trials_of_the_run(tmp_path: Path) -> None:
    run_dir = _run_folder(tmp_path, [5.0, 7.0, 6.0, 4.0])
    result = rescore_run(run_dir, ScorerConfig(), top_k=2, scorer=PromptLength())
    assert sorted(result.scores) == [1, 2]


def test_a_later_partial_rescore_keeps_the_other_trials_lines_and_no_error_replaces_a_score(tmp_path: Path) -> None:
    run_dir = _run_folder(tmp_path, [5.0, 7.0, 6.0, 4.0])
    full = rescore_run(run_dir, ScorerConfig(), scorer=PromptLength())
    everything = read_rescores(run_dir)["promptlength"]
    assert sorted(everything) == [0, 1, 2, 3]
    rescore_run(run_dir, ScorerConfig(), top_k=2, scorer=PromptLength())  # the finalists at the end of a resume
    assert read_rescores(run_dir)["promptlength"] == everything
    for image in (run_dir / "images").glob("t0001-*.png"):
        image.unlink()  # trial 1's images are gone: its re-score is an error line
    rescore_run(run_dir, ScorerConfig(), scorer=PromptLength())
    assert read_rescores(run_dir)["promptlength"] == everything
    lines = [json.loads(line) for line in full.path.read_text().splitlines()]
    assert [line["trial"] for line in lines] == [0, 1, 2, 3] and all(line["score"] is not None for line in lines)


def test_a_rescore_with_other_settings_of_the_same_scorer_is_refused_before_it_adds_a_second_scale(
    tmp_path: Path, monkeypatch
) -> None:
    from bayes_merger import rescore

    run_dir = _run_folder(tmp_path / "run", [5.0, 7.0, 6.0])
    mine, tripled = make_tiny_head(tmp_path / "mine.safetensors"), make_tiny_head(tmp_path / "tripled.safetensors", seed=3)
    monkeypatch.setattr(rescore, "build_scorer", lambda config: pytest.fail("loaded before the refusal"))
    config = ScorerConfig(name="aesthetic_head", head=str(mine))
    path = rescore_run(run_dir, config, scorer=PromptLength()).path
    written = path.read_bytes()
    rescore_run(run_dir, config, top_k=1, scorer=PromptLength())  # the same settings: the finalists' top one again
    for changed, named in ((dataclasses.replace(config, head=str(tripled)), "scorer.head"),
                           (dataclasses.replace(config, combine="geometric"), "scorer.combine")):
        with pytest.raises(ConfigError) as refused:
            rescore_run(run_dir, changed, top_k=2, scorer=PromptLength())
        assert str(refused.value) == (
            f"{path} holds promptlength's scores with other settings ({named}); these would mix two scales in one "
            "column: rename or move that file to keep it, or re-score with its settings.")
    assert path.read_bytes() == written
    lines = [json.loads(line) for line in written.decode().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "settings"}) + "\n" for line in lines))
    rescore_run(run_dir, dataclasses.replace(config, head=str(tripled)), top_k=1, scorer=PromptLength())  # older file


def test_a_rescore_stopped_by_out_of_memory_keeps_the_trials_it_had_scored(tmp_path: Path) -> None:
    import torch

    class OutOfMemoryAtTheThird(PromptLength):
        calls = 0

        def score(self, images, contexts=None):  # noqa: ANN001, ANN201
            self.calls += 1
            if self.calls == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().score(images, contexts)

    run_dir = _run_folder(tmp_path, [5.0, 7.0, 6.0, 4.0])
    with pytest.raises(torch.OutOfMemoryError):
        rescore_run(run_dir, ScorerConfig(), scorer=OutOfMemoryAtTheThird())
    assert sorted(read_rescores(run_dir)["promptlength"]) == [0, 1]


def test_a_rescore_file_is_named_as_the_scorer_its_settings_build_is(tmp_path: Path) -> None:
    from bayes_merger.scoring.ensemble import EnsembleScorer
    from bayes_merger.scoring.registry import scorer_name

    class Named(PromptLength):
        def __init__(self, name: str) -> None:
            self.name = name

    config = ScorerConfig(name="ensemble", ensemble={"pickscore": 1.0, "hpsv2": 2.0, "aesthetic_v25": 0.5})
    built = EnsembleScorer([(Named(name), weight) for name, weight in config.ensemble.items()])
    assert scorer_name(config) == built.name == "ensemble(pickscore=1, hpsv2=2, aesthetic_v25=0.5)"
    assert scorer_name(ScorerConfig(name="chad")) == "chad"


def test_the_report_shows_a_column_per_rescore(tmp_path: Path) -> None:
    from bayes_merger.report import write_report

    run_dir = _run_folder(tmp_path, [5.0, 6.0])
    rescore_run(run_dir, ScorerConfig(), scorer=PromptLength())
    write_report(run_dir)
    assert 'class="rescore-col">promptlength</th>' in (run_dir / "report.html").read_text()


def test_overrides_start_from_the_runs_scorer_section(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("scorer:\n  name: laion\n  device: cpu\n  batch_size: 3\n")
    config, top_k = scorer_config(tmp_path, ["scorer=pickscore", "scorer.batch_size=2", "top_k=4"])
    assert (config.name, config.device, config.batch_size, top_k) == ("pickscore", "cpu", 2, 4)
    config, _ = scorer_config(tmp_path, ["scorer=ensemble", "scorer.ensemble={pickscore: 1, hpsv2: 2}"])
    assert config.ensemble == {"pickscore": 1, "hpsv2": 2}
    with pytest.raises(ConfigError, match="top_k is 'abc'; it must be a whole number, at least 1"):
        scorer_config(tmp_path, ["top_k=abc"])
    with pytest.raises(ConfigError, match="not an option"):
        scorer_config(tmp_path, ["optimiser.n_iters=3"])


def test_another_scorer_named_for_a_rescore_does_not_take_the_runs_head_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("scorer:\n  name: aesthetic_head\n  head: /heads/mine.safetensors\n")
    for name in ("laion", "chad", "aesthetic_v25", "pickscore"):  # each checks or loads its own published head
        assert scorer_config(tmp_path, [f"scorer={name}"])[0].head is None
    for name in ("aesthetic_head", "ensemble", "preference"):  # the run's own, or members that may be it
        assert scorer_config(tmp_path, [f"scorer={name}"])[0].head == "/heads/mine.safetensors"
    given = scorer_config(tmp_path, ["scorer=laion", "scorer.head=/heads/laion.safetensors"])[0]
    assert given.head == "/heads/laion.safetensors"  # a head given with it is its own


def test_an_ensemble_given_replaces_the_runs_members(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("scorer:\n  name: ensemble\n  ensemble: {laion: 1, chad: 1}\n")
    config, _ = scorer_config(tmp_path, ["scorer=ensemble", "scorer.ensemble={pickscore: 1, hpsv2: 1}"])
    assert config.ensemble == {"pickscore": 1, "hpsv2": 1}
    config, _ = scorer_config(tmp_path, ["scorer=ensemble"])  # the run's own members, to score again
    assert config.ensemble == {"laion": 1, "chad": 1}


def test_a_named_ensemble_is_taken_as_a_scorer_name_here_too(tmp_path: Path) -> None:
    config, _ = scorer_config(tmp_path, ["scorer=preference"])
    assert config.name == "ensemble" and config.ensemble == {"pickscore": 1.0, "hpsv2": 1.0, "aesthetic_v25": 0.5}


def test_a_scorer_named_for_a_rescore_is_the_one_the_runs_finalists_would_take(tmp_path: Path) -> None:
    from bayes_merger.scoring.registry import ENSEMBLE, PRESETS, SCORERS, named_scorer

    (tmp_path / "config.yaml").write_text(
        "scorer:\n  name: ensemble\n  ensemble: {aesthetic_head: 1, chad: 1}\n  head: /heads/mine.safetensors\n")
    run = scorer_config(tmp_path, [])[0]
    for name in (*SCORERS, ENSEMBLE, *PRESETS):  # one rule for both: bayes-merger-rescore and scorer.finalists
        assert scorer_config(tmp_path, [f"scorer={name}"])[0] == named_scorer(run, name), name


def test_the_command_rescores_with_a_registered_scorer_through_its_loader(
    tmp_path: Path, tiny_clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run_folder(tmp_path / "run", [5.0, 6.0])
    head = make_tiny_head(tmp_path / "head.safetensors")
    code = main([str(run_dir), "scorer=aesthetic_head", f"scorer.head={head}", f"scorer.clip={tiny_clip_dir}",
                 "scorer.device=cpu"])
    assert code == 0, capsys.readouterr().err
    scores = read_rescores(run_dir)["aesthetic_head"]
    assert sorted(scores) == [0, 1] and all(np.isfinite(list(scores.values())))
    assert main([str(tmp_path / "nowhere")]) == 2


def test_the_command_refuses_a_folder_without_a_trial_log_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"bayes-merger-rescore: {tmp_path / 'nowhere'} is not a folder: give the path of a bayes-merger run folder.")
    (tmp_path / "run.json").write_text("{}")  # a run that never finished a trial
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"bayes-merger-rescore: {tmp_path} has no trials.jsonl: it is not a bayes-merger run folder, "
        "or no trial of that run has finished yet.")


def test_finalists_are_off_by_default_and_rescore_the_top_k_when_set(tmp_path: Path, tiny_clip_dir: Path) -> None:
    run_dir = _run_folder(tmp_path / "run", [5.0, 7.0, 6.0])
    head = make_tiny_head(tmp_path / "head.safetensors")
    config = ScorerConfig(name="laion", clip=str(tiny_clip_dir), head=str(head), device="cpu")
    assert finalists(run_dir, config) is None
    chosen = dataclasses.replace(config, finalists="aesthetic_head", finalists_top_k=2)
    result = finalists(run_dir, chosen)
    assert result is not None and sorted(result.scores) == [1, 2]
    # a finalists scorer that cannot load never fails the run
    assert finalists(run_dir, dataclasses.replace(config, finalists="hpsv2", cache_dir=str(tmp_path))) is None


def test_finalists_that_run_out_of_memory_do_not_fail_the_run(tmp_path: Path, monkeypatch, caplog) -> None:
    import torch

    from bayes_merger import rescore

    class OutOfMemory(PromptLength):
        def score(self, images, contexts=None):  # noqa: ANN001, ANN201
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    run_dir = _run_folder(tmp_path / "run", [5.0, 7.0])
    monkeypatch.setattr(rescore, "build_scorer", lambda config: OutOfMemory())
    assert finalists(run_dir, ScorerConfig(finalists="aesthetic_head", device="cpu")) is None
    assert "The finalists were not re-scored with aesthetic_head: CUDA out of memory" in caplog.text
