"""Which trial runs next when several are in flight, and what its suggestion may know.

With ``in_flight`` trials running at once (a pipelined loop, several WebUIs), trial t is suggested
knowing the scores of trials 0 … t−1−lag and the parameters of trials t−lag … t−1 (still running,
"pending"), where lag = in_flight − 1. What a suggestion knows is fixed by the trial number, not by
which trial happened to finish first, so a run is reproducible, a trial re-queued after its WebUI died
is suggested again identically, and a resumed run suggests what an uninterrupted one would have. With
one trial in flight (lag 0) this is the sequential loop: trial t knows every trial before it.

Over the last tenth of a run at most two trials are in flight (lag ≤ 1), and the last trial is
suggested knowing every other score: the trial a run reports is decided in its last trials, where a
suggestion made three scores behind costs most (bench_optimiser, 8 landscapes, seeds 1000–1011, each
run against itself without this: three in flight 0.91× / 0.90× the regret at 40 / 80 trials, two
0.98× / 0.97×). Where a third WebUI or the pipeline would have run a trial then, it waits; the run
takes a little longer and reports a better trial.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable


ENDGAME = 10  # the last budget // ENDGAME trials keep at most two in flight, the last one alone


class Schedule:
    """Hands out trial numbers in order to the workers and tells each when its trial may be suggested."""

    def __init__(self, budget: int, in_flight: int, finished: Iterable[int] = ()) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.budget = budget
        self.lag = in_flight - 1
        # trials of a longer budget (a resume with fewer trials) are not this run's: counted, they would
        # hide one of its own that is missing
        self._finished = {index for index in finished if index < budget}
        self._claimed: set[int] = set()
        self._changed = threading.Condition()
        self._closed = False

    def claim(self, give_up: Callable[[], bool] = lambda: False, poll: float = 0.5) -> int | None:
        """The lowest trial number nobody runs or ran; None once every trial is done, the schedule is
        closed or ``give_up()``. While every trial left is running elsewhere it waits: one of them may
        be given back (its WebUI lost), and a worker that had left could not take it."""
        with self._changed:
            while True:
                for index in range(self.budget):
                    if index not in self._finished and index not in self._claimed:
                        self._claimed.add(index)
                        return index
                if len(self._finished) >= self.budget or self._closed or give_up():
                    return None
                self._changed.wait(poll)

    def lag_at(self, index: int) -> int:
        """How many of the trials just before ``index`` run while it is suggested: in_flight − 1; over the
        last tenth of the run at most 1, and none for the last trial (module docstring)."""
        endgame = self.budget // ENDGAME
        if endgame and index == self.budget - 1:
            return 0
        return min(self.lag, 1) if index >= self.budget - endgame else self.lag

    def known_before(self, index: int) -> range:
        """The trials whose scores the suggestion of ``index`` is built on (those that succeeded)."""
        return range(0, max(index - self.lag_at(index), 0))

    def pending_before(self, index: int) -> range:
        """The trials the suggestion of ``index`` treats as still running."""
        return range(max(index - self.lag_at(index), 0), index)

    def wait_for_turn(self, index: int, stop: threading.Event | None = None, poll: float = 0.5) -> int | None:
        """Block until the claimed trial may be suggested (every trial in its ``known_before`` has
        finished); the trial to run then, or None if the run stops first (the claim is given back).

        That is ``index``, unless a lost WebUI releases an earlier trial meanwhile: the worker gives
        ``index`` back and takes that one, since ``index`` and the trials after it wait for it, and
        every worker may be waiting.
        """
        with self._changed:
            while True:
                orphan = next((j for j in range(index) if j not in self._finished and j not in self._claimed), None)
                if orphan is not None:
                    self._claimed.discard(index)
                    self._claimed.add(orphan)
                    index = orphan
                    self._changed.notify_all()
                if self._ready(index):
                    return index
                if self._closed or (stop is not None and stop.is_set()):
                    self._claimed.discard(index)
                    self._changed.notify_all()
                    return None
                self._changed.wait(poll)

    def finish(self, index: int) -> None:
        """``index`` is in the trial log (succeeded or failed)."""
        with self._changed:
            self._claimed.discard(index)
            self._finished.add(index)
            self._changed.notify_all()

    def release(self, index: int) -> None:
        """``index`` did not finish (its WebUI was lost): another worker takes it."""
        with self._changed:
            self._claimed.discard(index)
            self._changed.notify_all()

    def close(self) -> None:
        """Wake every waiting worker: the run is stopping."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def done(self) -> bool:
        with self._changed:
            return len(self._finished) >= self.budget

    def _ready(self, index: int) -> bool:
        return all(j in self._finished for j in self.known_before(index))
