"""End to end through the CLI: the real loop, the fake A1111 over HTTP, tiny models and scorer."""

from __future__ import annotations

import errno
import importlib.metadata
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from omegaconf import OmegaConf

from bayes_merger.cli import main, save_config
from bayes_merger.errors import StorageError
from bayes_merger.files import file_sha256
from bayes_merger.merge.safetensors_file import read_header
from bayes_merger.run_folder.paths import resume_command
from bayes_merger.testing.models import make_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _args(assets, fake_webui, runs: Path, *overrides: str) -> list[str]:
    base = [
        "--config", str(REPO / "conf" / "demo.yaml"), "demo=false",
        f"webui.url={fake_webui.url}", f"webui.checkpoint_dir={fake_webui.checkpoint_dir}",
        f"run.dir={runs}", f"payloads.dir={REPO / 'payloads' / 'demo.yaml'}",
        f"payloads.wildcards_dir={REPO / 'payloads' / 'wildcards'}",
        "optimiser.init_points=3", "optimiser.n_iters=2",
        # Hydra's logging setup would replace pytest's capturing handlers
        "hydra/job_logging=none", "hydra/hydra_logging=none",
    ]
    return base + [f"{key}={value}" for key, value in assets.items()] + list(overrides)


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def _only_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def _trials(run_dir: Path) -> list[dict]:
    """The trial log's records by trial number (pipelined trials may finish, and be logged, out of order)."""
    records = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    return sorted(records, key=lambda t: t["trial"])


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_short_run_completes_and_best_yaml_matches_the_best_trial(assets, fake_webui, tmp_path):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 0
    run_dir = _only_run(tmp_path / "runs")
    trials = _trials(run_dir)
    assert [t["trial"] for t in trials] == [0, 1, 2, 3, 4]
    assert all(t["status"] == "ok" for t in trials)
    best_line = max(trials, key=lambda t: t["score"])
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    # the best is the trial the model rates best; the raw best and the baseline are written beside it
    chosen = next(t for t in trials if t["trial"] == best["trial"])
    assert best["score"] == chosen["score"] and best["alpha"] == chosen["alpha_string"]
    assert len(best["alpha"].split(",")) == 26 and best["chosen_by"] == "posterior mean"
    assert best["raw_best"] == {"trial": best_line["trial"], "score": best_line["score"]}
    assert trials[0]["phase"] == "start" and set(trials[0]["weights"]["alpha"].values()) == {0.5}
    assert best["baseline"]["score"] == trials[0]["score"] and best["baseline"]["alpha"] == trials[0]["alpha_string"]
    assert best["gain_over_baseline"] == pytest.approx(chosen["score"] - trials[0]["score"])
    importance = best["importance"]
    assert len(importance) == 26 and max(importance.values()) == 1.0 and min(importance.values()) >= 0
    assert (run_dir / "best.safetensors").is_file() and (run_dir / "report.html").is_file()
    assert (run_dir / "importance.png").is_file() and "importance.png" in (run_dir / "report.html").read_text()
    assert "Gain over baseline" in (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "run.json").read_text())["finished_at"]
    assert json.loads((run_dir / "run.json").read_text())["payload_weights"] == {"fox": 1.0, "kettle": 1.0}
    # every image of every trial was rendered by the merge of that trial, with fixed seeds
    seeds = {(i["payload"], i["index"]): i["seed"] for i in trials[0]["images"]}
    assert all({(i["payload"], i["index"]): i["seed"] for i in t["images"]} == seeds for t in trials)
    assert all((run_dir / image["path"]).is_file() for t in trials for image in t["images"])
    # the run's own config can resume it, and it holds no secret
    saved = (run_dir / "config.yaml").read_text()
    assert "resume: null" in saved


def test_a_run_with_too_few_scores_for_the_model_says_its_best_is_the_best_score(assets, fake_webui, tmp_path,
                                                                                 caplog):
    # two trials scored: no GP is fitted to judge them, the higher score is the best, and nothing claims a
    # posterior mean chose it
    caplog.set_level("INFO", logger="bayes_merger.run")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=2", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    trials = _trials(run_dir)
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["chosen_by"] == "best score" and best["trial"] == max(trials, key=lambda t: t["score"])["trial"]
    assert f"Best (by score): trial {best['trial']}," in caplog.text
    assert "posterior mean" not in caplog.text
    baseline = best["baseline"]["score"]
    assert f", {best['score'] - baseline:+.4f} over the baseline (trial 0, {baseline:.4f})" in caplog.text
    assert f"Its weights: alpha {best['alpha']}\n" in caplog.text + "\n"  # exactly as best.yaml, to copy from the log


def test_a_run_whose_best_is_its_baseline_says_so_rather_than_a_gain_of_zero_over_itself(
        assets, fake_webui, tmp_path, caplog):
    caplog.set_level("INFO", logger="bayes_merger.run")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=1", "optimiser.n_iters=0")) == 0
    assert "Run finished: 1 trial (0 failed) in " in caplog.text
    assert "Best (by score): trial 0, score " in caplog.text and ", the baseline itself\n" in caplog.text
    assert "over the baseline" not in caplog.text


