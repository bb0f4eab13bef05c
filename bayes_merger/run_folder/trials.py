"""The trial log ``trials.jsonl``: one JSON line per finished trial, flushed and fsync'd, and reading it back.

The log is the truth of a run: resuming replays it, the report reads it. A line is written only when
its trial is over, so a killed process loses at most the trial in flight. There is one schema
(``Trial``) and two readers over it:
- ``read_trials`` / ``TrialLog`` (resume): strict. A half-written last line (the process died inside
  the write) is skipped — and, by ``TrialLog``, set aside into a side file, never silently dropped;
  any other bad line is an error.
- ``read_trial_records`` (report, overnight runner): tolerant. Records come back as dicts in
  ``Trial``'s layout; a line that is not a JSON object is skipped with a warning, so a folder being
  written or one left by an older version can always be shown.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from bayes_merger.errors import ConfigError
from bayes_merger.files import atomic_path, open_new, storage_errors
from bayes_merger.run_folder.paths import FAILED_AT_START_FILE, NOT_RENDERED_FILE, TRIALS_FILE, WEBUI_LOST_FILE

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    phase: str  # "start" (trial 0, the baseline), "init" (exploration) or "optimise" (the GP's)
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
    # the WebUI that rendered it (its URL), when a run renders on several
    webui: str | None = None
    # failed because its merge is no usable model (NaN or infinite values, or the WebUI's NaN check):
    # a property of its weights, which the optimiser then avoids (other failures may not happen again)
    broken: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["images"] = [asdict(image) for image in self.images]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        images = tuple(ImageRecord(**image) for image in data.get("images", ()))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "images"}
        return cls(images=images, **known)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ ranking


def ranked(entries: Iterable[T], score: Callable[[T], float | None], number: Callable[[T], int]) -> list[T]:
    """The entries that have a score, best first; the earlier trial wins a tie, so the best does not
    change when a later trial only equals it."""
    scored = [(value, number(entry), entry) for entry in entries if (value := score(entry)) is not None]
    return [entry for _, _, entry in sorted(scored, key=lambda item: (-item[0], item[1]))]


def observations(trials: Iterable[Trial]) -> tuple[list[tuple[dict[str, float], float]], list[int]]:
    """What the optimiser learns from ``trials``: the (parameters, score) of each scored one in trial
    order, and their trial numbers (``Optimiser.observe``'s two arguments)."""
    scored = sorted((t for t in trials if t.ok and t.score is not None), key=lambda t: t.trial)
    return [(dict(t.params), float(t.score)) for t in scored], [t.trial for t in scored]


def finite(value: Any) -> float | None:
    """value as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def record_score(record: Mapping[str, Any]) -> float | None:
    """The objective of a successful trial record (a dict); None for a failed one or one without a usable score."""
    if record.get("status", "ok") != "ok":
        return None
    return finite(record.get("score"))


def best_trial(trials: Iterable[Trial]) -> Trial | None:
    """The successful trial with the highest score (the earliest of equal ones); None when none succeeded."""
    best = ranked(trials, lambda t: t.score if t.ok else None, lambda t: t.trial)
    return best[0] if best else None


# ------------------------------------------------------------------------------------ reading


def _lines(path: Path) -> list[bytes]:
    try:
        with Path(path).open("rb") as handle:
            return handle.readlines()
    except FileNotFoundError:
        return []


def _parse(path: Path) -> Iterator[tuple[Trial, int]]:
    """Strict: (trial, byte offset just after its line) for each complete line."""
    offset = 0
    lines = _lines(path)
    for number, raw in enumerate(lines, start=1):
        end = offset + len(raw)
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("no line end")
            trial = Trial.from_dict(json.loads(raw))
        except (ValueError, TypeError) as error:
            if number == len(lines):
                log.warning("%s: the last line is incomplete (the run was killed while writing it); it is ignored.", path)
                return
            raise ConfigError(f"{path} line {number} is not a trial record ({error}); the log is damaged.") from error
        yield trial, end
        offset = end


def read_trials(path: Path) -> list[Trial]:
    """Every complete trial of a log, strictly; a truncated last line is skipped with a warning."""
    return [trial for trial, _ in _parse(path)]


def read_trial_records(path: Path) -> list[dict[str, Any]]:
    """Tolerant: the log's records as dicts (``Trial``'s layout), in file order; a missing file is empty.

    A line that is not a JSON object is skipped with a warning: the last one is usually a line a
    killed process was writing when it stopped.
    """
    # bytes first: a cut-short line may end inside a multi-byte character
    lines = [raw.decode("utf-8", errors="replace") for raw in _lines(path)]
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            why = "is cut short (the run stopped while writing it)" if n == last else "is not valid JSON"
            log.warning("%s: line %d %s; skipped.", path, n + 1, why)
            continue
        if not isinstance(record, dict):
            log.warning("%s: line %d is not a JSON object; skipped.", path, n + 1)
            continue
        records.append(record)
    return records


# ------------------------------------------------------------------------------------ writing


class TrialLog:
    """Appends trials to ``trials.jsonl`` in a run folder, durably."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / TRIALS_FILE
        self.trials: list[Trial] = []
        good_end = 0
        for trial, end in _parse(self.path):
            self.trials.append(trial)
            good_end = end
        if self.path.exists() and self.path.stat().st_size > good_end:
            self._set_aside_tail(good_end)
        # with several trials in flight they finish, and are logged, out of order; each only once
        seen: set[int] = set()
        for line, trial in enumerate(self.trials, start=1):
            if trial.trial in seen or trial.trial < 0:
                raise ConfigError(f"{self.path}: trial {trial.trial} on line {line} is logged twice or numbered wrongly.")
            seen.add(trial.trial)
        self._finish_retraction()

    def _set_aside_tail(self, good_end: int) -> None:
        # Appending after half a line would corrupt the next record; keep the fragment for inspection.
        data = self.path.read_bytes()
        side = self.path.with_name(f"{TRIALS_FILE}.incomplete-{datetime.now():%Y%m%d-%H%M%S}")
        with storage_errors(side):
            side.write_bytes(data[good_end:])
        with storage_errors(self.path), self.path.open("r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
        log.warning("Set aside an incomplete last line of %s into %s.", self.path, side.name)

    def append(self, trial: Trial) -> None:
        """Write ``trial`` as one line, durably; a StorageError (disk full, unwritable) leaves the log as it was."""
        if any(t.trial == trial.trial for t in self.trials):
            raise ValueError(f"trial {trial.trial} is already in the trial log")
        append_lines(self.path, trial.to_json() + "\n")  # a NaN score raises in to_json, before the file is touched
        self.trials.append(trial)

    def retract(self, numbers: Iterable[int], side_file: str = NOT_RENDERED_FILE) -> None:
        """Take the trials ``numbers`` out of the log, for a resume to run them again: their records are not
        the truth of the run (``NOT_RENDERED_FILE``: the WebUI rendered another model; ``FAILED_AT_START_FILE``:
        the set-up failed them). Their lines move to ``side_file`` first, so no record is lost; the log is then
        replaced in one rename, and their images are deleted (the set-aside records still name them)."""
        numbers = set(numbers)
        out = [t for t in self.trials if t.trial in numbers]
        if not out:
            return
        append_lines(self.path.with_name(side_file), "".join(t.to_json() + "\n" for t in out))
        self._keep_only([t for t in self.trials if t.trial not in numbers])
        # as a failed trial's: named with a score no record in the log has, of whatever model the WebUI
        # rendered, they would stay in images/ beside the images of the resume's render of those trials
        for trial in out:
            for image in trial.images:
                if image.path is not None:
                    try:
                        (self.path.parent / image.path).unlink(missing_ok=True)
                    except OSError as error:  # the trials are out of the log: that is what counts
                        log.warning("Could not delete %s, an image of a trial set aside (%s).", image.path,
                                    error.strerror or error)

    def _finish_retraction(self) -> None:
        # A run killed between retract's two writes left the set-aside lines in the log as well; a trial
        # rendered again since has another record (its own times and score), so only the very same
        # record counts as set aside.
        for side_file in (NOT_RENDERED_FILE, FAILED_AT_START_FILE):
            set_aside = read_trial_records(self.path.with_name(side_file))
            stale = [t for t in self.trials if t.to_dict() in set_aside]
            if stale:
                log.warning("Trials %s are in both %s and %s (the run stopped while setting them aside): taken out "
                            "of the trial log, to be run again.", ", ".join(str(t.trial) for t in stale), TRIALS_FILE,
                            side_file)
                self._keep_only([t for t in self.trials if t not in stale])

    def _keep_only(self, kept: list[Trial]) -> None:
        """Replace the log with ``kept``, in one rename."""
        with storage_errors(self.path), atomic_path(self.path, durable=True) as tmp:
            with open_new(tmp) as handle:
                handle.write("".join(t.to_json() + "\n" for t in kept).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        self.trials = kept

    def best(self) -> Trial | None:
        return best_trial(self.trials)


def note_lost_webui(run_dir: Path, trial: int, webui: str, error: str) -> int:
    """Record, durably, that ``webui`` was lost with ``trial`` in flight (``WEBUI_LOST_FILE``); how many times
    that has happened with this trial, in every session of the run, this one included."""
    path = Path(run_dir) / WEBUI_LOST_FILE
    append_lines(path, json.dumps({"trial": trial, "webui": webui, "error": error, "at": now()}) + "\n")
    # a line cut off by a power loss is no record (the loss it noted is counted one short)
    return sum(1 for record in read_trial_records(path) if record.get("trial") == trial)


def append_lines(path: Path, lines: str) -> None:
    """Append ``lines`` (whole JSON lines) to ``path``, durably; a StorageError (disk full, unwritable) leaves
    the file as it was, so the next append does not follow half a line. Behind a line a power loss cut
    off, they start a line of their own: glued to it, they would be no record either."""
    data = lines.encode("utf-8")
    with storage_errors(path):
        # unbuffered: after a failed write no buffered rest can reach the file behind the truncation below
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            start = os.fstat(fd).st_size
            if start:
                os.lseek(fd, start - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":
                    data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                # cut off what reached the file (truncating needs no free space): a trial's record is redone
                # on resume, and its line must not follow half of this one
                _truncate(fd, start, path)
                raise
        finally:
            os.close(fd)


def _truncate(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as error:  # the strict reader sets a cut-off last line aside on resume
        log.warning("Could not remove a partly written line from %s (%s).", path.name, error.strerror or error)
