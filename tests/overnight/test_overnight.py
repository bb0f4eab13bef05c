"""bayes-merger-overnight, driven as a scheduler drives it: a subprocess, with the fake A1111 server as its WebUI.

The nights run the real ``bayes-merger`` over real HTTP against ``python -m
bayes_merger.testing.fake_webui``, on tiny generated models with a tiny CLIP scorer. A bayes-merger
start costs seconds (torch, transformers), so one scenario of two nights is run once and its
behaviours are checked by separate tests: night 1 starts a new run, its WebUI dies after each of its
first two lives' trial, is restarted once, then the night gives up; night 2 resumes the run and
finishes it. Budgets are initial trials only (an optimisation step fits a Gaussian process: seconds).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pytest

from bayes_merger.config import hydra_value
from bayes_merger.overnight.settings import (
    Failure,
    deadline_from,
    load_env_file,
    night_of,
    parse_sections,
    watched_url,
    webui_url_of,
)
from bayes_merger.run_folder import unfinished
from bayes_merger.testing.fake_http import free_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the virtual environment's: bayes-merger lies beside it
NIGHT_TIMEOUT = 240  # seconds: a bound for a hung script, never reached when it works
TXT2IMG_PER_TRIAL = 2  # payloads/demo.yaml has two payloads

DYING_WEBUI = '''
"""The fake WebUI, mortal: its first DEATHS lives exit right after answering N txt2img requests."""
import os, sys, time
from pathlib import Path
from bayes_merger.testing.fake_webui import FakeWebUI, main

checkpoint_dir, port, counter, deaths, n = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
died = int(counter.read_text()) if counter.exists() else 0
if died >= deaths:  # a healthy WebUI from now on
    sys.exit(main(["--checkpoint-dir", checkpoint_dir, "--port", str(port)]))


class Mortal(FakeWebUI):
    answered = 0

    def _route(self, method, path, raw):
        # the client asks something after the N-th txt2img, so that answer has arrived: die now, in the
        # request itself (a poll of the records could miss a whole trial on a busy machine)
        if self.answered >= n:
            counter.write_text(str(died + 1))
            os._exit(1)  # a crash: no goodbye, every connection reset
        response = super()._route(method, path, raw)
        self.answered += path == "/sdapi/v1/txt2img"
        return response


Mortal(Path(checkpoint_dir), port=port).start()
time.sleep(120)  # a life that is never asked enough ends all the same
counter.write_text(str(died + 1))
os._exit(1)  # a crash: no goodbye, every connection reset
'''

STAND_IN_BAYES_MERGER = '''
"""A stand-in for bayes-merger: prints a composed config for --cfg, passes --check, else works until Ctrl-C."""
import signal, sys
from pathlib import Path

marks = Path(sys.argv[1])
if "--cfg" in sys.argv:
    print(f"run:\\n  dir: {marks / 'runs'}\\nwebui:\\n  url: {sys.argv[2]}")
    sys.exit(0)
if "--check" in sys.argv:
    sys.exit(0)
(marks / "started").touch()
try:
    while True:
        signal.pause()
except KeyboardInterrupt:
    (marks / "interrupted").touch()
    sys.exit(130)
'''


def port_is_free(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


class World:
    """A night's world in a folder: config, WebUI command, logs and runs."""

    def __init__(self, folder: Path, assets: dict[str, Path], init_points: int = 2) -> None:
        self.folder = folder
        self.port = free_port()
        self.checkpoint_dir = folder / "webui-models"
        self.checkpoint_dir.mkdir()
        self.runs = folder / "runs"
        self.logs = folder / "logs"
        self.assets = assets
        self.config = self.write_config("night.yaml", init_points=init_points)
        self.webui_command = (f"{PYTHON} -m bayes_merger.testing.fake_webui --checkpoint-dir {self.checkpoint_dir} "
                              f"--port {self.port}")

    def write_config(self, name: str, init_points: int = 2, model_a: Path | None = None,
                     **webui: object) -> Path:
        """conf/demo.yaml's settings against a WebUI over real HTTP, with test-sized timeouts and budget;
        ``webui``: more or other ``webui.`` settings."""
        settings = {"url": f"http://127.0.0.1:{self.port}", "checkpoint_dir": self.checkpoint_dir,
                    "connect_timeout": 2.0, "read_timeout": 30.0, "retries": 1, "backoff_factor": 0.0,
                    "ready_timeout": 10.0, "poll_interval": 0.1, **webui}
        webui_lines = "".join(f"\n  {key}: {value}" for key, value in settings.items())
        text = textwrap.dedent(f"""\
            defaults:
              - bayes_merger
              - _self_
            demo: false
            model_a: {model_a or self.assets["model_a"]}
            model_b: {self.assets["model_b"]}
            save_images: false
            save_best: false
            run:
              dir: {self.runs}
            webui:@WEBUI@
            payloads:
              dir: {REPO / "payloads" / "demo.yaml"}
              wildcards_dir: {REPO / "payloads" / "wildcards"}
            scorer:
              name: aesthetic_head
              clip: {self.assets["scorer.clip"]}
              head: {self.assets["scorer.head"]}
            optimiser:
              init_points: {init_points}
              n_iters: 0
            hydra:
              run:
                dir: ${{bm_run_dir:${{resume}},${{run.dir}},${{merge.method}},${{scorer.name}}}}
              output_subdir: null
              job:
                chdir: false
            """).replace("@WEBUI@", webui_lines)
        path = self.folder / name
        path.write_text(text)
        return path

    def mortal_webui(self, deaths: int, after_trials: int = 1) -> str:
        wrapper = self.folder / "mortal_webui.py"
        wrapper.write_text(DYING_WEBUI)
        return (f"{PYTHON} {wrapper} {self.checkpoint_dir} {self.port} {self.folder / 'deaths'} {deaths} "
                f"{after_trials * TXT2IMG_PER_TRIAL}")

    def command(self, *args: str, config: Path | None = None) -> list[str]:
        # what the bayes-merger-overnight console script runs
        return [PYTHON, "-m", "bayes_merger.overnight", "--config", str(config or self.config), *args]

    def env(self, webui_command: str | None = None) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}  # as under cron
        return {**inherited, "WEBUI_COMMAND": webui_command or self.webui_command, "WEBUI_READY_TIMEOUT": "60",
                "WEBUI_STOP_GRACE": "10", "OVERNIGHT_LOG_DIR": str(self.logs),
                "OMP_NUM_THREADS": "1"}  # two shared cores: torch's threads would only contend

    def night(self, *args: str, webui_command: str | None = None, config: Path | None = None) -> Night:
        result = subprocess.run(self.command(*args, config=config), cwd=self.folder, env=self.env(webui_command),
                                capture_output=True, text=True, timeout=NIGHT_TIMEOUT)
        return Night(result.returncode, result.stderr, self.log_text(), self.run_folders())

    def log_text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.logs.glob("overnight-*.log")) if not p.name.endswith(".webui.log"))

    def run_folders(self) -> list[Path]:
        return sorted(p for p in self.runs.iterdir() if p.is_dir()) if self.runs.is_dir() else []

    def assert_webui_gone(self, log: str | None = None) -> None:
        """Nothing listens on the WebUI's port and every WebUI process the log names has ended."""
        assert port_is_free(self.port)
        pids = [int(pid) for pid in re.findall(r"WebUI started, pid (\d+)", log or self.log_text())]
        assert pids, "the log names the WebUI's pid"
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


