"""One night's work: the WebUI (started, restarted), the bayes-merger attempts, the deadline and the signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bayes_merger.overnight.processes import ManagedWebUI, WebUIApi, redacted, signal_group
from bayes_merger.overnight.settings import (
    BM_STOPPED,
    BM_WEBUI_ERROR,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_WEBUI_DOWN,
    Failure,
    Settings,
    bayes_merger_command,
)
from bayes_merger.run_folder import describe, is_run_folder, stopped_by_lost_webui, unfinished
from bayes_merger.run_folder.liveness import is_running

log = logging.getLogger("overnight")

POLL_SECONDS = 0.5
# the signals that stop the night as its deadline does (bayes-merger gets a Ctrl-C, the run is kept); the runner
# then exits 128 + the signal, which the systemd unit counts as a success (SuccessExitStatus)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# seconds bayes-merger gets after its second Ctrl-C ("stop now") to unwind, the WebUI's model handed back in
# its finally, before SIGKILL
STOP_NOW_WAIT = 30.0


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal, say
        return f"signal {number}"


def sub_folders(run_dir: Path) -> set[Path]:
    """Every folder in ``run_dir``: a run's is the one that appears while bayes-merger runs (it may have no
    run.json yet, so ``liveness.run_folders`` would not know it)."""
    return {p for p in run_dir.iterdir() if p.is_dir()} if run_dir.is_dir() else set()


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
        # the values WEBUI_OPTIONS replaced when the night first set them: set back at its end (the WebUI keeps
        # options in its config.json; after a restart it reads ours, so only the first answer is the user's)
        self.options_before: dict[str, Any] | None = None
        self._restarts = 0  # of the WebUI, or of bayes-merger with the WebUI left as it was, this night
        self._adopted: int | None = None  # the status of what answered before we started a WebUI: used, never started
        self._ready_once = False

    # signals: remember the first, hand a Ctrl-C to bayes-merger so it ends cleanly
    def on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            log.warning("Got %s: stopping; every finished trial is kept.", signal.Signals(signum).name)
        self._interrupt_child()

    def _interrupt_child(self) -> None:
        if self.child is not None and self.child.poll() is None and self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
            log.info("bayes-merger gets a Ctrl-C: it stops after the trial in flight and hands the WebUI back "
                     "(up to %g s).", self.settings.run_stop_grace)
            signal_group(self.child.pid, signal.SIGINT)

    def past_deadline(self) -> bool:
        return self.settings.deadline is not None and datetime.now() >= self.settings.deadline

    def stopping(self) -> bool:
        return self.stop_signal is not None or self.past_deadline()

    def run(self) -> int:
        try:
            return self._attempts()
        finally:
            if self.options_before:
                self.api.restore_options(self.options_before)
            if self.webui is not None:
                self.webui.stop()

    def _attempts(self) -> int:
        # the run this night works on, once a start of bayes-merger has made one (its run.json written): a
        # start that died before (killed while loading the models, say) leaves --new-run standing
        this_run: Path | None = None
        while True:
            if self.stopping():
                return self._stopped(None)
            # before the WebUI is started or its options set: the run by hand may use this very WebUI, or
            # another on the same GPU
            folder = self.run_to_attempt(this_run)
            if folder is not None and folder != this_run and is_running(folder):
                log.error("The newest unfinished run, %s, is being run by another bayes-merger now: the night starts "
                          "nothing on its WebUI and exits; a night after that run has stopped resumes it.", folder)
                return EXIT_CONFIG
            if not self._bring_up_webui():
                continue
            if self.settings.webui_options:
                before = self.api.set_options(self.settings.webui_options)
                self.options_before = before if self.options_before is None else self.options_before
            if self.stopping():
                return self._stopped(None)

            resumed = folder is not None
            rc, folder = self._bayes_merger(folder)
            if folder is not None and is_run_folder(folder):
                this_run = folder
            if folder is not None:
                log.info("Run %s: %s.", folder, describe(folder))
            code = self._after_exit(rc, folder, resumed)
            if code is not None:
                return code

    def run_to_attempt(self, this_run: Path | None = None) -> Path | None:
        """The run folder an attempt resumes: this night's run once a start made one, else the newest unfinished
        run (none with --new-run); None: a new run."""
        return this_run or (None if self.settings.new_run else unfinished(self.run_dir))

    def _bring_up_webui(self) -> bool:
        """Start the WebUI (or adopt what answers at its address) and wait until it answers: False when it
        did not, and was restarted or the night is stopping (go round again); Failure when it never will."""
        if self.webui is not None and self._adopted is None and not self.webui.running:
            answer = self.api.status(timeout=5) if self.webui.process is None and self._restarts == 0 else None
            if answer is not None:
                log.warning("Something already answers at %s (HTTP %d): using it as the WebUI; WEBUI_COMMAND "
                            "is not run, and it is not stopped at the end.", self.api.url, answer)
                self._adopted = answer
            else:
                self.webui.stop()
                self.webui.start()
        if self._wait_ready():
            self._ready_once = True
            return True
        if self.stopping():
            return False
        if self._adopted is not None and not self._ready_once:
            raise Failure(f"Something answered at {self.api.url} (HTTP {self._adopted}) before the night began, so "
                          f"WEBUI_COMMAND was not run, but it never became a ready {self.api.kind}: stop what "
                          "listens there, or give the WebUI a free port (in WEBUI_COMMAND and the config's "
                          "webui.url).", EXIT_WEBUI_DOWN)
        if self._restarts >= self.settings.max_restarts or self.webui is None:
            raise Failure(f"The WebUI at {self.api.url} did not answer; giving up.", EXIT_WEBUI_DOWN)
        self._restarts += 1
        if self._adopted is not None:  # the WebUI that ran before the night is gone: ours takes its place
            self._adopted = None
            log.warning("The WebUI that answered before the night began is gone: starting WEBUI_COMMAND "
                        "(restart %d of %d).", self._restarts, self.settings.max_restarts)
        else:
            log.warning("Restarting the WebUI (restart %d of %d).", self._restarts, self.settings.max_restarts)
        self.webui.stop()
        return False

    def _after_exit(self, rc: int, folder: Path | None, resumed: bool) -> int | None:
        """The night's exit code now that bayes-merger exited with ``rc``, or None to resume its run (the
        WebUI restarted first where it went down)."""
        if self.interrupted_at is not None:
            return self._stopped(folder)
        if rc == 0:
            log.info("The run finished its budget.")
            return EXIT_OK
        killed = rc < 0  # by a signal: the OOM killer, a crash; every trial it finished is on disk
        if killed:
            log.warning("bayes-merger was killed by %s (the OOM killer? a crash?); its run can be resumed.",
                        signal_name(-rc))
            webui_down = self._webui_down()
        elif rc not in (BM_WEBUI_ERROR, BM_STOPPED):
            log.error("bayes-merger failed with exit code %d; see above.", rc)
            if rc == EXIT_CONFIG and resumed:
                log.error("If the config no longer fits the unfinished run %s, start a new run with --new-run "
                          "(that run stays as it is).", folder)
            return rc
        else:
            webui_down = self._webui_down()
            if not webui_down and folder is not None and stopped_by_lost_webui(folder) \
                    and self.webui is not None and self._adopted is None:
                # its API answers, but no trial got an answer: hung in a generation, a restart is the cure
                log.warning("bayes-merger lost the WebUI though its API still answers (hung in a generation?).")
                webui_down = True
            if not webui_down:
                log.error("bayes-merger stopped (exit code %d) while the WebUI still answers: not a WebUI "
                          "crash, so no restart. Fix the cause; the next night resumes.", rc)
                return rc
        if self._restarts >= self.settings.max_restarts:
            if killed:
                # not 128 + the signal: 130 and 143 are the night's "stopped on request", not a failure
                log.error("bayes-merger was killed; %d restarts already: giving up (exit code %d). The next "
                          "night resumes.", self._restarts, BM_STOPPED)
                return BM_STOPPED
            log.error("The WebUI went down %d times; giving up (exit code %d). The next night resumes.",
                      self._restarts + 1, rc)
            return rc
        self._restarts += 1
        if not webui_down:
            log.warning("Resuming the run; the WebUI still answers (retry %d of %d).",
                        self._restarts, self.settings.max_restarts)
        elif self.webui is not None and self._adopted is not None:
            # the WebUI that ran before the night is gone: ours takes its place now (waited for first, it
            # cost WEBUI_READY_TIMEOUT and a second restart, and with --max-restarts 1 never came)
            self._adopted = None
            log.warning("The WebUI that answered before the night began went down; starting WEBUI_COMMAND in its "
                        "place and resuming (restart %d of %d).", self._restarts, self.settings.max_restarts)
        elif self.webui is not None:
            self.webui.stop()
            log.warning("The WebUI went down; restarting it and resuming (restart %d of %d).",
                        self._restarts, self.settings.max_restarts)
        else:
            log.warning("The WebUI went down; waiting for it to come back (retry %d of %d).",
                        self._restarts, self.settings.max_restarts)
        return None

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.settings.ready_timeout
        last = "no answer"
        log.info("Waiting up to %g s for the %s API at %s.", self.settings.ready_timeout, self.api.kind, self.api.url)
        while not self.stopping():
            status = self.api.status(timeout=10)
            if status == 200:
                log.info("The %s API answers.", self.api.kind)
                return True
            if status == 401:
                raise Failure(f"The WebUI at {self.api.url} refuses our credentials (HTTP 401): set WEBUI_AUTH "
                              "or the config's webui.auth_env.", EXIT_WEBUI_DOWN)
            if status == 404:
                last = "HTTP 404: is it a ComfyUI?" if self.api.backend == "comfyui" \
                    else "HTTP 404: still starting, or started without --api"
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
        command = bayes_merger_command(self.settings, folder)
        if folder is not None:
            log.info("Resuming %s (%s).", folder, describe(folder))
        else:
            log.info("No unfinished run under %s: starting a new one.", self.run_dir)
        before = sub_folders(self.run_dir)
        log.info("Running: %s", redacted(command))
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
            new = sorted(sub_folders(self.run_dir) - before)
            folder = new[-1] if new else None
        return rc, folder

    def _wait_child(self, child: subprocess.Popen[bytes]) -> int:
        """Wait for bayes-merger; at the deadline or on a signal, Ctrl-C it once, then give it ``run_stop_grace``
        seconds to finish the trial in flight and hand the WebUI back before a second Ctrl-C, then SIGKILL."""
        stopped_now = killed = False
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
                continue
            # One Ctrl-C, never repeated on a timer: bayes-merger's second one means "stop now", which would drop
            # a trial longer than the repeat or cut its hand-back short, leaving a merge selected in the WebUI. A
            # Ctrl-C that comes before bayes-merger's handler is installed ends it all the same (KeyboardInterrupt; in
            # the rare case that Python drops it, raised in a __del__, the second Ctrl-C after the grace comes).
            waited = time.monotonic() - self.interrupted_at
            grace = self.settings.run_stop_grace
            if waited > grace + STOP_NOW_WAIT and not killed:
                log.warning("bayes-merger still runs %g s after its second Ctrl-C: SIGKILL.", STOP_NOW_WAIT)
                signal_group(child.pid, signal.SIGKILL)
                killed = True
            elif waited > grace and not stopped_now:
                # a second Ctrl-C rather than SIGKILL: bayes-merger drops the trial but still hands the WebUI back
                log.warning("bayes-merger still runs %g s after Ctrl-C (--run-stop-grace): Ctrl-C again to stop it "
                            "now; the trial in flight is lost.", grace)
                signal_group(child.pid, signal.SIGINT)
                stopped_now = True

    def _stopped(self, folder: Path | None) -> int:
        if self.stop_signal is not None:
            log.warning("Stopped by %s.", signal.Signals(self.stop_signal).name)
            return 128 + self.stop_signal
        log.info("Stopped at the deadline%s; the next night resumes it.", f" ({folder.name})" if folder else "")
        return EXIT_OK
