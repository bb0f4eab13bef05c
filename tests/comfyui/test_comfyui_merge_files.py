"""The merge files in ComfyUI's folder are the A1111 side's (``webui.merge_files``): a dead run's files,
staged ones included, are removed by the next run, and a full disk stops the run resumably."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from bayes_merger.errors import StorageError
from bayes_merger.renderers.comfyui.files import ComfyMergeFiles
from bayes_merger.run_folder.liveness import running
from bayes_merger.webui.merge_files import merge_run_id
from tests.comfyui.test_comfyui_run import comfyui_run_args
from tests.loop.test_cli_run import _cli


def _run_folder(runs: Path, run_id: str) -> Path:
    folder = runs / f"2026-01-01_00-00-00_{run_id}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id}))
    return folder


def test_files_of_comfyui_runs_that_died_are_removed_staged_ones_too_and_nothing_else(fake_comfyui, tiny_models,
                                                                                      tmp_path):
    runs, folder = tmp_path / "runs", fake_comfyui.checkpoint_dir / "bayes-merger"
    _run_folder(runs, "20260101-000000-dead")
    live = _run_folder(runs, "20260101-000000-live")
    # a pipelined run killed while ComfyUI rendered trial 7: trial 8's merge staged, trial 9's being staged
    dead_files = [".bm-20260101-000000-dead-t0008.safetensors.staged",
                  ".bm-20260101-000000-dead-t0009.safetensors.staged.tmp",
                  "bm-20260101-000000-dead-t0007.safetensors", "bm-20260101-000000-dead-t0006.safetensors.corrupted",
                  "bm-20260101-000000-dead-t0005-r2.safetensors.tmp"]
    kept = [".bm-20260101-000000-live-t0004.safetensors.staged",  # its run is going on (it holds its lock)
            "bm-20260101-000000-live-t0003.safetensors",
            "bm-20250101-000000-gone-t0001.safetensors",  # no run folder says it is over
            "bm-notes.safetensors", "mybm-20260101-000000-dead-t0007.safetensors", "bm-20260101-000000-dead.txt"]
    for name in dead_files + kept:
        (folder / name).write_bytes(b"x")
    args = comfyui_run_args(fake_comfyui.url, tiny_models, tmp_path, "comfyui", "file", init_points=1, n_iters=0)
    with running(live):
        assert _cli(args) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)


def test_a_full_disk_while_writing_the_merge_is_a_storage_error_and_leaves_no_file(file_client, fake_comfyui):
    def no_room(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # a StorageError stops the run resumably (exit 6); a WebUIError would only fail the trial, and the
    # next ones with it, on a disk that is still full
    with pytest.raises(StorageError, match="No space left on device"):
        file_client.load_checkpoint(no_room, trial=0)
    assert list((fake_comfyui.checkpoint_dir / "bayes-merger").iterdir()) == []


def test_the_staged_name_is_one_the_clean_up_knows(tmp_path):
    staged = ComfyMergeFiles(tmp_path, "run1").staged_path(12)
    assert staged == tmp_path / ".bm-run1-t0012.safetensors.staged"  # hidden: ComfyUI does not list it
    assert merge_run_id(staged.name) == "run1"