@dataclass(frozen=True)
class Night:
    returncode: int
    stderr: str
    log: str  # the night logs so far, all nights included
    run_folders: list[Path]


def trials(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]


def finished(folder: Path) -> bool:
    return "finished_at" in json.loads((folder / "run.json").read_text())


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory, assets: dict[str, Path]) -> dict:
    """Night 1: a new run of 3 trials; the WebUI dies after trial 0, is restarted, dies after trial 1;
    one restart allowed, so the night gives up. Night 2: a healthy WebUI; the run is resumed."""
    world = World(tmp_path_factory.mktemp("two-nights"), assets, init_points=3)
    mortal = world.mortal_webui(deaths=2, after_trials=1)
    first = world.night("--max-restarts", "1", webui_command=mortal)
    after_first = {f: trials(f) for f in first.run_folders}
    first_port_free = port_is_free(world.port)
    first_unfinished = [not finished(f) for f in first.run_folders]
    second = world.night("--max-restarts", "1", webui_command=mortal)
    return {"world": world, "first": first, "after_first": after_first, "first_port_free": first_port_free,
            "first_unfinished": first_unfinished, "second": second}


# ---------------------------------------------------------------------------------- nights


def test_a_webui_that_dies_mid_run_is_restarted_and_the_run_resumed_in_the_same_folder(two_nights: dict) -> None:
    first = two_nights["first"]

    assert "The WebUI went down; restarting it and resuming (restart 1 of 1)." in first.log
    assert len(re.findall(r"WebUI started, pid", first.log)) == 2
    [folder] = first.run_folders
    assert f"overnight INFO Resuming {folder} (" in first.log
    assert [t["trial"] for t in two_nights["after_first"][folder]] == [0, 1]
    assert all(t["status"] == "ok" for t in two_nights["after_first"][folder])


