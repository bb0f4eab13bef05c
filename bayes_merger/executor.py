"""Runs the remaining trials of a run: one at a time, pipelined, or on several WebUIs at once.

One mechanism covers the three: a worker per slot (a WebUI, or two slots per WebUI when pipelined)
takes the next trial number from the ``Schedule``, waits until the trials its suggestion builds on have
finished (taking over instead an earlier trial that a lost WebUI gave back, which they wait for), and
runs the trial in two halves:

  prepare  merge, check, and write the merge under a staging name the WebUI does not list
           (our work; one merge at a time, since the Merger has one output buffer)
  render   on its WebUI and nobody else's trial: move the staged file into place, refresh, select,
           confirm, render, score (the WebUI's work)

Pipelined, the next trial's prepare runs while the WebUI renders, so our work hides behind the render;
it starts once the model of the trial before is loaded (``Slot.reserve``), not during that load.
Memory: the Merger's one output buffer, and on disk one staged merge per slot beside the one loaded.
A finished trial is handed to ``on_trial`` (the trial log, best.yaml, the progress bar) under one lock,
so the trial log stays one line per finished trial, in the order they finish.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from bayes_merger.errors import (
    NOT_THE_TRIALS_FAULT,
    BayesMergerError,
    CrashesTheWebUI,
    WebUIConnectionError,
    WebUIError,
    WebUITimedOut,
)
from bayes_merger.optimiser import Optimiser
from bayes_merger.renderers import Renderer
from bayes_merger.run_folder import Trial, observations
from bayes_merger.schedule import Schedule

log = logging.getLogger(__name__)

# how many times one trial is tried when its WebUI drops out from under it
WEBUI_ATTEMPTS = 2
# a trial in flight this many times when a WebUI was lost, over every session and WebUI of the run, is failed
# instead of tried again: its merge is taken to bring the WebUI down. One WebUI drops a trial at most twice a
# session (WEBUI_ATTEMPTS), so a third loss is another session's or another WebUI's: a WebUI that dies at
# random seldom dies three times on one trial, while a merge that kills it would take every resume (and the
# overnight runner's every restart) with it
LOSSES_BEFORE_FAILING = 3
# how long a second Ctrl-C waits for merges and model loads under way before the WebUIs are handed back
SETTLE_SECONDS = 15.0  # half the 30 s the overnight runner leaves before SIGKILL: the hand-back needs the rest


@dataclass
class Slot:
    """One WebUI the trials render on; ``lock`` keeps it to one trial's model at a time (pipelined, two
    workers share a slot: one prepares while the other renders)."""

    name: str
    webui: Renderer
    checkpoint_dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: bool = True
    # cleared while its WebUI is waited for (lost during a trial): its workers take no trial meanwhile, and
    # give back one they hold, so that the other WebUIs are not kept waiting for it
    answering: threading.Event = field(default_factory=lambda: _set(threading.Event()))
    # trials between the start of their merge and the end of their model's load on this WebUI: the next
    # trial's merge waits until there are none, so that it overlaps the render rather than competing
    # with the load for the disk, the memory bus and the CPUs
    _loading: set[int] = field(default_factory=set)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def reserve(self, index: int, stop: threading.Event) -> bool:
        """Wait until no other trial merges for this WebUI or loads on it, then count trial ``index`` as
        one, until ``loaded``; False, counting nothing, when the run is asked to stop first (a trial not
        yet merged is not one in flight)."""
        with self._changed:
            while self._loading and not stop.is_set():
                self._changed.wait(0.2)
            if stop.is_set():
                return False
            self._loading.add(index)
            return True

    def loaded(self, index: int) -> None:
        """Trial ``index`` has its model loaded, or will load none: the next trial may merge."""
        with self._changed:
            self._loading.discard(index)
            self._changed.notify_all()

    def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until no trial merges for this WebUI or loads on it: a load under
        way ends before the WebUI is handed back, not after."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._loading and time.monotonic() < deadline:
                self._changed.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


class Stages(Protocol):
    """The two halves of a trial (``run.TrialLoop``)."""

    def prepare(self, index: int, params: Mapping[str, float], slot: Slot, timings: dict[str, float]) -> Any:
        """Merge and stage the trial's checkpoint next to ``slot``'s WebUI; raises BayesMergerError."""

    def render(self, index: int, params: Mapping[str, float], prepared: Any, slot: Slot,
               timings: dict[str, float]) -> Trial:
        """Load the staged merge in the slot's WebUI, render and score: the finished trial."""

    def failed(self, index: int, params: Mapping[str, float], error: Exception, slot: Slot,
               timings: dict[str, float]) -> Trial:
        """The record of a trial that failed with ``error``."""

    def discard(self, prepared: Any) -> None:
        """Remove a staged merge that will not be loaded."""

    def webui_lost(self, index: int, slot: Slot, error: Exception) -> int:
        """Record that ``slot``'s WebUI was lost with trial ``index`` in flight; how many times that has
        happened with this trial, in every session of the run."""


