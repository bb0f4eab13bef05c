"""The runner's Night driven in this process, with stand-ins for bayes-merger (small scripts that behave as
it does on a signal) and for the WebUI's API: how it stops bayes-merger, resumes a killed one, and what its
log shows; and the env file and number settings it reads.

The runner's clock runs fast (``FastClock``): its minutes of grace pass in seconds while the stand-ins'
trials take real time, so a test of a stop that must wait for a trial stays short.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

from bayes_merger.overnight import cli
from bayes_merger.overnight import night as night_module
from bayes_merger.overnight.night import STOP_NOW_WAIT, STOP_SIGNALS, Night
from bayes_merger.overnight.processes import KILL_WAIT, ManagedWebUI, redacted, signal_group
from bayes_merger.overnight.settings import EXIT_WEBUI_DOWN, Failure, Settings, build_settings, load_env_file, parse_args

REPO = Path(__file__).resolve().parents[2]
SPEED = 20  # the runner's seconds per real second

# bayes-merger's stop (bayes_merger/cli.py _stop_on_signals): the first SIGINT or SIGTERM lets the trial in
# flight finish, a second one aborts it (KeyboardInterrupt). DEAF: it notes signals and goes on regardless.
TWO_STAGE_BAYES_MERGER = '''
import os, signal, sys, time
from pathlib import Path

marks, trial_seconds, deaf = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "deaf"
stop = False


def request_stop(signum, frame):
    global stop
    with open(marks / "signals", "a") as noted:
        noted.write(signal.Signals(signum).name + "\\n")
    if deaf:
        return
    if stop:
        raise KeyboardInterrupt
    stop = True


for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, request_stop)
os.kill(os.getppid(), signal.SIGTERM)  # `systemctl stop` of the runner, while the trial runs
try:
    time.sleep(trial_seconds)  # the trial in flight: the sleep goes on after a handler that returns
    (marks / "trial-finished").touch()
except KeyboardInterrupt:
    (marks / "trial-aborted").touch()
sys.exit(130)
'''

# bayes-merger killed by a signal (the OOM killer) after it started a run folder: "never", "once" (its first
# start) or "always"; else it finishes the run. Each call's arguments go into <marks>/calls.
KILLED_BAYES_MERGER = '''
import json, os, signal, sys
from pathlib import Path

marks, killed = Path(sys.argv[1]), sys.argv[2]
with open(marks / "calls", "a") as calls:
    calls.write(" ".join(sys.argv[3:]) + "\\n")
folder = marks / "runs" / "run-1"
if not folder.is_dir():
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"started_at": "2026-03-01T22:00:00", "init_points": 3}))
if killed == "always" or killed == "once" and not (marks / "killed").exists():
    (marks / "killed").touch()
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(0)
'''

# bayes-merger killed (by the OOM killer, say) while it loads the models, before its new run folder has a
# run.json, on its first start only; each call's arguments go into <marks>/calls
KILLED_BEFORE_ITS_RUN_BAYES_MERGER = '''
import json, os, signal, sys
from pathlib import Path

marks = Path(sys.argv[1])
with open(marks / "calls", "a") as calls:
    calls.write(" ".join(sys.argv[2:]) + "\\n")
first = not (marks / "killed").exists()
folder = marks / "runs" / ("new-1" if first else "new-2")
folder.mkdir(parents=True)
if first:
    (marks / "killed").touch()
    os.kill(os.getpid(), signal.SIGKILL)
(folder / "run.json").write_text(json.dumps({"started_at": "2026-03-02T22:00:00", "finished_at": "x"}))
sys.exit(0)
'''

# bayes-merger as the runner first calls it (--cfg job): a composed config whose webui.auth_env names a variable;
# any other call, and the WebUI command, leave a mark
COMPOSING_BAYES_MERGER = '''
import sys
from pathlib import Path

marks = Path(sys.argv[1])
if "--cfg" not in sys.argv:
    (marks / "bayes-merger-started").touch()
    sys.exit(0)
print(f"run:\\n  dir: {marks / 'runs'}\\nwebui:\\n  url: http://127.0.0.1:9\\n  auth_env: {sys.argv[2]}")
'''


class FastClock:
    """Stands in for the ``time`` module in night.py: ``monotonic`` runs SPEED times as fast as the real one."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def monotonic(self) -> float:
        return self.start + (time.monotonic() - self.start) * SPEED

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


