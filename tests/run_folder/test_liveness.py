"""Whether a run is going on now: the run folder's lock, held while a run works."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from bayes_merger.errors import ConfigError
from bayes_merger.files import remove_dead_temp_files
from bayes_merger.run_folder.liveness import is_running, run_folders, running


def test_a_run_folder_is_running_only_while_its_lock_is_held(tmp_path):
    assert not is_running(tmp_path)
    with running(tmp_path):
        assert is_running(tmp_path)
        with pytest.raises(ConfigError, match=r"being run by another bayes-merger \(pid \d+\)"):
            with running(tmp_path):
                pass
    assert not is_running(tmp_path)


def test_a_run_killed_with_sigkill_is_no_longer_running(tmp_path):
    code = ("import os, signal, sys; from bayes_merger.run_folder.liveness import running\n"
            f"with running({str(tmp_path)!r}):\n    print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout == "held\n" and done.returncode == -9
    assert not is_running(tmp_path)


def test_run_folders_finds_runs_and_sweeps_by_run_id(tmp_path):
    for folder, run_id in (("a", "r1"), ("multirun/2026/0_x", "r2"), ("notes", None)):
        (tmp_path / folder).mkdir(parents=True)
        if run_id:
            (tmp_path / folder / "run.json").write_text(json.dumps({"run_id": run_id}))
    assert run_folders(tmp_path) == {"r1": tmp_path / "a", "r2": tmp_path / "multirun/2026/0_x"}


def test_a_copied_run_folder_is_its_run_by_the_folder_being_run_now(tmp_path):
    """A backup copy of a live run (cp -r) must not make the run look over: another run on its WebUI then
    removed the merge files it was loading."""
    for folder in ("a-backup", "b", "c-backup"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "run.json").write_text(json.dumps({"run_id": "r1"}))
    with running(tmp_path / "b"):
        assert run_folders(tmp_path) == {"r1": tmp_path / "b"}
        assert run_folders(tmp_path / "b" / "..", tmp_path) == {"r1": tmp_path / "b" / ".." / "b"}
        assert is_running(run_folders(tmp_path)["r1"])
    assert run_folders(tmp_path)["r1"] in {tmp_path / "a-backup", tmp_path / "b", tmp_path / "c-backup"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(sys.platform == "win32", reason="no liveness on Windows")
def test_temporary_files_of_dead_writers_are_removed_and_nothing_else(tmp_path, caplog):
    dead, alive = _dead_pid(), os.getppid()
    cut_off = tmp_path / f".best.safetensors.{dead}.tmp"  # kill -9 during the best merge's save
    cut_off.write_bytes(b"\0" * 1000)
    (tmp_path / f".report.html.{dead}.tmp").write_text("<html")
    kept = [tmp_path / f".report.html.{alive}.tmp",  # a report being rebuilt now by another process
            tmp_path / "best.safetensors", tmp_path / f"notes.{dead}.tmp", tmp_path / f".{dead}.tmp"]
    for path in kept:
        path.write_text("x")
    (tmp_path / f".images.{dead}.tmp").mkdir()
    with caplog.at_level(logging.INFO):
        removed = remove_dead_temp_files(tmp_path)
    assert sorted(removed) == sorted([cut_off, tmp_path / f".report.html.{dead}.tmp"])
    assert all(path.exists() for path in kept) and (tmp_path / f".images.{dead}.tmp").is_dir()
    assert f"left by process {dead}, which stopped while writing it" in caplog.text