def test_a_finished_run_resumed_with_another_precision_or_without_its_best_merge_saves_it_again(
        assets, fake_webui, tmp_path):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 0
    run_dir = _only_run(tmp_path / "runs")
    best = run_dir / "best.safetensors"

    def dtypes():
        return {entry.info.dtype for entry in read_header(best) if entry.info.dtype.is_floating_point}

    assert dtypes() == {torch.float16}
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", "best_precision=32")) == 0
    assert dtypes() == {torch.float32}
    best.unlink()  # moved away by the user, say
    fake_webui.stop()  # a finished run has nothing to render: its resume needs no WebUI
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", "best_precision=32")) == 0
    assert dtypes() == {torch.float32}


def test_a_resume_with_other_acquisition_settings_says_the_suggestions_change(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 0
    run_dir = _only_run(tmp_path / "runs")
    caplog.clear()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert "suggested with these settings" not in caplog.text
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", "optimiser.acquisition=ucb",
                      "optimiser.kappa=1.0")) == 0
    assert (f"Resuming {run_dir} with optimiser.acquisition 'ucb' (was 'ei'), optimiser.kappa 1.0 (was 2.576): the "
            "finished trials are kept, and the next ones are suggested with these settings") in caplog.text
    caplog.clear()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", "optimiser.acquisition=ucb",
                      "optimiser.kappa=1.0")) == 0
    assert "suggested with these settings" not in caplog.text, "said once"


def test_a_resume_with_another_version_of_a_numeric_library_says_the_suggestions_may_change(
        assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 0
    run_dir = _only_run(tmp_path / "runs")
    info = _run_json(run_dir)
    installed = {**{name: importlib.metadata.version(name) for name in ("numpy", "scipy", "scikit-learn")},
                 "torch": torch.__version__, "scorer device": f"cpu, {torch.get_num_threads()} threads"}
    assert info["libraries"] == installed
    (run_dir / "run.json").write_text(json.dumps({**info, "libraries": {**installed, "scipy": "0.0.1"}}))
    caplog.clear()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert (f"Resuming {run_dir} with scipy {installed['scipy']} (was 0.0.1): the finished trials are kept, but the "
            "next ones may differ") in caplog.text
    # a CPU scorer's embedding of one image differs in its last bits with the number of threads torch splits it among
    (run_dir / "run.json").write_text(json.dumps({**info, "libraries": {**installed, "scorer device": "cpu, 64 threads"}}))
    caplog.clear()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert (f"with scorer device cpu, {torch.get_num_threads()} threads (was cpu, 64 threads): the finished trials are "
            "kept, but the next ones may differ") in caplog.text
    assert _run_json(run_dir)["libraries"] == installed
    caplog.clear()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert "may differ" not in caplog.text, "said once"
    # a run folder from before the versions were recorded: nothing known, nothing said
    (run_dir / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "libraries"}))
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert "may differ" not in caplog.text
    assert _run_json(run_dir)["libraries"] == installed