class PacedClock(FastClock):
    """FastClock that stands still while ``waiting()`` holds (60 s of real time at most, in all): the runner's
    next step then waits for a stand-in to have done its part, however long a loaded machine keeps that
    stand-in off the CPU, where a fixed window of the fast clock (0.5 s, 1 s real) would run out."""

    def __init__(self, waiting: Callable[[], bool]) -> None:
        super().__init__()
        self.waiting = waiting
        self.paused = 0.0  # real seconds the clock stood still
        self.last = self.start

    def monotonic(self) -> float:
        now = time.monotonic()
        if self.paused < 60.0 and self.waiting():
            self.paused += now - self.last
        self.last = now
        return self.start + (now - self.start - self.paused) * SPEED


class ApiStandIn:
    """A WebUI API that always answers."""

    url, kind, backend = "http://127.0.0.1:7861", "WebUI", "a1111"

    def status(self, timeout: float = 10.0) -> int:
        return 200

    def set_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {}

    def restore_options(self, options: dict[str, Any]) -> None:
        pass


class ForeignServerStandIn(ApiStandIn):
    """Not a WebUI: something else listening at the WebUI's address (a WebUI without --api, another app)."""

    def status(self, timeout: float = 10.0) -> int:
        return 404


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting of the runner from the environment of whoever runs the tests."""
    for key in [k for k in os.environ if k.startswith(("OVERNIGHT_", "WEBUI_")) or k == "BAYES_MERGER"]:
        monkeypatch.delenv(key)
    return monkeypatch


def unset(monkeypatch: pytest.MonkeyPatch, *keys: str) -> None:
    for key in keys:
        monkeypatch.setenv(key, "")  # recorded, so that teardown removes what the test sets
        monkeypatch.delenv(key)


def settings_for(tmp_path: Path, script: str, *script_args: str, overrides: tuple[str, ...] = ()) -> Settings:
    """The runner's settings with their defaults, bayes-merger being ``script`` (no WebUI command: the
    API stand-in is "already running")."""
    stand_in = tmp_path / "bayes_merger_stand_in.py"
    stand_in.write_text(script)
    config = tmp_path / "night.yaml"
    config.write_text("{}\n")
    command = shlex.join([sys.executable, str(stand_in), str(tmp_path), *script_args])
    args = parse_args(["--config", str(config), "--bayes-merger", command, *overrides])
    return build_settings(args, datetime.now())


def night_for(settings: Settings, tmp_path: Path) -> Night:
    return Night(settings, tmp_path / "runs", ApiStandIn(), tmp_path / "night.log",  # type: ignore[arg-type]
                 tmp_path / "night.webui.log")


def run_with_sigterm_handler(night: Night) -> int:
    """night.run() with the runner's SIGTERM handler installed, as cli.main installs it."""
    previous = signal.signal(signal.SIGTERM, night.on_signal)
    try:
        return night.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def fast_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(night_module, "time", FastClock())
    monkeypatch.setattr(night_module, "POLL_SECONDS", 0.02)


def counted_starts(night: Night) -> list[int]:
    """The starts of the night's WEBUI_COMMAND, an item each, as they happen."""
    assert night.webui is not None
    started: list[int] = []
    start = night.webui.start

    def counted() -> None:
        started.append(1)
        start()

    night.webui.start = counted  # type: ignore[method-assign]
    return started


def signals_noted(tmp_path: Path) -> list[str]:
    return (tmp_path / "signals").read_text().split() if (tmp_path / "signals").exists() else []


# ------------------------------------------------------------------------------- stopping


def test_a_stop_waits_for_the_trial_in_flight_with_one_ctrl_c(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, fast_runner: None, caplog: pytest.LogCaptureFixture) -> None:
    # a trial of 1.5 s is 30 s of the runner's time: longer than any Ctrl-C repeat of old, far shorter
    # than the default grace
    settings = settings_for(tmp_path, TWO_STAGE_BAYES_MERGER, "1.5", "-")
    caplog.set_level(logging.INFO, logger="overnight")

    code = run_with_sigterm_handler(night_for(settings, tmp_path))

    assert code == 128 + signal.SIGTERM
    assert (tmp_path / "trial-finished").exists() and not (tmp_path / "trial-aborted").exists()
    assert signals_noted(tmp_path) == ["SIGINT"]  # one Ctrl-C: a second would have aborted the trial
    assert "Got SIGTERM" in caplog.text and "Ctrl-C again" not in caplog.text


