"""The identity of a model file, cheap enough to check on every host: its size and the sha256 of its
safetensors header (names, dtypes, shapes and offsets of every tensor, and the metadata), or of the
whole file when it is not a safetensors file (a pickle has no header to trust)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from bayes_merger.errors import ConfigError
from bayes_merger.files import file_sha256

# a safetensors header is JSON; anything claiming more than this is not one
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Fingerprint:
    size: int
    sha256: str
    of: str  # "header" or "file": what the hash covers

    def describe(self) -> str:
        return f"{self.size} bytes, {self.of} sha256 {self.sha256[:12]}…"


def fingerprint(path: Path) -> Fingerprint:
    """The fingerprint of the file at ``path``."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) == 8:
            (length,) = struct.unpack("<Q", head)
            if 0 < length <= min(_MAX_HEADER, size - 8):
                header = handle.read(length)
                if header[:1] == b"{":
                    return Fingerprint(size, hashlib.sha256(head + header).hexdigest(), "header")
    return Fingerprint(size, file_sha256(path), "file")


def check_same_file(path: Path, expected: Fingerprint, key: str) -> None:
    """A ConfigError unless ``path`` exists here and has the fingerprint the driver's file has."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist on this host; copy the driver's file to the same path on "
                          "every WebUI host.")
    found = fingerprint(path) if path.stat().st_size == expected.size else Fingerprint(path.stat().st_size, "", expected.of)
    if found != expected:
        raise ConfigError(f"{key}: {path} on this host is not the driver's file ({found.describe()} here, "
                          f"{expected.describe()} there); copy the same file to every WebUI host.")