def test_images_are_scored_and_kept_with_the_prompt_the_webui_rendered_from_its_styles_applied(
        assets, fake_webui, tmp_path):
    # a text-aware scorer (PickScore, HPS v2) compares each image with this prompt; a rescore reads it back
    fake_webui.add_style("film", "{prompt}, 35mm film grain")
    payloads = tmp_path / "styled.yaml"
    payloads.write_text("boat:\n  prompt: a red boat\n  styles: [film]\n  steps: 1\n  width: 64\n  height: 64\n"
                        "  sampler_name: Euler\n")
    args = [f"payloads.dir={payloads}" if arg.startswith("payloads.dir=") else arg
            for arg in _args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=2", "optimiser.n_iters=0")]
    assert _cli(args) == 0
    run_dir = _only_run(tmp_path / "runs")
    saved = [run_dir / image["path"] for trial in _trials(run_dir) for image in trial["images"]]
    assert saved and all(Image.open(path).text["prompt"] == "a red boat, 35mm film grain" for path in saved)


def test_killed_run_resumes_to_the_same_trials_as_an_uninterrupted_run(assets, fake_webui, tmp_path):
    assert _cli(_args(assets, fake_webui, tmp_path / "whole")) == 0
    whole = _trials(_only_run(tmp_path / "whole"))

    runs = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-c", "from bayes_merger.cli import main; main()",
                              *_args(assets, fake_webui, runs)], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    log = None
    while time.monotonic() < deadline and child.poll() is None:
        found = list(runs.glob("*/trials.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            log = found[0]
            break
        time.sleep(0.05)  # polling a file with a deadline, not synchronisation by sleeping
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert log is not None, "the child never logged two trials"
    run_dir = log.parent
    done = len(_trials(run_dir))
    assert 2 <= done < 5

    # resumed the way the run folder's config says: with that config
    resume = ["--config", str(run_dir / "config.yaml"), f"resume={run_dir}",
              "hydra/job_logging=none", "hydra/hydra_logging=none"]
    assert _cli(resume) == 0
    assert sorted(p.name for p in runs.iterdir()) == [run_dir.name], "resumed in place, no new folder"
    assert not list(run_dir.glob("config.resumed-*")), "resumed with the run's own config: no copy of it"
    resumed = _trials(run_dir)
    assert [t["trial"] for t in resumed] == [0, 1, 2, 3, 4]
    assert [t["params"] for t in resumed] == [t["params"] for t in whole]
    assert [t["score"] for t in resumed] == pytest.approx([t["score"] for t in whole], abs=1e-6)


def test_frozen_grouped_and_bounded_parameters_hold_in_every_trial(assets, fake_webui, tmp_path):
    overrides = ["+optimiser.frozen={BASE: 0.3}", "+optimiser.groups=[[IN00, IN01]]",
                 "+optimiser.custom_ranges={OUT11: [0.2, 0.4]}"]
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", *overrides)) == 0
    for trial in _trials(_only_run(tmp_path / "runs")):
        alpha = trial["weights"]["alpha"]
        assert alpha["BASE"] == 0.3
        assert alpha["IN00"] == alpha["IN01"]
        assert 0.2 <= alpha["OUT11"] <= 0.4


@pytest.mark.parametrize(
    "override, message, exit_code",
    [
        ("merge.metod=weighted_sum", "metod", 2),
        ("optimiser.n_iters=many", "n_iters", 2),
        ("+optimiser.custom_ranges={IN00: [0.9, 0.1]}", "lower < upper", 2),
        ("merge.method=add_differnce", "add_difference", 2),
        ("merge.method=add_difference", "model_c", 2),
    ],
)
def test_bad_config_is_refused_before_any_merge(assets, fake_webui, tmp_path, caplog, capsys, override, message,
                                                exit_code):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", override)) == exit_code
    said = caplog.text + capsys.readouterr().err
    assert message in said
    assert "Traceback" not in said, "bad input is one sentence, not a traceback"
    assert not list(Path(fake_webui.checkpoint_dir).iterdir()), "no merge was written"
    assert not fake_webui.requests_to("/sdapi/v1/options", "POST")


def test_a_bad_start_recipe_is_one_sentence_before_the_webui_is_touched(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.start='0.5,0.5'")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["optimiser.start has 2 numbers; this architecture and method take 26."]
    assert not fake_webui.requests


def test_missing_model_is_one_sentence_and_a_nonzero_exit(assets, fake_webui, tmp_path, caplog):
    args = _args(assets, fake_webui, tmp_path / "runs") + [f"model_b={tmp_path / 'nope.safetensors'}"]
    assert _cli(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"model_b: {tmp_path / 'nope.safetensors'} does not exist."]


def _own_models(assets, folder: Path) -> dict:
    """The assets with copies of the two models in ``folder``, for a test that moves or replaces them."""
    folder.mkdir()
    copies = {key: folder / assets[key].name for key in ("model_a", "model_b")}
    for key, copy in copies.items():
        copy.write_bytes(assets[key].read_bytes())
    return {**assets, **copies}


def _run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_resume_with_other_models_is_refused(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    other = make_checkpoint(tmp_path / "c.safetensors", "sd1", seed=3)
    code = _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}") + [f"model_b={other}"])
    assert code == 2
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said.startswith(f"Cannot resume {run_dir}: model_b is not the file its trials were merged from ({other}: ")
    assert said.endswith(f"the run's, {assets['model_b']}: {assets['model_b'].stat().st_size} bytes, sha256 "
                         f"{_run_json(run_dir)['model_files']['B']['sha256'][:12]}). Give that file as model_b, or "
                         "start a new run.")
    assert len(_trials(run_dir)) == 3


def test_resume_refuses_a_model_replaced_by_another_at_the_same_path(assets, fake_webui, tmp_path, caplog):
    # a new version of a fine-tune saved under the old name: same path, same size, same header
    models = _own_models(assets, tmp_path / "models")
    assert _cli(_args(models, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    size = models["model_b"].stat().st_size
    make_checkpoint(models["model_b"], "sd1", seed=3)
    assert models["model_b"].stat().st_size == size
    renders = len(fake_webui.requests_to("/sdapi/v1/txt2img"))
    assert _cli(_args(models, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 2
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said.startswith(f"Cannot resume {run_dir}: model_b is not the file its trials were merged from "
                           f"({models['model_b']}: {size} bytes, sha256 ")
    assert len(fake_webui.requests_to("/sdapi/v1/txt2img")) == renders and len(_trials(run_dir)) == 3


def test_resume_goes_on_with_the_run_s_models_moved_elsewhere_and_reads_untouched_ones_once(assets, fake_webui,
                                                                                             tmp_path, caplog,
                                                                                             monkeypatch):
    import bayes_merger.merge.checkpoint as checkpoint
    import bayes_merger.merge.fingerprint as fingerprint

    models = _own_models(assets, tmp_path / "models")
    assert _cli(_args(models, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    recorded = _run_json(run_dir)["model_files"]
    moved = tmp_path / "elsewhere" / "b-renamed.safetensors"
    moved.parent.mkdir()
    models["model_b"].rename(moved)
    read = []

    def counted(path):
        read.append(Path(path))
        return file_sha256(path)

    for module in (fingerprint, checkpoint):  # the run's record, and the merges' recipes
        monkeypatch.setattr(module, "file_sha256", counted)
    caplog.set_level("INFO")
    assert _cli(_args({**models, "model_b": moved}, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert len(_trials(run_dir)) == 5
    # model A, untouched at its path, is not read again, nor is either for the merges' recipes
    assert read == [moved]
    info = _run_json(run_dir)
    assert info["model_b"] == str(moved) and info["model_files"]["B"]["path"] == str(moved)
    assert info["model_files"]["B"]["sha256"] == recorded["B"]["sha256"] and info["model_files"]["A"] == recorded["A"]
    recipe = _metadata(run_dir / "best.safetensors")
    assert [recipe["model_a_sha256"], recipe["model_b_sha256"]] == [recorded["A"]["sha256"], recorded["B"]["sha256"]]
    assert f"model_b is {moved} now, where the run had {models['model_b']}: the same file" in caplog.text


def test_resume_of_a_run_that_recorded_no_model_files_checks_the_paths_and_records_them(assets, fake_webui, tmp_path,
                                                                                        caplog):
    # a run folder of before model files were recorded: its models are known by their paths only
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    info = _run_json(run_dir)
    recorded = info.pop("model_files")
    (run_dir / "run.json").write_text(json.dumps(info))
    other = make_checkpoint(tmp_path / "c.safetensors", "sd1", seed=3)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}") + [f"model_b={other}"]) == 2
    assert "'model_b' differs from the run's" in caplog.text
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert len(_trials(run_dir)) == 5 and _run_json(run_dir)["model_files"] == recorded


def test_resume_with_other_bounds_names_what_changed_not_the_whole_space(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    code = _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", "+optimiser.custom_ranges={IN03: [0.2, 1]}",
                      "+optimiser.frozen={OUT11: 0.5}"))
    assert code == 2
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said.startswith(f"Cannot resume {run_dir}: 'space' differs from the run's (IN03 [0, 1] there, [0.2, 1] "
                           "now; OUT11 [0, 1] there, frozen at 0.5 now). Resume with the run's own config")


def test_webui_lost_mid_run_stops_resumably_and_resume_finishes(assets, fake_webui, tmp_path):
    fake_webui.drop_next(1000, path="/sdapi/v1/txt2img")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "webui.retries=1")) == 6
    run_dir = _only_run(tmp_path / "runs")
    assert not (run_dir / "trials.jsonl").exists() or _trials(run_dir) == []
    # why it stopped, for the overnight runner (it restarts a WebUI it manages, even one whose API answers)
    assert json.loads((run_dir / "run.json").read_text())["stopped_by"] == "webui_lost"
    fake_webui.clear_faults()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert [t["status"] for t in _trials(run_dir)] == ["ok"] * 5
    assert "stopped_by" not in json.loads((run_dir / "run.json").read_text())


def test_a_trial_whose_render_brings_the_webui_down_every_session_is_failed_at_its_third_loss(assets, fake_webui,
                                                                                            tmp_path):
    # every render drops the connection, as if trial 0's merge crashed the WebUI: each session loses it twice
    fake_webui.drop_next(1000, path="/sdapi/v1/txt2img")
    runs = tmp_path / "runs"
    assert _cli(_args(assets, fake_webui, runs, "webui.retries=1")) == 6
    run_dir = _only_run(runs)
    assert not (run_dir / "trials.jsonl").exists() or _trials(run_dir) == []
    assert _cli(_args(assets, fake_webui, runs, "webui.retries=1", f"resume={run_dir}")) == 6
    first = _trials(run_dir)[0]
    assert (first["trial"], first["status"], first["broken"]) == (0, "failed", True)
    assert "lost 3 times" in first["error"]
    losses = [json.loads(line) for line in (run_dir / "trials.webui-lost.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in losses] == [0, 0, 0, 1, 1]
    fake_webui.clear_faults()  # the resume after it goes past trial 0: it is not tried a fourth time
    assert _cli(_args(assets, fake_webui, runs, f"resume={run_dir}")) == 0
    assert [t["status"] for t in _trials(run_dir)] == ["failed"] + ["ok"] * 4


def test_a_503_storm_outlasting_the_retries_redoes_the_trial_instead_of_failing_it(assets, fake_webui, tmp_path, caplog):
    # two tries per request: the storm fails the first try of the trial and one of its redo
    fake_webui.fail_next(3, status=503, path="/sdapi/v1/txt2img", message="Server busy")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "webui.retries=1", "webui.backoff_factor=0")) == 0
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["status"] for t in trials] == ["ok"] * 5
    assert "HTTP 503: Server busy. Still so after 2 tries" in caplog.text


def test_manual_scoring_without_input_stops_resumably_and_loses_no_trial(assets, fake_webui, tmp_path, caplog,
                                                                         monkeypatch):
    # e.g. started under nohup (stdin at its end): no trial may be logged as failed for it
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    runs = tmp_path / "runs"
    assert _cli(_args(assets, fake_webui, runs, "scorer.name=manual", "scorer.manual_viewer=false")) == 6
    run_dir = _only_run(runs)
    assert not (run_dir / "trials.jsonl").exists() or _trials(run_dir) == []
    assert "Manual scoring stopped: no more input" in caplog.text and f"resume={run_dir}" in caplog.text
    monkeypatch.setattr("sys.stdin", io.StringIO("7\n" * 100))
    assert _cli(_args(assets, fake_webui, runs, "scorer.name=manual", "scorer.manual_viewer=false",
                      f"resume={run_dir}")) == 0
    assert [t["status"] for t in _trials(run_dir)] == ["ok"] * 5


def test_finalists_rated_by_hand_keep_their_ratings_in_the_run_folder(assets, fake_webui, tmp_path, monkeypatch):
    elsewhere = tmp_path / "started-from"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("sys.stdin", io.StringIO("7\n" * 20))
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0", "scorer.finalists=manual",
                      "scorer.finalists_top_k=1", "scorer.manual_viewer=false")) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert (run_dir / "rescore-manual.jsonl").is_file()
    assert (run_dir / "manual-ratings.json").is_file() and not list(elsewhere.iterdir())


def test_images_name_both_weights_and_a_failed_trials_images_do_not_stay(assets, fake_webui, tmp_path, monkeypatch):
    from bayes_merger.errors import WebUIError
    from bayes_merger.webui.client import WebUIClient

    original, calls = WebUIClient.txt2img, []

    def second_payload_of_trial_1_fails(self, request):
        calls.append(request)
        if len(calls) == 4:  # two payloads a trial: trial 1's second
            raise WebUIError("POST /sdapi/v1/txt2img failed with HTTP 500: RuntimeError: out of memory.", status=500)
        return original(self, request)

    monkeypatch.setattr(WebUIClient, "txt2img", second_payload_of_trial_1_fails)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "merge.method=sum_twice",
                      f"model_c={assets['model_a']}", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert [t["status"] for t in _trials(run_dir)] == ["ok", "failed", "ok"]
    images = sorted(p.name for p in (run_dir / "images").iterdir())
    # the first payload's pictures of trial 1 were saved before its second failed: no record names them
    assert images and not [name for name in images if name.startswith("t0001-")]
    trial = _trials(run_dir)[0]
    text = Image.open(run_dir / trial["images"][0]["path"]).text
    assert (text["weights"], text["beta"]) == (trial["alpha_string"], trial["beta_string"])


@pytest.mark.parametrize("where, said", [
    ("bayes_merger.merge.merger.Merger.merge", "The merge ran out of GPU memory (CUDA out of memory. Tried to allocate "
                                               "2.00 GiB); the WebUI on that GPU holds the rest: set merge.device=cpu"),
    ("bayes_merger.scoring.aesthetic.AestheticScorer.score", "The scorer ran out of GPU memory (CUDA out of memory. "
                                                             "Tried to allocate 2.00 GiB); the WebUI on that GPU holds the "
                                                             "rest: lower scorer.batch_size"),
])
def test_out_of_gpu_memory_stops_resumably_and_fails_no_trial(assets, fake_webui, tmp_path, caplog, monkeypatch,
                                                               where, said):
    # a RuntimeError: it ended the run with a traceback, exit 1; every trial after it would run out too
    import importlib

    module, _, name = where.rpartition(".")
    owner_path, _, attribute = module.rpartition(".")
    owner = getattr(importlib.import_module(owner_path), attribute)
    real, calls = getattr(owner, name), []

    def runs_out_at_the_second(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nGPU 0 has 1.2 GiB free")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, runs_out_at_the_second)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 6
    run_dir = _only_run(tmp_path / "runs")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and said in errors[0] and "resume with: " in errors[0], errors
    assert [(t["trial"], t["status"]) for t in _trials(run_dir)] == [(0, "ok")]  # trial 1 is redone on resume
    monkeypatch.setattr(owner, name, real)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert [t["status"] for t in _trials(run_dir)] == ["ok"] * 5


@pytest.mark.parametrize("where, said", [
    ("bayes_merger.merge.merger.Merger._load", "Loading the models to merge ran out of GPU memory (CUDA out of memory. "
                                               "Tried to allocate 2.00 GiB); the WebUI on that GPU holds the rest: set "
                                               "merge.device=cpu"),
    ("bayes_merger.run.build_scorer", "Loading the scorer ran out of GPU memory (CUDA out of memory. Tried to allocate "
                                      "2.00 GiB); the WebUI on that GPU holds the rest: set scorer.device=cpu"),
])
def test_out_of_gpu_memory_while_loading_stops_resumably_before_any_trial(assets, fake_webui, tmp_path, caplog,
                                                                          monkeypatch, where, said):
    # the likeliest place to run out (an SDXL add_difference holds 2.8 models beside the WebUI): a traceback, exit 1
    import importlib

    module, _, name = where.rpartition(".")
    try:
        owner = importlib.import_module(module)
    except ModuleNotFoundError:
        owner_path, _, attribute = module.rpartition(".")
        owner = getattr(importlib.import_module(owner_path), attribute)

    def runs_out(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nGPU 0 has 1.2 GiB free")

    monkeypatch.setattr(owner, name, runs_out)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 6
    run_dir = _only_run(tmp_path / "runs")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and said in errors[0] and "resume with: " in errors[0], errors
    assert not (run_dir / "trials.jsonl").exists()
    monkeypatch.undo()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert [t["status"] for t in _trials(run_dir)] == ["ok"] * 5


def test_ctrl_c_finishes_the_trial_in_flight_then_stops_resumably(assets, fake_webui, tmp_path, monkeypatch):
    from bayes_merger.run import TrialLoop

    original = TrialLoop.render

    def trial_then_ctrl_c(self, index, *args):
        result = original(self, index, *args)
        if index == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(TrialLoop, "render", trial_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 130
    assert signal.getsignal(signal.SIGINT) is handler, "the CLI gives the signal handlers back"
    run_dir = _only_run(tmp_path / "runs")
    assert [t["status"] for t in _trials(run_dir)] == ["ok", "ok"]
    assert "finished_at" not in json.loads((run_dir / "run.json").read_text())
    assert "stopped · resume it to finish" in (run_dir / "report.html").read_text()  # not "in progress" for ever
    # the best merge of the trials so far, as a finished run leaves it (a later session's stop would else
    # leave an earlier session's best beside a best.yaml naming a better trial)
    best = yaml.safe_load((run_dir / "best.yaml").read_text())["trial"]
    assert _metadata(run_dir / "best.safetensors")["bayes_merger_trial"] == str(best)
    monkeypatch.undo()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert len(_trials(run_dir)) == 5
    assert len(json.loads((run_dir / "run.json").read_text())["resumed_at"]) == 1  # the report's duration
    assert "finished</span>" in (run_dir / "report.html").read_text()


def test_config_yamls_resume_command_after_a_resume_with_more_trials_keeps_the_budget_reached(assets, fake_webui,
                                                                                            tmp_path, caplog):
    caplog.set_level("INFO", logger="bayes_merger.run")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=2", f"resume={run_dir}")) == 0
    caplog.clear()
    # config.yaml's command asks for the first session's 3 trials: the 5 done are kept, and the run's budget
    # is the 5 it reached, not shrunk back below them
    assert _cli(["--config", str(run_dir / "config.yaml"), f"resume={run_dir}", "hydra/job_logging=none",
                 "hydra/hydra_logging=none"]) == 0
    assert len(_trials(run_dir)) == 5
    assert json.loads((run_dir / "run.json").read_text())["n_iters"] == 2
    assert "has 5 trials, more than the 3 asked for" in caplog.text
    html = (run_dir / "report.html").read_text()
    assert ">5 / 5<" in html and "finished</span>" in html


def test_a_stop_is_a_stop_when_a_trial_beyond_a_lowered_budget_fills_the_count(assets, fake_webui, tmp_path,
                                                                               monkeypatch):
    from bayes_merger.run import TrialLoop

    # trials finished out of order (several WebUIs) and stopped: 0, 1, 2 and 5 of 6 in the log ...
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=3")) == 0
    run_dir = _only_run(tmp_path / "runs")
    log = run_dir / "trials.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if json.loads(line)["trial"] not in (3, 4)))
    info = json.loads((run_dir / "run.json").read_text())
    info.pop("finished_at")
    (run_dir / "run.json").write_text(json.dumps(info))
    original = TrialLoop.render

    def trial_then_ctrl_c(self, index, *args):
        result = original(self, index, *args)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(TrialLoop, "render", trial_then_ctrl_c)
    # ... resumed with a budget of 5, and stopped after trial 3: five lines, but trial 4 is missing
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=2", f"resume={run_dir}")) == 130
    assert sorted(t["trial"] for t in _trials(run_dir)) == [0, 1, 2, 3, 5]
    assert "finished_at" not in json.loads((run_dir / "run.json").read_text())


def _truncated(tmp_path: Path, assets) -> Path:
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(Path(assets["model_b"]).read_bytes()[:5000])
    return path


def _not_a_checkpoint(tmp_path: Path, assets) -> Path:
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights")
    return path


def _folder(tmp_path: Path, assets) -> Path:
    path = tmp_path / "folder.safetensors"
    path.mkdir()
    return path


def _sdxl(tmp_path: Path, assets) -> Path:
    return make_checkpoint(tmp_path / "xl.safetensors", "sdxl", seed=4)


@pytest.mark.parametrize("make_bad, code, words", [
    (_folder, 2, "is a folder"),
    (_truncated, 3, "truncated.safetensors"),
    (_not_a_checkpoint, 3, "notes.safetensors"),
    (_sdxl, 3, "different architectures"),
])
def test_a_bad_model_b_is_one_sentence_before_the_webui_is_touched(assets, fake_webui, tmp_path, caplog,
                                                                   make_bad, code, words):
    bad = make_bad(tmp_path, assets)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs") + [f"model_b={bad}"]) == code
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0]
    assert not fake_webui.requests, "nothing was asked of the WebUI"


def test_cfg_job_prints_the_composed_config_and_runs_nothing(assets, fake_webui, tmp_path, capsys):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "--cfg", "job")) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model_a"] == str(assets["model_a"]) and printed["optimiser"]["init_points"] == 3
    assert not (tmp_path / "runs").exists()


def test_a_multirun_sweep_gives_each_method_its_own_run_folder(assets, fake_webui, tmp_path):
    args = _args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=1", "optimiser.n_iters=0",
                 "merge.method=weighted_sum,tensor_sum", "-m")
    assert _cli(args) == 0
    folders = sorted(p.name for p in (tmp_path / "runs" / "multirun").glob("*/*") if p.is_dir())
    assert folders == ["0_weighted_sum_aesthetic_head", "1_tensor_sum_aesthetic_head"]
    for folder in (tmp_path / "runs" / "multirun").glob("*/*_aesthetic_head"):
        assert len(_trials(folder)) == 1


def test_a_sweep_job_with_a_bad_value_fails_alone_and_the_sweep_says_so_at_its_end(assets, fake_webui, tmp_path,
                                                                                     caplog):
    # the value is said only when Hydra composes its job: it ended the sweep there, the jobs after it never run
    args = _args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=1", "optimiser.n_iters=0",
                 "optimiser.acquisition=ei,nope,ucb", "-m")
    assert _cli(args) == 2
    folders = sorted((tmp_path / "runs" / "multirun").glob("*/*_aesthetic_head"))
    # the refused job's folder, made for its log, goes with it
    assert [(f.name, len(_trials(f))) for f in folders] == [("0_weighted_sum_aesthetic_head", 1),
                                                           ("2_weighted_sum_aesthetic_head", 1)]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors[0].startswith("optimiser.acquisition must be one of") and errors[-1] == (
        "1 of the sweep's jobs failed; see their errors above.")


def test_config_yaml_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from bayes_merger import files

    class DiskFillsUp:  # the file handle of a disk that fills up after a few bytes
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[:20])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "open", lambda *args, **kwargs: DiskFillsUp(open(*args, **kwargs)), raising=False)
    with pytest.raises(StorageError, match=r"config\.yaml: No space left on device"):
        save_config(OmegaConf.create({"resume": None}), tmp_path, resuming=False)
    assert list(tmp_path.iterdir()) == [], "no cut-off config.yaml for the resume command to choke on"


