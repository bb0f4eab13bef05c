#!/usr/bin/env python3
"""One unattended night of bayes-merger, for cron or a systemd timer.

    python scripts/overnight.py --config conf/night.yaml [--deadline 07:00] [OVERRIDE ...]

It takes a lock on the config's run.dir, starts the WebUI if WEBUI_COMMAND is set, waits until its
API answers, sets the options that keep its RAM flat, then runs ``bayes-merger``: it resumes the
newest unfinished run under run.dir (a run folder whose run.json has no ``finished_at``), else it
starts a new one. When the WebUI dies mid-run it restarts the WebUI and resumes, up to
``--max-restarts`` times. At the deadline, or on SIGTERM / Ctrl-C, bayes-merger gets a Ctrl-C (it
keeps every finished trial) and the next night resumes. Its log and bayes-merger's go into one file
per night, the WebUI's console into a second one beside it; the WebUI it started is stopped at the
end (its process group: SIGTERM, then SIGKILL).

Standard library only: it runs under any Python >= 3.10; bayes-merger runs in its own environment.
Settings come from flags, else environment variables (``--env-file`` loads KEY=VALUE lines for
variables not already set); ``--help`` lists them.

Exit codes: 0 the run finished its budget, or was stopped at the deadline to be resumed; otherwise
bayes-merger's own code (1 no successful trial, 2 config, 3 checkpoint/merge, 4 WebUI, 5 scorer,
6 stopped but resumable: the WebUI kept dying); 69 the WebUI could not be started or never answered;
70 a bug in this script (traceback in the log); 75 another overnight run holds the lock of this run.dir;
128 + N when stopped by signal N (130, 143).
"""

from __future__ import annotations

import argparse
import base64
import errno
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Sequence

log = logging.getLogger("overnight")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_WEBUI_DOWN = 69  # EX_UNAVAILABLE
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug in this script
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later
BM_WEBUI_ERROR, BM_STOPPED = 4, 6  # bayes-merger's codes after which a WebUI restart can help

LOCK_FILE = ".overnight.lock"
RUN_FILE = "run.json"
TRIALS_FILE = "trials.jsonl"
PROGRESS = "/sdapi/v1/progress"
OPTIONS = "/sdapi/v1/options"
# A1111's advice against RAM growing with each model switch: one model in memory, no RAM cache
DEFAULT_WEBUI_OPTIONS = '{"sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0}'
POLL_SECONDS = 0.5
CHILD_GRACE = 120.0  # seconds bayes-merger gets to stop after a Ctrl-C before it is terminated
CTRL_C_REPEAT = 10.0  # seconds between Ctrl-Cs while it has not stopped
KILL_WAIT = 10.0  # seconds to wait for a process after SIGKILL


