"""The trial executor with stand-in stages: order, determinism with trials in flight, lost WebUIs, resume."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import CrashesTheWebUI, WebUIConnectionError, WebUIError, WebUITimedOut
from bayes_merger.executor import Executor, LostAllWebUIs, Slot
from bayes_merger.optimiser import Optimiser
from bayes_merger.renderers import Renderer
from bayes_merger.run_folder import Trial
from bayes_merger.space import build_space

BLOCKS = ("BASE", "IN00", "IN01", "M00", "OUT00", "OUT01")


def _score(params):
    return -sum((v - 0.3) ** 2 for v in params.values())


class FakeWebUI(Renderer):
    def __init__(self, fail_on: set[int] = frozenset(), comes_back: bool = True, fail_first: bool = False) -> None:
        self.fail_on = set(fail_on)
        self.fail_first = fail_first
        self.comes_back = comes_back
        self.rendered: list[int] = []

    def wait_until_ready(self) -> None:
        if not self.comes_back:
            raise WebUIConnectionError("The WebUI does not answer.")


class Stages:
    def __init__(self, jitter: bool = False) -> None:
        self.jitter = random.Random(0) if jitter else None
        self.in_render: dict[str, int] = {}
        self.overlap = False
        self.lock = threading.Lock()
        self.discarded: list[int] = []
        self.losses: dict[int, int] = {}  # by trial, as the run folder's WEBUI_LOST_FILE keeps them

    def prepare(self, index, params, slot, timings):
        return index

    def render(self, index, params, prepared, slot, timings):
        with self.lock:
            self.in_render[slot.name] = self.in_render.get(slot.name, 0) + 1
            self.overlap |= self.in_render[slot.name] > 1
            delay = self.jitter.random() * 0.004 if self.jitter else 0.0
        try:
            if index in slot.webui.fail_on or slot.webui.fail_first:
                slot.webui.fail_on.discard(index)
                slot.webui.fail_first = False
                raise WebUIConnectionError("The WebUI went away.")
            time.sleep(delay)  # rendering takes time: trials finish out of order
            slot.webui.rendered.append(index)
            return _trial(index, params, _score(params), webui=slot.name)
        finally:
            with self.lock:
                self.in_render[slot.name] -= 1

    def failed(self, index, params, error, slot, timings):
        return _trial(index, params, None, webui=slot.name)

    def discard(self, prepared):
        self.discarded.append(prepared)

    def webui_lost(self, index, slot, error):
        self.losses[index] = self.losses.get(index, 0) + 1
        return self.losses[index]


def _trial(index, params, score, webui=None) -> Trial:
    return Trial(trial=index, phase="optimise", params=dict(params), weights={}, alpha_string="", beta_string=None,
                 started_at="", status="ok" if score is not None else "failed", score=score,
                 error=None if score is not None else "failed", finished_at="", webui=webui)


def _optimiser(budget=12):
    cfg = OptimiserConfig(init_points=4, n_iters=budget - 4)
    return Optimiser(build_space(cfg, BLOCKS, uses_beta=False), cfg, seed=7)


def _run(slots, depth=1, finished=None, budget=12, jitter=False):
    stages, log = Stages(jitter), []
    executor = Executor(stages, _optimiser(budget), slots, finished or {}, budget, log.append, threading.Event(), depth)
    executor.run()
    return log, stages


def _slot(name, webui=None):
    return Slot(name=name, webui=webui or FakeWebUI(), checkpoint_dir=Path("."))


def test_one_webui_runs_the_trials_in_order_as_the_sequential_loop_did():
    log, _ = _run([_slot("a")])
    assert [t.trial for t in log] == list(range(12))
    sequential = _optimiser()
    for trial in log:
        assert trial.params == sequential.suggest(trial.trial)
        sequential.register(trial.params, trial.score)


def test_with_several_in_flight_every_trial_runs_once_and_the_suggestions_do_not_depend_on_timing():
    runs = [_run([_slot("a"), _slot("b")], depth=2, jitter=True)[0] for _ in range(2)]
    for log in runs:
        assert sorted(t.trial for t in log) == list(range(12))
    first, second = ({t.trial: t.params for t in log} for log in runs)
    assert first == second
    assert {t.webui for t in runs[0]} == {"a", "b"}


def test_trials_at_once_are_announced_once_with_their_number(caplog):
    caplog.set_level("INFO", logger="bayes_merger.executor")
    _run([_slot("a")])
    assert not [r for r in caplog.records if "at once" in r.getMessage()]
    _run([_slot("a"), _slot("b")], depth=2)
    said = [r.getMessage() for r in caplog.records if "at once" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("Up to 4 trials at once on 2 WebUIs, pipelined")
    assert "before the 3 trials running beside it have their scores" in said[0]


def test_pipelined_trials_never_share_the_webui():
    _, stages = _run([_slot("a")], depth=2, jitter=True)
    assert not stages.overlap


def test_pipelined_the_next_merge_waits_for_the_model_load_and_overlaps_the_render():
    events, lock = [], threading.Lock()
    merging = [threading.Event() for _ in range(12)]
    not_pipelined = threading.Event()

    class Loading(Stages):
        def prepare(self, index, params, slot, timings):
            with lock:
                events.append(("merge", index))
            merging[index].set()
            return index

        def render(self, index, params, prepared, slot, timings):
            with lock:
                events.append(("load", index))
            time.sleep(0.002)  # the load takes time: a merge started now would overlap it
            with lock:
                events.append(("loaded", index))
            slot.loaded(index)
            # the render lasts until the next trial's merge has begun; an executor that does not pipeline
            # never begins it meanwhile: after 5 s the renders stop waiting and the assert below fails
            if index + 1 < 12 and not not_pipelined.is_set() and not merging[index + 1].wait(timeout=5):
                not_pipelined.set()
            with lock:
                events.append(("rendered", index))
            return _trial(index, params, _score(params), webui=slot.name)

    stages, log = Loading(), []
    Executor(stages, _optimiser(), [_slot("a")], {}, 12, log.append, threading.Event(), depth=2).run()
    assert sorted(t.trial for t in log) == list(range(12))
    loading = None
    for kind, index in events:
        if kind == "load":
            loading = index
        elif kind == "loaded":
            loading = None
        elif kind == "merge":
            assert loading is None, f"trial {index}'s merge began during trial {loading}'s load"
    merges = [i for kind, i in events if kind == "merge"]
    rendered = [i for kind, i in events if kind == "rendered"]
    overlapped = [i for i in range(1, 12) if events.index(("merge", i)) < events.index(("rendered", i - 1))]
    assert merges == rendered == list(range(12))
    assert overlapped, "no merge overlapped the render before it: not pipelined"


def test_a_lost_webui_hands_its_trial_to_another_and_the_run_goes_on():
    dead = FakeWebUI(fail_first=True, comes_back=False)
    log, stages = _run([_slot("a", dead), _slot("b")])
    assert sorted(t.trial for t in log) == list(range(12))
    assert dead.rendered == [] and len(stages.discarded) == 1
    assert all(t.webui == "b" for t in log), "the lost trial and every later one rendered on b"


class _Dying(Stages):
    """The WebUI "a" dies during trial 4's render, once the other WebUI has claimed the trial after."""

    def __init__(self) -> None:
        super().__init__()
        self.executor: Executor | None = None

    def render(self, index, params, prepared, slot, timings):
        if slot.name == "a" and index == 4:
            schedule = self.executor.schedule
            with schedule._changed:  # the state the other worker waits in: trial 5 done, 6 claimed
                while not (5 in schedule._finished and 6 in schedule._claimed):
                    schedule._changed.wait(0.05)
            raise WebUIConnectionError("The WebUI went away.")
        return super().render(index, params, prepared, slot, timings)