def test_a_resume_keeps_each_config_it_ran_with_once(tmp_path, monkeypatch):
    config = OmegaConf.create({"webui": {"auth": "user:secret"}, "resume": None, "optimiser": {"n_iters": 2}})
    assert save_config(config, tmp_path, resuming=False) == tmp_path / "config.yaml"
    resumed = OmegaConf.merge(config, {"resume": str(tmp_path)})
    assert save_config(resumed, tmp_path, resuming=True) == tmp_path / "config.yaml", "the same config again"
    longer = OmegaConf.merge(resumed, {"optimiser": {"n_iters": 5}})
    kept = save_config(longer, tmp_path, resuming=True)
    assert kept.name.startswith("config.resumed-") and "n_iters: 5" in kept.read_text()
    assert save_config(longer, tmp_path, resuming=True) == kept
    assert {p.name for p in tmp_path.iterdir()} == {"config.yaml", kept.name}
    assert "secret" not in kept.read_text() + (tmp_path / "config.yaml").read_text()
    # resume=runs/<run> as the README writes it, from the folder above: the same config, no copy
    monkeypatch.chdir(tmp_path.parent)
    assert save_config(resumed, Path(tmp_path.name), resuming=True) == Path(tmp_path.name) / "config.yaml"
    assert {p.name for p in tmp_path.iterdir()} == {"config.yaml", kept.name}


