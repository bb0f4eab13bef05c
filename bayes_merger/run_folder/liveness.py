"""Whether a run is going on now: a run holds an exclusive ``fcntl.flock`` on ``<run>/.run.lock``
while it works, and the system releases it when the process ends, however it ends (kill -9 too).

Other runs use it to tell a merge file left by a run that died from one a live run still needs.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from bayes_merger.errors import ConfigError
from bayes_merger.files import Locked, pid_lock
from bayes_merger.run_folder.paths import RUN_LOCK
from bayes_merger.run_folder.run_info import is_run_folder, load_run_info

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no liveness; a run folder is then never said to be over
    fcntl = None  # type: ignore[assignment]


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


def run_folders(*bases: Path) -> dict[str, Path]:
    """run id → run folder, for the runs under each of ``bases`` (``run.dir``) and their sweeps (``multirun/*/*``).

    A run folder copied (one run id, two folders) counts as the one being run now: the copy's free lock would
    make the run look over to another run on its WebUI, which then removed the merge files it was loading."""
    found: dict[str, Path] = {}
    for base in map(Path, bases):
        candidates = [*base.glob("*"), *base.glob("multirun/*/*")] if base.is_dir() else []
        for folder in candidates:
            run_id = (load_run_info(folder) or {}).get("run_id") if is_run_folder(folder) else None
            if not isinstance(run_id, str):
                continue
            known = found.get(run_id)
            if known is None or (not _same_folder(known, folder) and not is_running(known) and is_running(folder)):
                found[run_id] = folder
    return found


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
