"""The merge files of one run in a sub-folder of ComfyUI's checkpoints folder (the by-file hand-off).

They are ``webui.merge_files``' (``MergeFiles``): the same names, atomic write, clean-ups and removal of
dead runs' leftovers (``.staged`` merges of a pipelined run included), and a disk that cannot take a
merge is a StorageError, as on the A1111 side. Two things differ, and only they are here: the folder
is a sub-folder of ComfyUI's models/checkpoints, and a name is never reused within a run: ComfyUI
caches a loader by its ``ckpt_name``, so a file rewritten under a name it has just loaded would render
the old merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bayes_merger.webui.merge_files import MergeFiles, basename

__all__ = ["ComfyMergeFiles", "basename"]


class ComfyMergeFiles(MergeFiles):
    """This run's merge files in ``folder``, a sub-folder of ComfyUI's models/checkpoints."""

    folder_advice = ("with ComfyUI, make it a sub-folder of its models/checkpoints "
                     "(e.g. models/checkpoints/bayes-merger).")

    def __init__(self, folder: Path, run_id: str, keep_last: int = 0) -> None:
        super().__init__(folder, run_id, keep_last)
        self._used: set[str] = set()  # every name this run has handed to ComfyUI

    def fresh_name(self, trial: int) -> str:
        """A name for ``trial``'s merge that ComfyUI has not seen in this run and no file has."""
        name, attempt = self.merge_name(trial), 1
        while (self.folder / name).exists() or name in self._used:
            attempt += 1
            name = self.merge_name(trial, attempt)
        return name

    def write(self, write: Callable[[Path], None], target: Path) -> None:
        super().write(write, target)
        # ComfyUI may cache a loader by this name from now on: fresh_name never hands it out again
        self._used.add(target.name)
