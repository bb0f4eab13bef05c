"""WebUIs writing into one checkpoint folder, however its path is spelled, name their merge files apart:
with the same run id and keep_last 0, each would delete the merge the other is loading."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bayes_merger.config import WebUIConfig
from bayes_merger.webui.merge_files import MergeFiles
from bayes_merger.webuis import webui_configs

URLS = ["http://127.0.0.1:7860", "http://127.0.0.1:7861"]


def _run_ids(folders: list[str]) -> list[str]:
    webui = WebUIConfig(url=URLS[0], urls=URLS, checkpoint_dir=folders[0], checkpoint_dirs=folders)
    return [run_id for _, _, run_id in webui_configs(SimpleNamespace(webui=webui), "run1")]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shared = tmp_path / "shm" / "bm"
    shared.mkdir(parents=True)
    return shared


@pytest.mark.parametrize("spelling", ["trailing slash", "link", "dot segment"])
def test_one_folder_spelled_two_ways_gives_each_webui_its_own_run_id(tmp_path: Path, folder: Path,
                                                                     spelling: str) -> None:
    if spelling == "link":  # the README's sub-folder of models/Stable-diffusion linking to /dev/shm
        other = tmp_path / "models" / "bayes-merger"
        other.parent.mkdir()
        other.symlink_to(folder, target_is_directory=True)
        second = str(other)
    else:
        second = f"{folder}/" if spelling == "trailing slash" else f"{folder.parent}/./bm"

    first_id, second_id = _run_ids([str(folder), second])

    assert (first_id, second_id) == ("run1", "run1-w2")
    # what the two ids keep apart: each WebUI's clean-up of its older merges leaves the other's
    first, other_files = MergeFiles(Path(str(folder)), first_id, 0), MergeFiles(Path(second), second_id, 0)
    (folder / first.merge_name(1)).write_bytes(b"loaded by the first WebUI")
    (folder / other_files.merge_name(2)).write_bytes(b"loaded by the second")
    other_files.delete_old(keep=other_files.merge_name(2))
    assert (folder / first.merge_name(1)).exists()


def test_two_different_folders_keep_the_run_id(tmp_path: Path, folder: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _run_ids([str(folder), str(elsewhere)]) == ["run1", "run1"]


def test_folders_that_do_not_exist_yet_are_compared_by_their_resolved_path(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    assert _run_ids([str(missing), f"{missing}/"]) == ["run1", "run1-w2"]
    assert _run_ids([str(missing), str(tmp_path / "other")]) == ["run1", "run1"]
