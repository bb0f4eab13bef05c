"""Runs on a Ray cluster, end to end through the CLI: a local Ray instance whose one node offers two
WebUIs, two actors each driving its own fake WebUI; trials spread over both, a killed actor, Ctrl-C and
a resume on another host."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading

import pytest

from bayes_merger.run import TrialLoop
from bayes_merger.testing.models import make_checkpoint
from tests.loop.test_cli_run import _args, _cli, _only_run, _trials

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture
def webuis(start_webuis):
    """Three fake WebUIs, each with its own checkpoint folder (the hosts' WebUIs)."""
    return start_webuis(3)


def _cluster_args(assets, servers, runs, *overrides):
    urls = ",".join(s.url for s in servers)
    dirs = ",".join(str(s.checkpoint_dir) for s in servers)
    return _args(assets, servers[0], runs, "cluster.address=auto", f"webui.urls=[{urls}]",
                 f"webui.checkpoint_dirs=[{dirs}]", *overrides)


def _host_of(trial, server):
    return trial["webui"].startswith(server.url + "@")


def test_trials_spread_over_both_hosts_and_the_driver_keeps_the_run_folder(assets, webuis, tmp_path):
    first, second = webuis[:2]
    assert _cli(_cluster_args(assets, webuis[:2], tmp_path / "runs", "optimiser.init_points=2",
                              "optimiser.n_iters=2")) == 0
    run_dir = _only_run(tmp_path / "runs")
    trials = _trials(run_dir)
    assert [t["trial"] for t in trials] == list(range(4)) and all(t["status"] == "ok" for t in trials)
    assert any(_host_of(t, first) for t in trials) and any(_host_of(t, second) for t in trials)
    for server in (first, second):  # each host's WebUI rendered the trials logged as its own
        mine = [t for t in trials if _host_of(t, server)]
        assert len(server.requests_to("/sdapi/v1/txt2img")) == sum(len({i["payload"] for i in t["images"]}) for t in mine)
        assert not list(server.checkpoint_dir.iterdir()), "each host cleaned its WebUI's folder"
    # the images came back to the driver's run folder, named with their scores as on one machine
    assert all((run_dir / image["path"]).is_file() for t in trials for image in t["images"])
    assert all(image["path"].endswith(f"-{image['score']:.3f}.png") for t in trials for image in t["images"])
    assert (run_dir / "best.yaml").is_file() and (run_dir / "best.safetensors").is_file()
    assert '<th data-type="text" scope="col">webui</th>' in (run_dir / "report.html").read_text()


def test_a_killed_actor_loses_no_trial_and_the_run_goes_on_with_the_other_host(assets, webuis, tmp_path, caplog,
                                                                                ray_cluster):
    first, second = webuis[:2]
    held = second.hold("/sdapi/v1/txt2img")  # the second host's first render waits: its trial is in flight

    def kill_the_second_host():
        second.wait_until_held(1, timeout=120)
        [name] = [n for n in ray_cluster.util.list_named_actors() if f"{second.url}@" in n]
        ray_cluster.kill(ray_cluster.get_actor(name))
        held.set()

    killer = threading.Thread(target=kill_the_second_host, daemon=True)
    killer.start()
    caplog.set_level(logging.WARNING)
    assert _cli(_cluster_args(assets, webuis[:2], tmp_path / "runs", "optimiser.init_points=3",
                              "optimiser.n_iters=1", "save_best=false")) == 0
    killer.join(timeout=5)
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["trial"] for t in trials] == list(range(4)) and all(t["status"] == "ok" for t in trials)
    assert all(_host_of(t, first) for t in trials), "the trial in flight on the killed host was redone on the other"
    lost = [r.getMessage() for r in caplog.records if "going on with 1 WebUI" in r.getMessage()]
    assert len(lost) == 1 and second.url in lost[0]


def test_ctrl_c_stops_every_host_cleanly_and_the_run_resumes_on_another_host(assets, webuis, tmp_path, monkeypatch):
    first, second, third = webuis
    record = TrialLoop.record

    def ctrl_c_after_the_second_trial(self, trial):
        record(self, trial)
        if len(self.trial_log.trials) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the CLI's handler: stop after the trials in flight

    monkeypatch.setattr(TrialLoop, "record", ctrl_c_after_the_second_trial)
    args = ("optimiser.init_points=3", "optimiser.n_iters=2", "save_best=false")
    assert _cli(_cluster_args(assets, [first, second], tmp_path / "runs", *args)) == 130
    run_dir = _only_run(tmp_path / "runs")
    stopped = _trials(run_dir)
    assert 2 <= len(stopped) < 5 and all(t["status"] == "ok" for t in stopped)
    for server in (first, second):
        assert not list(server.checkpoint_dir.iterdir()), "each host handed its WebUI back"
    before = (run_dir / "trials.jsonl").read_text()

    monkeypatch.setattr(TrialLoop, "record", record)
    assert _cli(_cluster_args(assets, [third], tmp_path / "runs", *args, f"resume={run_dir}")) == 0
    resumed = _trials(run_dir)
    assert [t["trial"] for t in resumed] == list(range(5)) and all(t["status"] == "ok" for t in resumed)
    assert (run_dir / "trials.jsonl").read_text().startswith(before), "the finished trials are kept as they were"
    assert all(_host_of(t, third) for t in resumed if t["trial"] not in {s["trial"] for s in stopped})


def test_a_resume_after_a_crash_gives_the_hosts_webui_the_model_it_had_before_the_run(assets, webuis, tmp_path):
    server = webuis[0]
    make_checkpoint(server.checkpoint_dir / "mine.safetensors", "sd1", seed=9)
    make_checkpoint(server.checkpoint_dir / "other.safetensors", "sd1", seed=10)
    server.set_option("sd_model_checkpoint", "mine.safetensors")
    server.restart()
    args = ("optimiser.init_points=3", "optimiser.n_iters=1", "save_best=false")
    assert _cli(_cluster_args(assets, [server], tmp_path / "runs", *args)) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert server.loaded_model == "mine.safetensors"
    # what a kill -9 of the driver leaves: the last trials not logged, no finished_at, the WebUI on a merge
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    (run_dir / "trials.jsonl").write_text("\n".join(lines[:2]) + "\n")
    info = json.loads((run_dir / "run.json").read_text())
    info.pop("finished_at", None)
    (run_dir / "run.json").write_text(json.dumps(info))
    merge = server.checkpoint_dir / f"bm-{info['run_id']}-t0002.safetensors"
    shutil.copy(server.checkpoint_dir / "other.safetensors", merge)
    server.set_option("sd_model_checkpoint", merge.name)
    server.restart()
    assert server.loaded_model == merge.name

    assert _cli(_cluster_args(assets, [server], tmp_path / "runs", *args, f"resume={run_dir}")) == 0
    assert server.loaded_model == "mine.safetensors"
    assert sorted(p.name for p in server.checkpoint_dir.iterdir()) == ["mine.safetensors", "other.safetensors"]