def test_a_night_gives_up_non_zero_when_the_webui_dies_more_often_than_allowed(two_nights: dict) -> None:
    first = two_nights["first"]

    assert first.returncode == 6  # bayes-merger's "stopped, resumable"
    assert "The WebUI went down 2 times; giving up" in first.log
    assert two_nights["first_unfinished"] == [True]  # left unfinished, for the next night
    assert two_nights["first_port_free"]


def test_the_next_night_resumes_the_unfinished_run_without_repeating_trials(two_nights: dict) -> None:
    [folder] = two_nights["first"].run_folders
    second = two_nights["second"]

    assert second.run_folders == [folder]
    assert second.log.count(f"overnight INFO Resuming {folder} (") == 2  # once in night 1, once in night 2
    assert [t["trial"] for t in trials(folder)] == [0, 1, 2]
    assert trials(folder)[:2] == two_nights["after_first"][folder]  # kept, not redone
    assert finished(folder)


def test_a_complete_night_exits_zero_and_stops_the_webui_it_started(two_nights: dict) -> None:
    world, second = two_nights["world"], two_nights["second"]

    assert second.returncode == 0, second.stderr
    assert "The run finished its budget." in second.log
    world.assert_webui_gone()
    assert "sd_checkpoints_limit = 1 set" in second.log and "sd_checkpoint_cache = 0 set" in second.log
    assert "Best score" in second.log  # bayes-merger's own output is in the night's log


def test_one_log_file_per_night_appended_to_by_each_start(two_nights: dict) -> None:
    logs = two_nights["world"].logs

    [night_log] = [p for p in logs.glob("overnight-*.log") if not p.name.endswith(".webui.log")]
    assert night_log.read_text().count("---- overnight run, pid") == 2
    assert (logs / night_log.name.replace(".log", ".webui.log")).is_file()  # the WebUI's console beside it


