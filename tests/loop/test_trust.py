"""Trust in the morning: the merge really reaches the renderer, a run leaves nothing behind in the
WebUI's folder, and the faults of a long night end in one sentence (issue 11)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from bayes_merger.errors import BrokenMerge, CheckpointError, MergeError
from bayes_merger.merge.arch import architecture
from bayes_merger.merge.finite import check_finite
from bayes_merger.merge.merger import Merger
from bayes_merger.run_folder.liveness import running
from bayes_merger.run_folder.paths import resume_command
from bayes_merger.testing.models import make_checkpoint
from bayes_merger.webui.render_check import MergeNotRendered, RenderCheck

from test_cli_run import _args, _cli, _only_run, _trials

TXT2IMG = "/sdapi/v1/txt2img"


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _ours(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if "bm-" in p.name)


@pytest.fixture
def webui_with_a_model(fake_webui):
    """The fake WebUI with the user's own model loaded, as before any run."""
    make_checkpoint(fake_webui.checkpoint_dir / "mine.safetensors", "sd1", seed=9)
    fake_webui.restart()
    assert fake_webui.loaded_model == "mine.safetensors"
    return fake_webui


# ------------------------------------------------------------------ the merge reaches the renderer


def test_a_webui_that_keeps_rendering_the_old_model_stops_the_run_and_the_resume_renders_those_trials_again(
        assets, fake_webui, tmp_path, caplog):
    budget = ("optimiser.init_points=4", "optimiser.n_iters=2")
    fake_webui.ignore_model_switch()
    code = _cli(_args(assets, fake_webui, tmp_path / "runs", *budget))
    assert code == 6
    run_dir = _only_run(tmp_path / "runs")
    errors = _errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("The merge does not reach the renderer: trials 0, 1 and 2 merged different weights")
    assert errors[0].endswith("then resume, which renders trials 0, 1, 2 again (the records of those already logged "
                              f"are set aside in trials.not-rendered.jsonl): {resume_command(run_dir)}")
    # stopped at the third trial with the same pictures; the two logged before are of one model too, so no
    # score of the three is kept as the truth of the run, nor lost
    assert (run_dir / "trials.jsonl").read_text() == ""
    set_aside = [json.loads(line) for line in (run_dir / "trials.not-rendered.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in set_aside] == [0, 1] and set_aside[0]["score"] == set_aside[1]["score"]
    assert not (run_dir / "best.yaml").exists(), "best.yaml still names a trial whose score was set aside"
    assert not list((run_dir / "images").iterdir()), "images named with scores the trial log no longer has"

    fake_webui.ignore_model_switch(False)  # the user restarted the WebUI
    assert _cli(["--config", str(run_dir / "config.yaml"), f"resume={run_dir}", "hydra/job_logging=none",
                 "hydra/hydra_logging=none"]) == 0
    resumed = [(t["trial"], t["status"], t["score"]) for t in _trials(run_dir)]
    # the same run as one on a WebUI that never stuck
    assert _cli(_args(assets, fake_webui, tmp_path / "clean", *budget)) == 0
    assert resumed == [(t["trial"], t["status"], t["score"]) for t in _trials(_only_run(tmp_path / "clean"))]
    assert len({score for _, _, score in resumed}) == len(resumed)
    # images/ holds the images of the resume's renders, none left from the stuck model's beside them
    assert ({image["path"] for t in _trials(run_dir) for image in t["images"]}
            == {f"images/{path.name}" for path in (run_dir / "images").iterdir()})


def test_a_flat_landscape_with_different_pictures_runs_to_its_budget(assets, fake_webui, tmp_path, monkeypatch):
    import bayes_merger.run as run_module

    monkeypatch.setattr(run_module, "score_trial", lambda scores, payloads, weights, combine: ({"fox": 5.0}, 5.0))
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=5", "optimiser.n_iters=1")) == 0
    assert [t["score"] for t in _trials(_only_run(tmp_path / "runs"))] == [5.0] * 6


def _pictures(colour: int) -> list[tuple[str, int, int, Image.Image]]:
    return [("fox", 0, 11, Image.new("RGB", (8, 8), (colour, 0, 0))), ("fox", 1, 12, Image.new("RGB", (8, 8), (0, colour, 0)))]


def test_the_same_pictures_from_different_weights_three_times_in_a_row_is_proof():
    check = RenderCheck()
    check.check(0, [0.1, 0.2], _pictures(1))
    check.check(1, [0.5, 0.2], _pictures(1))
    with pytest.raises(MergeNotRendered, match="trials 0, 1 and 2"):
        check.check(2, [0.9, 0.7], _pictures(1))


def test_different_pictures_or_near_identical_weights_are_never_proof():
    check = RenderCheck()
    for trial in range(20):  # a flat landscape: the pictures change, whatever the scores
        check.check(trial, [trial / 20, 0.5], _pictures(trial))
    check = RenderCheck()
    for trial in range(20):  # weights too close to change an fp16 file: the same pictures prove nothing
        check.check(trial, [0.5 + trial * 1e-4, 0.5], _pictures(1))
    check = RenderCheck()
    for trial in range(20):  # a repeat now and then is broken by pictures that change
        check.check(trial, [trial / 20, 0.5], _pictures(trial // 2))


# --------------------------------------------------------------------------------- leftovers


def _mine_is_back(fake_webui) -> None:
    assert fake_webui.loaded_model == "mine.safetensors"
    assert fake_webui.options["sd_model_checkpoint"].startswith("mine.safetensors")
    assert sorted(p.name for p in fake_webui.checkpoint_dir.iterdir()) == ["mine.safetensors"]


def test_the_end_of_a_run_selects_the_model_of_before_and_deletes_the_merge(assets, webui_with_a_model, tmp_path):
    assert _cli(_args(assets, webui_with_a_model, tmp_path / "runs", "webui.keep_last=2")) == 0
    _mine_is_back(webui_with_a_model)
    assert json.loads((_only_run(tmp_path / "runs") / "run.json").read_text())["webui_model_before"].startswith("mine")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_by_signal_hands_the_webui_back(assets, webui_with_a_model, tmp_path, monkeypatch, signum):
    from bayes_merger.run import TrialLoop

    original = TrialLoop.render

    def trial_then_signal(self, index, *args):
        result = original(self, index, *args)
        if index == 1:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(TrialLoop, "render", trial_then_signal)
    assert _cli(_args(assets, webui_with_a_model, tmp_path / "runs")) == 130
    _mine_is_back(webui_with_a_model)


def test_a_stop_after_failures_hands_the_webui_back(assets, webui_with_a_model, tmp_path):
    webui_with_a_model.fail_next(1000, status=500, path=TXT2IMG)
    assert _cli(_args(assets, webui_with_a_model, tmp_path / "runs")) == 6
    webui_with_a_model.clear_faults()
    _mine_is_back(webui_with_a_model)


def test_trials_a_set_up_fault_failed_before_any_was_scored_are_run_again_on_resume(assets, fake_webui, tmp_path,
                                                                                       caplog):
    # e.g. the WebUI out of memory from the start: the first three trials, the baseline among them, fail
    fake_webui.fail_next(1000, status=500, path=TXT2IMG)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 6
    run_dir = _only_run(tmp_path / "runs")
    assert _trials(run_dir) == []
    aside = [json.loads(line) for line in (run_dir / "trials.failed-at-start.jsonl").read_text().splitlines()]
    assert [(t["trial"], t["status"]) for t in aside] == [(0, "failed"), (1, "failed"), (2, "failed")]
    assert "which runs trials 0, 1, 2 again" in caplog.text
    fake_webui.clear_faults()  # the cause fixed
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    trials = _trials(run_dir)
    assert [(t["trial"], t["status"]) for t in trials] == [(n, "ok") for n in range(5)]
    assert [t["params"] for t in trials[:3]] == [t["params"] for t in aside]  # the same trials, run again
    assert "gain_over_baseline" in yaml.safe_load((run_dir / "best.yaml").read_text())


def _run_folder(runs: Path, run_id: str) -> Path:
    folder = runs / f"2026-01-01_00-00-00_{run_id}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id, "webui_model_before": "mine.safetensors"}))
    return folder


def test_files_of_runs_that_died_are_removed_and_nothing_else(assets, webui_with_a_model, tmp_path):
    runs, folder = tmp_path / "runs", webui_with_a_model.checkpoint_dir
    _run_folder(runs, "20260101-000000-dead")
    live = _run_folder(runs, "20260101-000000-live")
    dead_files = ["bm-20260101-000000-dead-t0007.safetensors", "bm-20260101-000000-dead-t0008.safetensors.tmp",
                  "bm-20260101-000000-dead-t0006-r2.safetensors.corrupted"]
    kept = ["bm-20260101-000000-live-t0003.safetensors",  # its run is going on (it holds its lock)
            "bm-20250101-000000-gone-t0001.safetensors",  # no run folder says it is over
            "bm-notes.safetensors", "mybm-20260101-000000-dead-t0007.safetensors", "bm-20260101-000000-dead.txt"]
    for name in dead_files + kept:
        (folder / name).write_bytes(b"x")
    with running(live):
        assert _cli(_args(assets, webui_with_a_model, runs)) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept + ["mine.safetensors"])


def test_a_run_killed_while_holding_the_webui_leaves_it_to_the_next_run(assets, webui_with_a_model, tmp_path):
    runs = tmp_path / "runs"
    dead = _run_folder(runs, "20260101-000000-dead")
    merge = webui_with_a_model.checkpoint_dir / "bm-20260101-000000-dead-t0004.safetensors"
    make_checkpoint(merge, "sd1", seed=3)
    webui_with_a_model.set_option("sd_model_checkpoint", merge.name)
    webui_with_a_model.restart()  # it comes back with the dead run's merge loaded
    assert webui_with_a_model.loaded_model == merge.name
    assert _cli(_args(assets, webui_with_a_model, runs)) == 0
    assert dead.exists()
    _mine_is_back(webui_with_a_model)


def test_a_run_killed_after_its_last_trial_leaves_no_merge_once_resumed(assets, webui_with_a_model, tmp_path):
    # kill -9 after the last trial was logged, before the hand-back: every trial is done, so the resume
    # renders nothing, but the killed session's merge was left in the folder and selected in the WebUI
    runs = tmp_path / "runs"
    assert _cli(_args(assets, webui_with_a_model, runs)) == 0
    run_dir = _only_run(runs)
    info = json.loads((run_dir / "run.json").read_text())
    info.pop("finished_at")
    (run_dir / "run.json").write_text(json.dumps(info))
    merge = webui_with_a_model.checkpoint_dir / f"bm-{info['run_id']}-t0004.safetensors"
    make_checkpoint(merge, "sd1", seed=3)
    webui_with_a_model.set_option("sd_model_checkpoint", merge.name)
    webui_with_a_model.restart()
    assert webui_with_a_model.loaded_model == merge.name
    assert _cli(_args(assets, webui_with_a_model, runs, f"resume={run_dir}")) == 0
    _mine_is_back(webui_with_a_model)
    assert json.loads((run_dir / "run.json").read_text())["finished_at"]


def test_a_finished_runs_resume_leaves_the_webui_as_the_user_has_it_now(assets, webui_with_a_model, tmp_path):
    runs = tmp_path / "runs"
    assert _cli(_args(assets, webui_with_a_model, runs)) == 0
    other = webui_with_a_model.checkpoint_dir / "other.safetensors"
    make_checkpoint(other, "sd1", seed=4)
    webui_with_a_model.set_option("sd_model_checkpoint", other.name)  # the user's choice since
    assert _cli(_args(assets, webui_with_a_model, runs, f"resume={_only_run(runs)}")) == 0
    assert webui_with_a_model.options["sd_model_checkpoint"].startswith("other.safetensors")


def test_a_ctrl_c_that_cuts_one_webuis_hand_back_short_leaves_the_others_theirs():
    # the overnight runner's second Ctrl-C may come while the first WebUI waits for its model's load
    from bayes_merger.executor import Slot
    from bayes_merger.run import hand_back

    handed = []

    class WebUI:
        def __init__(self, name: str, cut: bool) -> None:
            self.name, self.cut = name, cut

        def hand_back(self, model: str) -> None:
            handed.append((self.name, model))
            if self.cut:
                raise KeyboardInterrupt

    slots = [Slot(name=name, webui=WebUI(name, name == "a"), checkpoint_dir=Path(".")) for name in ("a", "b")]
    with pytest.raises(KeyboardInterrupt):
        hand_back(slots, {"a": "mine-a.safetensors", "b": "mine-b.safetensors"})
    assert handed == [("a", "mine-a.safetensors"), ("b", "mine-b.safetensors")]


# ------------------------------------------------------------------------------- NaN and inf


def test_a_merge_with_nan_fails_its_trial_naming_method_and_block_and_never_reaches_the_webui(
        assets, fake_webui, tmp_path, monkeypatch):
    original = Merger.merge
    calls = []

    def merge_with_nan(self, weights):
        merged = original(self, weights)
        calls.append(1)
        if len(calls) == 2:
            key = next(k for k in merged if self.architecture.block_of(k) == "IN04" and merged[k].is_floating_point())
            merged[key].view(-1)[0] = float("nan")
        return merged

    monkeypatch.setattr(Merger, "merge", merge_with_nan)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "save_best=false")) == 0
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["status"] for t in trials] == ["ok", "failed", "ok", "ok", "ok"]
    assert "weighted_sum merge has NaN or infinite values in block IN04" in trials[1]["error"]
    assert "not handed to the WebUI" in trials[1]["error"]
    assert [t["broken"] for t in trials] == [False, True, False, False, False]  # the optimiser avoids its weights
    selected = [r.body["sd_model_checkpoint"] for r in fake_webui.requests_to("/sdapi/v1/options", "POST")]
    assert [name.split(" ")[0][-17:] for name in selected] == [f"t{t:04d}.safetensors" for t in (0, 2, 3, 4)], \
        "the WebUI never saw trial 1"


