"""What a run refuses before any work: a resume that changes what a score means (another version's record
only warns), a device this machine does not have; a resume with another number of trials at once
says what that changes."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys

import pytest
import torch

from bayes_merger.testing.models import make_checkpoint
from tests.loop.test_cli_run import REPO, _args, _cli, _only_run, _trials


@pytest.mark.parametrize("change, named", [
    ("+payloads.defaults.steps=2", "the payload requests"),
    ("merge.dtype=fp32", "merge.dtype"),
    ("scorer.combine=geometric", "scorer.combine"),
])
def test_a_resume_that_changes_what_a_score_means_is_refused(assets, fake_webui, tmp_path, caplog, change, named):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", change)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"what a score means changed ({named})" in errors[0]
    assert len(_trials(run_dir)) == 3
    assert not list(run_dir.glob("config.resumed-*.yaml")), "a refused resume leaves no config beside the run's"


def test_a_run_of_another_version_whose_record_differs_resumes_with_a_warning(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    info = json.loads((run_dir / "run.json").read_text())
    info["version"] = "0.0.1"
    info["objective"]["payloads_sha256"] = "recorded otherwise"
    (run_dir / "run.json").write_text(json.dumps(info))
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert "run by bayes-merger 0.0.1, whose record of what a score means differs (the payload requests)" in caplog.text
    assert len(_trials(run_dir)) == 5


def test_a_cuda_device_on_a_machine_without_one_is_refused_before_the_webui_is_asked(assets, fake_webui, tmp_path,
                                                                                      caplog, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "merge.device=cuda:0")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["Merge device 'cuda:0' asked for, but torch sees no CUDA device; use auto or cpu."]
    assert fake_webui.requests_to("/sdapi/v1/progress") == []


def test_a_resume_with_another_number_of_trials_at_once_says_what_that_changes(assets, fake_webui, tmp_path, caplog):
    # e.g. resumed with a dead WebUI's URL removed: allowed, but its suggestions are another run's
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0", "webui.pipeline=true")) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert json.loads((run_dir / "run.json").read_text())["trials_at_once"] == 2
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert "ran up to 2 trials at once and resumes with 1" in caplog.text
    assert json.loads((run_dir / "run.json").read_text())["trials_at_once"] == 1
    assert len(_trials(run_dir)) == 5


def test_a_finalists_scorer_that_does_not_exist_is_refused_before_the_night(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "scorer.finalists=pickscor")) == 2
    assert "scorer.finalists: scorer.name 'pickscor' is not a scorer" in caplog.text
    assert "Did you mean 'pickscore'" in caplog.text
    assert fake_webui.requests_to("/sdapi/v1/progress") == []


def test_finalists_without_saved_images_are_refused_before_the_night(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "scorer.finalists=aesthetic_head",
                      "save_images=false")) == 2
    assert ("scorer.finalists scores the top trials' saved images again, but save_images is false: set "
            "save_images: true, or leave scorer.finalists unset.") in caplog.text
    assert fake_webui.requests_to("/sdapi/v1/progress") == []


def _refusal(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    return errors[0]


@pytest.mark.parametrize("overrides, words", [
    # Hydra's own hint for a misspelt key is to add it with +: then it was ignored, and the saved config
    # could not resume the run
    (["+optimizer.n_iters=5"], "optimizer is not a setting of bayes-merger (did you mean optimiser?)"),
    (["+optimiser.n_iter=5"], "optimiser.n_iter is not a setting of bayes-merger (did you mean optimiser.n_iters?)"),
    # sd-webui-bayesian-merger's names, as its users bring them
    (["+url=http://127.0.0.1:7860"], "url is sd-webui-bayesian-merger's name for webui.url in bayes-merger"),
    (["+batch_size=4"], "batch_size is sd-webui-bayesian-merger's name for payloads.defaults.batch_size (on the "
                        "command line +payloads.defaults.batch_size=N)"),
    (["+rebasin=true"], "rebasin, a setting of sd-webui-bayesian-merger, has no counterpart in bayes-merger: re-basin "
                        "is not offered."),
    (["webui.retries=-1"], "webui.retries must be a number, 0 or more, got -1."),
    (["webui.ready_timeout=-1"], "webui.ready_timeout must be a number, 0 or more, got -1.0."),
    (["webui.backoff_factor=nan"], "webui.backoff_factor must be a number, 0 or more, got nan."),
    (["webui.read_timeout=0"], "webui.read_timeout must be a number of seconds above 0, got 0.0."),
    (["webui.poll_interval=0"], "webui.poll_interval must be a number of seconds above 0, got 0.0."),  # a busy loop
    (["webui.url=http://127.0.0.1:99999"], "webui.url 'http://127.0.0.1:99999' has no valid port"),
    (["webui.url=localhost:7860"], "webui.url 'localhost:7860' is not an http:// or https:// address."),
    # said without the password the URL holds: the overnight runner keeps this sentence in its log
    (["webui.url=http://alice:s3cretPW@127.0.0.1:99999"], "webui.url 'http://***@127.0.0.1:99999' has no valid port"),
    (["webui.urls=[http://127.0.0.1:7860,127.0.0.1:7861]"],
     "webui.urls '127.0.0.1:7861' is not an http:// or https:// address."),
    (["run.seed=-1"], "run.seed must be a whole number from 0 to 4294967295, got -1"),  # A1111's random seed
    (["best_precision=8"], "best_precision is '8', which is not a precision; use fp16, bf16 or fp32."),
    # an unset variable ($DIR): each meant the folder the run was started from
    (["webui.checkpoint_dir="], "webui.checkpoint_dir is empty: give a path."),
    (["run.dir="], "run.dir is empty: give a path."),
    (["payloads.wildcards_dir="], "payloads.wildcards_dir is empty: give a path, or null to leave it unset."),
    # set(range(budget)) filled the memory until the kernel killed it (or the WebUI beside it), without a word
    (["optimiser.n_iters=100000000000"], "optimiser.init_points + optimiser.n_iters must be at most 100,000, got "
                                         "100,000,000,00"),
    (["optimiser.init_points=1000000000"], "optimiser.init_points + optimiser.n_iters must be at most 100,000"),
    # a mistyped checkpoint folder: said before the WebUI was asked (under the night, before it was started)
    (["webui.checkpoint_dir=/nonexistent/models/Stable-diffusion"],
     "webui.checkpoint_dir /nonexistent/models/Stable-diffusion is not an existing folder: point it at the WebUI's"),
    (["webui.urls=[http://127.0.0.1:7860,http://127.0.0.1:7861]", "webui.checkpoint_dirs=[/nonexistent/a,/nonexistent/b]"],
     "webui.checkpoint_dir /nonexistent/a is not an existing folder"),
    # the scorer loads after the WebUI is found: its typos are said before the WebUI is asked
    (["scorer.name=laoin"], "scorer.name 'laoin' is not a scorer; use one of:"),
    (["scorer.combine=mean"], "scorer.combine is 'mean', which is not a way to combine scores"),
    (["scorer.batch_size=0"], "scorer.batch_size is 0; it must be at least 1."),
    (["scorer.finalists=aesthetic_head", "scorer.finalists_top_k=0"],
     "scorer.finalists_top_k is 0; it must be at least 1."),  # said at the start, not after the night
    # read as the WebUI's client opened: after the models' sha256, with a run folder written for nothing
    (["webui.auth_env=BAYES_MERGER_TEST_UNSET"],
     "webui.auth_env names BAYES_MERGER_TEST_UNSET, but that environment variable is not set."),
    (["webui.auth=nocolon"], "The credentials in webui.auth must have the form user:password"),
    (["webui.backend=comfyui", "webui.comfyui_workflow=/nonexistent/workflow.json"],
     "webui.comfyui_workflow /nonexistent/workflow.json cannot be read: No such file or directory."),
])
def test_settings_that_would_be_ignored_or_make_no_sense_are_one_sentence_before_the_webui_is_asked(
        assets, fake_webui, tmp_path, caplog, overrides, words):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", *overrides)) == 2
    assert words in _refusal(caplog)
    assert fake_webui.requests_to("/sdapi/v1/progress") == []
    assert not (tmp_path / "runs").exists()  # refused before its models were read and its run.json written


def test_a_scorer_file_or_folder_that_holds_no_model_is_said_before_the_run_folder_is_written(
        assets, fake_webui, tmp_path, caplog):
    # they passed --check and failed after the models' sha256 and the WebUI, leaving a run folder with a run.json
    # (the overnight runner resumes the newest unfinished one); torch's refusal was a dozen lines
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a head")
    for override, words in ((f"scorer.head={junk}", "is not a readable safetensors file (Error while deserializing "
                                                     "header: header too large)."),
                            (f"scorer.head={REPO / 'README.md'}", "weights_only=True (Weights only load failed); files "
                                                                  "that need arbitrary pickled code are refused."),
                            (f"scorer.clip={REPO / 'conf'}", "but that folder holds no config.json")):
        caplog.clear()
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", override)) == 5
        assert words in _refusal(caplog)
        assert fake_webui.requests_to("/sdapi/v1/progress") == []
        assert not (tmp_path / "runs").exists()


def test_the_same_file_as_model_a_and_model_b_is_refused_before_the_webui_is_asked(assets, fake_webui, tmp_path, caplog):
    link = tmp_path / "same.safetensors"
    link.symlink_to(assets["model_a"])
    assert _cli(_args(assets, fake_webui, tmp_path / "runs") + [f"model_b={link}"]) == 2
    assert _refusal(caplog).startswith("model_a and model_b are the same file")
    assert fake_webui.requests_to("/sdapi/v1/progress") == []


def test_a_copy_of_model_a_as_model_b_is_refused_when_the_models_load_before_any_trial(
        assets, fake_webui, tmp_path, caplog):
    # two files, one model: without this the run stopped at its third trial, blaming the WebUI for
    # pixel-identical pictures
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(assets["model_a"].read_bytes())
    before = fake_webui.loaded_model
    assert _cli(_args(assets, fake_webui, tmp_path / "runs") + [f"model_b={copy}"]) == 2
    assert _refusal(caplog).startswith(f"model_a ({assets['model_a'].name}) and model_b (copy.safetensors) hold the "
                                       "same weights, so every weighted_sum merge is the same model")
    assert fake_webui.requests_to("/sdapi/v1/txt2img") == []
    assert not (_only_run(tmp_path / "runs") / "trials.jsonl").exists()
    assert fake_webui.loaded_model == before
    assert sorted(p.name for p in fake_webui.checkpoint_dir.iterdir()) == []


def test_whole_numbers_in_a_custom_range_are_numbers(assets, fake_webui, tmp_path):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0",
                      "+optimiser.custom_ranges={IN00: [0, 1], OUT11: [0, 0.5]}")) == 0
    assert all(0 <= t["weights"]["alpha"]["OUT11"] <= 0.5 for t in _trials(_only_run(tmp_path / "runs")))


def test_a_resume_of_a_folder_that_holds_no_run_is_refused_and_nothing_is_written_into_it(
        assets, fake_webui, tmp_path, caplog):
    folder = tmp_path / "payloads"
    folder.mkdir()
    (folder / "mine.yaml").write_text("a: {prompt: x}\n")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={folder}")) == 2
    assert _refusal(caplog).startswith(f"resume={folder} is not a run folder (it has no run.json)")
    assert not list(folder.glob("config*.yaml"))


def test_a_mistyped_resume_folder_is_refused_and_not_left_made(assets, fake_webui, tmp_path, caplog):
    (tmp_path / "runs").mkdir()
    typo = tmp_path / "rnus" / "2026-12-06_01-00-00_weighted_sum_aesthetic_head"
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={typo}")) == 2
    assert _refusal(caplog) == f"resume={typo}: there is no such folder; give the folder of the run to continue."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # Hydra made rnus/… for its log: gone again


def test_a_start_refused_for_its_input_leaves_no_folder_behind(assets, fake_webui, tmp_path, caplog):
    runs = tmp_path / "runs"  # Hydra makes it and the run's folder in it, before the input is read
    assert _cli(_args(assets, fake_webui, runs, f"model_a={tmp_path / 'typo.safetensors'}")) == 2
    assert "typo.safetensors" in _refusal(caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    runs.mkdir()
    (runs / "mine.txt").write_text("the user's")
    assert _cli(_args(assets, fake_webui, runs, "merge.method=no_such_method")) == 2
    assert [p.name for p in runs.iterdir()] == ["mine.txt"]  # a folder the start did not make stays


def test_a_refused_start_takes_its_log_with_its_folder_and_leaves_the_users_own(assets, tmp_path):
    # with Hydra's real logging, as a user runs it: the log is the one thing in the folder
    runs, mine = tmp_path / "runs", tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.log").write_text("kept")
    for extra in ([], [f"hydra.run.dir={mine}"]):
        done = subprocess.run(
            [sys.executable, "-c", "from bayes_merger.cli import main; main()", "--config", str(REPO / "conf" / "run.yaml"), f"run.dir={runs}",
             f"model_a={tmp_path / 'typo.safetensors'}", f"model_b={assets['model_b']}",
             f"webui.checkpoint_dir={tmp_path}", *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "typo.safetensors" in done.stderr + done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert sorted(p.name for p in mine.iterdir()) == ["bayes-merger.log", "notes.log"]
    assert (mine / "notes.log").read_text() == "kept"


def test_a_checkpoint_dir_the_webui_does_not_scan_is_refused_before_the_first_merge(assets, fake_webui, tmp_path,
                                                                                     caplog):
    # it failed three trials, the baseline among them, for good: a resume never redid them
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.checkpoint_dir={elsewhere}"))
    assert code == 4
    refusal = _refusal(caplog)
    assert re.match(r"The WebUI does not list bm-\S+-probe\.safetensors after refresh-checkpoints: "
                    rf"webui\.checkpoint_dir \({re.escape(str(elsewhere))}\) must be a folder the WebUI scans", refusal)
    assert list(elsewhere.iterdir()) == []
    assert not list((tmp_path / "runs").rglob("trials.jsonl"))
    # its config was saved to resume it with once the folder is right: the folder stays
    assert (_only_run(tmp_path / "runs") / "config.yaml").is_file()
    assert fake_webui.requests_to("/sdapi/v1/txt2img") == []


def test_a_folder_of_the_users_own_is_not_written_over_by_a_new_run(assets, fake_webui, tmp_path, caplog):
    mine = tmp_path / "mine"
    mine.mkdir()
    kept = {"best.safetensors": "my merge", "report.html": "my page", "config.yaml": "my notes\n", "weights.png": "x"}
    for name, text in kept.items():
        (mine / name).write_text(text)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"hydra.run.dir={mine}")) == 2
    assert _refusal(caplog) == (f"{mine} already holds files that are not a run's (best.safetensors, config.yaml, "
                                "report.html and 1 more), which a run there could write over: start it in a new or "
                                "empty folder.")
    assert {name: (mine / name).read_text() for name in kept} == kept
    assert fake_webui.requests_to("/sdapi/v1/progress") == []


def test_a_run_folder_where_a_file_is_is_one_sentence_not_a_traceback(assets, fake_webui, tmp_path, caplog):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"hydra.run.dir={taken}")) == 2
    assert _refusal(caplog).startswith(f"The run folder {taken} cannot be made (File exists)")
    assert taken.read_text() == "mine\n"


def test_check_says_the_inputs_are_fine_and_starts_nothing(assets, fake_webui, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bayes_merger")
    runs = tmp_path / "runs"
    assert _cli(_args(assets, fake_webui, runs, "--check")) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "bayes_merger"]
    assert said == ["The config and its inputs are fine: SD1 models A a.safetensors, B b.safetensors, weighted_sum, 26 "
                    "weights to search, 2 payloads, scorer aesthetic_head (its weights here). Left to the start: the "
                    "WebUI (and that it lists what is written to its checkpoint folder), the models' sha256 and the "
                    "scorer's weights loaded."]
    assert fake_webui.requests == [] and list(fake_webui.checkpoint_dir.iterdir()) == []
    assert sorted(tmp_path.iterdir()) == []  # no run folder: Hydra's, made for the log, goes with it


def _empty_weight_caches(tmp_path, monkeypatch) -> list[str]:
    """The heads' cache and the Hugging Face cache, empty, in tmp_path: the overrides that use them."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return [f"scorer.cache_dir={tmp_path / 'heads'}", "scorer.clip=openai/clip-vit-large-patch14", "scorer.head=null"]