def test_a_trial_released_by_a_lost_webui_is_taken_over_by_a_worker_already_waiting_for_it():
    stages, log, stop = _Dying(), [], threading.Event()
    executor = Executor(stages, _optimiser(12), [_slot("a", FakeWebUI(comes_back=False)), _slot("b")], {}, 12,
                        log.append, stop, 1)
    stages.executor = executor
    runner = threading.Thread(target=executor.run, daemon=True)
    runner.start()
    runner.join(timeout=60)
    stop.set()
    assert not runner.is_alive(), "the run hung waiting for the lost WebUI's trial"
    assert sorted(t.trial for t in log) == list(range(12))
    assert [t.webui for t in log if t.trial == 4] == ["b"]


def test_a_webui_still_answering_errors_when_its_wait_ends_is_lost_and_the_others_go_on():
    class Proxied(FakeWebUI):
        def wait_until_ready(self) -> None:
            raise WebUIError("The WebUI at a was not ready after 120 s: it answered HTTP 502.")

    log, _ = _run([_slot("a", Proxied(fail_on={3})), _slot("b")])
    assert sorted(t.trial for t in log) == list(range(12))
    assert [t.webui for t in log if t.trial == 3] == ["b"]


def test_the_last_webui_lost_twice_stops_the_run_with_the_finished_trials_kept():
    webui = FakeWebUI(fail_on={3})
    stages, log = Stages(), []
    executor = Executor(stages, _optimiser(), [_slot("a", webui)], {}, 12, log.append, threading.Event())
    webui.fail_on = {3}
    original = stages.render

    def always_fails_on_3(index, *args):
        if index == 3:
            raise WebUIConnectionError("The WebUI went away.")
        return original(index, *args)

    stages.render = always_fails_on_3
    with pytest.raises(LostAllWebUIs, match="trial 3"):
        executor.run()
    assert [t.trial for t in log] == [0, 1, 2]