NAN_IN_UNET = ("A tensor with all NaNs was produced in Unet. This could be either because there's not enough "
               "precision to represent the picture, or because your video card does not support half type.")


def _failing_from_trial_1(monkeypatch, fake_webui, count, error):
    from bayes_merger.run import TrialLoop

    original = TrialLoop.render

    def render(self, index, *args):
        if index == 1:  # trial 0 is scored; the next ``count`` generations fail
            fake_webui.fail_next(count, status=500, path="/sdapi/v1/txt2img", message=NAN_IN_UNET, error=error)
        return original(self, index, *args)

    monkeypatch.setattr(TrialLoop, "render", render)


def test_merges_the_webuis_nan_check_refuses_are_broken_and_do_not_stop_the_run(assets, fake_webui, tmp_path,
                                                                              monkeypatch):
    _failing_from_trial_1(monkeypatch, fake_webui, 3, "NansException")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "save_best=false")) == 0
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["status"] for t in trials] == ["ok", "failed", "failed", "failed", "ok"]
    assert [t["broken"] for t in trials] == [False, True, True, True, False]
    assert "NansException: A tensor with all NaNs was produced in Unet" in trials[1]["error"]


def test_three_other_failures_in_a_row_still_stop_the_run(assets, fake_webui, tmp_path, monkeypatch):
    _failing_from_trial_1(monkeypatch, fake_webui, 3, "RuntimeError")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "save_best=false")) == 6
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [(t["status"], t["broken"]) for t in trials] == [("ok", False)] + [("failed", False)] * 3


