"""File helpers every part shares: atomic writes, failed writes as StorageError, the sha256 of a file,
and safe loading of torch pickles.

An atomic write goes to a temporary file beside the target and is renamed over it, so a reader (a
browser showing the report, a WebUI scanning its folder, a resumed run) sees the old file or the new
one, never half of one. The temporary file is named after its writer's pid (``temp_file_writer``), so
one left by a process killed while writing can be told from one still being written.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from bayes_merger.errors import BayesMergerError, StorageError

__all__ = ["atomic_path", "atomic_write_text", "file_sha256", "load_torch_weights", "os_error", "storage_errors",
           "temp_file_writer"]

_HIDDEN_TMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$")


def _hidden_tmp(path: Path) -> Path:
    # hidden and not ending like the target: nothing that lists the folder picks up a half-written file
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_file_writer(path: Path | str) -> int | None:
    """The pid of the process writing ``path`` when it is the default temporary file of ``atomic_path``, else None."""
    match = _HIDDEN_TMP.match(Path(path).name)
    return int(match["pid"]) if match else None


@contextmanager
def atomic_path(path: Path | str, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path``, on an error it is removed.

    ``tmp`` names the temporary file when the caller needs a particular name (default: hidden,
    beside ``path``).
    """
    path = Path(path)
    tmp = _hidden_tmp(path) if tmp is None else Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``fsync`` makes it durable before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or the cause or context a wrapper kept), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def storage_errors(path: Path | str) -> Iterator[None]:
    """Turn a failure to write ``path`` (disk full, no permission, a read-only disk) into a StorageError.

    Such a failure is not the work's fault and says nothing about the next attempt: the run stops,
    resumable (exit 6), with one sentence naming the file and the system's reason, instead of a
    traceback. A project error raised because of an OSError (a checkpoint writer's) counts too.
    """
    try:
        yield
    except (OSError, BayesMergerError) as exc:
        if isinstance(exc, StorageError):
            raise
        error = os_error(exc)
        if error is None:
            raise
        reason = error.strerror or str(error) or type(error).__name__
        raise StorageError(f"Could not write {path}: {reason}; free space on its disk or make it writable.") from exc


def file_sha256(path: Path | str) -> str:
    """The hex sha256 of a whole file (what A1111 and Civitai show, the first 10 characters as "AutoV2")."""
    digest = hashlib.sha256()
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def load_torch_weights(path: Path | str, *, mmap: bool = False) -> Any:
    """A torch pickle read on the CPU through torch's weights-only unpickler: nothing in it is executed.

    ``mmap`` maps a zip-format file instead of reading it (a legacy non-zip file is read whole). A
    ``{"state_dict": {...}}`` wrapper is unwrapped. Errors are torch's own: callers turn them into
    the project's error for what they were loading.
    """
    import torch  # imported here: the report and the overnight runner never load a pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if not mmap or "mmap can only be used" not in str(error):
            raise
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return obj