class LostAllWebUIs(BayesMergerError):
    """Every WebUI was lost; the trials that finished are saved."""


class Executor:
    """Runs trials ``0 … budget − 1`` not yet in ``finished`` on ``slots``; see the module's docstring."""

    def __init__(self, stages: Stages, optimiser: Optimiser, slots: Sequence[Slot], finished: Mapping[int, Trial],
                 budget: int, on_trial: Callable[[Trial], None], stop: threading.Event, depth: int = 1) -> None:
        self.stages = stages
        self.optimiser = optimiser
        self.slots = list(slots)
        self.depth = depth
        self.trials: dict[int, Trial] = dict(finished)
        self.schedule = Schedule(budget, in_flight=len(self.slots) * depth, finished=self.trials)
        self.on_trial = on_trial
        self.stop = stop
        self._suggested: dict[int, dict[str, float]] = {}
        self._attempts: dict[tuple[str, int], int] = {}
        self._state = threading.Lock()  # the optimiser, the trials, on_trial
        self._merging = threading.Lock()  # the Merger's one output buffer
        self._error: BaseException | None = None
        # a second Ctrl-C: no trial starts loading or is recorded any more (the WebUIs are handed back)
        self._abandoned = threading.Event()

    def run(self) -> None:
        """Run until every trial has finished, the run is asked to stop, or a worker fails (re-raised)."""
        if len(self.slots) == 1 and self.depth == 1:
            self._work(self.slots[0])  # one at a time: no thread, so a second Ctrl-C stops the trial itself
        else:
            in_flight = len(self.slots) * self.depth
            beside = "the trial running beside it has its score" if in_flight == 2 else \
                f"the {in_flight - 1} trials running beside it have their scores"
            log.info("Up to %d trials at once on %d WebUI%s%s: each is suggested before %s, so more trials an "
                     "hour are each a little less informed (README: Trials in flight).", in_flight, len(self.slots),
                     "" if len(self.slots) == 1 else "s", ", pipelined" if self.depth > 1 else "", beside)
            workers = [threading.Thread(target=self._guarded, args=(slot,), name=f"trial-{slot.name}-{n}",
                                        daemon=True) for slot in self.slots for n in range(self.depth)]
            try:
                for worker in workers:
                    worker.start()
                for worker in workers:
                    while worker.is_alive():
                        worker.join(0.2)
            except BaseException:  # a second Ctrl-C: stop at once, but not in the middle of a load
                self._abandoned.set()
                self.schedule.close()
                deadline = time.monotonic() + SETTLE_SECONDS  # all WebUIs' loads in one wait, not one each
                for slot in self.slots:
                    if not slot.webui.renders_remotely:  # a cluster's host settles its own
                        slot.settle(max(deadline - time.monotonic(), 0.0))
                raise
        if self._error is not None:
            raise self._error
        if not self.stop.is_set() and not self.schedule.done:
            raise LostAllWebUIs("No WebUI is left to run the remaining trials")

    def _guarded(self, slot: Slot) -> None:
        try:
            self._work(slot)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread by run()
            # the others finish their trials in flight; the user's stop event stays the user's, so that
            # a Ctrl-C meanwhile is a first one (finish them), not a second
            with self._state:
                if self._error is not None and error is not self._error:  # only the first is raised: say the others
                    log.warning("On %s as well: %s", slot.name, f"{type(error).__name__}: {error}"
                              if not isinstance(error, BayesMergerError) else error)
                self._error = self._error or error
            self.schedule.close()

    def _work(self, slot: Slot) -> None:
        while slot.alive and not self.stop.is_set() and self._error is None:
            if not slot.answering.wait(0.2):
                continue  # its WebUI is waited for: no trial for it meanwhile
            index = self.schedule.claim(lambda: not slot.alive or self.stop.is_set() or self._error is not None)
            if index is None:
                return
            index = self.schedule.wait_for_turn(index, self.stop)
            if index is None:
                return
            timings: dict[str, float] = {}
            started = time.perf_counter()
            with self._state:
                params = self.suggestion(index)
            timings["suggest"] = time.perf_counter() - started
            trial = self._run_trial(index, params, slot, timings)
            if trial is None:  # the WebUI was lost: the trial goes back to the queue (or was failed for it)
                continue
            if not self._finish(trial):
                return

    def _finish(self, trial: Trial) -> bool:
        """Record a finished trial; False, recording nothing, once the run was abandoned (a resume runs it again)."""
        if self._abandoned.is_set():
            return False
        with self._state:
            self.trials[trial.trial] = trial
            self.schedule.finish(trial.trial)
            self.on_trial(trial)
        return True

    def _run_trial(self, index: int, params: dict[str, float], slot: Slot, timings: dict[str, float]) -> Trial | None:
        if not slot.reserve(index, self.stop):
            return None
        try:
            if self._error is not None or self._abandoned.is_set():
                return None  # the run stopped while this trial waited: no merge for nothing
            if self._gave_back(slot, index):
                return None
            try:
                with self._merging:
                    if self.stop.is_set() or self._error is not None or self._abandoned.is_set():
                        return None  # stopped while it waited for its turn to merge: not a trial in flight
                    prepared = self.stages.prepare(index, params, slot, timings)
            except NOT_THE_TRIALS_FAULT:
                raise  # not this merge's fault: the WebUI is lost, or the disk is full (the run stops)
            except BayesMergerError as error:
                return self.stages.failed(index, params, error, slot, timings)
            if self._abandoned.is_set():
                self.stages.discard(prepared)
                return None
            try:
                with slot.lock:
                    # lost while it merged (a pipelined worker's next trial), or the run abandoned meanwhile: its
                    # load would race the hand-back's selection
                    if self._abandoned.is_set() or self._gave_back(slot, index):
                        self.stages.discard(prepared)
                        return None
                    try:
                        return self.stages.render(index, params, prepared, slot, timings)
                    except WebUIConnectionError:
                        slot.answering.clear()  # before the lock is free: the slot's other worker renders nothing
                        raise
            except WebUIConnectionError as error:
                self.stages.discard(prepared)
                self._dropped(index, params, slot, error, timings)
                return None
        finally:
            slot.loaded(index)

    def _dropped(self, index: int, params: dict[str, float], slot: Slot, error: WebUIConnectionError,
                 timings: dict[str, float]) -> None:
        """The slot's WebUI dropped trial ``index``: it is waited for and the trial redone, or, the
        ``LOSSES_BEFORE_FAILING``-th time a WebUI was lost with this trial in flight, the trial is failed."""
        # no answer in time is the WebUI's slowness or a hang, whatever the weights: not the trial's doing
        losses = 0 if isinstance(error, WebUITimedOut) else self.stages.webui_lost(index, slot, error)
        given_up = losses >= LOSSES_BEFORE_FAILING
        if given_up:
            self._finish(self.stages.failed(index, params, CrashesTheWebUI(
                f"a WebUI was lost {losses} times with this trial in flight (last: {error}); its merge is taken to "
                "bring the WebUI down, so it is failed, not tried again"), slot, timings))
        self._lost(slot, index, error, redo=not given_up)

    def _gave_back(self, slot: Slot, index: int) -> bool:
        """Whether the slot's WebUI is waited for or lost for good: then trial ``index`` goes back to the
        schedule, for another WebUI (rendered there, it would only be lost again, after another wait)."""
        if slot.alive and slot.answering.is_set():
            return False
        self.schedule.release(index)
        return True

    def suggestion(self, index: int) -> dict[str, float]:
        """The parameters of trial ``index``: logged, or suggested from what the schedule lets it know.

        Called with the state lock held. The trials it treats as pending are suggested first if they
        have not been (their suggestion depends on less), so the answer never depends on timing.
        """
        if index in self.trials:
            return dict(self.trials[index].params)
        if index not in self._suggested:
            pending = [self.suggestion(j) for j in self.schedule.pending_before(index)]
            known = [self.trials[j] for j in self.schedule.known_before(index) if j in self.trials]
            self.optimiser.observe(*observations(known), failed=[t.params for t in known if not t.ok])
            self._suggested[index] = self.optimiser.suggest(index, pending=pending)
        return dict(self._suggested[index])

    def _lost(self, slot: Slot, index: int, error: WebUIConnectionError, redo: bool) -> None:
        """Wait for a lost WebUI; while it answers again the trial is redone (``redo``: else it is already
        failed), else the others go on."""
        slot.answering.clear()
        try:
            self._wait_for(slot, index, error, redo)
        finally:
            slot.answering.set()  # answering again, or lost for good (its workers then end)

    def _wait_for(self, slot: Slot, index: int, error: WebUIConnectionError, redo: bool) -> None:
        if redo:
            self.schedule.release(index)
        slot.loaded(index)  # its other worker (pipelined) stops waiting to merge, and gives its trial back
        # counted per WebUI: a trial that another WebUI dropped does not count against this one
        attempts = self._attempts[(slot.name, index)] = self._attempts.get((slot.name, index), 0) + 1
        log.warning("trial %d: %s Waiting for the WebUI %s to answer again.", index, error, slot.name)
        answers = False
        try:
            slot.webui.wait_until_ready()
            answers = True
            if attempts < WEBUI_ATTEMPTS or not redo:
                return  # it answers again: the trial is redone, or the next one runs
        except WebUIError:  # unreachable, or still answering errors (a proxy's 502) when the wait ended
            pass
        with self._state:  # two WebUIs lost at once: one of them is the last
            others = [s for s in self.slots if s.alive and s is not slot]
            if not others:
                if answers and isinstance(error, WebUITimedOut):  # alive, but slower than it may be
                    raise LostAllWebUIs(f"The WebUI did not answer trial {index} in time, twice ({error})")
                raise LostAllWebUIs(f"Lost the WebUI during trial {index} ({error})")
            slot.alive = False
        log.warning("Lost the WebUI %s (%s); trial %d goes to another one; going on with %d WebUI%s.",
                    slot.name, error, index, len(others), "" if len(others) == 1 else "s")
