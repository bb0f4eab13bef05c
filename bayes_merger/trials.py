"""The trial log: one JSON line per finished trial, flushed and fsync'd, and reading it back.

The log is the truth of a run: resuming replays it, the report reads it. A line is written only when
its trial is over, so a killed process loses at most the trial in flight; a half-written last line
(the process died inside the write) is set aside into a side file, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from bayes_merger.errors import ConfigError

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.jsonl"


@dataclass(frozen=True)
class ImageRecord:
    payload: str
    index: int
    seed: int
    score: float | None
    path: str | None  # relative to the run folder


@dataclass(frozen=True)
class Trial:
    trial: int
    phase: str  # "init" (exploration) or "optimise" (exploitation)
    status: str  # "ok" or "failed"
    params: dict[str, float]
    weights: dict[str, Any]  # {"alpha": {block: w}, "beta": {block: w} | None}
    alpha_string: str
    beta_string: str | None
    score: float | None
    error: str | None = None
    payload_scores: dict[str, float] = field(default_factory=dict)
    images: tuple[ImageRecord, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        data = asdict(self)
        data["images"] = [asdict(image) for image in self.images]
        return json.dumps(data, allow_nan=False, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        images = tuple(ImageRecord(**image) for image in data.get("images", ()))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "images"}
        return cls(images=images, **known)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_trials(path: Path) -> list[Trial]:
    """Every complete trial of a log; a truncated last line is skipped with a warning."""
    return [trial for trial, _ in _parse(path)]


def _parse(path: Path) -> Iterator[tuple[Trial, int]]:
    """(trial, byte offset just after its line) for each complete line."""
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as handle:
        lines = handle.readlines()
    for number, raw in enumerate(lines, start=1):
        end = offset + len(raw)
        last = number == len(lines)
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("no line end")
            trial = Trial.from_dict(json.loads(raw))
        except (ValueError, TypeError) as error:
            if last:
                log.warning("%s: the last line is incomplete (the run was killed while writing it); it is ignored.", path)
                return
            raise ConfigError(f"{path} line {number} is not a trial record ({error}); the log is damaged.") from error
        yield trial, end
        offset = end


class TrialLog:
    """Appends trials to ``trials.jsonl`` in a run folder, durably."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / TRIALS_FILE
        self.trials: list[Trial] = []
        good_end = 0
        for trial, end in _parse(self.path):
            self.trials.append(trial)
            good_end = end
        if self.path.exists() and self.path.stat().st_size > good_end:
            self._set_aside_tail(good_end)
        for expected, trial in enumerate(self.trials):
            if trial.trial != expected:
                raise ConfigError(f"{self.path}: expected trial {expected} on line {expected + 1}, found trial {trial.trial}.")

    def _set_aside_tail(self, good_end: int) -> None:
        # Appending after half a line would corrupt the next record; keep the fragment for inspection.
        data = self.path.read_bytes()
        side = self.path.with_name(f"{TRIALS_FILE}.incomplete-{datetime.now():%Y%m%d-%H%M%S}")
        side.write_bytes(data[good_end:])
        with self.path.open("r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
        log.warning("Set aside an incomplete last line of %s into %s.", self.path, side.name)

    def append(self, trial: Trial) -> None:
        if trial.trial != len(self.trials):
            raise ValueError(f"trial {trial.trial} appended after {len(self.trials)} trials")
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(trial.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.trials.append(trial)

    def best(self) -> Trial | None:
        ok = [t for t in self.trials if t.ok and t.score is not None]
        # the earliest of equal scores wins, so the best does not change on a tie
        return max(ok, key=lambda t: (t.score, -t.trial)) if ok else None
