"""rescore-<name>.jsonl: a finished run's saved images scored again by another scorer, beside trials.jsonl.

One JSON line per re-scored trial — its number, the scorer and its settings, the per-payload and per-image
scores and the objective combined as the run combined its own — rewritten atomically, merged by trial with what the
file held: a trial scored again gets its new line, but a line without a score (its images gone) never
replaces a scored one, and the other trials' lines stay (the finalists or a ``top_k`` re-score keep a
full re-score's lines). ``trials.jsonl`` is never touched: the optimiser's own history stays as it was.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from bayes_merger.errors import ConfigError
from bayes_merger.files import atomic_write_text
from bayes_merger.run_folder.trials import finite, read_trial_records

log = logging.getLogger(__name__)

RESCORE_PREFIX = "rescore-"
RESCORE_SUFFIX = ".jsonl"


def rescore_label(name: str) -> str:
    """A scorer's name as a file-name part: ``ensemble(pickscore=1, hpsv2=1)`` → ``ensemble-pickscore-1-hpsv2-1``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "scorer"


def rescore_path(run_dir: Path, label: str) -> Path:
    return Path(run_dir) / f"{RESCORE_PREFIX}{rescore_label(label)}{RESCORE_SUFFIX}"


def check_same_settings(run_dir: Path, label: str, settings: Mapping[str, Any]) -> None:
    """Refuse to add scores to a rescore file whose lines were scored with other settings of the scorer (another
    head, CLIP or combine mode): one column would hold two scales. Lines without settings (older files): unknown."""
    path = rescore_path(run_dir, label)
    now = json.loads(json.dumps(settings))
    differing = sorted({key for record in _records(path) if isinstance(before := record.get("settings"), Mapping)
                        for key in set(before) | set(now) if before.get(key) != now.get(key)})
    if differing:
        named = ", ".join("scorer." + key.removesuffix("_sha256") for key in differing)
        raise ConfigError(f"{path} holds {label}'s scores with other settings ({named}); these would mix two scales in "
                          "one column: rename or move that file to keep it, or re-score with its settings.")


def write_rescores(run_dir: Path, label: str, records: Iterable[Mapping[str, Any]]) -> Path:
    path = rescore_path(run_dir, label)
    by_trial = {record["trial"]: record for record in _records(path)}
    for record in records:
        before = by_trial.get(record["trial"])
        if finite(record.get("score")) is None and before is not None and finite(before.get("score")) is not None:
            continue
        by_trial[record["trial"]] = dict(record)
    text = "".join(json.dumps(by_trial[trial], allow_nan=False) + "\n" for trial in sorted(by_trial))
    atomic_write_text(path, text, fsync=True)
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    """Tolerant, as the trial log is read: a rescore file's records that name their trial."""
    return [record for record in read_trial_records(path) if isinstance(record.get("trial"), int)]


def read_rescores(run_dir: Path) -> dict[str, dict[int, float]]:
    """Tolerant, for the report: {label: {trial: score}} of every rescore file in the run folder."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir).glob(f"{RESCORE_PREFIX}*{RESCORE_SUFFIX}")):
        label = path.name[len(RESCORE_PREFIX) : -len(RESCORE_SUFFIX)]
        try:
            records = _records(path)
        except OSError as error:  # read_trial_records decodes what it can: unreadable is all that is left
            log.warning("%s cannot be read (%s); left out of the report.", path, error)
            continue
        found[label] = {record["trial"]: value for record in records
                        if (value := finite(record.get("score"))) is not None}
    return found
