"""Runs with trials in flight, end to end through the CLI: pipelined, and on two fake WebUIs."""

from __future__ import annotations

import json

import pytest

from bayes_merger import webuis
from bayes_merger.config import WebUIConfig
from bayes_merger.testing.fake_webui import FakeWebUI
from bayes_merger.testing.models import make_checkpoint
from tests.loop.test_cli_run import _args, _cli, _only_run, _trials


@pytest.fixture
def second_webui(tmp_path_factory):
    with FakeWebUI(tmp_path_factory.mktemp("second-webui-models")) as server:
        yield server
    server.check_sound()


def test_a_pipelined_run_finishes_every_trial_and_resumes_to_the_same_trials(assets, fake_webui, tmp_path):
    args = _args(assets, fake_webui, tmp_path / "whole", "webui.pipeline=true", "optimiser.n_iters=4")
    assert _cli(args) == 0
    whole = _trials(_only_run(tmp_path / "whole"))
    assert [t["trial"] for t in whole] == list(range(7)) and all(t["status"] == "ok" for t in whole)
    assert not [p for p in fake_webui.checkpoint_dir.iterdir()], "no merge, staged or not, is left behind"

    # the same run stopped after its first five trials (two of them as if finished out of order), resumed
    cut = tmp_path / "cut"
    assert _cli(_args(assets, fake_webui, cut, "webui.pipeline=true", "optimiser.n_iters=4")) == 0
    run_dir = _only_run(cut)
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    kept = [lines[i] for i in (0, 1, 2, 4)]  # trial 3 was in flight when the run stopped
    (run_dir / "trials.jsonl").write_text("\n".join(kept) + "\n")
    info = json.loads((run_dir / "run.json").read_text())
    info.pop("finished_at", None)
    (run_dir / "run.json").write_text(json.dumps(info))
    assert _cli(_args(assets, fake_webui, cut, "webui.pipeline=true", "optimiser.n_iters=4", f"resume={run_dir}")) == 0
    resumed = _trials(run_dir)
    assert [t["trial"] for t in resumed] == list(range(7))
    assert [t["params"] for t in resumed] == [t["params"] for t in whole]


def test_two_webuis_share_the_trials_and_each_trial_says_where_it_rendered(assets, fake_webui, second_webui, tmp_path):
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    args = _args(assets, fake_webui, tmp_path / "runs", f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}",
                 "optimiser.init_points=4", "optimiser.n_iters=4")
    assert _cli(args) == 0
    run_dir = _only_run(tmp_path / "runs")
    trials = _trials(run_dir)
    assert [t["trial"] for t in trials] == list(range(8)) and all(t["status"] == "ok" for t in trials)
    assert {t["webui"] for t in trials} == {fake_webui.url, second_webui.url}
    assert '<th data-type="text" scope="col">webui</th>' in (run_dir / "report.html").read_text()
    for webui in (fake_webui, second_webui):
        assert not list(webui.checkpoint_dir.iterdir()), "each WebUI's folder is cleaned at the end"


def test_a_webui_that_fails_every_trial_stops_the_run_though_the_other_succeeds(assets, fake_webui, second_webui,
                                                                               tmp_path, caplog):
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    second_webui.fail_next(1000, status=500, path="/sdapi/v1/txt2img")  # it answers, but renders nothing
    args = _args(assets, fake_webui, tmp_path / "runs", f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}",
                 "optimiser.init_points=8", "optimiser.n_iters=4")
    assert _cli(args) == 6
    second_webui.clear_faults()
    run_dir = _only_run(tmp_path / "runs")
    trials = _trials(run_dir)
    # set aside for the resume when they came before any trial of the other WebUI was scored
    aside = run_dir / "trials.failed-at-start.jsonl"
    set_aside = [json.loads(line) for line in aside.read_text().splitlines()] if aside.exists() else []
    failed = [t for t in trials + set_aside if t["status"] == "failed"]
    assert len(failed) == 3 and {t["webui"] for t in failed} == {second_webui.url}
    assert len(trials) < 12, "the run went on with one WebUI failing every trial"
    assert f"3 trials in a row failed on {second_webui.url}" in caplog.text


