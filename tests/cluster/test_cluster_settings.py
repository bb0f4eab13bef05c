"""What a cluster run refuses before any work, and the model files' fingerprints; none of it needs Ray."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from bayes_merger.merge.fingerprint import Fingerprint, check_same_file, fingerprint
from bayes_merger.cluster.host import TrialHost
from bayes_merger.config import ClusterConfig, Config, OptimiserConfig, PayloadsConfig, ScorerConfig, WebUIConfig
from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.inputs import Inputs, check_inputs
from bayes_merger.testing.models import make_checkpoint
from tests.loop.test_cli_run import REPO, _args, _cli


@pytest.mark.parametrize("override, words", [
    ("cluster.address=head", "cluster.address must be auto or the Ray head's host:port"),
    ("cluster.address=ray://head:10001", "cluster.address must be auto or the Ray head's host:port"),
    ("cluster.address=head:70000", "cluster.address must be auto or the Ray head's host:port"),
    ("scorer.name=manual", "on a Ray cluster (cluster.address) the hosts score"),
    ("webui.pipeline=true", "set webui.pipeline=false"),
])
def test_a_cluster_setting_that_cannot_work_is_one_sentence_before_any_work(assets, fake_webui, tmp_path, caplog,
                                                                            override, words):
    overrides = [override] if override.startswith("cluster.") else ["cluster.address=auto", override]
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", *overrides)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and words in errors[0]
    assert not fake_webui.requests


def test_without_ray_a_cluster_run_says_how_to_install_it(assets, fake_webui, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "cluster.address=127.0.0.1:9")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "pip install 'bayes-merger[ray]'" in errors[0]
    assert not fake_webui.requests


def test_a_cluster_run_leaves_its_scorer_weights_to_the_hosts(assets, fake_webui, tmp_path, caplog, monkeypatch):
    """The hosts score, each from its own caches: the driver's (empty here, downloads off) are not asked."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    caplog.set_level(logging.INFO, logger="bayes_merger")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "--check", "cluster.address=127.0.0.1:9", "scorer.name=laion",
                      "scorer.head=null", f"scorer.cache_dir={tmp_path / 'heads'}")) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "bayes_merger"]
    assert len(said) == 1 and "scorer laion (its weights on the cluster's hosts)." in said[0]
    assert not fake_webui.requests
    # the finalists are scored here, on the driver, at the night's end: theirs are this machine's to have
    caplog.clear()
    code = _cli(_args(assets, fake_webui, tmp_path / "runs", "--check", "cluster.address=127.0.0.1:9", "scorer.name=laion",
                      "scorer.head=null", f"scorer.cache_dir={tmp_path / 'heads'}", "scorer.finalists=chad"))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 5 and len(errors) == 1 and "chad" in errors[0], errors


def test_the_drivers_best_merge_and_finalists_use_its_own_device_not_the_hosts(assets, fake_webui, tmp_path, caplog):
    """On a cluster merge.device and scorer.device are the hosts' (README), checked there: the driver, which
    merges best.safetensors and scores the finalists at the end, asked for a GPU it may not have (exit 2, no
    best merge, after the whole night)."""
    from tests.loop.test_cli_run import _only_run

    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0", "save_best=false")) == 0
    run_dir = _only_run(tmp_path / "runs")
    # every trial done: the resume on the cluster has only the driver's part left, no host is asked
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}", "optimiser.n_iters=0",
                      "cluster.address=127.0.0.1:9",
                      "merge.device=cuda:7", "scorer.device=cuda:7", "save_best=true",
                      "scorer.finalists=aesthetic_head", "scorer.finalists_top_k=2")) == 0
    assert (run_dir / "best.safetensors").is_file()
    assert (run_dir / "rescore-aesthetic_head.jsonl").is_file(), caplog.text


def test_a_fingerprint_tells_a_different_file_from_the_same_one(tmp_path):
    a = make_checkpoint(tmp_path / "a.safetensors", "sd1", seed=1, scale=0.05)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(a.read_bytes())
    # other weights saved the same way: the same header and size (why the whole file is hashed)
    other = make_checkpoint(tmp_path / "b.safetensors", "sd1", seed=2, scale=0.05)
    assert other.stat().st_size == a.stat().st_size
    assert fingerprint(a) == fingerprint(copy)
    check_same_file(copy, fingerprint(a), "model_a")
    with pytest.raises(ConfigError, match=r"model_b: .*b\.safetensors on this host is not the driver's file"):
        check_same_file(other, fingerprint(a), "model_b")
    with pytest.raises(ConfigError, match="does not exist on this host"):
        check_same_file(tmp_path / "missing.safetensors", fingerprint(a), "model_a")