class Failure(Exception):
    """The night cannot go on; ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Settings:
    config: Path
    overrides: tuple[str, ...]
    bayes_merger: tuple[str, ...]
    run_dir: Path | None
    log_dir: Path
    max_restarts: int
    deadline: datetime | None
    new_run: bool
    webui_command: tuple[str, ...]
    webui_cwd: Path | None
    webui_env: dict[str, str]
    webui_url: str | None
    webui_auth: str | None
    ready_timeout: float
    stop_grace: float
    webui_options: dict[str, Any]


# --------------------------------------------------------------------------------- settings


def load_env_file(path: Path) -> None:
    """KEY=VALUE lines (``#`` comments, optional ``export``, quotes as in a shell) for unset variables."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise Failure(f"{path}:{number}: expected KEY=VALUE, got {line!r}.", EXIT_CONFIG)
        words = shlex.split(value, comments=True)
        os.environ.setdefault(key.strip(), " ".join(words) if len(words) != 1 else words[0])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="overnight.py",
        description="One unattended night of bayes-merger: start the WebUI, resume the latest unfinished run "
                    "(or start one), restart the WebUI if it dies, stop it at the end.",
        epilog="WebUI settings come from the environment: WEBUI_COMMAND (the command that starts it; unset: "
               "use a WebUI that is already running), WEBUI_CWD, WEBUI_ENV ('KEY=VALUE ...' added to its "
               "environment), WEBUI_URL (default: webui.url of the config), WEBUI_AUTH ('user:password'; "
               "default: the config's webui.auth / webui.auth_env), WEBUI_OPTIONS (JSON object of options "
               f"POSTed to {OPTIONS} once the API answers; default {DEFAULT_WEBUI_OPTIONS}; '' or '{{}}': none).",
    )
    parser.add_argument("--env-file", type=Path, help="read KEY=VALUE lines into the environment (set variables win)")
    parser.add_argument("--config", default=env("OVERNIGHT_CONFIG"),
                        help="the bayes-merger config (env OVERNIGHT_CONFIG); it must keep conf/run.yaml's hydra: section")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for bayes-merger, e.g. optimiser.n_iters=200 "
                        "(env OVERNIGHT_OVERRIDES, shell-quoted)")
    parser.add_argument("--run-dir", default=env("OVERNIGHT_RUN_DIR"),
                        help="where the runs are, passed on as run.dir=DIR (env OVERNIGHT_RUN_DIR; default: run.dir "
                             "of the composed config)")
    parser.add_argument("--log-dir", default=env("OVERNIGHT_LOG_DIR", "logs"),
                        help="one log file per night goes here (env OVERNIGHT_LOG_DIR; default: logs)")
    parser.add_argument("--bayes-merger", default=env("BAYES_MERGER"),
                        help="the bayes-merger command (env BAYES_MERGER; default: the one beside this Python, else on PATH)")
    parser.add_argument("--max-restarts", type=int, default=int(env("OVERNIGHT_MAX_RESTARTS", "3")),
                        help="WebUI restarts (and resumes) allowed after it died (env OVERNIGHT_MAX_RESTARTS; default 3)")
    parser.add_argument("--deadline", default=env("OVERNIGHT_DEADLINE"), metavar="HH:MM",
                        help="stop at the next HH:MM; the next night resumes (env OVERNIGHT_DEADLINE)")
    parser.add_argument("--max-hours", type=float, default=_float(env("OVERNIGHT_MAX_HOURS")),
                        help="stop after this many hours (env OVERNIGHT_MAX_HOURS)")
    parser.add_argument("--new-run", action="store_true", help="start a new run even if an unfinished one exists")
    parser.add_argument("--webui-url", default=env("WEBUI_URL"), help="the WebUI's address (env WEBUI_URL)")
    parser.add_argument("--ready-timeout", type=float, default=float(env("WEBUI_READY_TIMEOUT", "600")),
                        help="seconds to wait for the WebUI's API (env WEBUI_READY_TIMEOUT; default 600)")
    parser.add_argument("--stop-grace", type=float, default=float(env("WEBUI_STOP_GRACE", "30")),
                        help="seconds between SIGTERM and SIGKILL when stopping the WebUI (env WEBUI_STOP_GRACE; default 30)")
    return parser.parse_intermixed_args(argv)