def test_the_resume_command_a_start_refused_before_its_run_began_saved_starts_it(assets, fake_webui, tmp_path, caplog):
    fake_webui.stop()  # the WebUI is down when the run starts
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "webui.ready_timeout=0.2")) == 4
    run_dir = _only_run(tmp_path / "runs")
    saved = (run_dir / "config.yaml").read_text()
    # run.json names its run before anything reaches the WebUI's folder (a probe then is known as its own)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert f"resume={run_dir}" in saved and not list(fake_webui.checkpoint_dir.iterdir())
    # as a start killed (kill -9) while it probed the folder would leave it: the resume knows it as its own
    (fake_webui.checkpoint_dir / f"bm-{run_id}-probe.safetensors").write_bytes(b"")
    fake_webui.start()
    assert _cli(["--config", str(run_dir / "config.yaml"), f"resume={run_dir}",  # as the file says
                 "hydra/job_logging=none", "hydra/hydra_logging=none"]) == 0
    assert len(_trials(run_dir)) == 5
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == run_id
    assert not list(fake_webui.checkpoint_dir.iterdir()), "the killed start's probe stayed"


def test_a_ctrl_c_while_the_program_loads_its_modules_is_an_interruption_not_a_traceback(
        assets, fake_webui, tmp_path, caplog, monkeypatch):
    class CtrlCWhileImporting:  # torch and matplotlib take seconds to import: the user gives up meanwhile
        def find_spec(self, name, path=None, target=None):
            if name == "bayes_merger.run":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "bayes_merger.run", raising=False)
    monkeypatch.setattr(sys, "meta_path", [CtrlCWhileImporting(), *sys.meta_path])
    try:
        code = _cli(_args(assets, fake_webui, tmp_path / "runs"))
    except KeyboardInterrupt:  # escaped as a traceback (and would end pytest's session)
        pytest.fail("the Ctrl-C escaped the CLI")
    assert code == 130
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "Interrupted before the run began: start it again."]
    assert not (tmp_path / "runs").exists()  # nothing to resume: no folder that looks like a run


