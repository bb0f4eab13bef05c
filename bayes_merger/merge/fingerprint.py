"""The identity of a model file: its size and the sha256 of the whole file.

Not of the safetensors header alone: two fine-tunes of one base saved by the same tool have the same
keys, dtypes, shapes and offsets, so the same header and size (two test checkpoints of other weights
do), and a model replaced by a new version at the same path, or a host holding model B at model A's
path, would merge other models unnoticed. The hash costs one read of each file (seconds a checkpoint),
once a run: run.json keeps it with the file's modification time, a resume reads again only a file
that was touched or moved, and the merges' recipes take it from there. On a cluster host the check
leaves the file in the page cache for the load that follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bayes_merger.errors import ConfigError
from bayes_merger.files import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fingerprint:
    size: int
    sha256: str

    def describe(self) -> str:
        return f"{self.size} bytes, sha256 {self.sha256[:12]}" if self.sha256 else f"{self.size} bytes"


def fingerprint(path: Path) -> Fingerprint:
    """The fingerprint of the file at ``path``."""
    path = Path(path)
    return Fingerprint(path.stat().st_size, file_sha256(path))


def check_same_file(path: Path, expected: Fingerprint, key: str) -> None:
    """A ConfigError unless ``path`` exists here and is the driver's file (same size, same sha256)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist on this host; copy the driver's file to the same path on "
                          "every WebUI host.")
    size = path.stat().st_size
    found = fingerprint(path) if size == expected.size else Fingerprint(size, "")  # a size tells without a read
    if found != expected:
        raise ConfigError(f"{key}: {path} on this host is not the driver's file ({found.describe()} here, "
                          f"{expected.describe()} there); copy the same file to every WebUI host.")


def model_records(models: Mapping[str, Path], known: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each model file's record for run.json (by "A", "B", "C"): path, size, modification time and sha256.

    A record in ``known`` (the run's, on a resume) for a file still at its path with its size and
    modification time gives its sha256 without reading the file again."""
    records: dict[str, dict[str, Any]] = {}
    for model, path in models.items():
        stat = Path(path).stat()
        record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        before = (known or {}).get(model)
        if isinstance(before, Mapping) and all(before.get(k) == v for k, v in record.items()) and before.get("sha256"):
            record["sha256"] = str(before["sha256"])
        else:
            log.info("Reading model_%s (%s, %.1f MB) for its sha256: a resume checks it is the same file.",
                     model.lower(), Path(path).name, stat.st_size / 1e6)
            record["sha256"] = file_sha256(path)
        records[model] = record
    return records


def recorded_fingerprints(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Fingerprint]:
    """The fingerprints ``model_records`` recorded, by model."""
    return {model: Fingerprint(int(record["size"]), str(record["sha256"])) for model, record in records.items()}