class _KilledBy(Stages):
    """Every WebUI drops the connection whenever it renders trial ``poison`` (its merge brings it down)."""

    def __init__(self, poison: int) -> None:
        super().__init__()
        self.poison = poison
        self.failures: list[tuple[int, Exception]] = []

    def render(self, index, params, prepared, slot, timings):
        if index == self.poison:
            raise WebUIConnectionError("The WebUI went away.")
        return super().render(index, params, prepared, slot, timings)

    def failed(self, index, params, error, slot, timings):
        self.failures.append((index, error))
        return super().failed(index, params, error, slot, timings)


def test_a_trial_that_brings_every_webui_down_is_failed_after_three_losses_and_the_run_goes_on():
    stages, log = _KilledBy(poison=5), []
    executor = Executor(stages, _optimiser(), [_slot("a"), _slot("b")], {}, 12, log.append, threading.Event())
    executor.run()
    # each WebUI drops it at most twice; whichever drops it the third time fails it and the run goes on
    assert sorted(t.trial for t in log) == list(range(12))
    assert [t.trial for t in log if not t.ok] == [5] and stages.losses == {5: 3}
    assert [(i, type(e)) for i, e in stages.failures] == [(5, CrashesTheWebUI)]
    assert "lost 3 times" in str(stages.failures[0][1])


def test_a_resume_goes_past_a_trial_whose_merge_brought_the_webui_down_in_earlier_sessions():
    stages, log = _KilledBy(poison=3), []
    stages.losses = {3: 2}  # two losses in the sessions before this one (each stopped for it)
    executor = Executor(stages, _optimiser(), [_slot("a")], {}, 12, log.append, threading.Event())
    executor.run()
    assert [t.trial for t in log] == list(range(12))
    assert [t.trial for t in log if not t.ok] == [3]


def test_a_webui_slower_than_the_read_timeout_stops_the_run_saying_so_and_never_fails_the_trial_for_it():
    class TimesOut(Stages):
        def render(self, index, params, prepared, slot, timings):
            if index == 3:
                raise WebUITimedOut("POST /sdapi/v1/txt2img got no answer within 900 s (raise webui.read_timeout).")
            return super().render(index, params, prepared, slot, timings)

    stages, log = TimesOut(), []
    stages.losses = {3: 2}  # as many other losses with it in flight as would fail it at the next
    executor = Executor(stages, _optimiser(), [_slot("a")], {}, 12, log.append, threading.Event())
    with pytest.raises(LostAllWebUIs, match=r"did not answer trial 3 in time, twice \(.*raise webui.read_timeout"):
        executor.run()
    assert [t.trial for t in log] == [0, 1, 2] and stages.losses == {3: 2}