def test_a_webui_lost_for_good_hands_its_trials_to_the_other(assets, fake_webui, second_webui, tmp_path):
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    second_webui.drop_next(1000, path="/sdapi/v1/txt2img")  # drops every render: a WebUI gone bad
    args = _args(assets, fake_webui, tmp_path / "runs", f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}",
                 "optimiser.init_points=4", "optimiser.n_iters=2", "webui.ready_timeout=1", "webui.retries=0")
    assert _cli(args) == 0
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["trial"] for t in trials] == list(range(6)) and all(t["status"] == "ok" for t in trials)
    assert {t["webui"] for t in trials} == {fake_webui.url}


def _cut(run_dir, trials: int = 4) -> dict:
    """The run as if stopped (kill -9) after its first ``trials`` trials, before its end; its run.json."""
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    (run_dir / "trials.jsonl").write_text("\n".join(lines[:trials]) + "\n")
    info = json.loads((run_dir / "run.json").read_text())
    info.pop("finished_at", None)
    (run_dir / "run.json").write_text(json.dumps(info))
    return info


def _holding(webui: FakeWebUI, merge_name: str) -> None:
    """``webui`` killed with that merge of the run in its folder and selected."""
    make_checkpoint(webui.checkpoint_dir / merge_name, "sd1", seed=3)
    webui.set_option("sd_model_checkpoint", merge_name)
    webui.restart()
    assert webui.loaded_model == merge_name


def test_a_resume_on_fewer_webuis_gives_each_its_own_model_back_the_one_left_out_too(assets, fake_webui, second_webui,
                                                                                      tmp_path, caplog):
    caplog.set_level("INFO", logger="bayes_merger.webuis")
    for webui, mine in ((fake_webui, "mine-a"), (second_webui, "mine-b")):
        make_checkpoint(webui.checkpoint_dir / f"{mine}.safetensors", "sd1", seed=len(mine))
        webui.restart()
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    budget = ("optimiser.init_points=4", "optimiser.n_iters=2")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}",
                      *budget)) == 0
    run_dir = _only_run(tmp_path / "runs")
    info = _cut(run_dir)
    _holding(fake_webui, f"bm-{info['run_id']}-t0004.safetensors")

    # resumed on the second WebUI alone (the first died, say, and came back later): the first of the list now, it
    # gets its own model back, not the first's; and the first, left out, is handed back as at the end of a run
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.url={second_webui.url}",
                      f"webui.checkpoint_dir={second_webui.checkpoint_dir}", *budget, f"resume={run_dir}")) == 0
    assert [t["trial"] for t in _trials(run_dir)] == list(range(6))
    assert second_webui.loaded_model == "mine-b.safetensors"
    assert sorted(p.name for p in second_webui.checkpoint_dir.iterdir()) == ["mine-b.safetensors"]
    assert fake_webui.loaded_model == "mine-a.safetensors"
    assert sorted(p.name for p in fake_webui.checkpoint_dir.iterdir()) == ["mine-a.safetensors"]
    assert any(fake_webui.url in r.getMessage() and "not in this session's list" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("fake_webui", [{"auth": "user:secret"}], indirect=True)
@pytest.mark.parametrize("given_by", ["webui.auth", "webui.auth_env"])
def test_a_webui_with_a_password_left_out_of_a_resume_gets_its_model_back_with_this_sessions_password(
        assets, fake_webui, tmp_path, monkeypatch, given_by):
    make_checkpoint(fake_webui.checkpoint_dir / "mine-a.safetensors", "sd1", seed=6)
    fake_webui.restart()
    (tmp_path / "second-models").mkdir()
    with FakeWebUI(tmp_path / "second-models", auth="user:secret") as second:
        urls = f"[{fake_webui.url},{second.url}]"
        dirs = f"[{fake_webui.checkpoint_dir},{second.checkpoint_dir}]"
        budget = ("optimiser.init_points=4", "optimiser.n_iters=2", "webui.auth=user:secret")
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}",
                          *budget)) == 0
        run_dir = _only_run(tmp_path / "runs")
        assert "secret" not in (run_dir / "config.yaml").read_text()
        info = _cut(run_dir)
        _holding(fake_webui, f"bm-{info['run_id']}-t0004.safetensors")

        # the saved config has no password: the one given to this session, inline or by a variable's name, is the
        # left-out WebUI's too
        if given_by == "webui.auth_env":
            monkeypatch.setenv("BM_TEST_AUTH", "user:secret")
            budget = (*budget[:2], "webui.auth_env=BM_TEST_AUTH")
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.url={second.url}",
                          f"webui.checkpoint_dir={second.checkpoint_dir}", *budget, f"resume={run_dir}")) == 0
    assert fake_webui.loaded_model == "mine-a.safetensors"
    assert sorted(p.name for p in fake_webui.checkpoint_dir.iterdir()) == ["mine-a.safetensors"]


