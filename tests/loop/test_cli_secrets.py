"""The WebUI password given on the command line (webui.auth=user:password) is written to no file Hydra leaves
behind and shown in none of Hydra's own log lines."""

from __future__ import annotations

import logging

import pytest

from bayes_merger.cli_secrets import _HYDRA_LAUNCHER_LOGGER, _scrubbed, redacted_override
from tests.loop.test_cli_run import REPO, _args, _cli

PASSWORD = "s3cretPW"


@pytest.mark.parametrize("fake_webui", [{"auth": f"alice:{PASSWORD}"}], indirect=True)
def test_a_sweep_with_the_password_as_an_override_writes_it_nowhere(assets, fake_webui, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=_HYDRA_LAUNCHER_LOGGER)  # its "#0 : <overrides>" line before each job
    runs = tmp_path / "runs"
    # two jobs of one trial each; a .hydra folder in each job's run folder as well as the sweep's multirun.yaml
    args = _args(assets, fake_webui, runs, "optimiser.init_points=1", "optimiser.n_iters=0", "run.seed=1,2",
                 f"webui.auth=alice:{PASSWORD}", "hydra.output_subdir=.hydra", "-m")
    assert _cli(args) == 0
    jobs = sorted(runs.glob("multirun/*/*_aesthetic_head"))
    assert len(jobs) == 2 and all((job / ".hydra" / "hydra.yaml").is_file() for job in jobs)
    rendered = fake_webui.requests_to("/sdapi/v1/txt2img")
    assert rendered and {r.status for r in rendered} == {200}, "the password reached the WebUI: it rendered for us"
    files = [path for path in runs.rglob("*") if path.is_file()]
    assert any(path.name == "multirun.yaml" for path in files)
    leaks = [str(path.relative_to(runs)) for path in files if PASSWORD.encode() in path.read_bytes()]
    assert leaks == []
    launched = [r.getMessage() for r in caplog.records if r.name == _HYDRA_LAUNCHER_LOGGER and "#" in r.getMessage()]
    assert len(launched) == 2 and all("webui.auth=***" in line for line in launched)
    assert PASSWORD not in caplog.text


def test_a_ctrl_c_while_the_run_is_imported_leaves_no_password_in_hydras_files(assets, fake_webui, tmp_path,
                                                                                 monkeypatch):
    # the files were scrubbed only after the seconds-long import of the run (torch): a Ctrl-C then kept them as written
    import sys
    import types

    class Interrupted(types.ModuleType):
        def __getattr__(self, name: str):  # noqa: ANN204 - `from bayes_merger.run import run` meets Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "bayes_merger.run", Interrupted("bayes_merger.run"))
    runs = tmp_path / "runs"
    assert _cli(_args(assets, fake_webui, runs, f"webui.auth=alice:{PASSWORD}", "hydra.output_subdir=.hydra")) == 130
    written = [path for path in runs.rglob("*") if path.is_file()]
    assert any(path.parent.name == ".hydra" for path in written), "the folder is kept: it holds .hydra/"
    assert [path.name for path in written if PASSWORD.encode() in path.read_bytes()] == []


@pytest.mark.parametrize("flag", [["--cfg", "job"], ["--cfg", "all"], ["--info"]])
def test_the_config_hydra_prints_shows_the_password_as_stars(tmp_path, capsys, flag):
    # --cfg job is what users paste into a report: it printed the password given on the command line or in the file
    from bayes_merger.cli import main

    own = tmp_path / "own.yaml"
    own.write_text(f"defaults:\n  - bayes_merger\n  - _self_\nwebui:\n  auth: bob:{PASSWORD}-file\n")
    for args in (["--config", str(REPO / "conf" / "demo.yaml"), f"webui.auth=alice:{PASSWORD}"], ["--config", str(own)]):
        main([*args, *flag])
        printed = capsys.readouterr().out
        assert "auth: '***'" in printed and PASSWORD not in printed


def test_a_password_hydra_cannot_read_is_not_quoted_in_the_sentence_that_says_so(capsys, caplog):
    # a '#' (or , ( = ' ${) in it: Hydra's parse error quoted the override whole, and the overnight runner logged it
    from bayes_merger.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(REPO / "conf" / "demo.yaml"), "--check", f"webui.auth=alice:{PASSWORD}#1"])
    assert stopped.value.code == 2
    said = capsys.readouterr().err + caplog.text
    assert "webui.auth=*** cannot be read" in said and PASSWORD not in said


