"""The night's settings: flags, else environment variables (``--env-file`` fills unset ones), and the
composed bayes-merger config (``run.dir``, ``webui.url``, credentials) as ``bayes-merger --cfg job`` prints it."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from bayes_merger.cli_secrets import PRINT_SECRETS
from bayes_merger.config import WebUIConfig, hydra_value
from bayes_merger.errors import ConfigError, RunStopped, WebUIError
from bayes_merger.renderers.comfyui.http import ComfyApi
from bayes_merger.webui.client import OPTIONS
from bayes_merger.webui.http import ApiSession, credentials

EXIT_OK = 0
EXIT_CONFIG = ConfigError.exit_code  # the runner's bad settings and bayes-merger's bad config: one code
EXIT_WEBUI_DOWN = 69  # EX_UNAVAILABLE
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug in the runner
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later
# bayes-merger's codes after which a WebUI restart can help (RunStopped: a lost WebUI stops the run resumable)
BM_WEBUI_ERROR, BM_STOPPED = WebUIError.exit_code, RunStopped.exit_code

# A1111's advice against RAM growing with each model switch: one model in memory, no RAM cache
MAX_HOURS = 24 * 7  # a deadline further off is a typo (and past datetime's range, a traceback)
DEFAULT_WEBUI_OPTIONS = '{"sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0}'
ASK_TIMEOUT = 300  # seconds for bayes-merger to compose or check the config: it reads no model whole
MESSAGE_MARK = "] - "  # what ends the prefix of a line bayes-merger logs (Hydra's format: [time][logger][LEVEL] - )
ERROR_MARK = f"[ERROR{MESSAGE_MARK}"  # what precedes the message of an error it logs


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
    run_stop_grace: float
    webui_options: dict[str, Any]


def load_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments, optional ``export``, quotes as in a shell) for unset variables; returns
    ``path:line`` by the name of each variable it set, for the messages about a bad value (``_named``). A value
    of one word is set as a shell leaves it, one of several words shell-quoted (``shlex.join``).

    A malformed line is named by file, line number and key only: it may hold a password.
    """
    origins: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad's byte-order mark read as part of line 1's key
    except UnicodeDecodeError as error:  # its bytes may be a password's: the line number only
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise Failure(f"{path}:{line}: not UTF-8 text; save the env file as UTF-8.", EXIT_CONFIG) from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise Failure(f"{path}:{number}: expected KEY=VALUE (a name, '=', then the value).", EXIT_CONFIG)
        try:
            words = shlex.split(_without_comment(value))
        except ValueError as error:  # shlex's only complaints: an unclosed quote or a trailing backslash
            raise Failure(f"{path}:{number}: the value of {key.strip()} is not shell-quoted right "
                          f"({str(error).lower()}).", EXIT_CONFIG) from None
        # a variable set before wins; of the file's lines for a key, its last, as a shell and systemd take it
        if key.strip() not in os.environ or key.strip() in origins:
            # one word as the shell leaves it (KEY="a b" is a b); several quoted again, for the settings read as
            # words (_words): WEBUI_COMMAND=./webui.sh --ckpt-dir '/m/my models' keeps '/m/my models' one word
            os.environ[key.strip()] = words[0] if len(words) == 1 else shlex.join(words)
            origins[key.strip()] = f"{path}:{number}"
    return origins


def _named(name: str, origins: Mapping[str, str]) -> str:
    """The setting ``name`` as a message about its value names it, by the env file and line it came from, else as
    an environment variable; never with its value, which may be a password."""
    return f"{origins[name]}: {name}" if name in origins else f"The environment variable {name}"


def _words(name: str, origins: Mapping[str, str]) -> list[str]:
    """The shell-quoted words of the environment variable ``name``; a Failure, naming it, when they are not."""
    try:
        return shlex.split(os.environ.get(name, ""))
    except ValueError as error:  # shlex's only complaints: an unclosed quote or a trailing backslash
        raise Failure(f"{_named(name, origins)} is not shell-quoted right ({str(error).lower()}).",
                      EXIT_CONFIG) from None


def _without_comment(value: str) -> str:
    """``value`` up to a ``#`` that starts a word outside quotes, where a shell's comment begins: ``pa#ss``
    and ``'a # b'`` keep theirs (shlex's ``comments=True`` would cut both)."""
    quote: str | None = None
    escaped = word_start = False  # the value goes on the word KEY= began
    for index, char in enumerate(value):
        if escaped:
            escaped = word_start = False
        elif quote is not None:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                escaped = True
        elif char == "#" and word_start:
            return value[:index]
        else:
            if char == "\\":
                escaped = True
            elif char in "'\"":
                quote = char
            word_start = char in " \t"
    return value