def build_settings(args: argparse.Namespace, now: datetime) -> Settings:
    if not args.config:
        raise Failure("--config (or OVERNIGHT_CONFIG) is required: the bayes-merger config to run.", EXIT_CONFIG)
    config = Path(args.config).expanduser().resolve()
    if not config.is_file():
        raise Failure(f"Config file {args.config} does not exist.", EXIT_CONFIG)
    overrides = tuple(args.overrides) or tuple(shlex.split(os.environ.get("OVERNIGHT_OVERRIDES", "")))
    if any(o.split("=", 1)[0].lstrip("+~") in ("resume", "hydra.run.dir") for o in overrides):
        raise Failure("Do not pass resume= or hydra.run.dir=: the script picks the run folder itself "
                      "(--new-run starts a new one).", EXIT_CONFIG)
    run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else None
    if run_dir is not None:  # bayes-merger must put its runs where the script looks for them
        overrides = (*overrides, f"run.dir={hydra_value(str(run_dir))}")
    if args.max_restarts < 0:
        raise Failure("--max-restarts must not be negative.", EXIT_CONFIG)
    try:
        options = json.loads(os.environ.get("WEBUI_OPTIONS", DEFAULT_WEBUI_OPTIONS) or "{}")
    except json.JSONDecodeError as error:
        raise Failure(f"WEBUI_OPTIONS is not a JSON object: {error}.", EXIT_CONFIG) from error
    if not isinstance(options, dict):
        raise Failure("WEBUI_OPTIONS must be a JSON object, e.g. " + DEFAULT_WEBUI_OPTIONS, EXIT_CONFIG)
    webui_env = {}
    for item in shlex.split(os.environ.get("WEBUI_ENV", "")):
        key, sep, value = item.partition("=")
        if not sep:
            raise Failure(f"WEBUI_ENV: expected KEY=VALUE, got {item!r}.", EXIT_CONFIG)
        webui_env[key] = value
    cwd = os.environ.get("WEBUI_CWD")
    return Settings(
        config=config,
        overrides=overrides,
        bayes_merger=tuple(shlex.split(args.bayes_merger)) if args.bayes_merger else find_bayes_merger(),
        run_dir=run_dir,
        log_dir=Path(args.log_dir).expanduser().resolve(),
        max_restarts=args.max_restarts,
        deadline=deadline_from(args.deadline, args.max_hours, now),
        new_run=args.new_run,
        webui_command=tuple(shlex.split(os.environ.get("WEBUI_COMMAND", ""))),
        webui_cwd=Path(cwd).expanduser() if cwd else None,
        webui_env=webui_env,
        webui_url=args.webui_url,
        webui_auth=os.environ.get("WEBUI_AUTH") or None,
        ready_timeout=args.ready_timeout,
        stop_grace=args.stop_grace,
        webui_options=options,
    )


def find_bayes_merger() -> tuple[str, ...]:
    beside = Path(sys.executable).parent / "bayes-merger"
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    found = shutil.which("bayes-merger")
    if found:
        return (found,)
    raise Failure("bayes-merger is not installed beside this Python nor on PATH: run the script with the "
                  "virtual environment's Python, or set --bayes-merger / BAYES_MERGER.", EXIT_CONFIG)


def deadline_from(clock: str | None, max_hours: float | None, now: datetime) -> datetime | None:
    """The earlier of the next ``HH:MM`` after ``now`` and ``now + max_hours``; None when neither is set."""
    candidates = []
    if clock:
        try:
            at = datetime.strptime(clock.strip(), "%H:%M").time()
        except ValueError as error:
            raise Failure(f"--deadline must be HH:MM (24 h), got {clock!r}.", EXIT_CONFIG) from error
        moment = datetime.combine(now.date(), at)
        candidates.append(moment if moment > now else moment + timedelta(days=1))
    if max_hours is not None:
        if max_hours <= 0:
            raise Failure("--max-hours must be positive.", EXIT_CONFIG)
        candidates.append(now + timedelta(hours=max_hours))
    return min(candidates) if candidates else None


def night_of(moment: datetime) -> date:
    """A night runs from noon to noon: a start at 01:00 belongs to the evening before."""
    return (moment - timedelta(hours=12)).date()


def _float(value: str | None) -> float | None:
    return float(value) if value else None


# ---------------------------------------------------------------------------- the config


def compose_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ``run`` and ``webui`` sections of the composed config, as bayes-merger (Hydra) composes it."""
    command = [*settings.bayes_merger, "--config", str(settings.config), *settings.overrides, "--cfg", "job", "--resolve"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    except OSError as error:
        raise Failure(f"Cannot run {settings.bayes_merger[0]}: {error}.", EXIT_CONFIG) from error
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise Failure(f"bayes-merger cannot compose {settings.config}: {' '.join(detail[-3:])}",
                      done.returncode if 0 < done.returncode < 128 else EXIT_CONFIG)
    return parse_sections(done.stdout)


def parse_sections(text: str) -> dict[str, dict[str, Any]]:
    """The scalars one level down in OmegaConf's YAML (``section:`` then ``  key: value`` lines)."""
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            key, _, value = line.partition(":")
            current = sections.setdefault(key.strip(), {}) if not value.strip() else None
        elif current is not None and line.startswith("  ") and not line.startswith("   "):
            key, sep, value = line.strip().partition(": ")
            if sep or line.rstrip().endswith(":"):
                current[key.rstrip(":")] = _scalar(value.strip())
    return sections