def test_a_resume_whose_webui_names_its_merges_otherwise_in_a_shared_folder_leaves_none_of_the_old_names(
        assets, fake_webui, tmp_path):
    make_checkpoint(fake_webui.checkpoint_dir / "mine.safetensors", "sd1", seed=4)
    fake_webui.restart()
    with FakeWebUI(fake_webui.checkpoint_dir) as other:  # a second WebUI on the same folder: its merges are -w2
        budget = ("optimiser.init_points=4", "optimiser.n_iters=2")
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.urls=[{fake_webui.url},{other.url}]",
                          *budget)) == 0
        run_dir = _only_run(tmp_path / "runs")
        info = _cut(run_dir)
        _holding(other, f"bm-{info['run_id']}-w2-t0003.safetensors")

        # resumed on the second alone: it is the first of its list now, and names its merges after the run alone
        assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"webui.url={other.url}", *budget,
                          f"resume={run_dir}")) == 0
        other.check_sound()
    assert sorted(p.name for p in fake_webui.checkpoint_dir.iterdir()) == ["mine.safetensors"]


def test_a_webui_tidied_with_no_model_to_give_back_loses_the_merges_and_is_not_asked_what_it_holds(fake_webui):
    run_id = "20261206-120000-0a1b"
    make_checkpoint(fake_webui.checkpoint_dir / f"bm-{run_id}-t0002.safetensors", "sd1", seed=2)
    webui_cfg = WebUIConfig(url=fake_webui.url, checkpoint_dir=str(fake_webui.checkpoint_dir))
    webuis._tidy(fake_webui.url, webui_cfg, run_id, "", run_id)
    assert not list(fake_webui.checkpoint_dir.iterdir())
    assert not fake_webui.requests_to("/sdapi/v1/options", "GET")


@pytest.mark.parametrize("override, words", [
    ("webui.urls=[http://127.0.0.1:1,http://127.0.0.1:1]", "names a WebUI twice"),
    ("webui.checkpoint_dirs=[/a,/b]", "has 2 folders for 1 WebUIs"),
])
def test_bad_webui_lists_are_one_sentence_before_the_webui_is_touched(assets, fake_webui, tmp_path, caplog,
                                                                      override, words):
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", override)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and words in errors[0]
    assert not fake_webui.requests


@pytest.mark.parametrize("overrides, words", [
    (["webui.backend=invokeai"], "webui.backend must be one of a1111, comfyui, auto"),
    (["webui.backend=comfyui", "webui.comfyui_handoff=graph", "merge.method=add_difference"],
     "webui.comfyui_handoff is graph, but merge.method is add_difference"),
])
def test_a_backend_that_cannot_work_is_one_sentence_before_the_webui_is_touched(assets, fake_webui, tmp_path, caplog,
                                                                               overrides, words):
    extra = [f"model_c={assets['model_a']}"] if "add_difference" in " ".join(overrides) else []
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", *overrides, *extra)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and words in errors[0]
    assert not fake_webui.requests



