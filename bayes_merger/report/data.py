"""A run folder as the report sees it (``RunData``), and the facts the report draws from its records.

The files are read by ``bayes_merger.run_folder``'s tolerant readers: the report is rebuilt while a
run is still writing, and for folders left by older versions, so a missing key is "unknown" and a
cut-short last line is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS
from bayes_merger.run_folder import (TRIALS_FILE, finite, load_run_info, ranked, read_best, read_rescores,
                                    read_trial_records, record_score)
from bayes_merger.run_folder.liveness import is_running

# SD_BLOCKS and SDXL_BLOCKS are the fallback layouts for trial logs whose run.json and weights do
# not name the blocks (the order of merging.md: BASE first, the supermerger MBW order).

_BLOCK_NAME = re.compile(r"^(IN|M|OUT)(\d+)$")


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
    # best.yaml: which trial the optimiser's model rates best, the baseline, each weight's importance
    best_info: Mapping[str, Any] = field(default_factory=dict)
    # rescore-<label>.jsonl files: {label: {trial number: score}} (python -m bayes_merger.rescore)
    rescores: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    # a process is running it now (else an unfinished run has stopped, and waits for a resume)
    live: bool = False

    @property
    def ok_trials(self) -> list[tuple[int, Mapping[str, Any], float]]:
        return [(n, t, s) for n, t in self.trials if (s := record_score(t)) is not None]

    def ranked(self) -> list[tuple[int, Mapping[str, Any], float]]:
        """Successful trials, best score first (the earlier trial wins a tie)."""
        return ranked(self.ok_trials, lambda item: item[2], lambda item: item[0])

    @property
    def best(self) -> tuple[int, Mapping[str, Any], float] | None:
        """The trial best.yaml names (the optimiser's best, as its chosen_by says), else the highest score."""
        chosen = self.best_info.get("trial")
        for entry in self.ok_trials:
            if entry[0] == chosen and not isinstance(chosen, bool):
                return entry
        return self.raw_best

    @property
    def raw_best(self) -> tuple[int, Mapping[str, Any], float] | None:
        """The trial with the highest score."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def baseline(self) -> tuple[int, Mapping[str, Any], float] | None:
        """Trial 0, the start point every other trial is measured against, when it was scored."""
        return next((entry for entry in self.ok_trials if entry[0] == 0), None)

    @property
    def importance(self) -> dict[str, float]:
        """Each weight's importance from best.yaml (1 = the one that matters most); {} when unknown."""
        values = self.best_info.get("importance")
        if not isinstance(values, Mapping):
            return {}
        return {str(name): v for name, value in values.items() if (v := finite(value)) is not None}

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
    def done(self) -> int:
        """How many of trials 0 … budget − 1 the log has (not its lines: a trial finished out of order beyond a
        budget since lowered would hide a missing one); every trial where the budget is unknown."""
        budget = self.budget
        return len({n for n, _ in self.trials if budget is None or n < budget})

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


def load_run(run_dir: Path, live: bool | None = None) -> RunData:
    """Read a run folder; never fails on missing or partial files. ``live``: whether a process runs it
    now (default: whether one holds its lock)."""
    run_dir = Path(run_dir)
    info = load_run_info(run_dir) or {}
    records = read_trial_records(run_dir / TRIALS_FILE)
    trials = tuple((trial_number(t, i), t) for i, t in enumerate(records))
    return RunData(run_dir=run_dir, info=info, trials=trials, blocks=_blocks(info, records),
                   best_info=read_best(run_dir), rescores=read_rescores(run_dir),
                   live=is_running(run_dir) if live is None else live)
