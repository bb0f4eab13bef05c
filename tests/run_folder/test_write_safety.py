"""Atomic writes of the run folder's files: never through a link planted at the temporary name, and
run.json durable (synced before its rename), since what it records must survive a power loss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bayes_merger.files import atomic_write_text
from bayes_merger.run_folder import write_run_info

PRECIOUS = "the victim's own file\n"


def _temporary_names(path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names an atomic write of ``path`` passes through, as the code makes them: what it renames."""
    renamed: set[str] = set()
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.add(Path(src).name), real_replace(src, dst))[1])
    atomic_write_text(path, "first\n")
    monkeypatch.undo()
    return renamed


def test_a_link_planted_at_the_temporary_name_of_an_atomic_write_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.json"
    (name,) = _temporary_names(path, monkeypatch)
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    (tmp_path / name).symlink_to(victim)

    with pytest.raises(FileExistsError, match="not a file of ours"):
        atomic_write_text(path, "second\n")

    assert victim.read_text() == PRECIOUS
    assert path.read_text() == "first\n"


def test_run_json_is_synced_before_it_is_renamed_into_place(
        tmp_path: Path, syncs_and_renames: list[tuple[str, object]]) -> None:
    events = syncs_and_renames
    write_run_info(tmp_path, {"best_saved_trial": 7})

    path = tmp_path / "run.json"
    assert json.loads(path.read_text()) == {"best_saved_trial": 7}
    assert events == [("sync", path.stat().st_ino), ("rename", "run.json"), ("sync", "folder")]