def test_check_finite_finds_inf_and_accepts_the_largest_finite_values():
    arch = architecture("sd1")
    key = "model.diffusion_model.middle_block.0.in_layers.0.weight"
    big = torch.full((100_000,), 65504.0, dtype=torch.float16)  # sums past fp16's range: still finite values
    check_finite({key: big}, arch, "add_difference")
    big[7] = float("inf")
    with pytest.raises(MergeError, match="add_difference merge has NaN or infinite values in block M00"):
        check_finite({key: big}, arch, "add_difference")


def test_check_finite_finds_values_the_files_precision_cannot_hold():
    # an fp32 merge saved as fp16: past 65504 a value is saved as an infinity
    arch = architecture("sd1")
    key = "model.diffusion_model.middle_block.0.in_layers.0.weight"
    merged = {key: torch.tensor([1.0, -65504.0, 3.0], dtype=torch.float32)}
    check_finite(merged, arch, "weighted_subtraction", "fp16")
    merged[key][0] = -65520.0  # rounds to −inf in fp16
    check_finite(merged, arch, "weighted_subtraction")  # kept as fp32: finite
    check_finite(merged, arch, "weighted_subtraction", "bf16")  # bf16 has fp32's range
    with pytest.raises(BrokenMerge, match="values in block M00 once saved as fp16, first in model.diffusion_model"):
        check_finite(merged, arch, "weighted_subtraction", "fp16")
    assert torch.isinf(merged[key].to(torch.float16)[0])