@pytest.mark.parametrize("fake_webui", [{"auth": f"alice:{PASSWORD}"}], indirect=True)
def test_a_sweep_whose_jobs_are_named_by_their_overrides_leaves_the_password_out_of_their_names(
        assets, fake_webui, tmp_path):
    # Hydra's idiom hydra.sweep.subdir=${hydra.job.override_dirname} named a folder "…webui.auth=alice\:pw…", which the
    # resume line of its config.yaml, its log and its report then held
    runs = tmp_path / "runs"
    args = _args(assets, fake_webui, runs, "optimiser.init_points=1", "optimiser.n_iters=0", "run.seed=1,2",
                 f"webui.auth=alice:{PASSWORD}", "hydra.sweep.subdir=${hydra.job.override_dirname}", "-m")
    assert _cli(args) == 0
    assert len(list(runs.rglob("run.json"))) == 2
    assert [str(path) for path in runs.rglob("*") if PASSWORD in str(path)] == []
    assert [str(path) for path in runs.rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()] == []


@pytest.mark.parametrize("sweep_dir", [None, "named"])
def test_a_sweep_ended_by_a_value_hydra_cannot_compose_leaves_no_password_nor_its_folder(
        assets, fake_webui, tmp_path, caplog, sweep_dir):
    # Hydra writes multirun.yaml before the first job, and the job's config failed to compose (a seed of
    # 1.5 for an integer): the task that scrubs it never ran, and the password stayed there
    runs = tmp_path / "runs"
    named = [f"hydra.sweep.dir={tmp_path / 'mine'}"] if sweep_dir else []
    args = _args(assets, fake_webui, runs, "run.seed=1.5,2", f"webui.auth=alice:{PASSWORD}", *named, "-m")
    assert _cli(args) == 2
    assert "run.seed" in " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    left = [path for path in tmp_path.rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()]
    assert left == []
    assert fake_webui.requests == []
    if not sweep_dir:  # the folder made for the sweep goes, as when none of its jobs began a run
        assert not (runs / "multirun").exists()


@pytest.mark.parametrize("fake_webui", [{"auth": f"alice:{PASSWORD}"}], indirect=True)
def test_auth_beside_auth_env_is_used_and_says_the_variable_is_not_read(assets, fake_webui, tmp_path, caplog,
                                                                         monkeypatch):
    monkeypatch.delenv("BM_TEST_UNSET_AUTH", raising=False)
    args = _args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=1", "optimiser.n_iters=0",
                 f"webui.auth=alice:{PASSWORD}", "webui.auth_env=BM_TEST_UNSET_AUTH")
    with caplog.at_level(logging.WARNING):
        assert _cli(args) == 0
    assert ("webui.auth and webui.auth_env are both set: webui.auth is used, the variable BM_TEST_UNSET_AUTH is "
            "not read.") in caplog.text
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("override, shown", [
    ("webui.auth=alice:pw", "webui.auth=***"),
    ("+webui.auth='alice:p w'", "+webui.auth=***"),
    ("my.backend.Auth=x", "my.backend.Auth=***"),
    ("webui.auth_env=WEBUI_AUTH", "webui.auth_env=WEBUI_AUTH"),  # the name of a variable, not a secret
    ("webui.url=http://host", "webui.url=http://host"),
    # the section as a mapping: its auth was written to multirun.yaml, .hydra/ and the launcher's line
    ("webui={auth: 'alice:p w', url: http://h}", "webui={auth: ***, url: http://h}"),
    ("+webui={Auth: alice:pw}", "+webui={Auth: ***}"),
    ("webui={auth_env: WEBUI_AUTH}", "webui={auth_env: WEBUI_AUTH}"),
])
def test_an_override_is_redacted_by_the_key_it_sets(override, shown):
    assert redacted_override(override) == shown


def test_the_launchers_line_loses_a_quoted_password_with_spaces_whole():
    # the line was split at every unescaped space: 'alice:pass word tail' left "word tail'" shown
    from bayes_merger.cli_secrets import _redacted_words

    line = "#0 : run.seed=1 webui.auth='alice:pass word tail' webui={auth: \"x y\", url: h} webui.url=http://h"
    assert _redacted_words(line) == "#0 : run.seed=1 webui.auth=*** webui={auth: ***, url: h} webui.url=http://h"


def test_the_override_dirname_loses_the_password_whatever_its_separator():
    hydra_yaml = {"hydra": {
        "overrides": {"hydra": ["hydra.job.config.override_dirname.kv_sep=:"],
                      "task": ["run.seed=1", "webui.auth=alice\\:pw=x"]},
        "job": {"override_dirname": "run.seed:1,webui.auth:alice\\:pw:x",
                "config": {"override_dirname": {"kv_sep": ":", "item_sep": ","}}},
    }}
    scrubbed = _scrubbed(hydra_yaml)
    assert scrubbed["hydra"]["overrides"]["task"] == ["run.seed=1", "webui.auth=***"]
    assert scrubbed["hydra"]["job"]["override_dirname"] == "run.seed:1,webui.auth:***"