def _fine(caplog) -> str:
    said = [r.getMessage() for r in caplog.records if r.name == "bayes_merger"]
    assert len(said) == 1 and said[0].startswith("The config and its inputs are fine:"), said
    return said[0]


def test_check_names_the_scorer_weights_the_start_would_download(assets, fake_webui, tmp_path, caplog, monkeypatch):
    from bayes_merger.scoring.weights import CHAD_HEAD, LAION_HEAD

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    caplog.set_level(logging.INFO, logger="bayes_merger")
    args = _args(assets, fake_webui, tmp_path / "runs", "--check", *_empty_weight_caches(tmp_path, monkeypatch),
                 "scorer.name=ensemble", "+scorer.ensemble={laion: 1, chad: 1}")
    assert _cli(args) == 0
    # the CLIP both heads share is named once
    assert ("scorer ensemble (to download at the start: the LAION improved aesthetic predictor head, CLIP "
            "openai/clip-vit-large-patch14, the SD-Chad aesthetic head).") in _fine(caplog)

    # as `hf download` and a first run leave them: found, not loaded (their bytes are checked when they load)
    snapshot = tmp_path / "hf" / "models--openai--clip-vit-large-patch14" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / LAION_HEAD.filename).write_bytes(b"put here by hand")
    (tmp_path / "heads" / CHAD_HEAD.cached_name).write_bytes(b"converted by a run")
    caplog.clear()
    assert _cli(args) == 0
    assert "scorer ensemble (to download at the start: CLIP openai/clip-vit-large-patch14)." in _fine(caplog)
    (snapshot / "model.safetensors").write_bytes(b"a download that ended")  # its config alone: one cut halfway
    caplog.clear()
    assert _cli(args) == 0
    assert "scorer ensemble (its weights here)." in _fine(caplog)
    assert fake_webui.requests == []


