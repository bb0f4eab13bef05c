"""``bayes-merger-overnight``: one unattended night (see the package docstring); logging and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Sequence

from bayes_merger.errors import BayesMergerError
from bayes_merger.overnight.night import STOP_SIGNALS, Night
from bayes_merger.overnight.processes import RunDirLock, WebUIApi
from bayes_merger.overnight.settings import (
    EXIT_CONFIG,
    EXIT_SOFTWARE,
    Failure,
    auth_of,
    build_settings,
    check_start,
    compose_config,
    load_env_file,
    night_of,
    parse_args,
    run_dir_of,
    watched_url,
)

log = logging.getLogger("overnight")


def setup_logging(log_dir: Path, night: date) -> tuple[Path, Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"overnight-{night:%Y-%m-%d}.log"
    formatter = logging.Formatter("%(asctime)s overnight %(levelname)s %(message)s")
    console = logging.StreamHandler(sys.stderr)
    # the whole night on a terminal or in systemd's journal; elsewhere (cron's redirect into a file that is
    # never rotated, its mail) the warnings and errors only: the night's log file has the rest
    if not (sys.stderr.isatty() or os.environ.get("JOURNAL_STREAM")):
        console.setLevel(logging.WARNING)
    for handler in (logging.FileHandler(log_file, mode="a", encoding="utf-8"), console):
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
        origins = load_env_file(env_file) if env_file is not None else {}
        settings = build_settings(parse_args(argv, origins), started, origins)
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
        run_dir = settings.run_dir or run_dir_of(sections)
        url = watched_url(settings.webui_url, sections)  # refuses a config of several WebUIs whatever --webui-url says
        if not url:
            raise Failure("No WebUI address: set webui.url in the config, --webui-url or WEBUI_URL.", EXIT_CONFIG)
        webui = sections.get("webui", {})
        # the config's credentials, read even when WEBUI_AUTH is set: bayes-merger reads them, and a variable
        # they name that is unset ends each of its starts with exit 2; the night says so before it starts anything
        auth = auth_of(webui)
        try:
            api = WebUIApi(str(url), settings.webui_auth or auth, str(webui.get("backend") or "a1111"))
        except BayesMergerError as error:
            raise Failure(str(error), EXIT_CONFIG) from error
        with RunDirLock(run_dir), api:
            night = Night(settings, run_dir, api, log_file, webui_log)
            # the first attempt's start checked before the WebUI is started: a typo is said now, not after its wait
            log.info("%s", check_start(settings, night.run_to_attempt()))
            previous = {sig: signal.signal(sig, night.on_signal) for sig in STOP_SIGNALS}
            try:
                code = night.run()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    except Failure as failure:
        log.error("%s", failure)
        code = failure.code
    except Exception:  # a bug: its traceback goes into the night's log, not only to a console nobody reads
        log.exception("Unexpected error in bayes-merger-overnight (a bug; please report it).")
        code = EXIT_SOFTWARE
    log.info("---- overnight run ends with exit code %d after %s", code, _duration(datetime.now() - started))
    return code


def _env_file_argument(argv: Sequence[str]) -> Path | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--env-file", type=Path)
    known, _ = parser.parse_known_args(argv)
    return known.env_file


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