def test_a_second_instance_exits_at_once_while_the_lock_is_held(tmp_path: Path, assets: dict[str, Path]) -> None:
    world = World(tmp_path, assets)
    world.runs.mkdir()
    with open(world.runs / ".overnight.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        night = world.night()

    assert night.returncode == 75
    assert "Another overnight run is working on" in night.stderr
    assert "Another overnight run is working on" in night.log
    assert "Starting the WebUI" not in night.log
    assert night.run_folders == []


def test_the_webui_url_and_password_the_night_is_given_are_those_bayes_merger_uses(
        tmp_path: Path, assets: dict[str, Path]) -> None:
    world = World(tmp_path, assets)
    # the config names another port and no password: WEBUI_URL and WEBUI_AUTH are what the night was given
    config = world.write_config("elsewhere.yaml", url=f"http://127.0.0.1:{free_port()}")
    env = {**world.env(world.webui_command + " --api-auth me:s3cret"), "WEBUI_URL": f"http://127.0.0.1:{world.port}",
           "WEBUI_AUTH": "me:s3cret"}
    result = subprocess.run(world.command(config=config), cwd=world.folder, env=env, capture_output=True, text=True,
                            timeout=NIGHT_TIMEOUT)

    assert result.returncode == 0, world.log_text()[-3000:]
    [folder] = world.run_folders()
    assert finished(folder) and [t["status"] for t in trials(folder)] == ["ok", "ok"]
    assert "s3cret" not in world.log_text() and "s3cret" not in (folder / "config.yaml").read_text()
    world.assert_webui_gone()


def test_a_bad_input_is_said_before_the_webui_is_started(tmp_path: Path, assets: dict[str, Path]) -> None:
    world = World(tmp_path, assets)
    config = world.write_config("broken.yaml", model_a=tmp_path / "missing.safetensors")

    night = world.night(config=config)

    assert night.returncode == 2  # bayes-merger's config error
    sentence = f"bayes-merger refuses to start: model_a: {tmp_path / 'missing.safetensors'} does not exist."
    # cron's redirect (not a terminal, not systemd's journal) gets the errors, the night's log the rest
    assert sentence in night.log and sentence in night.stderr and "overnight INFO" not in night.stderr
    assert "WebUI started" not in night.log and "Waiting up to" not in night.log  # no WebUI started, none waited for
    assert night.run_folders == [] and port_is_free(world.port)


def test_a_failed_run_passes_on_its_exit_code_and_still_stops_the_webui(tmp_path: Path, assets: dict[str, Path]) -> None:
    world = World(tmp_path, assets)
    elsewhere = tmp_path / "not-scanned"  # a folder the WebUI does not scan: found only by asking it
    elsewhere.mkdir()
    config = world.write_config("elsewhere.yaml", checkpoint_dir=elsewhere)

    night = world.night(config=config)

    assert night.returncode == 4  # bayes-merger's WebUI error
    assert "The config and its inputs are fine" in night.log and "WebUI started" in night.log
    said = "bayes-merger stopped (exit code 4) while the WebUI still answers: not a WebUI crash, so no restart"
    assert said in night.log and said in night.stderr
    world.assert_webui_gone()


def test_sigterm_reaches_bayes_merger_as_ctrl_c_and_the_webui_is_stopped(tmp_path: Path, assets: dict[str, Path]) -> None:
    world = World(tmp_path, assets)
    stand_in = tmp_path / "bayes_merger_stand_in.py"
    stand_in.write_text(STAND_IN_BAYES_MERGER)
    command = world.command("--bayes-merger", f"{PYTHON} {stand_in} {tmp_path} http://127.0.0.1:{world.port}")
    script = subprocess.Popen(command, cwd=tmp_path, env=world.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and script.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "started").exists(), "the stand-in bayes-merger was started"
        script.send_signal(signal.SIGTERM)
        _, stderr = script.communicate(timeout=60)
    finally:
        if script.poll() is None:
            script.kill()

    assert script.returncode == 128 + signal.SIGTERM, stderr
    assert (tmp_path / "interrupted").exists()  # it got a Ctrl-C, and could save its state
    assert "Got SIGTERM" in world.log_text()
    world.assert_webui_gone()


# ---------------------------------------------------------------------------- the helpers


def test_deadline_is_the_next_occurrence_of_the_clock_time_or_the_earlier_max_hours() -> None:
    evening = datetime(2026, 3, 1, 23, 30)

    assert deadline_from("07:00", None, evening) == datetime(2026, 3, 2, 7, 0)
    assert deadline_from("23:45", None, evening) == datetime(2026, 3, 1, 23, 45)
    assert deadline_from("07:00", 2, evening) == datetime(2026, 3, 2, 1, 30)
    assert deadline_from(None, None, evening) is None
    with pytest.raises(Failure, match=r"--deadline must be HH:MM \(24 h\), got '7h'\."):
        deadline_from("7h", None, evening)


def test_a_night_runs_from_noon_to_noon() -> None:
    assert night_of(datetime(2026, 3, 1, 23, 30)) == date(2026, 3, 1)
    assert night_of(datetime(2026, 3, 2, 1, 30)) == date(2026, 3, 1)
    assert night_of(datetime(2026, 3, 2, 12, 30)) == date(2026, 3, 2)


def test_latest_unfinished_is_the_newest_run_without_finished_at(tmp_path: Path) -> None:
    for name, started, done in [("old", "2026-03-01T22:00:00", False), ("newer", "2026-03-02T22:00:00", False),
                                ("newest-but-finished", "2026-03-03T22:00:00", True)]:
        (tmp_path / name).mkdir()
        meta = {"started_at": started, **({"finished_at": "2026-03-04T06:00:00"} if done else {})}
        (tmp_path / name / "run.json").write_text(json.dumps(meta))
    (tmp_path / "no-run-json").mkdir()

    assert unfinished(tmp_path) == tmp_path / "newer"
    assert unfinished(tmp_path / "nothing-here") is None


def test_the_composed_config_is_read_from_omegaconf_yaml() -> None:
    text = ("model_a: a.safetensors\nrun:\n  seed: 42\n  dir: '0123'\nwebui:\n  url: http://h:7861\n  auth: null\n"
            "  checkpoint_dir: \"/a b/c\"\npayloads:\n  defaults: {}\n")

    sections = parse_sections(text)

    assert sections["run"] == {"seed": 42, "dir": "0123"}
    assert sections["webui"] == {"url": "http://h:7861", "auth": None, "checkpoint_dir": "/a b/c"}
    assert "model_a" not in sections  # a scalar, not a section


def test_a_config_that_leaves_a_required_setting_unset_ends_the_night_before_it_starts() -> None:
    # every bayes-merger start would end with exit 2, after the WebUI was started and waited for
    text = "model_a: ???\nmodel_b: b.safetensors\nwebui:\n  url: http://h:7861\n  checkpoint_dir: ???\n"
    with pytest.raises(Failure, match=r"The config leaves model_a, webui.checkpoint_dir unset: set them in the "
                                      r"config or as overrides after it \(e.g. model_a=...\)") as failure:
        parse_sections(text)
    assert failure.value.code == 2


def test_the_night_watches_the_one_webui_the_run_uses_and_refuses_several() -> None:
    assert webui_url_of(parse_sections("webui:\n  url: http://h:7860\n  urls: []\n")) == "http://h:7860"
    assert webui_url_of(parse_sections("webui:\n  url: http://h:7860\n  urls: [http://h:7861]\n")) == "http://h:7861"
    # it would wait for, configure and restart a WebUI the run does not use
    with pytest.raises(Failure, match=r"renders on 2 WebUIs \(webui.urls\), and bayes-merger-overnight watches one") as failure:
        webui_url_of(parse_sections("webui:\n  url: http://h:7860\n  urls: [http://h:7861, http://h:7862]\n"))
    assert failure.value.code == 2
    with pytest.raises(Failure, match=r"renders on a Ray cluster's hosts \(cluster.address\)"):
        webui_url_of(parse_sections("webui:\n  url: http://h:7860\ncluster:\n  address: auto\n"))


def test_a_webui_url_given_to_the_night_is_the_one_the_run_uses_or_refused() -> None:
    one = parse_sections("webui:\n  url: http://h:7861\n  urls: [http://h:7860]\n")  # webui.url=<given> passed on
    # bayes-merger renders on webui.urls' one entry: the night watched --webui-url's WebUI, which the run never used
    with pytest.raises(Failure, match=r"--webui-url \(WEBUI_URL\) http://h:7861 is passed on as webui.url, but the "
                                      r"config renders on webui.urls \[http://h:7860\]") as failure:
        watched_url("http://h:7861", one)
    assert failure.value.code == 2
    assert watched_url("http://h:7860", one) == "http://h:7860"
    assert watched_url(None, one) == "http://h:7860"
    assert watched_url("http://h:7861", parse_sections("webui:\n  url: http://h:7861\n  urls: []\n")) == "http://h:7861"


def test_run_folders_with_spaces_are_quoted_for_hydra() -> None:
    assert hydra_value("/runs/2026-03-01_22-00-00_weighted_sum_laion") == \
        "/runs/2026-03-01_22-00-00_weighted_sum_laion"
    assert hydra_value("/my runs/it's") == "'/my runs/it\\'s'"


@pytest.mark.parametrize("folder", ["/runs/2026-03-01_22-00-00_weighted_sum_laion", "/my runs/it's", "/home/jérôme/runs",
                                    "/home/用户/runs", "C:\\runs\\", "/a=b,c/[x]"])
def test_a_run_folder_reads_back_whole_through_hydras_override_grammar(folder: str) -> None:
    # each night resumes its run with resume=<folder>: unquoted, a letter outside ASCII failed the
    # grammar (LexerNoViableAltException) and every resume of a run under /home/jérôme exited 2
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(f"resume={hydra_value(folder)}").value() == folder


def test_env_file_values_are_shell_quoted_and_do_not_override_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "overnight.env"
    env_file.write_text("# settings\nWEBUI_COMMAND=\"./webui.sh --nowebui --port 7861\"\n"
                        "export OVERNIGHT_DEADLINE=07:00\n"
                        "WEBUI_OPTIONS='{\"sd_checkpoints_limit\": 1}'\nOVERNIGHT_LOG_DIR=/from/file\n")
    for key in ("WEBUI_COMMAND", "OVERNIGHT_DEADLINE", "WEBUI_OPTIONS"):
        monkeypatch.setenv(key, "")  # recorded, so that teardown restores the real environment
        monkeypatch.delenv(key)
    monkeypatch.setenv("OVERNIGHT_LOG_DIR", "/from/environment")

    load_env_file(env_file)

    assert os.environ["WEBUI_COMMAND"] == "./webui.sh --nowebui --port 7861"
    assert os.environ["OVERNIGHT_DEADLINE"] == "07:00"
    assert json.loads(os.environ["WEBUI_OPTIONS"]) == {"sd_checkpoints_limit": 1}
    assert os.environ["OVERNIGHT_LOG_DIR"] == "/from/environment"