def _scalar(value: str) -> Any:
    if value in ("null", "~", ""):
        return None
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def hydra_value(value: str) -> str:
    """A value for a Hydra override, quoted when it holds characters Hydra's grammar would read."""
    if all(c.isalnum() or c in "/._-+:@%" for c in value):
        return value
    # in a quoted value a backslash is literal, except before a quote (or the closing quote)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"


# ------------------------------------------------------------------------------ run folders


def latest_unfinished(run_dir: Path) -> Path | None:
    """The newest run folder under ``run_dir`` whose run.json has no ``finished_at``."""
    unfinished = []
    for folder in run_dir.iterdir() if run_dir.is_dir() else ():
        meta = read_run_file(folder)
        if meta is not None and not meta.get("finished_at"):
            unfinished.append((str(meta.get("started_at") or ""), folder.name, folder))
    return max(unfinished)[2] if unfinished else None


def read_run_file(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def run_folders(run_dir: Path) -> set[Path]:
    return {p for p in run_dir.iterdir() if p.is_dir()} if run_dir.is_dir() else set()


def describe(folder: Path) -> str:
    """'7 of 60 trials, best 6.1234, finished' from a run folder's files."""
    meta = read_run_file(folder) or {}
    scores, count = [], 0
    try:
        with open(folder / TRIALS_FILE, encoding="utf-8") as lines:
            for line in lines:
                try:
                    trial = json.loads(line)
                except ValueError:
                    continue
                count += 1
                if trial.get("status") == "ok" and isinstance(trial.get("score"), (int, float)):
                    scores.append(trial["score"])
    except OSError:
        pass
    budget = (meta.get("init_points") or 0) + (meta.get("n_iters") or 0)
    best = f", best {max(scores):.4f}" if scores else ""
    state = "finished" if meta.get("finished_at") else "unfinished"
    return f"{count} of {budget or '?'} trials{best}, {state}"


# ------------------------------------------------------------------------------------ lock


class RunDirLock:
    """An exclusive ``fcntl.flock`` on ``<run.dir>/.overnight.lock``, held while the night lasts."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def __enter__(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise Failure(f"Another overnight run{who} is working on {self.path.parent} (lock {self.path} is held); "
                          "exiting without touching it.", EXIT_LOCKED) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None


# ----------------------------------------------------------------------------------- WebUI


class WebUIApi:
    """The two calls the night needs: is the API up, and set options."""

    def __init__(self, url: str, auth: str | None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if auth:
            self._headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def status(self, timeout: float = 10.0) -> int | None:
        """HTTP status of GET /sdapi/v1/progress, None when it cannot be reached."""
        request = urllib.request.Request(self.url + PROGRESS, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except (OSError, ValueError):
            return None

    def set_options(self, options: dict[str, Any]) -> None:
        for key, value in options.items():  # one by one: an option a fork lacks must not block the others
            body = json.dumps({key: value}).encode()
            request = urllib.request.Request(self.url + OPTIONS, data=body, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                log.info("WebUI option %s = %s set.", key, json.dumps(value))
            except urllib.error.HTTPError as error:
                log.warning("The WebUI refused option %s = %s (HTTP %d); set it in its Settings instead.",
                            key, json.dumps(value), error.code)
            except OSError as error:
                log.warning("Could not set WebUI option %s: %s.", key, error)


class ManagedWebUI:
    """A WebUI process this script started, in its own process group."""

    def __init__(self, command: Sequence[str], cwd: Path | None, env: dict[str, str], output: Path,
                 stop_grace: float) -> None:
        self.command, self.cwd, self.env, self.output, self.stop_grace = list(command), cwd, env, output, stop_grace
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("Starting the WebUI: %s (console output in %s)", shlex.join(self.command), self.output)
        with open(self.output, "ab") as console:
            try:
                self.process = subprocess.Popen(
                    self.command, cwd=self.cwd, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                    stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:
                raise Failure(f"Cannot start the WebUI ({shlex.join(self.command)}): {error}.", EXIT_WEBUI_DOWN) from error
        log.info("WebUI started, pid %d.", self.process.pid)

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after the grace period; also reaps what it left behind."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the leader's pid is the group's id
        if process.poll() is None:
            log.info("Stopping the WebUI (pid %d): SIGTERM, SIGKILL after %g s.", process.pid, self.stop_grace)
        _signal_group(pgid, signal.SIGTERM)
        try:
            process.wait(self.stop_grace)
        except subprocess.TimeoutExpired:
            log.warning("The WebUI did not stop within %g s: SIGKILL.", self.stop_grace)
        # whatever is left of its group (the leader gone or not) gets SIGKILL
        _signal_group(pgid, signal.SIGKILL)
        try:
            process.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            log.error("The WebUI (pid %d) survived SIGKILL.", process.pid)
            return
        log.info("WebUI stopped (exit status %s).", process.returncode)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------ night


class Night:
    """One night's work: the WebUI, the bayes-merger attempts, the deadline and the signals."""

    def __init__(self, settings: Settings, run_dir: Path, api: WebUIApi, log_file: Path, webui_log: Path) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.api = api
        self.log_file = log_file
        self.webui = ManagedWebUI(settings.webui_command, settings.webui_cwd, settings.webui_env, webui_log,
                                  settings.stop_grace) if settings.webui_command else None
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_signal: int | None = None
        self.interrupted_at: float | None = None

    # signals: remember the first, hand a Ctrl-C to bayes-merger so it ends cleanly
    def on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            log.warning("Got %s: stopping; every finished trial is kept.", signal.Signals(signum).name)
        self._interrupt_child()

    def _interrupt_child(self) -> None:
        if self.child is not None and self.child.poll() is None and self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
            _signal_group(self.child.pid, signal.SIGINT)

    def past_deadline(self) -> bool:
        return self.settings.deadline is not None and datetime.now() >= self.settings.deadline

    def stopping(self) -> bool:
        return self.stop_signal is not None or self.past_deadline()

    def run(self) -> int:
        try:
            return self._attempts()
        finally:
            if self.webui is not None:
                self.webui.stop()

    def _attempts(self) -> int:
        restarts = 0
        adopted = False  # a WebUI was already answering: use it, start none
        new_run = self.settings.new_run  # until bayes-merger has been started once
        while True:
            if self.stopping():
                return self._stopped(None)
            if self.webui is not None and not adopted and not self.webui.running:
                answer = self.api.status(timeout=5) if self.webui.process is None and restarts == 0 else None
                if answer is not None:
                    log.warning("Something already answers at %s (HTTP %d): using it as the WebUI; WEBUI_COMMAND "
                                "is not run, and it is not stopped at the end.", self.api.url, answer)
                    adopted = True
                else:
                    self.webui.stop()
                    self.webui.start()
            if not self._wait_ready():
                if self.stopping():
                    return self._stopped(None)
                if restarts >= self.settings.max_restarts or self.webui is None or adopted:
                    raise Failure(f"The WebUI at {self.api.url} did not answer; giving up.", EXIT_WEBUI_DOWN)
                restarts += 1
                log.warning("Restarting the WebUI (restart %d of %d).", restarts, self.settings.max_restarts)
                self.webui.stop()
                continue
            if self.settings.webui_options:
                self.api.set_options(self.settings.webui_options)
            if self.stopping():
                return self._stopped(None)

            folder = None if new_run else latest_unfinished(self.run_dir)
            new_run, resumed = False, folder is not None
            rc, folder = self._bayes_merger(folder)
            if folder is not None:
                log.info("Run %s: %s.", folder, describe(folder))
            if self.interrupted_at is not None:
                return self._stopped(folder)
            if rc == 0:
                log.info("The run finished its budget.")
                return EXIT_OK
            if rc not in (BM_WEBUI_ERROR, BM_STOPPED):
                log.error("bayes-merger failed with exit code %d; see above.", rc)
                if rc == EXIT_CONFIG and resumed:
                    log.error("If the config no longer fits the unfinished run %s, start a new run with --new-run "
                              "(that run stays as it is).", folder)
                return rc if rc > 0 else 1
            if not self._webui_down():
                log.error("bayes-merger stopped (exit code %d) while the WebUI still answers: not a WebUI crash, "
                          "so no restart. Fix the cause; the next night resumes.", rc)
                return rc
            if restarts >= self.settings.max_restarts:
                log.error("The WebUI went down %d times; giving up (exit code %d). The next night resumes.",
                          restarts + 1, rc)
                return rc
            restarts += 1
            if self.webui is not None and not adopted:
                self.webui.stop()
                log.warning("The WebUI went down; restarting it and resuming (restart %d of %d).",
                            restarts, self.settings.max_restarts)
            else:
                log.warning("The WebUI went down; waiting for it to come back (retry %d of %d).",
                            restarts, self.settings.max_restarts)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.settings.ready_timeout
        last = "no answer"
        log.info("Waiting up to %g s for the WebUI API at %s.", self.settings.ready_timeout, self.api.url)
        while not self.stopping():
            status = self.api.status(timeout=10)
            if status == 200:
                log.info("The WebUI API answers.")
                return True
            if status == 401:
                raise Failure(f"The WebUI at {self.api.url} refuses our credentials (HTTP 401): set WEBUI_AUTH "
                              "or the config's webui.auth_env.", EXIT_WEBUI_DOWN)
            if status == 404:
                last = "HTTP 404: still starting, or started without --api"
            elif status is not None:
                last = f"HTTP {status}"
            if self.webui is not None and self.webui.process is not None and not self.webui.running:
                log.error("The WebUI exited (status %s) before its API answered; see %s.",
                          self.webui.exit_code(), self.webui.output)
                return False
            if time.monotonic() >= deadline:
                log.error("The WebUI API did not answer within %g s (%s).", self.settings.ready_timeout, last)
                return False
            time.sleep(POLL_SECONDS)
        return False

    def _webui_down(self) -> bool:
        if self.webui is not None and self.webui.process is not None and not self.webui.running:
            log.warning("The WebUI process exited (status %s); see %s.", self.webui.exit_code(), self.webui.output)
            return True
        status = self.api.status(timeout=10)
        if status != 200:
            log.warning("The WebUI API does not answer (%s).", f"HTTP {status}" if status else "unreachable")
            return True
        return False

    def _bayes_merger(self, folder: Path | None) -> tuple[int, Path | None]:
        command = [*self.settings.bayes_merger, "--config", str(self.settings.config), *self.settings.overrides]
        if folder is not None:
            log.info("Resuming %s (%s).", folder, describe(folder))
            command += [f"resume={hydra_value(str(folder))}", f"hydra.run.dir={hydra_value(str(folder))}"]
        else:
            log.info("No unfinished run under %s: starting a new one.", self.run_dir)
        before = run_folders(self.run_dir)
        log.info("Running: %s", shlex.join(command))
        # bayes-merger logs into the night's file; no progress bars there
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as output:
            self.child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
        try:
            rc = self._wait_child(self.child)
        finally:
            self.child = None
        log.info("bayes-merger exited with code %d.", rc)
        if folder is None:
            new = sorted(run_folders(self.run_dir) - before)
            folder = new[-1] if new else None
        return rc, folder

    def _wait_child(self, child: subprocess.Popen[bytes]) -> int:
        """Wait for bayes-merger; at the deadline or on a signal, Ctrl-C it, then SIGTERM, then SIGKILL."""
        terminated = killed = False
        last_ctrl_c = 0.0
        while True:
            try:
                return child.wait(POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if self.interrupted_at is None:
                if self.past_deadline():
                    log.warning("Deadline %s reached: stopping bayes-merger (Ctrl-C); the next night resumes.",
                                f"{self.settings.deadline:%Y-%m-%d %H:%M}")
                    self._interrupt_child()
                elif self.stop_signal is not None:
                    self._interrupt_child()  # the signal came before self.child was set
                last_ctrl_c = time.monotonic()
                continue
            now = time.monotonic()
            waited = now - self.interrupted_at
            if waited > CHILD_GRACE + KILL_WAIT and not killed:
                log.warning("bayes-merger ignores SIGTERM: SIGKILL.")
                _signal_group(child.pid, signal.SIGKILL)
                killed = True
            elif waited > CHILD_GRACE and not terminated:
                log.warning("bayes-merger still runs %g s after Ctrl-C: SIGTERM.", CHILD_GRACE)
                _signal_group(child.pid, signal.SIGTERM)
                terminated = True
            elif not terminated and now - last_ctrl_c >= CTRL_C_REPEAT:
                # Python drops a KeyboardInterrupt raised inside a weakref callback or __del__
                # ("Exception ignored in ..."), so one Ctrl-C can be lost: send it again
                log.warning("bayes-merger still runs %.0f s after Ctrl-C: Ctrl-C again.", waited)
                _signal_group(child.pid, signal.SIGINT)
                last_ctrl_c = now

    def _stopped(self, folder: Path | None) -> int:
        if self.stop_signal is not None:
            log.warning("Stopped by %s.", signal.Signals(self.stop_signal).name)
            return 128 + self.stop_signal
        log.info("Stopped at the deadline%s; the next night resumes it.", f" ({folder.name})" if folder else "")
        return EXIT_OK


# ------------------------------------------------------------------------------------ main


def setup_logging(log_dir: Path, night: date) -> tuple[Path, Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"overnight-{night:%Y-%m-%d}.log"
    formatter = logging.Formatter("%(asctime)s overnight %(levelname)s %(message)s")
    for handler in (logging.FileHandler(log_file, mode="a", encoding="utf-8"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log_file, log_dir / f"overnight-{night:%Y-%m-%d}.webui.log"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="overnight: %(levelname)s %(message)s")
    started = datetime.now()
    try:
        env_file = _env_file_argument(argv)
        if env_file is not None:
            load_env_file(env_file)
        settings = build_settings(parse_args(argv), started)
    except Failure as failure:
        log.error("%s", failure)
        return failure.code
    except OSError as error:
        log.error("%s", error)
        return EXIT_CONFIG

    try:
        log_file, webui_log = setup_logging(settings.log_dir, night_of(started))
    except OSError as error:
        log.error("Cannot write the night's log in %s: %s.", settings.log_dir, error)
        return EXIT_CONFIG
    log.info("---- overnight run, pid %d, config %s%s", os.getpid(), settings.config,
             f", deadline {settings.deadline:%Y-%m-%d %H:%M}" if settings.deadline else "")
    try:
        sections = compose_config(settings)
        run_dir = settings.run_dir or _run_dir(sections)
        url = settings.webui_url or sections.get("webui", {}).get("url")
        if not url:
            raise Failure("No WebUI address: set webui.url in the config, --webui-url or WEBUI_URL.", EXIT_CONFIG)
        api = WebUIApi(str(url), settings.webui_auth or _auth(sections.get("webui", {})))
        with RunDirLock(run_dir):
            night = Night(settings, run_dir, api, log_file, webui_log)
            previous = {sig: signal.signal(sig, night.on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
            try:
                code = night.run()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    except Failure as failure:
        log.error("%s", failure)
        code = failure.code
    except Exception:  # a bug: its traceback goes into the night's log, not only to a console nobody reads
        log.exception("Unexpected error in overnight.py (a bug; please report it).")
        code = EXIT_SOFTWARE
    log.info("---- overnight run ends with exit code %d after %s", code, _duration(datetime.now() - started))
    return code


def _env_file_argument(argv: Sequence[str]) -> Path | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--env-file", type=Path)
    known, _ = parser.parse_known_args(argv)
    return known.env_file


def _run_dir(sections: dict[str, dict[str, Any]]) -> Path:
    value = sections.get("run", {}).get("dir")
    if not value:
        raise Failure("The composed config has no run.dir; pass --run-dir.", EXIT_CONFIG)
    return Path(str(value)).expanduser().resolve()


def _auth(webui: dict[str, Any]) -> str | None:
    if webui.get("auth"):
        return str(webui["auth"])
    if webui.get("auth_env"):
        return os.environ.get(str(webui["auth_env"])) or None
    return None


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


if __name__ == "__main__":
    sys.exit(main())