def test_a_bayes_merger_that_outlives_the_grace_gets_a_second_ctrl_c_then_sigkill(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, fast_runner: None, caplog: pytest.LogCaptureFixture) -> None:
    sent: list[int] = []  # the runner's Ctrl-Cs

    def counted_signal_group(pid: int, signum: int) -> None:
        sent.extend([signum] if signum == signal.SIGINT else [])
        signal_group(pid, signum)

    # the grace (0.5 s real) and STOP_NOW_WAIT (1.5 s real) run from when the stand-in noted each Ctrl-C: two sent
    # while a loaded machine kept it off the CPU would be taken as one, and SIGKILL could come before the second
    clean_env.setattr(night_module, "signal_group", counted_signal_group)
    clean_env.setattr(night_module, "time", PacedClock(lambda: len(sent) > len(signals_noted(tmp_path))))
    settings = dataclasses.replace(settings_for(tmp_path, TWO_STAGE_BAYES_MERGER, "3600", "deaf"),
                                   run_stop_grace=10.0)
    caplog.set_level(logging.INFO, logger="overnight")

    code = run_with_sigterm_handler(night_for(settings, tmp_path))

    assert code == 128 + signal.SIGTERM
    assert signals_noted(tmp_path) == ["SIGINT", "SIGINT"]
    assert "still runs 10 s after Ctrl-C (--run-stop-grace): Ctrl-C again" in caplog.text
    assert f"still runs {STOP_NOW_WAIT:g} s after its second Ctrl-C: SIGKILL" in caplog.text
    assert not (tmp_path / "trial-finished").exists()  # SIGKILLed, not its hour-long trial run out