def test_a_pipelined_webui_lost_for_good_renders_no_trial_its_other_worker_merged_meanwhile():
    class Waits(FakeWebUI):
        def __init__(self) -> None:
            super().__init__(comes_back=False)
            self.waits = 0

        def wait_until_ready(self) -> None:
            self.waits += 1
            super().wait_until_ready()

    class Dies(Stages):
        """a dies during the first render of it during which its other worker has merged the next trial
        (that worker waits for a's lock then); a dead WebUI drops every render."""

        def __init__(self) -> None:
            super().__init__()
            self.changed = threading.Condition()
            self.merged_for_a: set[int] = set()
            self.died: int | None = None
            self.attempts: list[tuple[str, int]] = []

        def prepare(self, index, params, slot, timings):
            if slot.name == "a":
                with self.changed:
                    self.merged_for_a.add(index)
                    self.changed.notify_all()
            return index

        def render(self, index, params, prepared, slot, timings):
            self.attempts.append((slot.name, index))
            slot.loaded(index)  # its model is loaded: the next trial may merge
            if slot.name == "a":
                with self.changed:
                    self.merged_for_a.discard(index)
                    if self.died is None and self.changed.wait_for(lambda: self.merged_for_a, timeout=5):
                        self.died = index
                if self.died is not None:
                    raise WebUIConnectionError("The WebUI went away.")
            return super().render(index, params, prepared, slot, timings)

    dead, stages, log = Waits(), Dies(), []
    executor = Executor(stages, _optimiser(), [_slot("a", dead), _slot("b")], {}, 12, log.append, threading.Event(), 2)
    executor.run()
    assert stages.died is not None, "a's next trial was never merged while it rendered: not pipelined"
    assert sorted(t.trial for t in log) == list(range(12)) and all(t.ok for t in log)
    after = stages.attempts[stages.attempts.index(("a", stages.died)) + 1:]
    assert [a for a in after if a[0] == "a"] == [], "a rendered the trial merged for it after it died"
    assert dead.waits == 1, "the dead WebUI was waited for twice"


def test_a_resumed_run_suggests_what_an_uninterrupted_one_did():
    full, _ = _run([_slot("a"), _slot("b")], depth=2, jitter=True)
    by_index = {t.trial: t for t in full}
    # stopped with trials 0-5 and 7 finished (6 was in flight), resumed on a single WebUI, pipelined
    finished = {i: by_index[i] for i in (0, 1, 2, 3, 4, 5, 7)}
    stages, log = Stages(), []
    executor = Executor(stages, _optimiser(), [_slot("c"), _slot("d")], finished, 12, log.append, threading.Event(), 2)
    executor.run()
    assert sorted(t.trial for t in log) == [6, 8, 9, 10, 11]
    assert all(t.params == by_index[t.trial].params for t in log)


def test_the_optimiser_is_told_the_trial_numbers_of_the_scores_it_knows_and_the_failed_trials():
    class FailingStages(Stages):
        def render(self, index, params, prepared, slot, timings):
            trial = super().render(index, params, prepared, slot, timings)
            if index in (5, 7):  # trial 7's merge is broken (NaN): told the same, as a failed trial
                return replace(_trial(index, params, None, webui=slot.name), broken=index == 7)
            return trial

    optimiser, seen = _optimiser(), []
    observe = optimiser.observe

    def spy(observations, trials=None, failed=()):
        seen.append((list(trials), [dict(p) for p in failed]))
        observe(observations, trials, failed)

    optimiser.observe = spy
    log = []
    Executor(FailingStages(), optimiser, [_slot("a")], {}, 12, log.append, threading.Event(), 2).run()
    params = {t.trial: t.params for t in log}
    assert [t.trial for t in log if t.score is None] == [5, 7]
    # the trust region's window after an improvement is counted in trials (optimiser.trust_length)
    assert ([0, 1, 2, 3, 4, 6, 8], [params[5], params[7]]) in seen