def test_the_second_webui_holding_a_dead_runs_merge_gets_its_own_model_of_before_back(assets, fake_webui, second_webui,
                                                                                        tmp_path):
    for webui, mine in ((fake_webui, "mine-a.safetensors"), (second_webui, "mine-b.safetensors")):
        make_checkpoint(webui.checkpoint_dir / mine, "sd1", seed=9)
    # a run of both WebUIs, killed while the second held its merge: it found mine-b there, mine-a in the first
    runs = tmp_path / "runs"
    dead = runs / "2026-01-01_00-00-00_20260101-000000-dead"
    dead.mkdir(parents=True)
    (dead / "run.json").write_text(json.dumps({
        "run_id": "20260101-000000-dead", "webui_model_before": "mine-a.safetensors",
        "webui_models_before": {fake_webui.url: "mine-a.safetensors", second_webui.url: "mine-b.safetensors"}}))
    merge = second_webui.checkpoint_dir / "bm-20260101-000000-dead-t0004.safetensors"
    make_checkpoint(merge, "sd1", seed=3)
    second_webui.set_option("sd_model_checkpoint", merge.name)
    second_webui.restart()
    fake_webui.set_option("sd_model_checkpoint", "mine-a.safetensors")
    fake_webui.restart()
    assert (fake_webui.loaded_model, second_webui.loaded_model) == ("mine-a.safetensors", merge.name)
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    assert _cli(_args(assets, fake_webui, runs, f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}")) == 0
    assert second_webui.loaded_model == "mine-b.safetensors", "it was given the first WebUI's model of before"
    assert sorted(p.name for p in second_webui.checkpoint_dir.iterdir()) == ["mine-b.safetensors"]


def _selected(webui: FakeWebUI) -> list[str]:
    """The models the run asked ``webui`` to select (POST options)."""
    return [str(r.body.get("sd_model_checkpoint")) for r in webui.requests_to("/sdapi/v1/options", "POST")
            if isinstance(r.body, dict) and "sd_model_checkpoint" in r.body]


def test_a_webui_a_dead_runs_list_does_not_name_is_not_given_that_runs_first_webuis_model(assets, fake_webui,
                                                                                          second_webui, tmp_path):
    # run.json's model of before by WebUI is the whole record: the old single field is its first WebUI's
    # model, not the model of a WebUI its list does not name (here under another spelling of its URL)
    for webui, mine in ((fake_webui, "mine-a.safetensors"), (second_webui, "mine-b.safetensors")):
        make_checkpoint(webui.checkpoint_dir / mine, "sd1", seed=9)
    make_checkpoint(second_webui.checkpoint_dir / "mine-a.safetensors", "sd1", seed=9)  # one name, both libraries
    runs = tmp_path / "runs"
    dead = runs / "2026-01-01_00-00-00_20260101-000000-dead"
    dead.mkdir(parents=True)
    (dead / "run.json").write_text(json.dumps({
        "run_id": "20260101-000000-dead", "webui_model_before": "mine-a.safetensors",
        "webui_models_before": {fake_webui.url: "mine-a.safetensors", f"{second_webui.url}/": "mine-b.safetensors"}}))
    merge = second_webui.checkpoint_dir / "bm-20260101-000000-dead-t0004.safetensors"
    make_checkpoint(merge, "sd1", seed=3)
    second_webui.set_option("sd_model_checkpoint", merge.name)
    second_webui.restart()
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    assert _cli(_args(assets, fake_webui, runs, f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}")) == 0
    assert not [m for m in _selected(second_webui) if m.startswith("mine-a")], "it was given the first WebUI's model"
    assert not merge.exists()


def test_a_reordered_resume_of_a_run_killed_after_its_last_trial_gives_no_webui_anothers_model(assets, fake_webui,
                                                                                                second_webui, tmp_path):
    # the second WebUI held a merge of a run no folder knows when this run started: its model of before is unknown ("")
    make_checkpoint(fake_webui.checkpoint_dir / "mine-a.safetensors", "sd1", seed=9)
    fake_webui.restart()
    for name in ("mine-a.safetensors", "bm-20250101-000000-gone-t0001.safetensors"):
        make_checkpoint(second_webui.checkpoint_dir / name, "sd1", seed=9)
    second_webui.set_option("sd_model_checkpoint", "bm-20250101-000000-gone-t0001.safetensors")
    second_webui.restart()
    runs, both = tmp_path / "runs", (fake_webui, second_webui)
    urls, dirs = (f"[{','.join(str(getattr(w, key)) for w in both)}]" for key in ("url", "checkpoint_dir"))
    assert _cli(_args(assets, fake_webui, runs, f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}")) == 0
    run_dir = _only_run(runs)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["webui_models_before"][second_webui.url] == ""
    info.pop("finished_at")  # killed after its last trial, before its hand-back
    (run_dir / "run.json").write_text(json.dumps(info))
    merge = second_webui.checkpoint_dir / f"bm-{info['run_id']}-t0004.safetensors"
    make_checkpoint(merge, "sd1", seed=3)
    second_webui.set_option("sd_model_checkpoint", merge.name)
    second_webui.restart()
    before = len(_selected(second_webui))

    # resumed with the second WebUI first in the list: it gets its own (unknown) model back, not the first's
    urls, dirs = (f"[{','.join(str(getattr(w, key)) for w in both[::-1])}]" for key in ("url", "checkpoint_dir"))
    assert _cli(_args(assets, fake_webui, runs, f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}",
                      f"resume={run_dir}")) == 0
    assert not merge.exists()
    assert not [m for m in _selected(second_webui)[before:] if m.startswith("mine-a")], "given the first's model"


@pytest.mark.parametrize("fake_webui", ["forge"], indirect=True)
def test_pipelined_on_forge_the_next_merge_waits_for_the_model_forge_loads_in_the_first_generation(
        assets, fake_webui, tmp_path, monkeypatch):
    from bayes_merger.executor import Slot

    original, seen = Slot.loaded, {}

    def loaded(self, index):
        seen.setdefault(index, fake_webui.loaded_model)  # what Forge had loaded when the next merge was let start
        original(self, index)

    monkeypatch.setattr(Slot, "loaded", loaded)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "webui.pipeline=true")) == 0
    # from the second trial on (the first generation tells Forge's version): after its own model's load
    assert all(f"t{index:04d}" in str(seen[index]) for index in range(1, 5)), seen