def test_a_first_ctrl_c_while_waiting_for_the_webui_at_start_stops_at_once(assets, fake_webui, tmp_path, caplog,
                                                                          monkeypatch):
    import bayes_merger.webui.http

    fake_webui.stop()  # the user started the run before the WebUI, then thinks better of it
    waits: list[float] = []

    def ctrl_c_at_the_first_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(seconds)

    monkeypatch.setattr(bayes_merger.webui.http.time, "sleep", ctrl_c_at_the_first_wait)
    # not one trial is in flight: waiting out the 2 s would end as a WebUI that never came (exit 4)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "webui.ready_timeout=2", "webui.poll_interval=0.1")) == 130
    assert len(waits) == 1
    assert "Stopping after the trial in flight" not in caplog.text
    run_dir = _only_run(tmp_path / "runs")  # its config was saved once the inputs passed
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"Interrupted before the run began; start it with: {resume_command(run_dir)}"]


def test_a_hard_stop_before_the_run_began_does_not_advise_a_resume(assets, fake_webui, tmp_path, caplog, monkeypatch):
    import bayes_merger.run

    def interrupted(cfg, run_dir):  # noqa: ANN001, ANN202 - the second Ctrl-C, while the model headers are read
        raise KeyboardInterrupt

    monkeypatch.setattr(bayes_merger.run, "check_inputs", interrupted)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 130
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "Interrupted before the run began: start it again."]
    assert not (tmp_path / "runs").exists()


