"""The merge files in a checkpoint folder another user may be able to write (a sub-folder of /dev/shm):
nothing is written through a link planted at a name we write, and every temporary name the writer
makes, the pipelined run's staged merge's included, is known to the clean-ups."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bayes_merger.errors import ConfigError, StorageError
from bayes_merger.merge.safetensors_file import write_safetensors
from bayes_merger.webui.merge_files import MergeFiles

PRECIOUS = b"the victim's own file\n"


def _writer(seen: set[str]) -> Callable[[Path], None]:
    """The merger's writer (``write_safetensors``, under ``Merger.save``) that records every name in the
    folder while it writes: the temporary names exactly as the code makes them."""

    def write(tmp: Path) -> None:
        seen.add(tmp.name)

        def tensor_of(name: str) -> torch.Tensor:
            seen.update(path.name for path in tmp.parent.iterdir())  # its own temporary file is open now
            return torch.ones(4)

        write_safetensors(tmp, [("model.diffusion_model.x", torch.float32, (4,))], tensor_of)

    return write


def _temporary_names(files: MergeFiles, target: Path) -> set[str]:
    """Every name but the target's that a write of ``target`` passes through, the folder's files before left out."""
    there = {path.name for path in target.parent.iterdir()}
    seen: set[str] = set()
    files.write(_writer(seen), target)
    seen -= there | {target.name}
    assert seen and target.exists()
    return seen


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "home" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(PRECIOUS)
    return victim


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shared = tmp_path / "shm-bm"
    shared.mkdir()
    return shared


# ------------------------------------------------------------------ links planted at our names


@pytest.mark.parametrize("which", ["merge", "staged"])
def test_a_link_planted_at_a_temporary_name_of_a_merge_write_never_writes_the_file_it_points_to(
        tmp_path: Path, folder: Path, which: str) -> None:
    files = MergeFiles(folder, "run1", 0)
    target = folder / files.merge_name(3) if which == "merge" else files.staged_path(3)
    names = _temporary_names(files, target)
    before = target.read_bytes()
    victim = _victim(tmp_path)
    for name in names:
        (folder / name).symlink_to(victim)  # what another user who made the folder can plant

    with pytest.raises(StorageError, match="not a file of ours .* use a folder only you can write") as error:
        files.write(_writer(set()), target)

    assert victim.read_bytes() == PRECIOUS
    assert "\n" not in str(error.value) and str(folder) in str(error.value)
    assert target.read_bytes() == before, "the merge written before is left as it was"



def test_a_merge_the_disk_has_no_room_for_is_one_sentence_saying_what_to_free_and_leaves_no_file(folder: Path) -> None:
    files = MergeFiles(folder, "run1", 0)

    def half_written(tmp: Path) -> None:
        tmp.write_bytes(b"half a merge")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError) as error:
        files.write(half_written, folder / files.merge_name(3))
    assert str(error.value) == (f"Could not write the merge to {folder}: No space left on device; free space there "
                                "(each merge is the size of a checkpoint) or make it writable.")
    assert not list(folder.iterdir())

def test_a_link_planted_at_the_write_test_name_is_refused_and_never_truncates_its_target(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = MergeFiles(folder, "run1", 0)
    removed: list[str] = []
    unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (removed.append(self.name), unlink(self, *a, **k))[1])
    files.check_writable()  # its probe's name, as the code makes it: the file it removes
    monkeypatch.undo()
    assert len(removed) == 1 and not list(folder.iterdir())
    victim = _victim(tmp_path)
    (folder / removed[0]).symlink_to(victim)

    with pytest.raises(ConfigError, match=f"webui.checkpoint_dir {folder}: .*not a file of ours"):
        files.check_writable()

    assert victim.read_bytes() == PRECIOUS


# -------------------------------------------------------------- every temporary name is known


def _as_left_by_a_kill(folder: Path, names: set[str]) -> None:
    for name in names:
        (folder / name).write_bytes(b"half a merge")


def test_the_staged_merges_temporary_files_of_a_dead_run_are_removed_and_nothing_else(folder: Path) -> None:
    dead = MergeFiles(folder, "20260101-000000-dead", 0)
    staged = dead.staged_path(3)
    names = _temporary_names(dead, staged) | {staged.name}
    staged.unlink()
    assert any(name.startswith("..") for name in names), "the staged merge's temporary file hides a hidden name"
    _as_left_by_a_kill(folder, names)
    # two dots only where our writer makes them: names like ours otherwise are someone else's
    others = {"..bm-20260101-000000-dead-t0003.safetensors", "..bm-20260101-000000-dead-t0003.safetensors.tmp.1.tmp",
              "notes.txt"}
    _as_left_by_a_kill(folder, others)

    removed = MergeFiles(folder, "20260101-000000-live", 0).remove_leftovers(lambda run_id: True)

    assert sorted(path.name for path in removed) == sorted(names)
    assert {path.name for path in folder.iterdir()} == others


def test_remove_all_removes_the_staged_merges_temporary_files_of_its_own_run(folder: Path) -> None:
    files = MergeFiles(folder, "run1", 0)
    names = _temporary_names(files, files.staged_path(3)) | _temporary_names(files, folder / files.merge_name(4))
    _as_left_by_a_kill(folder, names)

    assert files.remove_all() == len(names) + 2  # and the staged merge and the merge written
    assert list(folder.iterdir()) == []