def _host_inputs(assets, url: str, checkpoint_dir: Path, run_dir: Path) -> tuple[Config, Inputs]:
    """The config and checked inputs of a tiny run whose host WebUI is at ``url``."""
    cfg = Config(model_a=str(assets["model_a"]), model_b=str(assets["model_b"]),
                 webui=WebUIConfig(checkpoint_dir=str(checkpoint_dir), url=url),
                 payloads=PayloadsConfig(dir=str(REPO / "payloads" / "demo.yaml")),
                 scorer=ScorerConfig(name="aesthetic_head", clip=str(assets["scorer.clip"]),
                                     head=str(assets["scorer.head"])),
                 optimiser=OptimiserConfig(init_points=2, n_iters=1), cluster=ClusterConfig())
    return cfg, check_inputs(cfg, run_dir)


def test_a_host_with_another_file_at_the_models_path_refuses_before_it_loads_anything(assets, tmp_path):
    cfg, inputs = _host_inputs(assets, "http://127.0.0.1:9", tmp_path, tmp_path / "run")
    driver = {m: fingerprint(p) for m, p in inputs.merge.models.items()}
    driver["B"] = Fingerprint(driver["B"].size, "0" * 64)  # the host's B is another file
    host = TrialHost(inputs, cfg.webui, inputs.run_id, driver, {})
    with pytest.raises(ConfigError, match=r"\(http://127.0.0.1:9\): model_b: .* is not the driver's file"):
        host.start()  # refused before the WebUI (nothing listens at :9) or a tensor is touched
    assert not Path(host.scratch).exists()  # the driver kills such a host's actor: nothing is left in its /tmp