def test_a_start_refused_before_its_run_began_leaves_no_config_for_the_next_start_in_that_folder(tmp_path):
    def config(n_iters):
        return OmegaConf.create({"resume": None, "optimiser": {"n_iters": n_iters}})

    save_config(config(3), tmp_path, resuming=False)  # then refused: the WebUI was down
    assert save_config(config(10), tmp_path, resuming=False) == tmp_path / "config.yaml"
    assert "n_iters: 10" in (tmp_path / "config.yaml").read_text(), "the resume command reads the run's own settings"
    (tmp_path / "run.json").write_text("{}")  # now a run began: its config is never replaced (the start is refused)
    save_config(config(20), tmp_path, resuming=False)
    assert "n_iters: 10" in (tmp_path / "config.yaml").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("optimiser:\n  n_iters: 7\n")  # nor a config.yaml of the user's own
    save_config(config(20), mine, resuming=False)
    assert (mine / "config.yaml").read_text() == "optimiser:\n  n_iters: 7\n"


def test_the_demo_resumed_with_its_own_config_leaves_no_copy_of_it(tmp_path, monkeypatch):
    # the demo's fake WebUI listens on a new port at every start: that is not a config of the run
    monkeypatch.chdir(tmp_path)
    for name in ("conf", "payloads"):
        (tmp_path / name).symlink_to(REPO / name)
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    run_dir = tmp_path / "demo-run" / "runs" / "first"
    assert _cli(["--config", "conf/demo.yaml", "optimiser.init_points=1", "optimiser.n_iters=0",
                 f"hydra.run.dir={run_dir}", *quiet]) == 0
    for _ in range(2):
        assert _cli(["--config", str(run_dir / "config.yaml"), f"resume={run_dir}", *quiet]) == 0
    assert not list(run_dir.glob("config.resumed-*"))