def test_a_webui_that_keeps_rendering_one_model_beside_a_sound_one_resumes_to_the_run_of_two_sound_ones(
        assets, fake_webui, second_webui, tmp_path, caplog):
    # the trials the sound WebUI ran from a suggestion that knew a score of the stuck one's were kept: the
    # resume rendered the stuck trials again but went on from weights suggested with their false scores
    urls = f"[{fake_webui.url},{second_webui.url}]"
    dirs = f"[{fake_webui.checkpoint_dir},{second_webui.checkpoint_dir}]"
    settings = (f"webui.urls={urls}", f"webui.checkpoint_dirs={dirs}", "optimiser.init_points=2", "optimiser.n_iters=8")
    make_checkpoint(second_webui.checkpoint_dir / "mine.safetensors", "sd1", seed=9)
    second_webui.restart()
    second_webui.ignore_model_switch()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", *settings)) == 6
    run_dir = _only_run(tmp_path / "runs")
    stop = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert stop.startswith("The merge does not reach the renderer")
    second_webui.ignore_model_switch(False)  # the user restarted it
    assert _cli(["--config", str(run_dir / "config.yaml"), f"resume={run_dir}", "hydra/job_logging=none",
                 "hydra/hydra_logging=none"]) == 0
    resumed = [(t["trial"], t["status"], t["params"], t["score"]) for t in _trials(run_dir)]

    assert _cli(_args(assets, fake_webui, tmp_path / "clean", *settings)) == 0
    assert resumed == [(t["trial"], t["status"], t["params"], t["score"]) for t in _trials(_only_run(tmp_path / "clean"))]