def test_a_host_without_the_scorers_weights_and_downloads_off_refuses_before_its_webui(assets, tmp_path, monkeypatch):
    import dataclasses

    import huggingface_hub.constants

    cfg, inputs = _host_inputs(assets, "http://127.0.0.1:9", tmp_path, tmp_path / "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this host's, whose caches are empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    inputs = dataclasses.replace(inputs, scorer=ScorerConfig(name="laion", cache_dir=str(tmp_path / "heads")))
    host = TrialHost(inputs, cfg.webui, inputs.run_id, {m: fingerprint(p) for m, p in inputs.merge.models.items()}, {})
    with pytest.raises(ScorerError, match=r"\(http://127.0.0.1:9\): The LAION improved aesthetic predictor head is "
                                          r"not cached and downloads are off"):
        host.start()  # said before the WebUI (nothing listens at :9) or a model is loaded
    assert not Path(host.scratch).exists()


def test_a_host_whose_webui_holds_a_dead_runs_merge_gives_back_the_model_the_driver_read_for_it(assets, fake_webui,
                                                                                                 tmp_path):
    # the dead run's folder is on the driver, not on this host: the driver reads what it recorded
    import requests

    from tests.webui.test_client import merge_writer

    merge_writer(0.9)(fake_webui.checkpoint_dir / "mine.safetensors")
    merge_writer(0.3)(fake_webui.checkpoint_dir / "bm-20260101-000000-dead-t0007.safetensors")
    fake_webui.restart(forget_selection=True)
    options = requests.post(fake_webui.url + "/sdapi/v1/options", timeout=10,
                            json={"sd_model_checkpoint": "bm-20260101-000000-dead-t0007.safetensors"})
    assert options.status_code == 200  # the WebUI is left on the dead run's merge
    cfg, inputs = _host_inputs(assets, fake_webui.url, fake_webui.checkpoint_dir, tmp_path / "run")
    driver = {m: fingerprint(p) for m, p in inputs.merge.models.items()}
    dead = {"20260101-000000-dead": Path("/on/the/driver/runs/2026-01-01_00-00-00_dead")}
    host = TrialHost(inputs, cfg.webui, inputs.run_id, driver, dead, None, {"20260101-000000-dead": "mine.safetensors"})
    try:
        assert host.start()[1] == "mine.safetensors"
        assert not (fake_webui.checkpoint_dir / "bm-20260101-000000-dead-t0007.safetensors").exists()  # over
    finally:
        host.hand_back()
    assert fake_webui.loaded_model == "mine.safetensors"



def test_a_hosts_hand_back_during_a_trials_merge_waits_for_its_load_so_the_webui_ends_on_its_own_model(
        assets, fake_webui, tmp_path, monkeypatch):
    # the driver's second Ctrl-C: the host hands its WebUI back while a trial merges there (it selected its
    # model first, and the trial then loaded its merge: the WebUI was left on a merge whose file was deleted)
    import threading

    from bayes_merger.executor import Slot
    from tests.webui.test_client import merge_writer

    merge_writer(0.9)(fake_webui.checkpoint_dir / "mine.safetensors")
    fake_webui.restart(forget_selection=True)
    cfg, inputs = _host_inputs(assets, fake_webui.url, fake_webui.checkpoint_dir, tmp_path / "run")
    host = TrialHost(inputs, cfg.webui, inputs.run_id, {m: fingerprint(p) for m, p in inputs.merge.models.items()}, {})
    assert host.start()[1].startswith("mine.safetensors")
    merging, go, settling, handed = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    prepare, settle = host._loop.prepare, Slot.settle

    def slow_prepare(*args, **kwargs):
        merging.set()
        assert go.wait(30)
        return prepare(*args, **kwargs)

    def watched_settle(self, timeout):
        settling.set()
        settle(self, timeout)

    monkeypatch.setattr(host._loop, "prepare", slow_prepare)
    monkeypatch.setattr(Slot, "settle", watched_settle)
    params = inputs.space.start_params(cfg.optimiser.start)
    outcome: list[object] = []

    def run_trial():
        try:
            outcome.append(host.run_trial(0, params))
        except Exception as error:  # noqa: BLE001 - abandoned by the hand-back (its render interrupted, say)
            outcome.append(error)

    trial = threading.Thread(target=run_trial, daemon=True)
    trial.start()
    assert merging.wait(30)
    back = threading.Thread(target=lambda: (host.hand_back(), handed.set()), daemon=True)
    back.start()
    deadline = time.monotonic() + 30
    while not (settling.is_set() or handed.is_set()) and time.monotonic() < deadline:
        handed.wait(0.05)  # the hand-back waits for the trial, or (unfixed) is done
    assert settling.is_set() or handed.is_set(), "the hand-back neither settled nor ended in 30 s"
    go.set()
    back.join(60)
    trial.join(60)
    assert not back.is_alive() and not trial.is_alive() and len(outcome) == 1
    assert not isinstance(outcome[0], AssertionError), outcome[0]  # the stand-in's own check, on the trial's thread
    assert fake_webui.loaded_model == "mine.safetensors"
    assert sorted(p.name for p in fake_webui.checkpoint_dir.iterdir()) == ["mine.safetensors"]


@pytest.mark.skipif(sys.platform == "win32", reason="a host's scratch folder is locked with fcntl.flock (POSIX)")
def test_a_host_removes_the_scratch_folders_of_killed_hosts_and_keeps_those_of_live_ones(assets, tmp_path,
                                                                                         monkeypatch):
    # a driver killed with kill -9 takes its hosts' actors with it: they never hand back, and left their
    # scratch folders (trial logs, images) in the host's /tmp
    import tempfile

    from bayes_merger.cluster.host import SCRATCH_PREFIX
    from bayes_merger.files import pid_lock

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    killed, live, taking, older = (tmp_path / "tmp" / f"{SCRATCH_PREFIX}{name}" for name in ("a", "b", "c", "d"))
    for folder in (killed, live, taking, older):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "t0001.png").write_bytes(b"png")
    (killed / ".run.lock").write_text("999999999\n")  # its holder died: nothing holds it now
    (taking / ".run.lock").write_text("")  # being taken: its host opened it and has not locked it yet
    cfg, inputs = _host_inputs(assets, "http://127.0.0.1:9", tmp_path, tmp_path / "run")
    with pid_lock(live / ".run.lock"):  # another host of this machine, running
        host = TrialHost(inputs, cfg.webui, inputs.run_id, {}, {})
        try:
            assert not killed.exists()
            assert all((folder / "images" / "t0001.png").is_file() for folder in (live, taking, older))
            assert host.scratch.parent == tmp_path / "tmp" and host.scratch.name.startswith(SCRATCH_PREFIX)
            TrialHost(inputs, cfg.webui, inputs.run_id, {}, {}).hand_back()  # a second host here, ended
            assert host.scratch.is_dir(), "a live host's scratch folder was taken for a killed host's"
        finally:
            host.hand_back()
    assert not host.scratch.exists()
