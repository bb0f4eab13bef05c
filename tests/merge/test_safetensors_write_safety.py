"""The streamed .safetensors writer: never through a link planted at its temporary name, and, for a merge
that is kept (best.safetensors), synced to the disk before it replaces the old file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bayes_merger.errors import CheckpointError
from bayes_merger.merge.checkpoint import save_state_dict
from bayes_merger.merge.safetensors_file import read_header, write_safetensors

PRECIOUS = b"the victim's own file\n"
ENTRIES = [("model.diffusion_model.x", torch.float32, (4,))]


def _temporary_names(path: Path) -> set[str]:
    """The names beside ``path`` while a write of it is under way: its temporary file, as the code names it."""
    there = {p.name for p in path.parent.iterdir()}
    seen: set[str] = set()

    def tensor_of(name: str) -> torch.Tensor:
        seen.update(p.name for p in path.parent.iterdir())
        return torch.ones(4)

    write_safetensors(path, ENTRIES, tensor_of)
    return seen - there - {path.name}


@pytest.mark.parametrize("victim_exists", [True, False], ids=["file", "dangling"])
def test_a_link_planted_at_the_temporary_name_is_refused_and_never_written_through(
        tmp_path: Path, victim_exists: bool) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "m.safetensors"
    names = _temporary_names(path)
    assert len(names) == 1
    before = path.read_bytes()
    victim = tmp_path / "victim.txt"
    if victim_exists:
        victim.write_bytes(PRECIOUS)
    (folder / names.pop()).symlink_to(victim)

    with pytest.raises(CheckpointError, match="not a file of ours"):
        write_safetensors(path, ENTRIES, lambda name: torch.zeros(4))

    assert (victim.read_bytes() == PRECIOUS) if victim_exists else not victim.exists()
    assert path.read_bytes() == before


def test_a_stale_temporary_file_of_ours_is_replaced_as_before(tmp_path: Path) -> None:
    """A guard, not a fix: the exclusive create must not turn a killed writer's file into an error."""
    path = tmp_path / "m.safetensors"
    (name,) = _temporary_names(path)
    (tmp_path / name).write_bytes(b"left by a writer killed with this pid")

    write_safetensors(path, ENTRIES, lambda _: torch.zeros(4))

    assert [entry.stored for entry in read_header(path)] == ["model.diffusion_model.x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_a_durable_save_syncs_the_file_before_the_rename_and_a_trials_merge_does_not_sync(
        tmp_path: Path, syncs_and_renames: list[tuple[str, object]]) -> None:
    events = syncs_and_renames
    tensors = {"model.diffusion_model.x": torch.ones(4)}

    save_state_dict(tensors, tmp_path / "bm-run1-t0001.safetensors")  # a trial's throwaway merge
    assert events == [("rename", "bm-run1-t0001.safetensors")], "a trial's merge waits for no disk"
    events.clear()

    path = save_state_dict(tensors, tmp_path / "best.safetensors", durable=True)

    # the file synced is the one renamed into place, synced before the rename; then the folder's new name
    assert events == [("sync", path.stat().st_ino), ("rename", "best.safetensors"), ("sync", "folder")]