@pytest.mark.parametrize("check", [True, False])
def test_scorer_weights_that_cannot_be_fetched_are_said_before_the_webui_is_asked(assets, fake_webui, tmp_path,
                                                                                   caplog, monkeypatch, check):
    """Downloads off (an offline machine): a start said so only once the WebUI was up, and the finalists'
    scorer only at the night's end; a missing file the config names is never fetched."""
    from bayes_merger.scoring.weights import LAION_HEAD

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = _empty_weight_caches(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    flag = ["--check"] if check else []
    assert _cli(_args(assets, fake_webui, runs, *flag, *empty, "scorer.name=laion")) == 5
    assert _refusal(caplog).startswith("The LAION improved aesthetic predictor head is not cached and downloads are "
                                       "off (HF_HUB_OFFLINE is set). Download https://")
    caplog.clear()
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / LAION_HEAD.filename).write_bytes(b"put here by hand")
    assert _cli(_args(assets, fake_webui, runs, *flag, *empty, "scorer.name=laion")) == 5
    assert _refusal(caplog).startswith("CLIP model 'openai/clip-vit-large-patch14' is not in the Hugging Face cache")
    shutil.rmtree(tmp_path / "heads")
    caplog.clear()
    assert _cli(_args(assets, fake_webui, runs, *flag, f"scorer.cache_dir={tmp_path / 'heads'}",
                      "scorer.finalists=pickscore")) == 5
    assert _refusal(caplog).startswith("The PickScore")
    caplog.clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert _cli(_args(assets, fake_webui, runs, *flag, "scorer.name=laion", f"scorer.head={tmp_path / 'nope.pth'}")) == 5
    assert _refusal(caplog) == f"scorer.head is '{tmp_path / 'nope.pth'}', but that file does not exist."
    assert fake_webui.requests == [] and sorted(tmp_path.iterdir()) == []  # no run folder, no cache made


