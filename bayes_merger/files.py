"""File helpers every part shares: atomic writes, failed writes as StorageError, a pid-file lock, the
sha256 of a file, safe loading of torch pickles, and where a file that is not YAML goes wrong.

An atomic write goes to a temporary file beside the target and is renamed over it, so a reader (a
browser showing the report, a WebUI scanning its folder, a resumed run) sees the old file or the new
one, never half of one. The temporary file is named after its writer's pid (``temp_file_writer``), so
one left by a process killed while writing can be told from one still being written. It is created
by ``open_new``, never opened through what is already at its name: a folder another user can write
may hold a link named like it, planted to make us overwrite the file it points to.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from bayes_merger.errors import BayesMergerError, StorageError

__all__ = ["ForeignFile", "Locked", "atomic_path", "atomic_write_text", "file_sha256", "load_torch_weights",
           "open_new", "os_error", "pid_lock", "remove_dead_temp_files", "storage_errors", "temp_file_writer",
           "temp_path", "yaml_problem"]

_log = logging.getLogger(__name__)

_HIDDEN_TMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$")


def temp_path(path: Path) -> Path:
    """Where this process writes ``path`` before it is complete: ``.NAME.<pid>.tmp`` beside it (``temp_file_writer``
    reads the pid back, so one a killed writer left is known as such: ``remove_dead_temp_files``)."""
    # hidden and not ending like the target: nothing that lists the folder picks up a half-written file
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_file_writer(path: Path | str) -> int | None:
    """The pid of the process writing ``path`` when it is the default temporary file of ``atomic_path``, else None."""
    match = _HIDDEN_TMP.match(Path(path).name)
    return int(match["pid"]) if match else None


class ForeignFile(FileExistsError):
    """Something other than a regular file (a link another user planted) is at the name of a file
    ``open_new`` creates, or came there meanwhile: nothing is written through it. Its ``strerror``
    says what to do, in one sentence."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.EEXIST, f"{path.name} is already there and is not a file of ours (a link another "
                         f"user planted?), so nothing was written through it; use a folder only you can write "
                         f"(mkdir -m 700)", str(path))


def open_new(path: Path | str, mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """Open ``path`` for writing as a file this call creates (``mode`` "wb" or "w"); ForeignFile where it cannot.

    O_EXCL refuses any name already there, a link included (POSIX: even a dangling one), and O_NOFOLLOW
    says the same again: a link planted at the name, in a folder another user can write (a sub-folder of
    /dev/shm that user made), never makes us overwrite the file it points to. A regular file at the name
    is a stale one of ours (a killed writer's): removed first, as the plain open this replaces would
    have overwritten it; removing a name never follows a link.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"open_new writes a new file: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    _remove_file(path)

    def opener(name: str, flags: int) -> int:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)

    try:
        return open(path, mode.replace("w", "x"), opener=opener, **kwargs)
    except FileExistsError:
        raise ForeignFile(path) from None
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW's answer on a system whose O_EXCL let the link through
            raise ForeignFile(path) from None
        raise


def _remove_file(path: Path) -> None:
    """Remove the regular file at ``path``, if there is one; a link is looked at (lstat), never followed, and left.

    A regular file at one of our names is ours: removing it (a name, not the data of a file it may be
    a hard link to) harms no one, and its owner may not be us where a file system maps owners (NFS).
    """
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(found.st_mode):
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path | str, tmp: Path | None = None, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path``, on an error it is removed.

    ``tmp`` names the temporary file when the caller needs a particular name (default: hidden,
    beside ``path``), to be created with ``open_new``. ``durable`` syncs the folder after
    the rename, so the rename survives a power loss too (the caller syncs the file before it).
    """
    path = Path(path)
    tmp = temp_path(path) if tmp is None else Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)
    finally:
        # a link open_new refused stays (it is not ours to remove), and no failure to remove the file
        # hides why the write failed
        with suppress(OSError):
            _remove_file(tmp)


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so the names renamed into it are on the disk (POSIX; Windows cannot open a folder)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system that cannot sync a folder
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``fsync`` makes it durable before the rename."""
    with atomic_path(path, durable=fsync) as tmp:
        with open_new(tmp, "w", encoding="utf-8") as handle:
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
def storage_errors(path: Path | str, *, hint: str = "free space on its disk or make it writable") -> Iterator[None]:
    """Turn a failure to write ``path`` (disk full, no permission, a read-only disk) into a StorageError.

    Such a failure is not the work's fault and says nothing about the next attempt: the run stops,
    resumable (exit 6), with one sentence naming the file (``path``: or what it is, "the merge to
    FOLDER"), the system's reason and what to do (``hint``), instead of a traceback. A project error
    raised because of an OSError (a checkpoint writer's) counts too.
    """
    try:
        yield
    except (OSError, BayesMergerError) as exc:
        if isinstance(exc, StorageError):
            raise
        error = os_error(exc)
        if error is None:
            raise
        if isinstance(error, ForeignFile):  # no space or permission to fix: its sentence says what to do
            raise StorageError(f"Could not write {path}: {error.strerror}.") from exc
        reason = error.strerror or str(error) or type(error).__name__
        raise StorageError(f"Could not write {path}: {reason}; {hint}.") from exc


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


def remove_dead_temp_files(folder: Path | str) -> list[Path]:
    """Delete the temporary files of atomic writes in ``folder`` whose writing process is no longer alive
    (killed while writing: a best merge's, a scorer download's, GBs); returns them.

    A live writer (a report being rebuilt, a re-score, another run's download) keeps its file; a pid
    taken over by another process since only leaves the file until a later call. A run calls it on
    its folder as it starts, the scorer cache before a download.
    """
    if os.name != "posix":
        return []  # Windows: os.kill(pid, 0) would not just ask
    try:
        candidates = list(Path(folder).iterdir())
    except OSError:
        return []
    removed = []
    for path in candidates:
        pid = temp_file_writer(path)
        if pid is None or pid == os.getpid() or _alive(pid) or not path.is_file():
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError as error:
            _log.warning("Could not delete %s, left by a stopped process: %s.", path, error.strerror or error)
            continue
        _log.info("Deleted %s (%.1f MB), left by process %d, which stopped while writing it.", path, size / 1e6, pid)
        removed.append(path)
    return removed


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


def yaml_problem(error: Exception) -> str:
    """Where and what a YAML parser met in a file that is not YAML: " at line 4, column 10: expected ','"."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    return f"{where}: {problem}"
