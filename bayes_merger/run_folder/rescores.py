"""rescore-<name>.jsonl: a finished run's saved images scored again by another scorer, beside trials.jsonl.

One JSON line per re-scored trial — its number, the scorer, the per-payload and per-image scores and
the objective combined as the run combined its own — written whole and atomically (a re-score is
redone, not appended to). ``trials.jsonl`` is never touched: the optimiser's own history stays as it was.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from bayes_merger.files import atomic_write_text
from bayes_merger.run_folder.trials import finite

log = logging.getLogger(__name__)

RESCORE_PREFIX = "rescore-"
RESCORE_SUFFIX = ".jsonl"


def rescore_label(name: str) -> str:
    """A scorer's name as a file-name part: ``ensemble(pickscore=1, hpsv2=1)`` → ``ensemble-pickscore-1-hpsv2-1``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "scorer"


def rescore_path(run_dir: Path, label: str) -> Path:
    return Path(run_dir) / f"{RESCORE_PREFIX}{rescore_label(label)}{RESCORE_SUFFIX}"


def write_rescores(run_dir: Path, label: str, records: Iterable[Mapping[str, Any]]) -> Path:
    path = rescore_path(run_dir, label)
    text = "".join(json.dumps(dict(record), allow_nan=False) + "\n" for record in records)
    atomic_write_text(path, text, fsync=True)
    return path


def read_rescores(run_dir: Path) -> dict[str, dict[int, float]]:
    """Tolerant, for the report: {label: {trial: score}} of every rescore file in the run folder."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir).glob(f"{RESCORE_PREFIX}*{RESCORE_SUFFIX}")):
        label = path.name[len(RESCORE_PREFIX) : -len(RESCORE_SUFFIX)]
        scores: dict[int, float] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            log.warning("%s cannot be read (%s); left out of the report.", path, error)
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("trial"), int):
                value = finite(record.get("score"))
                if value is not None:
                    scores[record["trial"]] = value
        found[label] = scores
    return found
