"""Reading a run folder back for the report: run.json, the trial log, and the facts drawn from them.

Everything here is tolerant on purpose: the report is rebuilt while a run is still writing, and for
folders left by older versions, so a missing key is "unknown" and a cut-short last line is skipped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
TRIALS_LOG = "trials.jsonl"

# Fallback layouts for trial logs whose run.json and weights do not name the blocks
# (the order of merging.md: BASE first, the supermerger MBW order).
SD_BLOCKS = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
SDXL_BLOCKS = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))

_BLOCK_NAME = re.compile(r"^(IN|M|OUT)(\d+)$")


def read_trials(path: Path) -> list[dict]:
    """The trial log as a list of dicts, in file order.

    A line that is not a JSON object is skipped with a warning: the last one is usually a line a
    killed process was writing when it stopped. A missing file is an empty log.
    """
    path = Path(path)
    try:
        # bytes first: a cut-short line may end inside a multi-byte character
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    trials: list[dict] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == last:
                log.warning("%s: line %d is cut short (the run stopped while writing it); skipped.", path, n + 1)
            else:
                log.warning("%s: line %d is not valid JSON; skipped.", path, n + 1)
            continue
        if not isinstance(record, dict):
            log.warning("%s: line %d is not a JSON object; skipped.", path, n + 1)
            continue
        trials.append(record)
    return trials


def read_run_info(path: Path) -> dict[str, Any]:
    """run.json as a dict; {} (every field "unknown") when it is missing or unreadable."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s cannot be read (%s); the run summary will say unknown.", path, exc)
        return {}
    if not isinstance(info, dict):
        log.warning("%s is not a JSON object; the run summary will say unknown.", path)
        return {}
    return info


def finite(value: Any) -> float | None:
    """value as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def trial_score(trial: Mapping[str, Any]) -> float | None:
    """The objective of a successful trial; None for a failed one or one without a usable score."""
    if trial.get("status", "ok") != "ok":
        return None
    return finite(trial.get("score"))


def trial_number(trial: Mapping[str, Any], position: int) -> int:
    """The trial's number, or its position in the log for records without one."""
    number = trial.get("trial")
    return number if isinstance(number, int) and not isinstance(number, bool) else position


def weight_set(trial: Mapping[str, Any], name: str) -> dict[str, float] | None:
    """The trial's block → weight mapping for "alpha" or "beta"; None when absent."""
    weights = trial.get("weights")
    if not isinstance(weights, Mapping):
        return None
    values = weights.get(name)
    if not isinstance(values, Mapping) or not values:
        return None
    return {str(block): v for block, value in values.items() if (v := finite(value)) is not None}


def block_kind(block: str) -> tuple[str, int] | None:
    """("IN" | "M" | "OUT", index) for a UNet block name; None for BASE and other blocks."""
    match = _BLOCK_NAME.match(block)
    return (match.group(1), int(match.group(2))) if match else None


@dataclass(frozen=True)
class RunData:
    """One run folder as the report sees it."""

    run_dir: Path
    info: Mapping[str, Any]
    # (trial number, record) in log order
    trials: tuple[tuple[int, Mapping[str, Any]], ...]
    blocks: tuple[str, ...]

    @property
    def ok_trials(self) -> list[tuple[int, Mapping[str, Any], float]]:
        return [(n, t, s) for n, t in self.trials if (s := trial_score(t)) is not None]

    def ranked(self) -> list[tuple[int, Mapping[str, Any], float]]:
        """Successful trials, best score first (the earlier trial wins a tie)."""
        return sorted(self.ok_trials, key=lambda item: (-item[2], item[0]))

    @property
    def best(self) -> tuple[int, Mapping[str, Any], float] | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def worst(self) -> tuple[int, Mapping[str, Any], float] | None:
        ranked = self.ranked()
        return ranked[-1] if ranked else None

    @property
    def uses_beta(self) -> bool:
        declared = self.info.get("uses_beta")
        if isinstance(declared, bool):
            return declared
        return any(weight_set(t, "beta") for _, t in self.trials)

    @property
    def budget(self) -> int | None:
        """init_points + n_iters, when run.json says both."""
        init, iters = self.info.get("init_points"), self.info.get("n_iters")
        if isinstance(init, int) and isinstance(iters, int):
            return init + iters
        return None


def _blocks(info: Mapping[str, Any], trials: list[dict]) -> tuple[str, ...]:
    declared = info.get("blocks")
    if isinstance(declared, list) and declared and all(isinstance(b, str) for b in declared):
        return tuple(declared)
    seen: dict[str, None] = {}
    for trial in trials:
        for name in ("alpha", "beta"):
            seen.update(dict.fromkeys(weight_set(trial, name) or {}))
    if seen:
        return tuple(seen)
    return SDXL_BLOCKS if str(info.get("arch_name", "")).lower() == "sdxl" else SD_BLOCKS


def load_run(run_dir: Path) -> RunData:
    """Read a run folder; never fails on missing or partial files."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir / RUN_INFO)
    records = read_trials(run_dir / TRIALS_LOG)
    trials = tuple((trial_number(t, i), t) for i, t in enumerate(records))
    return RunData(run_dir=run_dir, info=info, trials=trials, blocks=_blocks(info, records))
