import threading
import time

import pytest

from bayes_merger.schedule import Schedule


def test_sequential_schedule_knows_every_earlier_trial():
    schedule = Schedule(budget=3, in_flight=1)
    assert schedule.claim() == 0 and schedule.wait_for_turn(0) == 0
    assert list(schedule.known_before(2)) == [0, 1] and list(schedule.pending_before(2)) == []
    assert schedule.claim() == 1
    assert schedule.wait_for_turn(1, stop=_set()) is None, "trial 0 has not finished"
    assert schedule.claim() == 1, "a worker that stops waiting gives its trial back"
    schedule.finish(0)
    assert schedule.wait_for_turn(1) == 1


def test_over_the_last_tenth_of_a_run_at_most_two_trials_are_in_flight_and_the_last_runs_alone():
    schedule = Schedule(budget=40, in_flight=4)
    assert list(schedule.pending_before(35)) == [32, 33, 34]
    assert list(schedule.known_before(36)) == list(range(35)) and list(schedule.pending_before(36)) == [35]
    assert list(schedule.pending_before(38)) == [37]
    assert list(schedule.known_before(39)) == list(range(39)) and list(schedule.pending_before(39)) == []
    assert list(Schedule(budget=8, in_flight=4).pending_before(7)) == [4, 5, 6], "a tenth of 8 trials is none"
    assert list(Schedule(budget=40, in_flight=2).pending_before(38)) == [37]


def test_with_three_in_flight_a_trial_knows_all_but_the_two_before_it():
    schedule = Schedule(budget=10, in_flight=3)
    assert list(schedule.known_before(6)) == [0, 1, 2, 3] and list(schedule.pending_before(6)) == [4, 5]
    assert [schedule.claim() for _ in range(3)] == [0, 1, 2]
    assert [schedule.wait_for_turn(i) for i in range(3)] == [0, 1, 2], "the first three need nothing"
    schedule.finish(1)  # out of order: trial 3 still waits for trial 0
    assert schedule.claim() == 3 and schedule.wait_for_turn(3, stop=_set()) is None
    assert schedule.claim() == 3
    schedule.finish(0)
    assert schedule.wait_for_turn(3) == 3


def test_a_released_trial_is_claimed_again_and_resume_skips_finished_ones():
    schedule = Schedule(budget=4, in_flight=2, finished=[0, 2])
    assert schedule.claim() == 1 and schedule.claim() == 3 and schedule.claim(give_up=lambda: True) is None
    schedule.release(1)
    assert schedule.claim() == 1
    schedule.finish(1)
    schedule.finish(3)
    assert schedule.done


def test_a_trial_beyond_a_lowered_budget_does_not_hide_a_missing_one():
    # stopped with trials 0-9 and 11 of 12 finished (out of order), resumed with a budget of 11
    schedule = Schedule(budget=11, in_flight=2, finished=[*range(10), 11])
    assert not schedule.done
    assert schedule.claim(give_up=lambda: True) == 10


def test_a_worker_with_nothing_to_claim_waits_for_a_trial_given_back_or_the_end():
    schedule = Schedule(budget=2, in_flight=2)
    assert schedule.claim() == 0 and schedule.claim() == 1
    waiter, got = _claiming(schedule)
    schedule.release(1)  # its WebUI was lost: the waiting worker takes it
    waiter.join(timeout=5)
    assert got == [1], "woken by the release, not by its next poll a minute later"
    waiter, got = _claiming(schedule)
    schedule.finish(0)
    schedule.finish(1)  # every trial done: nothing more to wait for
    waiter.join(timeout=5)
    assert not waiter.is_alive() and got == [None]


@pytest.mark.parametrize("wake, expected", [
    (lambda schedule: schedule.finish(0), 1),  # the trial it needs finished
    (lambda schedule: schedule.close(), None),  # the run is stopping
])
def test_a_waiting_worker_wakes_when_the_trial_it_needs_finishes_or_the_run_stops(wake, expected):
    schedule = Schedule(budget=3, in_flight=1)
    schedule.claim()
    schedule.claim()
    waiter, result = _waiting(schedule, 1)
    wake(schedule)
    waiter.join(timeout=5)
    assert result == [expected], "woken by the change, not by its next poll a minute later"


def test_a_waiting_worker_takes_over_an_earlier_trial_a_lost_webui_released():
    # two WebUIs: trial 4 waits for trial 2, whose WebUI is lost, and nobody else is left to take it
    schedule = Schedule(budget=6, in_flight=2, finished=[0, 1])
    assert schedule.claim() == 2 and schedule.claim() == 3
    schedule.finish(3)
    assert schedule.claim() == 4
    waiter, result = _waiting(schedule, 4)
    schedule.release(2)
    waiter.join(timeout=5)
    assert result == [2], "it runs trial 2 instead, woken by the release, not by its next poll a minute later"
    assert schedule.claim() == 4, "and gave trial 4 back"


def test_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="in_flight must be at least 1"):
        Schedule(budget=1, in_flight=0)


def _waiting(schedule: Schedule, index: int) -> tuple[threading.Thread, list]:
    """A worker blocked in ``wait_for_turn(index)`` with a minute between its own re-checks, so only a
    notification wakes it within a test's time; its result is appended to the list."""
    result = []
    waiter = threading.Thread(target=lambda: result.append(schedule.wait_for_turn(index, poll=60)), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 5
    while not schedule._changed._waiters:  # it waits on the condition (blocked, not still checking)
        assert waiter.is_alive(), f"wait_for_turn({index}) returned {result} instead of waiting"
        assert time.monotonic() < deadline, f"wait_for_turn({index}) did not begin to wait within 5 s"
        time.sleep(0.001)
    return waiter, result


def _set() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def _claiming(schedule: Schedule) -> tuple[threading.Thread, list]:
    """A worker blocked in ``claim()`` (every trial taken) with a minute between its own re-checks."""
    result = []
    waiter = threading.Thread(target=lambda: result.append(schedule.claim(poll=60)), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 5
    while not schedule._changed._waiters:  # it waits on the condition (blocked, not still checking)
        assert waiter.is_alive(), f"claim() returned {result} instead of waiting"
        assert time.monotonic() < deadline, "claim() did not begin to wait within 5 s"
        time.sleep(0.001)
    return waiter, result
