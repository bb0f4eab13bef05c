"""The identity of a model file, checked on every host before it loads the models: its size and the
sha256 of the whole file.

Not of the safetensors header alone: two fine-tunes of one base saved by the same tool have the same
keys, dtypes, shapes and offsets, so the same header and size (two test checkpoints of other weights
do), and a host holding model B at model A's path would merge the wrong models unnoticed. The hash
costs one read of each file (seconds a checkpoint, on the driver once and on the hosts in parallel),
and on a host it leaves the file in the page cache for the load that follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bayes_merger.errors import ConfigError
from bayes_merger.files import file_sha256


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