@pytest.mark.parametrize("override, code, sentence", [
    ("model_a={tmp}/typo.safetensors", 2, "model_a: {tmp}/typo.safetensors does not exist."),
    ("merge.method=add_difference", 2, "Merge method 'add_difference' needs model C (model_c), but none was given."),
    ("model_b={tmp}/notes.safetensors", 3, "{tmp}/notes.safetensors is not a readable safetensors file"),  # its header
    ("webui.checkpoint_dir={tmp}/typo", 2, "webui.checkpoint_dir {tmp}/typo is not an existing folder"),
    ("webui.auth_env=BAYES_MERGER_TEST_UNSET", 2, "webui.auth_env names BAYES_MERGER_TEST_UNSET, but that"),
])
def test_check_refuses_a_bad_input_with_the_sentence_a_start_would_say(assets, fake_webui, tmp_path, caplog,
                                                                       override, code, sentence):
    (tmp_path / "notes.safetensors").write_text("not a model")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "--check", override.format(tmp=tmp_path))) == code
    assert sentence.format(tmp=tmp_path) in _refusal(caplog)
    assert fake_webui.requests == [] and sorted(p.name for p in tmp_path.iterdir()) == ["notes.safetensors"]


def test_a_model_file_this_user_cannot_read_is_one_sentence_before_any_work(assets, fake_webui, tmp_path, caplog,
                                                                             monkeypatch):
    """Mode 600 and owned by the WebUI's user: a traceback at its header, exit 1, before. The open is refused by
    a stand-in, as root (CI) reads any file whatever its mode."""
    import pathlib

    unreadable, opened = assets["model_b"].resolve(), pathlib.Path.open

    def open_as_another_user(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if path.resolve() == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", open_as_another_user)
    for check in (["--check"], []):
        caplog.clear()
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", *check)) == 2
        assert _refusal(caplog) == f"model_b: {unreadable} cannot be read (Permission denied)."
    assert fake_webui.requests == [] and not (tmp_path / "runs").exists()


def test_check_of_a_resume_checks_the_run_folder_and_leaves_the_run_as_it_was(assets, fake_webui, tmp_path, caplog):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    caplog.clear()
    caplog.set_level(logging.INFO, logger="bayes_merger")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "--check", f"resume={run_dir}")) == 0
    assert "(and that the resumed run's model files are its own, by their sha256)" in caplog.text
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    other = make_checkpoint(tmp_path / "other.safetensors", "sd1", seed=3, dtype=torch.float32)  # another size
    # a config edited since the run began: said by --check (the overnight runner's first attempt), not by the
    # start after its WebUI was started and waited for; the models' bytes are left to the start
    for override, said in (("run.seed=7", "'seed' differs from the run's (42 there, 7 now)"),
                           ("optimiser.init_points=4", "'init_points' differs from the run's"),
                           ("+payloads.defaults.steps=3", "what a score means changed (the payload requests)"),
                           (f"model_b={other}", "model_b is not the file its trials were merged from")):
        caplog.clear()
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", "--check", f"resume={run_dir}", override)) == 2, override
        assert said in _refusal(caplog)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    caplog.clear()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "--check", f"resume={tmp_path / 'runs'}")) == 2
    assert f"resume={tmp_path / 'runs'} is not a run folder" in _refusal(caplog)


def test_check_of_a_sweep_checks_each_job_and_leaves_no_folder(assets, fake_webui, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bayes_merger")
    args = _args(assets, fake_webui, tmp_path / "runs", "--check", "merge.method=weighted_sum,add_difference", "-m")
    assert _cli(args) == 2  # the sweep's exit: its failed job's
    said = [r.getMessage() for r in caplog.records if r.name == "bayes_merger"]
    assert said[0].startswith("The config and its inputs are fine: SD1 models A a.safetensors, B b.safetensors, "
                              "weighted_sum,")
    assert said[1:] == ["Merge method 'add_difference' needs model C (model_c), but none was given.",
                        "1 of the sweep's jobs failed; see their errors above."]
    assert fake_webui.requests == [] and sorted(tmp_path.iterdir()) == []  # nor the sweep's multirun.yaml


def test_a_sweep_in_the_users_home_is_made_there_not_in_a_folder_named_tilde(tmp_path, monkeypatch):
    from bayes_merger.cli import _sweep_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    assert _sweep_dir("~/runs", "2026-12-07_12-00-00") == str(tmp_path / "runs" / "multirun" / "2026-12-07_12-00-00")
