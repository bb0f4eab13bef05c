"""Trials per hour from the times trials finished, one rule for every row of bench_trial.py."""

from __future__ import annotations


def trials_per_hour(finished: list[float], in_parallel: int) -> float:
    """Steady-state trials per hour of a loop rendering on ``in_parallel`` WebUIs.

    Counted from the end of the first round (the ``in_parallel``-th trial finished) to the last
    finished trial: the first round carries the models' load and the unpipelined first merge, and with
    several WebUIs finishing about together, a count from the first finished trial would credit the
    rest of that round without its time (17 % too many for two WebUIs in lockstep over 8 trials).
    """
    times = sorted(finished)
    first = min(max(in_parallel, 1), len(times)) - 1
    span = times[-1] - times[first] if times else 0.0
    return 3600.0 * (len(times) - 1 - first) / span if span > 0 else float("nan")
