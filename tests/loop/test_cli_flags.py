"""The command line a new user meets first: no arguments, --help, --version; and the progress bar."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from bayes_merger import __version__
from bayes_merger.cli import _run_dir, expand_home, main
from bayes_merger.cli_errors import integer_for_true_or_false
from bayes_merger.cli_help import GROUPS
from bayes_merger.scoring.registry import SCORERS

from test_cli_run import _args, _cli

REPO = Path(__file__).resolve().parents[2]


def _exit(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main(args)
    out, err = capsys.readouterr()
    return int(stopped.value.code or 0), out, err


def test_no_arguments_is_a_usage_line_and_exit_2_not_a_traceback():
    done = subprocess.run([sys.executable, "-c", "from bayes_merger.cli import main; main()"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: bayes-merger --config FILE")
    assert "Traceback" not in done.stderr and "--help" in done.stderr


def test_overrides_without_a_config_are_the_usage_too(capsys):
    code, out, err = _exit(["model_a=/m/a.safetensors"], capsys)
    assert code == 2 and err.startswith("usage: bayes-merger")


def test_version_is_the_tools_own(capsys):
    assert _exit(["--version"], capsys)[:2] == (0, f"bayes-merger {__version__}\n")


def _run_yaml_value(key: str):
    run = yaml.safe_load((REPO / "conf" / "run.yaml").read_text())
    groups = {k: v for entry in run["defaults"] if isinstance(entry, dict) for k, v in entry.items()}
    node: object = run
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            group = key.split(".")[0]
            node = yaml.safe_load((REPO / "conf" / group / f"{groups[group]}.yaml").read_text())
            return node[key.split(".", 1)[1]]
        node = node[part]
    return node


def test_help_read_by_a_pager_that_stops_early_ends_quietly():
    # `bayes-merger --help | head -1`: the reader has closed the pipe before the text ends (here: before it starts)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-c", "from bayes_merger.cli import main; main()", "--help"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_help_lists_the_groups_the_main_options_with_run_yaml_defaults_and_examples(capsys):
    code, out, _ = _exit(["--help"], capsys)
    assert code == 0 and out.startswith("usage: bayes-merger")
    for group in ("optimiser", "scorer", "merge"):
        options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        line = next(line for line in out.splitlines() if line.strip().startswith(group + " "))
        assert sorted(re.findall(r"\w+", line.split("default:")[0])[1:]) == options
    shown = dict(re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)*)\s+(\S+)\s", out, re.M))
    for key in ("model_a", "webui.url", "webui.checkpoint_dir", "optimiser.init_points", "optimiser.n_iters",
                "scorer.name", "merge.method", "run.dir", "resume", "save_best"):
        value = _run_yaml_value(key)
        expected = "required" if value == "???" else "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert shown[key] == expected, key
    assert "resume=runs/<run>" in out and "-m merge.method=" in out and "--config conf/run.yaml model_a=" in out
    scorer_names = next(line for line in out.splitlines() if line.strip().startswith("scorer.name "))
    assert all(name in scorer_names for name in SCORERS)
    usage = out.splitlines()[0]
    for flag in set(re.findall(r"--[a-z]+", usage)) - {"--help"}:  # every flag of the usage line explained
        assert re.search(rf"^  (?:-m, )?{flag}\b", out, re.M), flag


def test_the_groups_listed_without_conf_beside_the_package_are_conf_s():
    for group, options in GROUPS.items():
        assert sorted(options) == sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")), group


def test_log_lines_never_land_inside_the_progress_bar(assets, fake_webui, tmp_path, monkeypatch, capsys):
    # a library logger with its own console handler that does not propagate, as transformers sets up
    chatty = logging.getLogger("bm-test-library")
    handler = logging.StreamHandler(sys.stderr)
    chatty.addHandler(handler)
    chatty.propagate = False
    import bayes_merger.run as run_module

    original = run_module.score_trial

    def score_and_chat(*args, **kwargs):
        chatty.warning("library says hello")
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "score_trial", score_and_chat)
    try:
        assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 0
    finally:
        chatty.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("library says hello") == 5
    assert "trials:" in err, "the bar was drawn"
    for match in re.finditer("library says hello", err):
        assert match.start() == 0 or err[match.start() - 1] in "\r\n", "the line was written into the bar"
    assert chatty.handlers == [], "the console handlers are given back"


@pytest.mark.parametrize("override, sentence", [
    ("run.seed=1.5", "run.seed must be an integer, not 1.5."),
    ("optimiser.init_points=abc", "optimiser.init_points must be an integer, not 'abc'."),
    ("demo=maybe", "demo must be true or false, not 'maybe'."),
    ("merge.metod=weighted_sum", ("merge.metod is not a setting of bayes-merger (did you mean merge.method?); "
                                  "bayes-merger --help lists them.")),
    ("merge.xyzzy=1", "merge.xyzzy is not a setting of bayes-merger (a misspelling?); bayes-merger --help lists them."),
])
def test_an_override_of_the_wrong_type_is_one_sentence_and_exit_2(override, sentence, capsys, caplog):
    code, _, err = _exit(["--config", str(REPO / "conf" / "demo.yaml"), "demo=false", override], capsys)
    assert code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [sentence]
    assert "HYDRA_FULL_ERROR" not in err and "Traceback" not in err
    assert "HYDRA_FULL_ERROR" not in os.environ, "the switch is the CLI's own, not left for what it starts"


FORMER_OPTIMISER = ("is sd-webui-bayesian-merger's; bayes-merger's optimiser is one Gaussian process (the README's "
                    "benchmark compares it with TPE), and optimiser=default|quick|thorough picks its preset.")
HEADER = "defaults:\n  - bayes_merger\n  - optimiser: default\n  - scorer: laion\n  - merge: weighted_sum\n  - _self_\n"


@pytest.mark.parametrize("lines, sentence", [
    ("url: http://127.0.0.1:7860\nsave_imgs: true\n",
     "--config {old} holds what sd-webui-bayesian-merger calls its settings: url (webui.url here), save_imgs "
     "(save_images here); bayes-merger --help lists the settings."),
    ("optimiser: bayes\n", "--config {old} holds what sd-webui-bayesian-merger calls its settings: optimiser bayes (here "
                           "one Gaussian process, its preset optimiser=default|quick|thorough); bayes-merger --help lists "
                           "the settings."),
    ("optimiser:\n  n_iter: 5\n",
     "optimiser.n_iter is not a setting of bayes-merger (did you mean optimiser.n_iters?); bayes-merger --help lists them."),
    ("", f"optimiser tpe {FORMER_OPTIMISER}"),  # with optimiser=tpe
])
def test_a_config_with_a_setting_bayes_merger_does_not_have_gets_it_named(lines, sentence, tmp_path, capsys, caplog):
    # the names users of sd-webui-bayesian-merger bring get the setting that does their job here
    shutil.copytree(REPO / "conf", tmp_path, dirs_exist_ok=True)  # the groups its defaults name
    (tmp_path / "old.yaml").write_text(HEADER + lines)
    overrides = [] if lines else ["optimiser=tpe"]
    code, _, err = _exit(["--config", str(tmp_path / "old.yaml"), *overrides], capsys)
    assert code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [sentence.format(old=tmp_path / "old.yaml")]
    assert "Traceback" not in err


@pytest.mark.parametrize("lines, override, sentence", [
    ("save_images: 2\n", [], "save_images must be true or false, not 2."),
    ("", ["merge.weights_clip=2"], "merge.weights_clip must be true or false, not 2."),
])
def test_an_integer_other_than_0_or_1_for_a_true_or_false_setting_is_one_sentence(lines, override, sentence, tmp_path,
                                                                                   capsys, caplog):
    # OmegaConf takes any integer for a bool (2 is true), where it refuses 'maybe' and 0.5
    shutil.copytree(REPO / "conf", tmp_path, dirs_exist_ok=True)
    (tmp_path / "run.yaml").write_text(HEADER + "merge:\n  weights_clip: 1\n" + lines)
    code, _, err = _exit(["--config", str(tmp_path / "run.yaml"), f"hydra.run.dir={tmp_path / 'run'}",
                          "hydra/job_logging=none", "hydra/hydra_logging=none", *override], capsys)
    assert code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [sentence]
    assert "Traceback" not in err


def test_only_0_and_1_are_taken_as_integers_for_true_or_false():
    assert integer_for_true_or_false([("merge.weights_clip", 1), ("save_best", 0), ("webui.pipeline", "1"),
                                      ("optimiser.init_points", 2), ("demo", True)]) is None
    assert str(integer_for_true_or_false([("webui.pipeline", "-1")])) == "webui.pipeline must be true or false, not '-1'."


def test_a_config_file_that_is_not_yaml_is_one_sentence_naming_the_line(tmp_path, capsys, caplog):
    shutil.copytree(REPO / "conf", tmp_path, dirs_exist_ok=True)
    (tmp_path / "broken.yaml").write_text(HEADER + "model_a: [a\n")
    code, _, err = _exit(["--config", str(tmp_path / "broken.yaml")], capsys)
    assert code == 2
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said.startswith("A config file is not valid YAML at line 8, column 1: expected ',' or ']'")
    assert "Traceback" not in err


def test_a_config_file_hydra_would_not_read_is_refused_not_swapped_for_another(tmp_path, capsys, caplog):
    # Hydra reads <name>.yaml: run.yml would have been run.yaml beside it, the edits in run.yml ignored
    shutil.copy(REPO / "conf" / "demo.yaml", tmp_path / "demo.yaml")
    shutil.copy(REPO / "conf" / "demo.yaml", tmp_path / "demo.yml")
    code, _, _ = _exit(["--config", str(tmp_path / "demo.yml")], capsys)
    assert code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"--config {tmp_path / 'demo.yml'}: Hydra reads only .yaml files; rename it to demo.yaml."]


def test_a_config_file_that_does_not_build_on_the_settings_is_one_sentence_and_leaves_no_folder(tmp_path, capsys,
                                                                                                caplog, monkeypatch):
    # a few lines of one's own (every config of sd-webui-bayesian-merger's too): a traceback at config.resume, exit 1,
    # and Hydra's outputs/<date>/<time> left, --check included
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("model_a: /m/a.safetensors\nmodel_b: /m/b.safetensors\n")
    sentence = ("does not build on bayes-merger's settings: begin it with `defaults: [bayes_merger, _self_]`, as "
                "conf/run.yaml does, so that a setting it leaves out takes its default and a misspelt one is refused.")
    for args in (["--config", "mine.yaml", "--check"], ["--config", "mine.yaml"],
                 ["--config-path", str(tmp_path), "--config-name", "mine", "--check"]):
        caplog.clear()
        code, out, err = _exit(args, capsys)
        assert code == 2 and "Traceback" not in err, err
        if args[0] == "--config":  # refused before Hydra made a folder (its own flags reach the task: one is made)
            [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert said.endswith(sentence), said
            assert [path.name for path in tmp_path.iterdir()] == ["mine.yaml"]
        else:  # said through the job's logging, which Hydra set up
            assert f"The config {sentence}" in out + err, out + err
    # one that builds on a file of its folder that does (conf/run.yaml) is taken
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    (tmp_path / "conf" / "mine.yaml").write_text("defaults:\n  - run\n  - _self_\noptimiser:\n  n_iters: 3\n")
    from bayes_merger.cli import builds_on_schema
    assert builds_on_schema(tmp_path / "conf" / "mine.yaml") is True
    assert builds_on_schema(tmp_path / "mine.yaml") is False
    (tmp_path / "conf" / "elsewhere.yaml").write_text("defaults:\n  - not_here\n  - _self_\n")
    assert builds_on_schema(tmp_path / "conf" / "elsewhere.yaml") is None  # Hydra says what is missing


def test_an_old_tools_config_is_refused_naming_every_old_setting_at_once(tmp_path, capsys, caplog, monkeypatch):
    # one refusal a key: mending sd-webui-bayesian-merger's conf/config.yaml took a start for each of its 20 keys
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - _self_\n  - payloads: cargo\n  - optimisation_guide: guide\n"
        "run_name: ${optimiser}_${scorer_method}\nhydra:\n  run:\n    dir: logs/${now:%Y-%m-%d}_${run_name}\n"
        "url: http://127.0.0.1:7860\nmodel_a: a.safetensors\nmodel_b: b.safetensors\nmerge_mode: weighted_sum\n"
        "optimiser: bayes\nbatch_size: 1\nsave_imgs: false\nthreads: 4\nsave_best: false\n")
    assert _exit(["--config", "config.yaml", "--check"], capsys)[0] == 2
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said == (
        "--config config.yaml holds what sd-webui-bayesian-merger calls its settings: run_name (none here: a run's "
        "folder is named by run.dir, its time, merge method and scorer), url (webui.url here), merge_mode (merge.method "
        "here), batch_size (payloads.defaults.batch_size here), save_imgs (save_images here), threads (none here: torch "
        "sets its own threads), the group payloads in its defaults (here payloads.dir names the folder of payload "
        "files), the group optimisation_guide in its defaults (here optimiser.frozen, optimiser.custom_ranges and "
        "optimiser.groups), optimiser bayes (here one Gaussian process, its preset optimiser=default|quick|thorough); "
        "bayes-merger --help lists the settings.")
    assert [path.name for path in tmp_path.iterdir()] == ["config.yaml"]  # nothing made: no logs/, no outputs/


def test_a_hydra_setting_that_cannot_be_resolved_is_one_sentence(tmp_path, capsys, caplog, monkeypatch):
    # the old tool's hydra.run.dir kept once its run_name is gone: a 95-line traceback, exit 1
    monkeypatch.chdir(tmp_path)
    code, out, err = _exit(["--config", str(REPO / "conf" / "demo.yaml"), "--check", "hydra.run.dir=logs/${run_name}"],
                           capsys)
    assert code == 2
    assert "hydra.run.dir cannot be resolved: Interpolation key 'run_name' not found." in out + err + caplog.text
    assert "omegaconf.errors" not in out + err


def test_the_demo_writes_its_tiny_clip_only_into_a_new_or_empty_folder(tmp_path, capsys, monkeypatch):
    # it wrote into any folder without a config.json: scorer.clip=. (or empty) replaced the user's model.safetensors
    monkeypatch.chdir(tmp_path)
    for name in ("conf", "payloads"):
        (tmp_path / name).symlink_to(REPO / name)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"the user's own")
    for clip in ("mine", ""):
        code, out, err = _exit(["--config", "conf/demo.yaml", "--check", f"scorer.clip={clip}"], capsys)
        assert code == 2  # said through the job's logging, which Hydra set up
        assert (f"scorer.clip '{clip}' holds no CLIP model (no config.json) but is not a new or empty folder, where "
                "the demo writes its tiny one: name a new folder.") in out + err, out + err
    assert (mine / "model.safetensors").read_bytes() == b"the user's own"
    main(["--config", "conf/demo.yaml", "--check", "scorer.clip=new-clip"])  # passes: no exit
    assert (tmp_path / "new-clip" / "config.json").is_file()


def test_a_config_of_ones_own_runs_in_run_dir_as_conf_run_yaml_does(tmp_path, capsys, monkeypatch):
    # Hydra's settings were in conf/run.yaml only: a config of one's own built on bayes_merger ran in ./outputs/<date>/
    # <time>/ with a .hydra folder (the WebUI password in it), run.dir ignored, and a refused start left it there
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own.yaml").write_text(f"defaults:\n  - bayes_merger\n  - _self_\nmodel_a: {tmp_path / 'a.safetensors'}\n"
                                       f"model_b: {tmp_path / 'b.safetensors'}\nrun:\n  dir: {tmp_path / 'runs'}\n")
    code, out, err = _exit(["--config", "own.yaml", "webui.auth=alice:S3cretPW"], capsys)
    assert code == 2 and "webui.checkpoint_dir is required" in out + err
    assert [path.name for path in tmp_path.iterdir()] == ["own.yaml"]  # the refused start's folder went with it
    from hydra import compose, initialize_config_dir
    from bayes_merger.config import register_configs
    register_configs()
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        hydra_cfg = compose("own", return_hydra_config=True).hydra
    assert hydra_cfg.output_subdir is None and hydra_cfg.job.name == "bayes-merger"
    assert OmegaConf.to_container(hydra_cfg.run, resolve=False)["dir"].startswith("${bm_run_dir:")


@pytest.mark.parametrize("override, sentence", [
    ("optimiser.n_iters=${oc.env:BM_TEST_UNSET}",
     "optimiser.n_iters cannot be resolved: KeyError raised while resolving interpolation: \"Environment variable "
     "'BM_TEST_UNSET' not found\"."),
    ("webui.checkpoint_dir=${oc.env:BM_TEST_UNSET}", "webui.checkpoint_dir cannot be resolved: KeyError raised"),
    ("model_a=${nope}", "model_a cannot be resolved: Interpolation key 'nope' not found."),
])
def test_a_setting_that_cannot_be_resolved_is_one_sentence_naming_it(tmp_path, capsys, monkeypatch, override, sentence):
    # ${oc.env:…} keeps paths out of a config: unset, it was a 160-line traceback, exit 1, and a run folder left
    monkeypatch.delenv("BM_TEST_UNSET", raising=False)
    code, out, err = _exit(["--config", str(REPO / "conf" / "demo.yaml"), "--check", f"run.dir={tmp_path / 'runs'}",
                            override], capsys)
    assert code == 2 and sentence in out + err and "Traceback" not in err, out + err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("lines, sentence", [
    # a group's preset written in the body (the README's scorer=pickscore, as a file's line)
    ("scorer: pickscore\n", "scorer must be a section (scorer.<setting>=...), not 'pickscore' (a preset of conf/scorer/ "
                            "is chosen in the defaults list, `- scorer: pickscore`, or on the command line, "
                            "scorer=pickscore)."),
    ("webui: foo\n", "webui must be a section (webui.<setting>=...), not 'foo'."),
    ("optimiser:\n  frozen: [1, 2]\n", "optimiser.frozen must be a mapping of numbers ({name: value}), not [1, 2]."),
    ("webui:\n  urls: {a: 1}\n", "webui.urls must be a list of strings ([a, b]), not {'a': 1}."),
])
def test_a_setting_of_the_wrong_kind_in_a_config_file_is_one_sentence_naming_it(tmp_path, capsys, caplog, lines,
                                                                               sentence):
    # Hydra's merge error names no key: "In 'own': ValidationError …; Merge error: str is not a subclass of …; full_key:."
    (tmp_path / "own.yaml").write_text("defaults:\n  - bayes_merger\n  - _self_\n" + lines)
    assert _exit(["--config", str(tmp_path / "own.yaml"), "--check"], capsys)[0] == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [sentence]


@pytest.mark.parametrize("args, sentence", [
    (["--config", "conf", "--check"], "--config conf is a folder: give the config file in it, e.g. --config conf/run.yaml."),
    (["--config", "conf/demo.yaml", "--config", "conf/run.yaml"],  # was argparse's usage and "ambiguous option"
     "--config is given more than once: give one config file (a file may build on another in its folder, `defaults: "
     "[run, _self_]`)."),
    (["--config", "conf/demo.yaml", "--check", "--cfg", "job"],  # Hydra printed the config and the check never ran
     "--check and --cfg together: Hydra prints the config without running the check; give one of them."),
])
def test_command_line_mistakes_are_one_sentence(args, sentence, capsys, caplog, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, err = _exit(args, capsys)
    assert code == 2 and "usage:" not in err
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [sentence]


def test_comfyuis_settings_beside_the_a1111_backend_are_said_to_be_unused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's check makes its tiny models here
    for name in ("conf", "payloads"):
        (tmp_path / name).symlink_to(REPO / name)
    main(["--config", "conf/demo.yaml", "--check", "webui.comfyui_handoff=file",
          "webui.comfyui_workflow=/nonexistent/workflow.json"])
    assert ("webui.comfyui_handoff and webui.comfyui_workflow are for ComfyUI, and webui.backend is a1111: not used."
            in capsys.readouterr().out)


def test_hydra_full_error_set_by_the_user_still_gets_hydras_whole_report(monkeypatch):
    from hydra.errors import ConfigCompositionException

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException, match="run.seed=1.5"):
        main(["--config", str(REPO / "conf" / "demo.yaml"), "demo=false", "run.seed=1.5"])


def test_a_run_folder_whose_log_cannot_be_written_is_one_sentence_and_exit_2(tmp_path):
    # a run started with sudo, resumed as the user; here its log is a folder (root writes anywhere)
    folder = tmp_path / "run"
    (folder / "bayes-merger.log").mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    done = subprocess.run([sys.executable, "-c", "from bayes_merger.cli import main; main()", "--config",
                           str(REPO / "conf" / "demo.yaml"), f"resume={folder}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"The run's log {folder / 'bayes-merger.log'} cannot be written (Is a directory): the run folder must be " \
           "one this user can write." in done.stderr + done.stdout


def test_a_path_beginning_with_a_tilde_is_in_the_users_home(monkeypatch, tmp_path):
    # Hydra's grammar reads no unquoted ~, and neither bash (for run.dir=) nor zsh (at all) expands it there
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_home([
        "model_a=~/m/a.safetensors", "run.dir=~", "+payloads.dir=~/my payloads", "--config-path", "~/conf",
        "optimiser.xi=0,0.01", "model_a=~/a,~/b", "model_b=~no-such-user-of-bm/b", "webui.auth=~root",
        "webui.url=http://h/~x",
    ]) == [
        f"model_a={tmp_path}/m/a.safetensors", f"run.dir={tmp_path}", f"+payloads.dir='{tmp_path}/my payloads'",
        "--config-path", "~/conf", "optimiser.xi=0,0.01", "model_a=~/a,~/b", "model_b=~no-such-user-of-bm/b",
        "webui.auth=~root", "webui.url=http://h/~x",
    ]


def test_run_dir_in_the_users_home_is_made_there_not_in_a_folder_named_tilde(assets, fake_webui, tmp_path,
                                                                               monkeypatch):
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    # as a shell passes it (run.dir=~/runs) and as a config file's `dir: ~/runs` reaches the run folder's name
    assert _cli(_args(assets, fake_webui, Path("~/runs"), "optimiser.init_points=2", "optimiser.n_iters=0")) == 0
    assert len(list((home / "runs").glob("*/trials.jsonl"))) == 1
    assert _run_dir(None, "~/runs", "weighted_sum", "laion").startswith(f"{home}/runs/")
    assert list(here.iterdir()) == []
