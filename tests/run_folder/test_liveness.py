"""Whether a run is going on now: the run folder's lock, held while a run works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bayes_merger.errors import ConfigError
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