def parse_args(argv: Sequence[str], origins: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The flags, defaults from the environment; ``origins``: where the env file set variables (``load_env_file``)."""
    env = os.environ.get
    origins = origins or {}
    parser = argparse.ArgumentParser(
        prog="bayes-merger-overnight",
        description="One unattended night of bayes-merger: start the WebUI, resume the latest unfinished run "
                    "(or start one), restart the WebUI if it dies, stop it at the end.",
        epilog="WebUI settings come from the environment: WEBUI_COMMAND (the command that starts it, e.g. "
               "'python main.py --listen 127.0.0.1 --port 8188' for a ComfyUI; unset: use a WebUI that is already "
               "running), WEBUI_CWD, WEBUI_ENV ('KEY=VALUE ...' added to its "
               "environment), WEBUI_URL (default: webui.url of the config), WEBUI_AUTH ('user:password'; "
               "default: the config's webui.auth / webui.auth_env), WEBUI_OPTIONS (JSON object of options "
               f"POSTed to {OPTIONS} once the API answers; default {DEFAULT_WEBUI_OPTIONS}; '' or '{{}}': none; not for "
               "a ComfyUI). The config's webui.backend says how readiness is asked: A1111 answers "
               "/sdapi/v1/progress, ComfyUI /system_stats.",
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
    parser.add_argument("--max-restarts", type=int, default=_env_number("OVERNIGHT_MAX_RESTARTS", int, origins, "3"),
                        help="WebUI restarts (and resumes) allowed after it died, and resumes after bayes-merger "
                             "was killed by a signal (env OVERNIGHT_MAX_RESTARTS; default 3)")
    parser.add_argument("--deadline", default=env("OVERNIGHT_DEADLINE"), metavar="HH:MM",
                        help="stop at the next HH:MM; the next night resumes (env OVERNIGHT_DEADLINE)")
    parser.add_argument("--max-hours", type=float, default=_env_number("OVERNIGHT_MAX_HOURS", float, origins),
                        help="stop after this many hours (env OVERNIGHT_MAX_HOURS)")
    parser.add_argument("--new-run", action="store_true", help="start a new run even if an unfinished one exists")
    parser.add_argument("--webui-url", default=env("WEBUI_URL"), help="the WebUI's address (env WEBUI_URL)")
    parser.add_argument("--ready-timeout", type=float,
                        default=_env_number("WEBUI_READY_TIMEOUT", float, origins, "600"),
                        help="seconds to wait for the WebUI's API (env WEBUI_READY_TIMEOUT; default 600)")
    parser.add_argument("--run-stop-grace", type=float,
                        default=_env_number("OVERNIGHT_RUN_STOP_GRACE", float, origins, "180"),
                        help="seconds bayes-merger gets after its Ctrl-C (deadline, SIGTERM, Ctrl-C) to finish the "
                             "trial in flight and hand the WebUI back; then a second Ctrl-C stops it at once, and "
                             "SIGKILL follows 30 s later (env OVERNIGHT_RUN_STOP_GRACE; default 180)")
    parser.add_argument("--stop-grace", type=float, default=_env_number("WEBUI_STOP_GRACE", float, origins, "30"),
                        help="seconds between SIGTERM and SIGKILL when stopping the WebUI (env WEBUI_STOP_GRACE; default 30)")
    return parser.parse_intermixed_args(argv)


def build_settings(args: argparse.Namespace, now: datetime, origins: Mapping[str, str] | None = None) -> Settings:
    """The night's settings from the flags and the environment; ``origins`` as for ``parse_args``."""
    origins = origins or {}
    if not args.config:
        raise Failure("--config (or OVERNIGHT_CONFIG) is required: the bayes-merger config to run.", EXIT_CONFIG)
    config = Path(args.config).expanduser().resolve()
    if not config.is_file():
        raise Failure(f"Config file {args.config} does not exist.", EXIT_CONFIG)
    overrides = tuple(args.overrides) or tuple(_words("OVERNIGHT_OVERRIDES", origins))
    if any(o.split("=", 1)[0].lstrip("+~") in ("resume", "hydra.run.dir") for o in overrides):
        raise Failure("Do not pass resume= or hydra.run.dir=: the script picks the run folder itself "
                      "(--new-run starts a new one).", EXIT_CONFIG)
    run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else None
    if run_dir is not None:  # bayes-merger must put its runs where the script looks for them
        overrides = (*overrides, f"run.dir={hydra_value(str(run_dir))}")
    # the WebUI the night starts and waits for is the one bayes-merger talks to, with the same credentials:
    # the password by the variable's name (bayes-merger inherits the environment), never on its command line
    if args.webui_url:
        overrides = (*overrides, f"webui.url={hydra_value(args.webui_url)}")
    if os.environ.get("WEBUI_AUTH"):
        overrides = (*overrides, "webui.auth=null", "webui.auth_env=WEBUI_AUTH")
    if args.max_restarts < 0:
        raise Failure("--max-restarts must not be negative.", EXIT_CONFIG)
    for flag, env_name in (("run_stop_grace", "OVERNIGHT_RUN_STOP_GRACE"), ("stop_grace", "WEBUI_STOP_GRACE"),
                           ("ready_timeout", "WEBUI_READY_TIMEOUT")):
        if not 0 <= getattr(args, flag) < math.inf:  # nan as well: a wait that would never end
            raise Failure(f"--{flag.replace('_', '-')} (or {env_name}) must be a number of seconds, at least 0.",
                          EXIT_CONFIG)
    try:
        options = json.loads(os.environ.get("WEBUI_OPTIONS", DEFAULT_WEBUI_OPTIONS) or "{}")
    except json.JSONDecodeError as error:
        raise Failure(f"{_named('WEBUI_OPTIONS', origins)} is not a JSON object: {error}.", EXIT_CONFIG) from error
    if not isinstance(options, dict):
        raise Failure(f"{_named('WEBUI_OPTIONS', origins)} must be a JSON object, e.g. {DEFAULT_WEBUI_OPTIONS}",
                      EXIT_CONFIG)
    webui_env = {}
    for number, item in enumerate(_words("WEBUI_ENV", origins), start=1):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Failure(f"{_named('WEBUI_ENV', origins)} must be KEY=VALUE words; its word {number} is not.",
                          EXIT_CONFIG)
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
        webui_command=tuple(_words("WEBUI_COMMAND", origins)),
        webui_cwd=Path(cwd).expanduser() if cwd else None,
        webui_env=webui_env,
        webui_url=args.webui_url,
        webui_auth=os.environ.get("WEBUI_AUTH") or None,
        ready_timeout=args.ready_timeout,
        stop_grace=args.stop_grace,
        run_stop_grace=args.run_stop_grace,
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
        if not 0 < max_hours <= MAX_HOURS:  # nan too
            raise Failure(f"--max-hours must be a positive number of hours, at most {MAX_HOURS}.", EXIT_CONFIG)
        candidates.append(now + timedelta(hours=max_hours))
    return min(candidates) if candidates else None


def night_of(moment: datetime) -> date:
    """A night runs from noon to noon: a start at 01:00 belongs to the evening before."""
    return (moment - timedelta(hours=12)).date()


def _env_number(name: str, kind: type[int | float], origins: Mapping[str, str],
                default: str | None = None) -> int | float | None:
    """The environment variable ``name`` (or ``default`` when unset or empty) as a number, None when neither
    is given; a Failure, not a traceback, when it is not a number, naming where it was set, not its value."""
    value = os.environ.get(name) or default
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise Failure(f"{_named(name, origins)} must be {'a whole number' if kind is int else 'a number'}.",
                      EXIT_CONFIG) from None


def bayes_merger_command(settings: Settings, folder: Path | None) -> list[str]:
    """The bayes-merger command of an attempt: a new run, or the run in ``folder`` resumed."""
    command = [*settings.bayes_merger, "--config", str(settings.config), *settings.overrides]
    if folder is not None:
        command += [f"resume={hydra_value(str(folder))}", f"hydra.run.dir={hydra_value(str(folder))}"]
    return command


def compose_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ``run`` and ``webui`` sections of the composed config, as bayes-merger (Hydra) composes it."""
    done = _bayes_merger_says([*bayes_merger_command(settings, None), "--cfg", "job", "--resolve"], settings,
                              {PRINT_SECRETS: "1"})  # the password the WebUI is started with: read, never logged
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise Failure(f"bayes-merger cannot compose {settings.config}: {' '.join(detail[-3:])}",
                      done.returncode if 0 < done.returncode < 128 else EXIT_CONFIG)
    return parse_sections(done.stdout)


def check_start(settings: Settings, folder: Path | None) -> str:
    """``bayes-merger --check`` on the night's first attempt (a new run, or the run in ``folder`` resumed): a
    missing model, a method the models cannot take, a bad payload is said before the WebUI is started and
    waited for, not after. Its sentence when the start would go on; a Failure with bayes-merger's own when not."""
    done = _bayes_merger_says([*bayes_merger_command(settings, folder), "--check"], settings)
    lines = (done.stderr + done.stdout).strip().splitlines()
    if done.returncode != 0:
        # its log lines at ERROR (Hydra's format), else its last line (the format before Hydra's logging)
        said = [line.split(ERROR_MARK, 1)[1] for line in lines if ERROR_MARK in line] or lines[-1:]
        raise Failure(f"bayes-merger refuses to start: {' '.join(said).removeprefix('bayes-merger: ')}",
                      done.returncode if 0 < done.returncode < 128 else EXIT_CONFIG)
    return lines[-1].split(MESSAGE_MARK, 1)[-1] if lines else "bayes-merger --check passed."


def _bayes_merger_says(command: list[str], settings: Settings,
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=ASK_TIMEOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **env} if env else None)
    except OSError as error:
        raise Failure(f"Cannot run {settings.bayes_merger[0]}: {error}.", EXIT_CONFIG) from error
    except subprocess.TimeoutExpired:  # a config on a network share that hangs, say: said, not a traceback
        raise Failure(f"bayes-merger did not end within {ASK_TIMEOUT} s with {settings.config} (not a run: its config "
                      "composed or checked).", EXIT_CONFIG) from None


