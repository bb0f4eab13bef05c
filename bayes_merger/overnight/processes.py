"""The processes and resources a night holds: the lock on run.dir, the WebUI it started, and a probe of its API."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import requests

from bayes_merger.cli_secrets import redacted_override
from bayes_merger.config import WebUIConfig
from bayes_merger.errors import WebUIError
from bayes_merger.files import Locked, pid_lock
from bayes_merger.overnight.settings import EXIT_LOCKED, EXIT_WEBUI_DOWN, Failure
from bayes_merger.renderers.comfyui.http import ComfyApi
from bayes_merger.renderers.probe import backend_of
from bayes_merger.webui.client import WebUIClient

log = logging.getLogger("overnight")

LOCK_FILE = ".overnight.lock"
KILL_WAIT = 10.0  # seconds to wait for a process after SIGKILL
STOP_POLL = 0.1  # seconds between looks at a stopping WebUI's process group
# the WebUIs' credential flags (A1111 and its forks: --api-auth, --gradio-auth; SD.Next: --auth), as a word
# of their own (the value is the next word) or inside one (--api-auth=u:p, or a `bash -c '... --auth u:p'`)
SECRET_FLAGS = ("--api-auth", "--gradio-auth", "--auth")
_SECRET_IN_WORD = re.compile(rf"(?<![\w-])({'|'.join(map(re.escape, SECRET_FLAGS))})(=|\s+)\S+")


def redacted(command: Sequence[str]) -> str:
    """``shlex.join(command)`` for the night's log, with the values of credential flags and auth overrides
    shown as ``***``."""
    shown = []
    value_is_secret = False
    for word in command:
        if value_is_secret:
            shown.append("***")
            value_is_secret = False
            continue
        value_is_secret = word in SECRET_FLAGS
        shown.append(_SECRET_IN_WORD.sub(r"\1\2***", redacted_override(word)))
    return shlex.join(shown)


class RunDirLock:
    """An exclusive lock on ``<run.dir>/.overnight.lock`` (``files.pid_lock``), held while the night lasts."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._held: ExitStack | None = None

    def __enter__(self) -> RunDirLock:
        held = ExitStack()
        try:
            held.enter_context(pid_lock(self.path))
        except Locked as locked:
            who = f" (pid {locked.pid})" if locked.pid is not None else ""
            raise Failure(f"Another overnight run{who} is working on {self.path.parent} (lock {self.path} is held); "
                          "exiting without touching it.", EXIT_LOCKED) from None
        self._held = held
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.close()  # closing the file releases the lock
            self._held = None