class _DiesOnTheLastTrial(Stages):
    """The WebUI that renders the last trial dies in it once every other trial has finished, so the
    other WebUI's worker has found nothing left to claim."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.died = False
        self.executor: Executor | None = None

    def render(self, index, params, prepared, slot, timings):
        schedule = self.executor.schedule
        last = self.budget - 1
        with schedule._changed:
            if index == last - 1:  # the other WebUI takes the last trial meanwhile
                while last not in schedule._claimed:
                    schedule._changed.wait(0.05)
            elif index == last and not self.died:
                while len(schedule._finished) < last:
                    schedule._changed.wait(0.05)
                self.died = True
                raise WebUIConnectionError("The WebUI went away.")
        return super().render(index, params, prepared, slot, timings)


def test_a_webui_lost_on_the_last_trial_hands_it_to_a_webui_with_nothing_left_to_do():
    budget = 8
    stages, log = _DiesOnTheLastTrial(budget), []
    slots = [_slot("a", FakeWebUI(comes_back=False)), _slot("b", FakeWebUI(comes_back=False))]
    executor = Executor(stages, _optimiser(budget), slots, {}, budget, log.append, threading.Event(), 1)
    stages.executor = executor
    runner = threading.Thread(target=executor.run, daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the run hung"
    assert stages.died
    assert sorted(t.trial for t in log) == list(range(budget)), "the lost trial was never run"
    dead = next(slot for slot in slots if not slot.alive)
    assert [t.webui for t in log if t.trial == budget - 1] != [dead.name]


def test_the_run_stopping_itself_leaves_the_users_stop_unset_and_lets_trials_in_flight_finish():
    log, stop, stopping, rendering = [], threading.Event(), threading.Event(), threading.Event()

    class Slow(Stages):
        def render(self, index, params, prepared, slot, timings):
            if index == 0:
                rendering.wait(10)  # trial 0 ends once b renders trial 1
            if index == 1:
                rendering.set()
                stopping.wait(10)  # b's trial is in flight when a's trial stops the run
            return super().render(index, params, prepared, slot, timings)

    def on_trial(trial):
        log.append(trial)
        if trial.trial == 0:
            stopping.set()
            raise RuntimeError("the disk is full")

    executor = Executor(Slow(), _optimiser(12), [_slot("a"), _slot("b")], {}, 12, on_trial, stop, 1)
    with pytest.raises(RuntimeError, match="disk is full"):
        executor.run()
    # a Ctrl-C now would be the user's first (finish the trials in flight), not a second (stop at once)
    assert not stop.is_set()
    assert sorted(t.trial for t in log) == [0, 1], "the trial in flight beside the stop was not recorded"


def test_an_error_beside_the_one_that_stops_the_run_is_said_not_dropped(caplog):
    both = threading.Barrier(2, timeout=10)

    class Broken(Stages):
        def render(self, index, params, prepared, slot, timings):
            both.wait()  # both WebUIs' trials fail together: one error is raised, the other only said
            raise RuntimeError(f"{slot.name} broke")

    executor = Executor(Broken(), _optimiser(12), [_slot("a"), _slot("b")], {}, 12, lambda trial: None,
                        threading.Event(), 1)
    with pytest.raises(RuntimeError, match="broke") as raised:
        executor.run()
    other = "b" if str(raised.value) == "a broke" else "a"
    assert f"On {other} as well: RuntimeError: {other} broke" in caplog.text


def test_a_second_ctrl_c_waits_for_a_model_load_under_way_and_records_no_trial_after_it(monkeypatch):
    order, log, stop = [], [], threading.Event()
    # the second Ctrl-C lands where a signal does, in the main thread waiting on the workers. Not sent with
    # _thread.interrupt_main: once in a full suite's run it was lost and the run finished normally (likeliest,
    # taken inside a finaliser that garbage collection ran in the main thread, which swallows what it raises)
    second_ctrl_c = threading.Event()
    join = threading.Thread.join

    def join_or_ctrl_c(self, timeout=None):
        if threading.current_thread() is threading.main_thread() and second_ctrl_c.is_set():
            second_ctrl_c.clear()
            raise KeyboardInterrupt
        return join(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", join_or_ctrl_c)
    # set once run(), stopping, waits in the slot's settle (on its condition) with this trial's load under way:
    # the load ends only then, so "loaded" comes before "returned" only if settle waits for it
    settle_waits = {"a": threading.Event(), "b": threading.Event()}
    settling = threading.local()
    settle = Slot.settle

    def watched_settle(self, timeout):
        settling.slot = self.name
        try:
            settle(self, timeout)
        finally:
            settling.slot = None

    class Watched(threading.Condition):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def wait(self, timeout=None):
            if getattr(settling, "slot", None) == self.name:
                settle_waits[self.name].set()
            return super().wait(timeout)

    class Loads(Stages):
        def render(self, index, params, prepared, slot, timings):
            if index == 2:
                second_ctrl_c.set()  # the second Ctrl-C, during this trial's model load
                waited = settle_waits[slot.name].wait(10)  # the run stops at once, but waits for this load
                order.append("loaded" if waited else "loaded, not waited for")
                slot.loaded(index)  # the load ends; the render goes on
            return super().render(index, params, prepared, slot, timings)

    monkeypatch.setattr(Slot, "settle", watched_settle)
    slots = [_slot("a"), _slot("b")]
    for slot in slots:
        slot._changed = Watched(slot.name)
    executor = Executor(Loads(), _optimiser(12), slots, {}, 12, log.append, stop, 1)
    with pytest.raises(KeyboardInterrupt):
        executor.run()
    order.append("returned")

    # the WebUIs are handed back (after run returns) only once the load under way has ended
    assert order == ["loaded", "returned"]
    for worker in [t for t in threading.enumerate() if t.name.startswith("trial-")]:
        worker.join(timeout=10)  # what the workers still did after the stop: none of it reaches the log
    assert 2 not in [t.trial for t in log]


def test_pipelined_a_stop_during_a_model_load_merges_no_further_trial():
    stop, log = threading.Event(), []

    class Stopped(Stages):
        def __init__(self) -> None:
            super().__init__()
            self.prepared: list[int] = []

        def prepare(self, index, params, slot, timings):
            self.prepared.append((index, stop.is_set()))
            return index

        def render(self, index, params, prepared, slot, timings):
            if index == 3:
                stop.set()  # Ctrl-C while trial 3's model loads: trial 3 is in flight, trial 4 is not
            return super().render(index, params, prepared, slot, timings)

    stages = Stopped()
    Executor(stages, _optimiser(12), [_slot("a")], {}, 12, log.append, stop, depth=2).run()
    assert 3 in [t.trial for t in log]
    assert [index for index, stopping in stages.prepared if stopping] == [], "a merge began after the stop"
    assert sorted(t.trial for t in log) == sorted(index for index, _ in stages.prepared)


def test_a_stop_while_one_trial_merges_merges_none_of_those_waiting_for_their_turn_to_merge():
    stop, log = threading.Event(), []

    class QueueAtTheMerge:
        """The executor's merge lock, telling how many workers wait for it."""

        def __init__(self) -> None:
            self._lock, self._changed, self.waiting = threading.Lock(), threading.Condition(), 0

        def __enter__(self):  # noqa: ANN204
            with self._changed:
                self.waiting += 1
                self._changed.notify_all()
            self._lock.acquire()
            with self._changed:
                self.waiting -= 1

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            self._lock.release()

        def wait_for(self, count: int) -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: self.waiting >= count, 10)

    queue = QueueAtTheMerge()

    class Stopped(Stages):
        def __init__(self) -> None:
            super().__init__()
            self.prepared: list[tuple[int, bool]] = []

        def prepare(self, index, params, slot, timings):
            self.prepared.append((index, stop.is_set()))
            if len(self.prepared) == 1:
                assert queue.wait_for(2), "the other WebUIs' trials never waited for the merge"
                stop.set()  # Ctrl-C while this trial merges: the two waiting for their turn are not in flight
            return index

    stages = Stopped()
    executor = Executor(stages, _optimiser(12), [_slot("a"), _slot("b"), _slot("c")], {}, 12, log.append, stop, 1)
    executor._merging = queue
    executor.run()
    assert [stopping for _, stopping in stages.prepared] == [False], "a merge began after the stop"
    assert [t.trial for t in log] == [stages.prepared[0][0]]  # the one merged is in flight: rendered, logged