def parse_sections(text: str) -> dict[str, dict[str, Any]]:
    """The sections (mappings at the top level) of the YAML config ``--cfg job`` prints."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise Failure(f"bayes-merger printed a config that is not YAML ({error}).", EXIT_CONFIG) from error
    if not isinstance(data, dict):
        return {}
    # a required setting left unset (Hydra's ???) would end every bayes-merger start with exit 2, after the
    # night has started and waited for the WebUI: said now
    missing = [f"{prefix}{key}" for prefix, part in [("", data), *((f"{k}.", v) for k, v in data.items()
                                                                  if isinstance(v, dict))]
               for key, value in part.items() if value == "???"]
    if missing:
        raise Failure(f"The config leaves {', '.join(missing)} unset: set {'it' if len(missing) == 1 else 'them'} "
                      f"in the config or as overrides after it (e.g. {missing[0]}=...).", EXIT_CONFIG)
    return {str(key): value for key, value in data.items() if isinstance(value, dict)}


def webui_url_of(sections: dict[str, dict[str, Any]]) -> str | None:
    """The one WebUI the night waits for, configures and restarts: the config's ``webui.urls`` where it names
    one, else ``webui.url``. A config that renders on several WebUIs or a Ray cluster's hosts is refused:
    the night would watch a WebUI the run does not use, and restart none of those it does."""
    webui = sections.get("webui", {})
    urls = list(webui.get("urls") or [])
    if len(urls) > 1:
        raise Failure(f"The config renders on {len(urls)} WebUIs (webui.urls), and bayes-merger-overnight watches one: "
                      "run bayes-merger itself, or give the night a config with one WebUI.", EXIT_CONFIG)
    if sections.get("cluster", {}).get("address"):
        raise Failure("The config renders on a Ray cluster's hosts (cluster.address), and bayes-merger-overnight "
                      "watches one WebUI on this machine: run bayes-merger itself on the cluster's driver.",
                      EXIT_CONFIG)
    url = urls[0] if urls else webui.get("url")
    return str(url) if url else None


def watched_url(given: str | None, sections: dict[str, dict[str, Any]]) -> str | None:
    """The WebUI the night watches: ``given`` (--webui-url, WEBUI_URL; passed on as ``webui.url``), else the
    config's (``webui_url_of``). Refused where the config's one ``webui.urls`` entry is another: bayes-merger
    renders on that one, and the night would start, configure and restart a WebUI the run does not use."""
    configured = webui_url_of(sections)
    if given and list(sections.get("webui", {}).get("urls") or []) and configured != given:
        raise Failure(f"--webui-url (WEBUI_URL) {given} is passed on as webui.url, but the config renders on "
                      f"webui.urls [{configured}], which bayes-merger uses instead: put {given} in webui.urls, or "
                      "leave --webui-url out.", EXIT_CONFIG)
    return given or configured


def run_dir_of(sections: dict[str, dict[str, Any]]) -> Path:
    value = sections.get("run", {}).get("dir")
    if not value:
        raise Failure("The composed config has no run.dir; pass --run-dir.", EXIT_CONFIG)
    return Path(str(value)).expanduser().resolve()


def auth_of(webui: dict[str, Any]) -> str | None:
    """``user:password`` from the composed config's webui.auth, else from the variable webui.auth_env names, read
    by bayes-merger's own ``credentials``: a named variable that is unset (or a malformed value) is the sentence
    and exit 2 every bayes-merger start would end with, said before the night starts anything, not a 401 later."""
    backend = str(webui.get("backend") or "a1111")
    config = WebUIConfig(auth=str(webui["auth"]) if webui.get("auth") else None,
                         auth_env=str(webui["auth_env"]) if webui.get("auth_env") else None, checkpoint_dir=".")
    try:
        pair = credentials(config, (ComfyApi if backend == "comfyui" else ApiSession).credentials_form)
    except ConfigError as error:
        raise Failure(str(error), EXIT_CONFIG) from None
    return None if pair is None else ":".join(pair)
