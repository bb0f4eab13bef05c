"""The merge files in the WebUI's checkpoint folder: names, the atomic write, and every clean-up.

A run writes each trial's merge as ``bm-<run id>-t<trial>[-r<n>].safetensors``, through a ``.tmp``
name the WebUI does not list, and deletes its older merges as it goes (``keep_last``), all of them at
its end. A pipelined run first writes the next trial's merge under a hidden ``.staged`` name
(``staged_path``) while the WebUI renders. A run that died (kill -9, power loss) leaves its last
merge, a ``.tmp`` or ``.staged`` one, or the ``.corrupted`` name Forge gives a file it could not load;
those are found by the name pattern and removed once the run they belong to is known to be over. A
file whose name does not follow the pattern was not written by bayes-merger and is never touched.
The folder may be one another user can write (a sub-folder of /dev/shm): a file is only ever created
new (``files.open_new``), never written through a link planted at its name.

Both renderers keep their merges here: ComfyUI's ``renderers.comfyui.files.ComfyMergeFiles`` is this
class with its own folder advice and a name that is never reused within a run.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Any

from safetensors.torch import save as save_safetensors

from bayes_merger.errors import ConfigError
from bayes_merger.files import ForeignFile, atomic_path, open_new, storage_errors

logger = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# a merge file of any run: the name written, a .tmp being written (and the hidden file its writer
# renames into it), the name Forge gives a file it cannot load, or a .staged merge waiting for its
# turn (a pipelined run writes the next trial's merge while the WebUI renders), or the probe written at
# start (``probe``: left by a kill then). The hidden file the writer renames into a .staged merge's .tmp
# hides a hidden name again: two dots, for that name only
_MERGE_FILE = r"^(?:\.\.(?=.*\.staged\.tmp\.\d+\.tmp$)|\.)?bm-(?P<run>{run})-(?:t(?P<trial>\d{{4,}})(?:-r(?P<retry>\d+))?|probe)\.safetensors(?P<suffix>(?:\.staged)?\.tmp(?:\.\d+\.tmp)?|\.corrupted|\.staged)?$"
_ANY_MERGE = re.compile(_MERGE_FILE.format(run=r"[A-Za-z0-9][A-Za-z0-9._-]*?"))
# a probe lives for the seconds of a start's folder check: one this old is a killed start's, whatever its run
# (a start killed before its run.json was written names a run no folder knows: it would stay for good)
PROBE_STALE_SECONDS = 600.0
# " [0123456789]" that A1111 appends to a checkpoint's title once it knows the file's hash
HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


def merge_run_id(name: str) -> str | None:
    """The run id in the name of a merge file (or of a checkpoint title), or None when bayes-merger did not write it."""
    match = _ANY_MERGE.match(basename(HASH_SUFFIX.sub("", name.strip())))
    return match["run"] if match else None


class MergeFiles:
    """The merge files of one run in ``folder``."""

    # what webui.checkpoint_dir must be, for the sentence of a folder that does not exist
    folder_advice = ("point it at the WebUI's checkpoint folder (models/Stable-diffusion, its --ckpt-dir, "
                     "or a subfolder).")

    def __init__(self, folder: Path, run_id: str, keep_last: int) -> None:
        if not RUN_ID.match(run_id):
            raise ConfigError(
                f"The run id {run_id!r} cannot name a checkpoint file: use letters, digits, '.', '_' and '-'."
            )
        self.folder = Path(folder).expanduser()
        self.run_id = run_id
        self.keep_last = max(keep_last, 0)
        self._own = re.compile(_MERGE_FILE.format(run=re.escape(run_id)))

    @classmethod
    def check_folder(cls, folder: Path) -> None:
        """The folder exists: a typo is said before the WebUI is asked (``inputs``), and again here at a start."""
        if not folder.is_dir():
            raise ConfigError(f"webui.checkpoint_dir {folder} is not an existing folder: {cls.folder_advice}")

    def check_writable(self) -> None:
        """Fail now, not after the first merge, if merges cannot be written where the WebUI looks."""
        folder = self.folder
        self.check_folder(folder)
        probe = folder / f".bm-{self.run_id}-probe.safetensors.tmp"  # hidden; the pattern's, should a kill leave it
        try:
            open_new(probe).close()  # never through a link another user planted at the name
            probe.unlink()
        except ForeignFile as exc:
            raise ConfigError(f"webui.checkpoint_dir {folder}: {exc.strerror}.") from exc
        except OSError as exc:
            raise ConfigError(f"webui.checkpoint_dir {folder} is not writable: {exc.strerror or exc}.") from exc

    def probe(self, listed: Callable[[str], object]) -> None:
        """Whether merges can be written here (``check_writable``) and the WebUI lists them, before the first
        merge: a file named as this run's, an empty safetensors file (A1111 reads the header of each file it
        lists), is handed to ``listed`` (which raises where the WebUI does not list it) and deleted whatever
        happens."""
        self.check_writable()
        probe = self.folder / f"bm-{self.run_id}-probe.safetensors"
        try:
            with open_new(probe) as handle:  # never through a link another user planted at the name
                handle.write(save_safetensors({}, metadata={"bayes-merger": "probe"}))
            listed(probe.name)
        except ForeignFile as error:
            raise ConfigError(f"webui.checkpoint_dir {self.folder}: {error.strerror}.") from error
        finally:
            probe.unlink(missing_ok=True)

    def merge_name(self, trial: int, attempt: int = 1) -> str:
        """The file name of this run's merge of ``trial``; an ``attempt`` above 1 is a fresh name for it."""
        stem = f"bm-{self.run_id}-t{trial:04d}"
        return f"{stem}.safetensors" if attempt == 1 else f"{stem}-r{attempt}.safetensors"

    def staged_path(self, trial: int) -> Path:
        """Where a pipelined run writes ``trial``'s merge while the WebUI renders the trial before: a
        hidden name the WebUI does not list, moved onto the merge's name when its turn comes. The
        pattern knows it, so the merge of a run killed meanwhile is removed as a leftover."""
        return self.folder / f".{self.merge_name(trial)}.staged"

    def name_for(self, trial: int, current: str) -> str:
        # A1111 does not reload a checkpoint whose file name it already has loaded, even when the
        # content changed. After a resume the WebUI may still hold this trial's file: use a new name.
        attempt = 1
        while current and basename(HASH_SUFFIX.sub("", current)) == self.merge_name(trial, attempt):
            attempt += 1
        return self.merge_name(trial, attempt)

    def write(self, write: Callable[[Path], None], target: Path) -> None:
        """``write(tmp)`` under a ``.tmp`` name, renamed to ``target`` once complete; a failure to store
        it (disk full, no permission) is a StorageError and leaves no file behind."""
        # the rename overwrites our own file of an interrupted earlier attempt
        with storage_errors(f"the merge to {self.folder}",
                            hint="free space there (each merge is the size of a checkpoint) or make it writable"), \
                atomic_path(target, tmp=target.with_name(target.name + ".tmp")) as tmp:
            write(tmp)

    def own(self) -> list[tuple[Path, tuple[int, int, bool]]]:
        """This run's files with their order (trial, attempt, unfinished or unloadable)."""
        found = []
        for path in self._children():
            match = self._own.match(path.name)
            if match and path.is_file():
                # the probe of a start killed during it: a leftover, as an unfinished write is
                leftover = bool(match["suffix"]) or match["trial"] is None
                found.append((path, (int(match["trial"] or -1), int(match["retry"] or 1), leftover)))
        return found

    def delete_old(self, keep: str) -> None:
        """Keep the current merge and the ``keep_last`` newest before it; only this run's files."""
        # a .staged merge is the next trial's, still to be loaded: not a leftover while the run goes on
        files = [(order, path) for path, order in self.own() if path.name != keep and ".staged" not in path.name]
        leftovers = [path for order, path in files if order[2]]  # .tmp of an interrupted write, .corrupted
        merges = sorted(((order, path) for order, path in files if not order[2]), reverse=True)
        for path in leftovers + [path for _, path in merges[self.keep_last:]]:
            _unlink(path)

    def remove_all(self) -> int:
        """Delete every file of this run; returns how many."""
        files = [path for path, _ in self.own()]
        for path in files:
            _unlink(path)
        return len(files)

    def remove_leftovers(self, over: Callable[[str], bool]) -> list[Path]:
        """Delete the merge files of other runs for which ``over(run_id)`` says the run is over, stale probes
        (``PROBE_STALE_SECONDS``) of any run, and this run's unfinished ones: called as a session starts, before
        its first merge, so those are an earlier session's, killed while writing or before loading them (a
        checkpoint's size each, all night on tmpfs: ``delete_old`` leaves ``.staged`` names, and the trial
        redone writes under its own process's name)."""
        by_run: dict[str, list[Path]] = {"": [path for path, order in self.own() if order[2]]}
        for path in self._children():
            match = _ANY_MERGE.match(path.name)
            if match and match["run"] != self.run_id and path.is_file():
                run_id = match["run"]
                if match["trial"] is None and _age(path) > PROBE_STALE_SECONDS:
                    run_id = ""  # a stale probe: over, whoever wrote it
                by_run.setdefault(run_id, []).append(path)
        removed = []
        for run_id, paths in sorted(by_run.items()):
            if run_id and not over(run_id):
                logger.info("Leaving %d merge file(s) of run %s in %s: that run may still be going.",
                            len(paths), run_id, self.folder)
                continue
            for path in paths:
                _unlink(path)
                removed.append(path)
        if removed:
            logger.info("Removed %d merge file(s) left in %s by earlier runs that stopped.", len(removed), self.folder)
        return removed

    def _children(self) -> list[Path]:
        try:
            return list(self.folder.iterdir())
        except OSError:
            return []


def basename(path: str) -> str:
    """The last component of a path written with / or \\ (the WebUI may run on Windows)."""
    return re.split(r"[\\/]", path)[-1]


def aliases(entry: Mapping[str, Any], file_name: str) -> frozenset[str]:
    """Every name under which the WebUI may report the model of one ``sd-models`` entry."""
    names = {file_name, file_name.rsplit(".", 1)[0], str(entry.get("model_name") or "")}
    for key in ("title", "filename"):
        value = HASH_SUFFIX.sub("", str(entry.get(key) or ""))
        names.update({value, basename(value)})
    return frozenset(name for name in names if name)


def matches(reported: str, names: frozenset[str]) -> bool:
    name = HASH_SUFFIX.sub("", reported.strip())
    return bool(name) and (name in names or basename(name) in names)


def _age(path: Path) -> float:
    """Seconds since ``path`` was last written (0 when it cannot be read)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        logger.debug("Deleted %s.", path)
    except OSError as exc:
        logger.warning("Could not delete the merge file %s: %s.", path, exc.strerror or exc)