def test_pipelined_the_other_webuis_go_on_while_a_lost_one_is_waited_for():
    b = FakeWebUI()
    progressed = threading.Event()

    class WaitedFor(FakeWebUI):
        waits = 0

        def wait_until_ready(self) -> None:
            # the first wait for this WebUI lasts until b has rendered eight more trials (10 s at most)
            self.waits += 1
            if self.waits > 1:
                raise WebUIConnectionError("The WebUI does not answer.")
            done_before = len(b.rendered)
            deadline = time.monotonic() + 10
            while len(b.rendered) < done_before + 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            if len(b.rendered) >= done_before + 8:
                progressed.set()
            raise WebUIConnectionError("The WebUI does not answer.")

    class DiesWithATrialQueued(Stages):
        """a dies in trial 4 once its other worker holds the next trial, waiting to merge it."""

        executor: Executor | None = None

        def render(self, index, params, prepared, slot, timings):
            if slot.name == "a" and index == 4:
                schedule = self.executor.schedule
                with schedule._changed:  # every worker holds a trial, and the one after 4 may be merged
                    assert schedule._changed.wait_for(
                        lambda: len(schedule._claimed) >= 4 and all(j in schedule._finished for j in range(4)),
                        timeout=30), "the other workers never all held a trial"  # raised by executor.run()
            return super().render(index, params, prepared, slot, timings)

    a = WaitedFor(fail_on=set(range(4, 16)))  # dead from trial 4 on
    stages, log = DiesWithATrialQueued(), []
    executor = Executor(stages, _optimiser(16), [_slot("a", a), _slot("b", b)], {}, 16, log.append,
                        threading.Event(), 2)
    stages.executor = executor
    executor.run()
    assert progressed.is_set(), "the other WebUI waited for the lost one"
    assert sorted(t.trial for t in log) == list(range(16))
    assert all(t.webui == "b" for t in log if t.trial not in a.rendered)
