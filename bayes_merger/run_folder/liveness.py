"""Whether a run is going on now: a run holds an exclusive ``fcntl.flock`` on ``<run>/.run.lock``
while it works, and the system releases it when the process ends, however it ends (kill -9 too).

Other runs use it to tell a merge file left by a run that died from one a live run still needs. A run
that starts removes the temporary files of atomic writes (``files.atomic_path``) that a process killed
while writing left in its folder: the best merge's is the size of a checkpoint.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from bayes_merger.errors import ConfigError
from bayes_merger.files import Locked, pid_lock, temp_file_writer
from bayes_merger.run_folder.run_info import load_run_info

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no liveness; a run folder is then never said to be over
    fcntl = None  # type: ignore[assignment]

RUN_LOCK = ".run.lock"


@contextmanager
def running(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock while the block runs; a ConfigError if another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with ExitStack() as stack:
        try:  # only the lock's own refusal, not a Locked from the block, is the ConfigError
            stack.enter_context(pid_lock(run_dir / RUN_LOCK))
        except Locked as locked:
            who = f" (pid {locked.pid})" if locked.pid is not None else ""
            raise ConfigError(f"{run_dir} is being run by another bayes-merger{who}; wait for it to end "
                              "before resuming it.") from None
        yield


def is_running(run_dir: Path) -> bool:
    """True while a process holds the run folder's lock (and, without fcntl, always: unknown)."""
    if fcntl is None:
        return True
    try:
        handle = open(Path(run_dir) / RUN_LOCK, "r", encoding="utf-8")
    except FileNotFoundError:
        return False  # never started by a version that locks, or never started at all
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        return False


def run_folders(base: Path) -> dict[str, Path]:
    """run id → run folder, for the runs under ``base`` (``run.dir``) and its sweeps (``multirun/*/*``)."""
    base = Path(base)
    candidates = [*base.glob("*"), *base.glob("multirun/*/*")] if base.is_dir() else []
    found: dict[str, Path] = {}
    for folder in candidates:
        if folder.is_dir() and (folder / "run.json").is_file():
            info = load_run_info(folder) or {}
            if isinstance(info.get("run_id"), str):
                found[info["run_id"]] = folder
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


def remove_dead_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files in ``run_dir`` whose writing process is no longer alive; returns them.

    Called by a run that holds the folder's lock, so no run of this folder writes them; a live writer
    (a report being rebuilt, a re-score) keeps its file. A pid taken over by another process since
    only leaves the file until a later start.
    """
    if fcntl is None:
        return []  # Windows: os.kill(pid, 0) would not just ask, and liveness is unknown anyway
    try:
        candidates = list(Path(run_dir).iterdir())
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
            log.warning("Could not delete %s, left by a stopped process: %s.", path, error.strerror or error)
            continue
        log.info("Deleted %s (%.1f MB), left by process %d, which stopped while writing it.", path, size / 1e6, pid)
        removed.append(path)
    return removed
