"""The merge files of one run in a sub-folder of ComfyUI's checkpoints folder (the by-file hand-off).

Names follow the A1111 client's pattern, ``bm-<run id>-t<trial>[-r<n>].safetensors``, written
through a ``.tmp`` name ComfyUI does not list, so the clean-up of either backend recognises them. A
name is never reused within a run: ComfyUI caches a loader by its ``ckpt_name``, so a file rewritten
under a name it has just loaded would render the old merge. (When ``webui.merge_files`` lands in the
main line, this can become its ``MergeFiles`` plus the fresh-name rule.)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from bayes_merger.errors import BayesMergerError, ConfigError, WebUIError
from bayes_merger.files import atomic_path

logger = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def basename(path: str) -> str:
    """The last component of a name listed with / or \\ (ComfyUI on Windows lists sub\\name)."""
    return re.split(r"[\\/]", path)[-1]


class ComfyMergeFiles:
    """This run's merge files in ``folder``."""

    def __init__(self, folder: Path, run_id: str, keep_last: int = 0) -> None:
        if not RUN_ID.match(run_id):
            raise ConfigError(f"The run id {run_id!r} cannot name a checkpoint file: use letters, digits, '.', '_' and '-'.")
        self.folder = Path(folder).expanduser()
        self.run_id = run_id
        self.keep_last = max(keep_last, 0)
        self._own = re.compile(rf"^\.?bm-{re.escape(run_id)}-t(\d{{4,}})(?:-r(\d+))?\.safetensors(\.tmp)?$")
        self._used: set[str] = set()  # every name this run has handed to ComfyUI

    def check_writable(self) -> None:
        if not self.folder.is_dir():
            raise ConfigError(
                f"webui.checkpoint_dir {self.folder} is not an existing folder: with ComfyUI, make it a sub-folder of "
                "its models/checkpoints (e.g. models/checkpoints/bayes-merger)."
            )
        probe = self.folder / f".bm-{self.run_id}-write-test.tmp"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"webui.checkpoint_dir {self.folder} is not writable: {exc.strerror or exc}.") from exc

    def fresh_name(self, trial: int) -> str:
        stem, attempt = f"bm-{self.run_id}-t{trial:04d}", 1
        name = f"{stem}.safetensors"
        while (self.folder / name).exists() or name in self._used:
            attempt += 1
            name = f"{stem}-r{attempt}.safetensors"
        return name

    def write(self, write: Callable[[Path], None], name: str) -> Path:
        """``write(tmp)`` under a ``.tmp`` name, renamed to ``name`` once complete."""
        target = self.folder / name
        try:
            with atomic_path(target, tmp=target.with_name(name + ".tmp")) as tmp:
                write(tmp)
        except OSError as exc:
            raise WebUIError(f"Could not write the merge to {self.folder}: {exc.strerror or exc}; free space there "
                             "or make it writable.") from exc
        except BayesMergerError:
            raise
        self._used.add(name)
        return target

    def delete_old(self, keep: str) -> None:
        """Keep ``keep`` and the ``keep_last`` newest merges before it; only this run's files."""
        merges = []
        for path in self._children():
            match = self._own.match(path.name)
            if not match or path.name == keep:
                continue
            if match.group(3) or path.name.startswith("."):
                _unlink(path)
            else:
                merges.append(((int(match.group(1)), int(match.group(2) or 1)), path))
        for _, path in sorted(merges, reverse=True)[self.keep_last:]:
            _unlink(path)

    def remove_all(self) -> int:
        files = [p for p in self._children() if self._own.match(p.name)]
        for path in files:
            _unlink(path)
        return len(files)

    def _children(self) -> list[Path]:
        try:
            return [p for p in self.folder.iterdir() if p.is_file()]
        except OSError:
            return []


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("Could not delete the merge file %s: %s.", path, exc.strerror or exc)