def test_a_best_merge_best_precision_cannot_hold_is_saved_as_its_trial_was_rendered(tmp_path, caplog):
    # trials are checked in merge.dtype (fp32 here); best.safetensors in best_precision (fp16) held infinities
    from types import SimpleNamespace

    from bayes_merger.run import _save_best_merge

    key = "model.diffusion_model.middle_block.0.in_layers.0.weight"
    saved, values = [], {"value": 70000.0}
    merger = SimpleNamespace(architecture=architecture("sd1"), method=SimpleNamespace(name="add_difference"),
                             merge=lambda weights: {key: torch.tensor([values["value"]])},
                             save=lambda path, dtype, **options: saved.append(dtype) or path)
    inputs = SimpleNamespace(space=SimpleNamespace(to_block_weights=lambda params: params), run_dir=tmp_path,
                             config=SimpleNamespace(best_precision="16", merge=SimpleNamespace(dtype="fp32", prune=True)))
    best = SimpleNamespace(params={}, score=7.0, trial=3)
    _save_best_merge(inputs, merger, best)
    assert saved == ["fp32"] and "best_precision 16 cannot hold the best merge" in caplog.text
    values["value"] = 1.0
    _save_best_merge(inputs, merger, best)
    assert saved == ["fp32", "16"]


def test_check_finite_compares_on_the_merges_own_device():
    """A CPU tensor of limits beside CUDA ones is a device mismatch (a RuntimeError, not a failed trial): every
    merge on a GPU stopped at its first trial. The meta device keeps torch's device rule without a GPU."""
    from bayes_merger.merge.finite import finite_rows

    held = finite_rows([torch.ones(3, 2, device="meta", dtype=torch.float16), torch.ones(4, device="meta")],
                       torch.float16)
    assert held.device.type == "meta" and held.shape == (2,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not tested")
def test_check_finite_on_a_gpu_passes_a_sound_merge_and_names_a_broken_one():
    arch = architecture("sd1")
    key = "model.diffusion_model.middle_block.0.in_layers.0.weight"
    merged = {key: torch.tensor([1.0, -65504.0, 3.0], device="cuda")}
    check_finite(merged, arch, "weighted_sum", "fp16")
    merged[key][0] = float("nan")
    with pytest.raises(BrokenMerge, match="values in block M00"):
        check_finite(merged, arch, "weighted_sum")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_finds_each_kind_of_bad_value_in_each_precision_and_names_its_block(dtype, bad):
    arch = architecture("sd1")
    fine = "model.diffusion_model.input_blocks.4.0.in_layers.0.weight"
    scalar = "cond_stage_model.transformer.text_model.final_layer_norm.bias"  # BASE; a 0-d tensor here
    tensors = {fine: torch.randn(1000, dtype=dtype), scalar: torch.tensor(0.5, dtype=dtype),
               "model.diffusion_model.output_blocks.2.1.conv.weight": torch.randn(64, dtype=dtype)}
    check_finite(tensors, arch, "weighted_sum")
    tensors[scalar] = torch.tensor(bad, dtype=dtype)
    with pytest.raises(MergeError, match=f"NaN or infinite values in block BASE, first in {scalar}"):
        check_finite(tensors, arch, "weighted_sum")
    tensors[scalar] = torch.tensor(0.5, dtype=dtype)
    tensors["model.diffusion_model.output_blocks.2.1.conv.weight"][-1] = bad
    with pytest.raises(MergeError, match="in block OUT02"):
        check_finite(tensors, arch, "weighted_sum")


# ------------------------------------------------------------------------- disk full, no permission


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")])
def test_a_full_or_unwritable_checkpoint_folder_is_one_error_and_no_partial_file(
        assets, fake_webui, tmp_path, monkeypatch, caplog, code, words):
    original = Merger.save
    saves = []

    def save_then_fail(self, path, **options):
        saves.append(path)
        if len(saves) < 3 or Path(path).parent != fake_webui.checkpoint_dir:
            return original(self, path, **options)
        Path(path).write_bytes(b"half a merge")  # what the disk took before it failed
        try:
            raise OSError(code, os.strerror(code))
        except OSError as error:
            raise CheckpointError(f"Cannot write {path}: {error}.") from None  # as the saver reports it

    monkeypatch.setattr(Merger, "save", save_then_fail)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 6
    run_dir = _only_run(tmp_path / "runs")
    assert [t["status"] for t in _trials(run_dir)] == ["ok", "ok"]
    errors = _errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0]
    assert words in errors[0] and str(fake_webui.checkpoint_dir) in errors[0] and f"resume={run_dir}" in errors[0]
    assert list(fake_webui.checkpoint_dir.iterdir()) == [], "no partial file, and the run's merges are gone"