def test_the_default_stop_of_bayes_merger_and_the_webui_fits_systemds_stop_timeout(clean_env: pytest.MonkeyPatch,
                                                                                   tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(REPO / "scripts" / "systemd" / "bayes-merger-overnight.service")
    timeout = float(unit["Service"]["TimeoutStopSec"])
    settings = settings_for(tmp_path, "")

    # SIGTERM from systemd: bayes-merger's grace, its "stop now", the options set back (a WebUI hung in a render,
    # the likeliest to need the second Ctrl-C, keeps that call its read timeout), then the WebUI's SIGTERM and SIGKILL
    from bayes_merger.overnight.processes import WebUIApi

    assert settings.run_stop_grace + STOP_NOW_WAIT + WebUIApi.read_timeout + settings.stop_grace + KILL_WAIT <= timeout
    assert settings.run_stop_grace >= 120  # several minutes: a real trial and the hand-back


def test_systemd_counts_a_stop_by_any_signal_the_runner_catches_as_a_success() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(REPO / "scripts" / "systemd" / "bayes-merger-overnight.service")
    success = {int(code) for code in unit["Service"]["SuccessExitStatus"].split()}

    # the runner stops on each as at its deadline, the run kept, and exits 128 + the signal (Night._stopped)
    assert {128 + signum for signum in STOP_SIGNALS} <= success


# ------------------------------------------------------------------ a killed bayes-merger


def test_a_bayes_merger_killed_by_a_signal_is_resumed(tmp_path: Path, clean_env: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, KILLED_BAYES_MERGER, "once")
    caplog.set_level(logging.INFO, logger="overnight")

    code = night_for(settings, tmp_path).run()

    first, second = (tmp_path / "calls").read_text().splitlines()
    assert code == 0
    assert "resume=" not in first and f"resume={tmp_path / 'runs' / 'run-1'}" in second
    assert "bayes-merger was killed by SIGKILL" in caplog.text
    assert "Resuming the run; the WebUI still answers (retry 1 of 3)." in caplog.text


def test_the_options_the_night_set_are_set_back_to_the_users_at_its_end(tmp_path: Path,
                                                                         clean_env: pytest.MonkeyPatch) -> None:
    class Options(ApiStandIn):
        def __init__(self) -> None:
            self.config = {"sd_checkpoints_limit": 3, "sd_checkpoint_cache": 0}  # the user's, in config.json
            self.calls: list[str] = []

        def set_options(self, options: dict[str, Any]) -> dict[str, Any]:
            self.calls.append("set")
            before = {key: self.config[key] for key, value in options.items() if self.config[key] != value}
            self.config.update(options)
            return before

        def restore_options(self, options: dict[str, Any]) -> None:
            self.calls.append("restore")
            self.config.update(options)

    api = Options()
    settings = settings_for(tmp_path, KILLED_BAYES_MERGER, "once")  # two starts: the options set twice
    night = Night(settings, tmp_path / "runs", api, tmp_path / "night.log",  # type: ignore[arg-type]
                  tmp_path / "night.webui.log")

    assert night.run() == 0
    assert api.calls == ["set", "set", "restore"]
    assert api.config == {"sd_checkpoints_limit": 3, "sd_checkpoint_cache": 0}, "the night's options stayed"


def test_an_unfinished_run_another_bayes_merger_is_running_now_is_left_to_it(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from bayes_merger.run_folder.liveness import running

    busy = tmp_path / "runs" / "2026-03-01_busy"  # the user runs it by hand when the night's timer fires
    busy.mkdir(parents=True)
    (busy / "run.json").write_text(json.dumps({"started_at": "2026-03-01T22:00:00"}))
    started = tmp_path / "webui-started"
    webui = (sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)")
    settings = dataclasses.replace(settings_for(tmp_path, KILLED_BAYES_MERGER, "once"), webui_command=webui,
                                   webui_options={"sd_checkpoints_limit": 1})
    api = ApiStandIn()
    options: list[dict[str, Any]] = []
    api.status = lambda timeout=10.0: 200 if started.exists() else None  # type: ignore[assignment,method-assign]
    api.set_options = lambda wanted: options.append(wanted) or {}  # type: ignore[method-assign]
    with running(busy):
        code = Night(settings, tmp_path / "runs", api, tmp_path / "night.log",  # type: ignore[arg-type]
                     tmp_path / "night.webui.log").run()

    assert code == 2
    assert not (tmp_path / "calls").exists(), "bayes-merger was started on the run another one is running"
    # nothing on a WebUI either: it started one (on the GPU the run by hand uses) and set its options first
    assert not started.exists() and options == []
    assert f"The newest unfinished run, {busy}, is being run by another bayes-merger now: the night starts nothing " \
           "on its WebUI and exits" in caplog.text


def test_new_run_stands_when_its_first_start_died_before_making_its_run(tmp_path: Path,
                                                                         clean_env: pytest.MonkeyPatch) -> None:
    older = tmp_path / "runs" / "2026-03-01_older"  # unfinished: what a night without --new-run would resume
    older.mkdir(parents=True)
    (older / "run.json").write_text(json.dumps({"started_at": "2026-03-01T22:00:00"}))
    settings = settings_for(tmp_path, KILLED_BEFORE_ITS_RUN_BAYES_MERGER, overrides=("--new-run",))

    code = night_for(settings, tmp_path).run()

    first, second = (tmp_path / "calls").read_text().splitlines()
    assert code == 0
    assert "resume=" not in first and "resume=" not in second, "the older run was resumed against --new-run"


def test_a_bayes_merger_killed_more_often_than_allowed_gives_up_resumable(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = dataclasses.replace(settings_for(tmp_path, KILLED_BAYES_MERGER, "always"), max_restarts=1)

    code = night_for(settings, tmp_path).run()

    assert code == 6  # bayes-merger's "stopped, resumable", not 1 ("no trial succeeded")
    assert len((tmp_path / "calls").read_text().splitlines()) == 2
    assert "bayes-merger was killed; 1 restarts already: giving up (exit code 6)" in caplog.text


def test_something_else_on_the_webuis_port_is_named_as_such_and_the_webui_command_is_not_run(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, fast_runner: None) -> None:
    started = tmp_path / "webui-started"
    webui = (sys.executable, "-c", f"open({str(started)!r}, 'w')")
    settings = dataclasses.replace(settings_for(tmp_path, KILLED_BAYES_MERGER, "never"), webui_command=webui,
                                   ready_timeout=20.0)
    night = Night(settings, tmp_path / "runs", ForeignServerStandIn(), tmp_path / "night.log",  # type: ignore[arg-type]
                  tmp_path / "night.webui.log")

    with pytest.raises(Failure, match=r"Something answered at http://127.0.0.1:7861 \(HTTP 404\) before the night "
                                      r"began, so WEBUI_COMMAND was not run, but it never became a ready WebUI") as failure:
        night.run()

    assert failure.value.code == EXIT_WEBUI_DOWN
    assert not started.exists() and not (tmp_path / "calls").exists()


class AdoptedThenGone(ApiStandIn):
    """A WebUI that ran before the night (adopted) and dies during the run; the one WEBUI_COMMAND starts answers."""

    def __init__(self, marks: Path) -> None:
        self.marks = marks

    def status(self, timeout: float = 10.0) -> int | None:
        if (self.marks / "ours").exists():
            return 200
        return None if (self.marks / "gone").exists() else 200


# bayes-merger whose first start loses its WebUI and stops (exit 6), saying so in run.json ("says") or not, the
# WebUI gone for the API stand-in ("gone") or still answering; the next start finishes the run
LOSES_THE_WEBUI_BAYES_MERGER = '''
import json, sys
from pathlib import Path

marks, says, gone = Path(sys.argv[1]), sys.argv[2] == "says", sys.argv[3] == "gone"
with open(marks / "calls", "a") as calls:
    calls.write(" ".join(sys.argv[4:]) + "\\n")
folder = marks / "runs" / "run-1"
if not folder.is_dir():
    folder.mkdir(parents=True)
    info = {"started_at": "2026-03-01T22:00:00", **({"stopped_by": "webui_lost"} if says else {})}
    (folder / "run.json").write_text(json.dumps(info))
    if gone:
        (marks / "gone").touch()
    sys.exit(6)
sys.exit(0)
'''


def test_an_adopted_webui_that_dies_is_replaced_by_the_webui_command_at_once_counted_as_one_restart(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, fast_runner: None, caplog: pytest.LogCaptureFixture) -> None:
    # it was waited for first (WEBUI_READY_TIMEOUT), then replaced as a second restart: with --max-restarts 1
    # the night gave up (exit 69) and WEBUI_COMMAND never ran
    ours = tmp_path / "ours"
    webui = (sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(ours)!r}).touch(); time.sleep(60)")
    settings = dataclasses.replace(settings_for(tmp_path, LOSES_THE_WEBUI_BAYES_MERGER, "silent", "gone"),
                                   webui_command=webui, ready_timeout=20.0, max_restarts=1)
    night = Night(settings, tmp_path / "runs", AdoptedThenGone(tmp_path), tmp_path / "night.log",  # type: ignore[arg-type]
                  tmp_path / "night.webui.log")
    started = counted_starts(night)
    # the wait for ours starts once its command has touched its mark: 1 s real was too short for a Python to
    # start on a loaded machine
    clean_env.setattr(night_module, "time", PacedClock(lambda: bool(started) and not ours.exists()))
    caplog.set_level(logging.INFO, logger="overnight")

    assert night.run() == 0
    assert ours.exists(), "WEBUI_COMMAND was never run"
    first, second = (tmp_path / "calls").read_text().splitlines()
    assert f"resume={tmp_path / 'runs' / 'run-1'}" in second
    assert "starting WEBUI_COMMAND in its place and resuming (restart 1 of 1)" in caplog.text
    assert caplog.text.count("Waiting up to") == 2  # the adopted WebUI at the start, ours: none for the gone one


def test_a_webui_lost_though_its_api_answers_is_restarted_when_the_night_started_it(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, fast_runner: None, caplog: pytest.LogCaptureFixture) -> None:
    starts = tmp_path / "webui-starts"
    webui = (sys.executable, "-c", f"import time; open({str(starts)!r}, 'a').write('x'); time.sleep(60)")
    # 60 s real for each start of the WEBUI_COMMAND (only a failure waits that long)
    settings = dataclasses.replace(settings_for(tmp_path, LOSES_THE_WEBUI_BAYES_MERGER, "says", "answers"),
                                   webui_command=webui,
                                   ready_timeout=1200.0)
    api = ApiStandIn()
    night = Night(settings, tmp_path / "runs", api, tmp_path / "night.log",  # type: ignore[arg-type]
                  tmp_path / "night.webui.log")
    started = counted_starts(night)
    # the night started the WebUI (nothing answered before): an API that answers only once the WebUI the night
    # started last has written its mark (so the restarted one has, before the night ends and stops it)
    api.status = lambda timeout=10.0: (  # type: ignore[method-assign]
        200 if starts.exists() and len(starts.read_text()) == len(started) else None)
    caplog.set_level(logging.INFO, logger="overnight")

    assert night.run() == 0
    assert starts.read_text() == "xx", "the hung WebUI was not restarted"
    assert "bayes-merger lost the WebUI though its API still answers" in caplog.text


# ------------------------------------------------------------------------ secrets in logs


def test_a_webui_started_by_a_wrapper_gets_its_stop_grace_though_the_wrapper_dies_at_once(tmp_path: Path) -> None:
    # webui.sh runs python launch.py as its child: bash dies on SIGTERM at once, the WebUI takes its time
    child = tmp_path / "webui.py"
    child.write_text(textwrap.dedent(f"""\
        import signal, sys, time
        from pathlib import Path

        def stop(signum, frame):
            time.sleep(1.0)  # a WebUI shutting down: saving its state, freeing the GPU
            Path({str(tmp_path / "clean-exit")!r}).touch()
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        Path({str(tmp_path / "ready")!r}).touch()
        while True:
            time.sleep(0.05)
        """))
    webui = ManagedWebUI(["bash", "-c", f"{shlex.quote(sys.executable)} {shlex.quote(str(child))}; echo done"], None,
                         {}, tmp_path / "webui.log", stop_grace=30)
    webui.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert webui.running, (tmp_path / "webui.log").read_text()
        if time.monotonic() > deadline:
            webui.stop()
            pytest.fail(f"the WebUI was not ready within 60 s: {(tmp_path / 'webui.log').read_text()}")
        time.sleep(0.02)

    webui.stop()

    assert (tmp_path / "clean-exit").exists(), "the WebUI was killed before its grace was up"


def test_credentials_in_commands_and_overrides_are_shown_as_stars() -> None:
    assert redacted(["./webui.sh", "--api-auth", "me:pw", "--gradio-auth=me:pw2", "--port", "7861"]) == \
        "./webui.sh --api-auth '***' '--gradio-auth=***' --port 7861"
    assert redacted(["python", "launch.py", "--auth", "me:pw"]) == "python launch.py --auth '***'"
    assert redacted(["bash", "-c", "./webui.sh --api-auth me:pw --api"]) == \
        "bash -c './webui.sh --api-auth *** --api'"
    assert redacted(["bayes-merger", "webui.auth=me:pw", "+webui.hosts.0.auth='me:pw'", "webui.auth_env=PW",
                     "--gradio-auth-path", "creds.txt"]) == \
        "bayes-merger 'webui.auth=***' '+webui.hosts.0.auth=***' webui.auth_env=PW --gradio-auth-path creds.txt"


def test_the_night_log_shows_no_password_of_an_override(tmp_path: Path, clean_env: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, KILLED_BAYES_MERGER, "never", overrides=("webui.auth=me:s3cret",))
    caplog.set_level(logging.INFO, logger="overnight")

    assert night_for(settings, tmp_path).run() == 0

    assert "webui.auth=me:s3cret" in (tmp_path / "calls").read_text()  # bayes-merger still gets it
    assert "Running: " in caplog.text and "webui.auth=***" in caplog.text
    assert "s3cret" not in caplog.text


def test_the_webui_command_is_logged_without_its_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    webui = ManagedWebUI([sys.executable, "-c", "pass", "--api-auth", "me:s3cret"], None, {}, tmp_path / "webui.log",
                         stop_grace=10)
    caplog.set_level(logging.INFO, logger="overnight")

    webui.start()
    webui.stop()

    assert "Starting the WebUI: " in caplog.text and "--api-auth '***'" in caplog.text
    assert "s3cret" not in caplog.text


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("webui_auth", [None, "me:s3cret"])
def test_an_unset_auth_env_variable_is_one_sentence_and_exit_2_before_anything_starts(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, webui_auth: str | None) -> None:
    # WEBUI_AUTH or not: bayes-merger reads the config's credentials, and would stop with exit 2 at each start
    stand_in = tmp_path / "bayes_merger_stand_in.py"
    stand_in.write_text(COMPOSING_BAYES_MERGER)
    (tmp_path / "night.yaml").write_text("{}\n")
    webui = shlex.join([sys.executable, "-c", f"open({str(tmp_path / 'webui-started')!r}, 'w')"])
    env = {**os.environ, "WEBUI_COMMAND": webui, **({"WEBUI_AUTH": webui_auth} if webui_auth else {})}
    env.pop("BM_TEST_UNSET_AUTH", None)
    command = [sys.executable, "-m", "bayes_merger.overnight", "--config", str(tmp_path / "night.yaml"),
               "--bayes-merger", shlex.join([sys.executable, str(stand_in), str(tmp_path), "BM_TEST_UNSET_AUTH"]),
               "--log-dir", str(tmp_path / "logs"), "--max-restarts", "0", "--ready-timeout", "2"]

    night = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert night.returncode == 2, night.stderr
    errors = [line for line in night.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        "webui.auth_env names BM_TEST_UNSET_AUTH, but that environment variable is not set."), night.stderr
    assert not (tmp_path / "webui-started").exists() and not (tmp_path / "bayes-merger-started").exists()
    assert not (tmp_path / "runs" / ".overnight.lock").exists()  # not even the lock was taken


# ------------------------------------------------------------------- env file and numbers


def test_env_file_comments_start_only_at_a_word_as_in_a_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "overnight.env"
    env_file.write_text("WEBUI_AUTH=me:pa#ss\nA=one # a comment\nB='x # y'\nC=x\\ #y\nD=\"a#b\" #c\nE=#x\n")
    unset(monkeypatch, "WEBUI_AUTH", "A", "B", "C", "D", "E")

    load_env_file(env_file)

    # what `set -a; source overnight.env` gives in bash
    assert [os.environ[k] for k in ("WEBUI_AUTH", "A", "B", "C", "D", "E")] == \
        ["me:pa#ss", "one", "x # y", "x #y", "a#b", "#x"]


def test_env_file_takes_a_keys_last_line_as_a_shell_does_and_a_byte_order_mark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the first line won: the same file meant 07:00 to --env-file and 06:00 to systemd's EnvironmentFile=
    env_file = tmp_path / "overnight.env"
    env_file.write_bytes("\ufeffOVERNIGHT_DEADLINE=07:00\nOVERNIGHT_DEADLINE=06:00\nWEBUI_URL=http://x:1\n"
                         .encode("utf-8"))
    unset(monkeypatch, "OVERNIGHT_DEADLINE")
    monkeypatch.setenv("WEBUI_URL", "http://set-before:2")  # a variable set before the file still wins

    origins = load_env_file(env_file)

    assert os.environ["OVERNIGHT_DEADLINE"] == "06:00" and origins["OVERNIGHT_DEADLINE"] == f"{env_file}:2"
    assert os.environ["WEBUI_URL"] == "http://set-before:2" and "WEBUI_URL" not in origins


def test_env_file_words_keep_their_quotes_into_the_webui_command(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    (tmp_path / "night.yaml").write_text("{}\n")
    env_file = tmp_path / "overnight.env"
    env_file.write_text("WEBUI_COMMAND=./webui.sh --ckpt-dir '/m/my models' --port 7861\n"
                        "WEBUI_ENV=A=1 B=\"x y\"\n"
                        'WEBUI_CWD="/opt/my webui"\n')
    unset(clean_env, "WEBUI_COMMAND", "WEBUI_ENV", "WEBUI_CWD")

    origins = load_env_file(env_file)
    args = parse_args(["--config", str(tmp_path / "night.yaml"), "--bayes-merger", "bayes-merger"], origins)
    settings = build_settings(args, datetime.now(), origins)

    assert settings.webui_command == ("./webui.sh", "--ckpt-dir", "/m/my models", "--port", "7861")
    assert settings.webui_env == {"A": "1", "B": "x y"}
    assert os.environ["WEBUI_CWD"] == "/opt/my webui" and settings.webui_cwd == Path("/opt/my webui")


@pytest.mark.parametrize("flags, says", [
    (["--max-hours", "nan"], "--max-hours must be a positive number of hours, at most 168."),
    (["--max-hours", "inf"], "--max-hours must be a positive number of hours, at most 168."),
    (["--max-hours", "1e9"], "--max-hours must be a positive number of hours, at most 168."),
    (["--run-stop-grace", "nan"], "--run-stop-grace (or OVERNIGHT_RUN_STOP_GRACE) must be a number of seconds, at least 0."),
    (["--stop-grace", "-5"], "--stop-grace (or WEBUI_STOP_GRACE) must be a number of seconds, at least 0."),
    (["--ready-timeout", "nan"], "--ready-timeout (or WEBUI_READY_TIMEOUT) must be a number of seconds, at least 0."),
])
def test_a_number_no_wait_could_end_on_is_one_sentence_and_exit_2(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, flags: list[str],
        says: str) -> None:
    (tmp_path / "night.yaml").write_text("{}\n")
    assert cli.main(["--config", str(tmp_path / "night.yaml"), *flags]) == 2
    assert says in caplog.text and "Traceback" not in caplog.text


def test_an_env_file_that_is_not_utf8_is_one_sentence_naming_its_line(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    env_file = tmp_path / "overnight.env"
    env_file.write_bytes(b"# settings\nWEBUI_AUTH=me:p\xe4ss\n")
    assert cli.main(["--env-file", str(env_file), "--config", str(tmp_path / "night.yaml")]) == 2
    assert "overnight.env:2: not UTF-8 text" in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("line, says", [
    ("WEBUI_AUTH='me:s3cret", "overnight.env:2: the value of WEBUI_AUTH is not shell-quoted right (no closing"),
    ("WEBUI_AUTH=me:s3cret\\", "overnight.env:2: the value of WEBUI_AUTH is not shell-quoted right"),
    ("WEBUI AUTH=me:s3cret", "overnight.env:2: expected KEY=VALUE"),
    ("me:s3cret", "overnight.env:2: expected KEY=VALUE"),
])
def test_a_malformed_env_file_line_is_one_sentence_and_exit_2_without_its_value(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, line: str, says: str) -> None:
    env_file = tmp_path / "overnight.env"
    env_file.write_text(f"# settings\n{line}\n")

    code = cli.main(["--env-file", str(env_file), "--config", str(tmp_path / "night.yaml")])

    assert code == 2
    assert says in caplog.text
    assert "s3cret" not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("key, says", [
    ("OVERNIGHT_MAX_RESTARTS", "The environment variable OVERNIGHT_MAX_RESTARTS must be a whole number."),
    ("WEBUI_READY_TIMEOUT", "The environment variable WEBUI_READY_TIMEOUT must be a number."),
    ("WEBUI_STOP_GRACE", "The environment variable WEBUI_STOP_GRACE must be a number."),
    ("OVERNIGHT_RUN_STOP_GRACE", "The environment variable OVERNIGHT_RUN_STOP_GRACE must be a number."),
    ("OVERNIGHT_MAX_HOURS", "The environment variable OVERNIGHT_MAX_HOURS must be a number."),
])
def test_a_setting_that_is_not_a_number_is_one_sentence_and_exit_2(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, key: str, says: str) -> None:
    clean_env.setenv(key, "three")

    assert cli.main(["--config", str(tmp_path / "night.yaml")]) == 2
    assert says in caplog.text
    assert "three" not in caplog.text


@pytest.mark.parametrize("key, value, says", [
    ("OVERNIGHT_MAX_RESTARTS", "me:s3cret", "OVERNIGHT_MAX_RESTARTS must be a whole number."),
    ("WEBUI_STOP_GRACE", "me:s3cret", "WEBUI_STOP_GRACE must be a number."),
    ("WEBUI_ENV", "CUDA_VISIBLE_DEVICES=0 me:s3cret", "WEBUI_ENV must be KEY=VALUE words; its word 2 is not."),
    ("WEBUI_ENV", "A='me:s3cret", "WEBUI_ENV is not shell-quoted right (no closing quotation)."),
])
@pytest.mark.parametrize("in_file", [True, False])
def test_a_bad_setting_is_named_by_its_file_line_and_key_never_by_its_value(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, key: str, value: str,
        says: str, in_file: bool) -> None:
    (tmp_path / "night.yaml").write_text("{}\n")
    env_file = tmp_path / "overnight.env"
    env_file.write_text(f"# settings\n{key}={shlex.quote(value)}\n" if in_file else "# settings\n")
    unset(clean_env, key)  # what the env file sets goes at teardown
    if not in_file:
        clean_env.setenv(key, value)

    code = cli.main(["--env-file", str(env_file), "--config", str(tmp_path / "night.yaml")])

    assert code == 2
    assert (f"overnight.env:2: {says}" if in_file else f"The environment variable {says}") in caplog.text
    assert "s3cret" not in caplog.text and "Traceback" not in caplog.text



# bayes-merger that never ends (its config on a network share that hangs, say)
HANGING_BAYES_MERGER = '''
import signal
signal.pause()
'''


def test_a_bayes_merger_that_hangs_composing_or_checking_the_config_is_one_sentence(
        tmp_path: Path, clean_env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch) -> None:
    from bayes_merger.overnight import settings as settings_module

    monkeypatch.setattr(settings_module, "ASK_TIMEOUT", 1)
    settings = settings_for(tmp_path, HANGING_BAYES_MERGER)
    for ask in (settings_module.compose_config, lambda s: settings_module.check_start(s, None)):
        with pytest.raises(Failure) as failure:
            ask(settings)
        assert str(failure.value) == (f"bayes-merger did not end within 1 s with {tmp_path / 'night.yaml'} (not a run: "
                                      "its config composed or checked).")
        assert failure.value.code == 2