def test_a_run_stopped_while_its_finalists_are_scored_is_not_finished_and_its_resume_scores_them(
        assets, fake_webui, tmp_path, monkeypatch):
    import bayes_merger.run

    real, calls = bayes_merger.run.finalists, []

    def stopped(run_dir, scorer):  # noqa: ANN001, ANN202 - Ctrl-C (or kill -9) while the finalists load
        calls.append(run_dir)
        raise KeyboardInterrupt

    runs = tmp_path / "runs"
    monkeypatch.setattr(bayes_merger.run, "finalists", stopped)
    assert _cli(_args(assets, fake_webui, runs, "scorer.finalists=aesthetic_head")) == 130
    run_dir = _only_run(runs)
    assert "finished_at" not in json.loads((run_dir / "run.json").read_text()), "the overnight runner would skip it"
    monkeypatch.setattr(bayes_merger.run, "finalists", real)
    assert _cli(_args(assets, fake_webui, runs, "scorer.finalists=aesthetic_head", f"resume={run_dir}")) == 0
    assert (run_dir / "rescore-aesthetic_head.jsonl").exists()
    assert json.loads((run_dir / "run.json").read_text())["finished_at"]


def test_the_resume_command_a_run_prints_reads_its_files_from_any_folder(assets, fake_webui, tmp_path, monkeypatch,
                                                                         caplog):
    # relative paths were saved as written, so the resume command, "to paste from any folder", read them
    # against the folder it was pasted in: "model_a: /elsewhere/a.safetensors does not exist."
    monkeypatch.chdir(assets["model_a"].parent)
    relative = {"model_a": "a.safetensors", "model_b": "b.safetensors", "scorer.head": "head.safetensors",
                "scorer.clip": str(assets["scorer.clip"])}
    args = [arg for arg in _args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")
            if arg.split("=", 1)[0] not in relative] + [f"{key}={value}" for key, value in relative.items()]
    assert _cli(args) == 0
    run_dir = _only_run(tmp_path / "runs")
    saved = (run_dir / "config.yaml").read_text()
    assert f"model_a: {assets['model_a']}" in saved and f"head: {assets['scorer.head']}" in saved

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    caplog.set_level(logging.INFO, logger="bayes_merger")
    assert _cli(["--config", str(run_dir / "config.yaml"), f"resume={run_dir}", "--check",
                 "hydra/job_logging=none", "hydra/hydra_logging=none"]) == 0
    assert "The config and its inputs are fine" in caplog.text
