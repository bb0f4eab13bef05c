"""File helpers every part shares: atomic writes, failed writes as StorageError, a pid-file lock, the
sha256 of a file, and safe loading of torch pickles.

An atomic write goes to a temporary file beside the target and is renamed over it, so a reader (a
browser showing the report, a WebUI scanning its folder, a resumed run) sees the old file or the new
one, never half of one. The temporary file is named after its writer's pid (``temp_file_writer``), so
one left by a process killed while writing can be told from one still being written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from bayes_merger.errors import BayesMergerError, StorageError

__all__ = ["Locked", "atomic_path", "atomic_write_text", "file_sha256", "load_torch_weights", "os_error", "pid_lock",
           "storage_errors", "temp_file_writer"]

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


class Locked(Exception):
    """Another process holds the lock ``pid_lock`` was asked for; ``pid`` is the one it wrote, None when unknown.

    Not a BayesMergerError: each caller says in its own words what is locked and what to do.
    """

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by another process" + (f" (pid {pid})" if pid is not None else "") + ".")
        self.path = path
        self.pid = pid


@contextmanager
def pid_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created, with its folder) while the block runs, our pid
    written in it; ``Locked`` at once, naming the holder's pid, if another process holds it.

    The system releases the lock when the process ends, however it ends (kill -9 too), so a file left
    behind locks nothing. POSIX only: the caller decides what a system without flock (Windows) means.
    """
    import fcntl  # imported here: Windows has none, and its callers never get this far

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # not inherited by child processes (PEP 446)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            # only "held by another": anything else (no locks on this file system) is the system's own error
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip()
            raise Locked(path, int(holder) if holder.isdigit() else None) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


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