class WebUIApi:
    """The two calls the night needs, through the package's clients: is the API up, and set options.

    ``backend`` is the config's ``webui.backend``: an A1111-type WebUI is up when ``GET /sdapi/v1/progress``
    answers, a ComfyUI when ``GET /system_stats`` does; with ``auto`` either will do.
    """

    read_timeout = 60.0  # seconds each call may take: a WebUI loading a model answers the options late

    def __init__(self, url: str, auth: str | None, backend: str = "a1111") -> None:
        config = WebUIConfig(url=url, auth=auth, checkpoint_dir=".", read_timeout=self.read_timeout, retries=1)
        self.backend = backend_of(backend)
        self._client = WebUIClient(config, run_id="overnight")
        self._comfyui = ComfyApi(config)
        self.url = url.rstrip("/")
        self.kind = "ComfyUI" if self.backend == "comfyui" else "WebUI"

    def status(self, timeout: float = 10.0) -> int | None:
        """HTTP status of the backend's readiness probe, None when it cannot be reached (with auto: 200
        when either probe answers 200, else the A1111 one's)."""
        if self.backend == "comfyui":
            return self._comfyui_status(timeout)
        status = self._client.status(timeout)
        if self.backend == "auto" and status != 200 and self._comfyui_status(timeout) == 200:
            return 200
        return status

    def is_comfyui(self, timeout: float = 10.0) -> bool:
        return self.backend == "comfyui" or (self.backend == "auto" and self._client.status(timeout) != 200
                                             and self._comfyui_status(timeout) == 200)

    def _comfyui_status(self, timeout: float) -> int | None:
        try:
            return self._comfyui.probe((min(self._comfyui.config.connect_timeout, timeout), timeout)).status_code
        except requests.RequestException:
            return None

    def set_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Set ``options`` one by one; the values those it changed had before (``restore_options`` sets them
        back: the WebUI saves options in its config.json, for every later start)."""
        if self.is_comfyui():
            log.info("ComfyUI has no options API: WEBUI_OPTIONS (%s) is not applied.", ", ".join(options))
            return {}
        try:
            before = dict(self._client.options())
        except WebUIError as error:
            log.warning("Could not read the WebUI's options, so those set now stay after the night: %s", error)
            before = {}
        changed = {}
        for key, value in options.items():  # one by one: an option a fork lacks must not block the others
            try:
                self._client.set_option(key, value)
                log.info("WebUI option %s = %s set.", key, json.dumps(value))
            except WebUIError as error:
                if error.status is not None:
                    log.warning("The WebUI refused option %s = %s (HTTP %d); set it in its Settings instead.",
                                key, json.dumps(value), error.status)
                else:
                    log.warning("Could not set WebUI option %s: %s", key, error)
                continue
            if key in before and before[key] != value:
                changed[key] = before[key]
        return changed

    def restore_options(self, options: dict[str, Any]) -> None:
        """Set ``options`` back (``set_options``' answer), each it can; the others are said. A WebUI that
        does not answer one (hung, gone) is not asked the rest: each would wait its read timeout, and the
        night's stop has a service manager's time limit (the WebUI's own stop comes after this)."""
        keys = list(options)
        for index, key in enumerate(keys):
            try:
                self._client.set_option(key, options[key])
                log.info("WebUI option %s set back to %s.", key, json.dumps(options[key]))
            except WebUIError as error:
                if error.status is None:
                    log.warning("The WebUI did not answer (%s): set these options back in its Settings: %s.", error,
                                ", ".join(f"{k} = {json.dumps(options[k])}" for k in keys[index:]))
                    return
                log.warning("Could not set WebUI option %s back to %s (%s); set it in its Settings.", key,
                            json.dumps(options[key]), error)

    def __enter__(self) -> WebUIApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()
        self._comfyui.close()


class ManagedWebUI:
    """A WebUI process this script started, in its own process group."""

    def __init__(self, command: Sequence[str], cwd: Path | None, env: dict[str, str], output: Path,
                 stop_grace: float) -> None:
        self.command, self.cwd, self.env, self.output, self.stop_grace = list(command), cwd, env, output, stop_grace
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("Starting the WebUI: %s (console output in %s)", redacted(self.command), self.output)
        with open(self.output, "ab") as console:
            try:
                self.process = subprocess.Popen(
                    self.command, cwd=self.cwd, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                    stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:
                raise Failure(f"Cannot start the WebUI ({redacted(self.command)}): {error}.", EXIT_WEBUI_DOWN) from error
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
        signal_group(pgid, signal.SIGTERM)
        # the whole group gets the grace, not only its leader: a wrapper (webui.sh runs python launch.py as
        # its child) dies at once on SIGTERM while the WebUI itself is still shutting down
        deadline = time.monotonic() + self.stop_grace
        while process.poll() is None or group_alive(pgid):
            if time.monotonic() >= deadline:
                log.warning("The WebUI did not stop within %g s: SIGKILL.", self.stop_grace)
                break
            time.sleep(STOP_POLL)
        # whatever is left of its group (the leader gone or not) gets SIGKILL
        signal_group(pgid, signal.SIGKILL)
        try:
            process.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            log.error("The WebUI (pid %d) survived SIGKILL.", process.pid)
            return
        log.info("WebUI stopped (exit status %s).", process.returncode)


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is left (its reaped leader aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that changed user: it is there
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
