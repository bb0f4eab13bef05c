"""A run folder on a full or unwritable disk: each write is a StorageError naming the file, and leaves
nothing half-written behind (a resumed run redoes the work)."""

from __future__ import annotations

import errno
import os
import types

import pytest
from PIL import Image

from bayes_merger.errors import StorageError
from bayes_merger.run_folder import TrialLog, read_trials, save_image, trials, write_best, write_image_file, write_run_info
from bayes_merger.run_folder import best as best_module
from bayes_merger.run_folder import images as images_module
from bayes_merger.run_folder import run_info as run_info_module

from test_trials import _trial

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _DiskFillsUp(types.ModuleType):
    """``os`` for the trial log, whose disk fills up after ``room`` more bytes, or fails at ``fsync``."""

    def __init__(self, room: int, sync_error: OSError | None = None) -> None:
        super().__init__("os")
        self.room = room
        self.sync_error = sync_error

    def __getattr__(self, name: str):
        return getattr(os, name)

    def write(self, fd: int, data) -> int:
        if self.room <= 0:
            raise ENOSPC
        written = os.write(fd, bytes(data)[:self.room])
        self.room -= written
        return written

    def fsync(self, fd: int) -> None:
        if self.sync_error is not None:
            raise self.sync_error
        os.fsync(fd)


def test_a_line_cut_by_a_full_disk_is_a_storage_error_and_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    log = TrialLog(tmp_path)
    log.append(_trial(0))
    before = (tmp_path / "trials.jsonl").read_bytes()
    monkeypatch.setattr(trials, "os", _DiskFillsUp(room=25))  # part of the next line fits, not all of it
    with pytest.raises(StorageError) as raised:
        log.append(_trial(1))
    assert str(raised.value) == (f"Could not write {tmp_path / 'trials.jsonl'}: No space left on device; "
                                 "free space on its disk or make it writable.")
    assert (tmp_path / "trials.jsonl").read_bytes() == before
    assert [t.trial for t in log.trials] == [0]

    monkeypatch.undo()  # space again: the trial is redone and the log reads back whole, nothing set aside
    log.append(_trial(1))
    assert [t.trial for t in read_trials(tmp_path / "trials.jsonl")] == [0, 1]
    assert [t.trial for t in TrialLog(tmp_path).trials] == [0, 1]
    assert not list(tmp_path.glob("trials.jsonl.incomplete-*"))


def test_a_failed_fsync_takes_the_line_back(tmp_path, monkeypatch):
    # ext4 with delayed allocation, NFS: the write succeeds and the full disk shows at fsync
    monkeypatch.setattr(trials, "os", _DiskFillsUp(room=10**6, sync_error=OSError(errno.EIO, os.strerror(errno.EIO))))
    with pytest.raises(StorageError, match="Input/output error"):
        TrialLog(tmp_path).append(_trial(0))
    assert (tmp_path / "trials.jsonl").read_bytes() == b""



def test_a_lost_webui_noted_on_a_full_disk_leaves_no_half_line_to_miscount_the_next(tmp_path, monkeypatch):
    # the count of a trial's WebUI losses decides when it is failed as the weights' fault: a half line
    # followed by the next note would lose both
    assert trials.note_lost_webui(tmp_path, 3, "http://127.0.0.1:7860", "gone") == 1
    before = (tmp_path / trials.WEBUI_LOST_FILE).read_bytes()
    monkeypatch.setattr(trials, "os", _DiskFillsUp(room=25))
    with pytest.raises(StorageError, match="No space left on device"):
        trials.note_lost_webui(tmp_path, 3, "http://127.0.0.1:7860", "gone")
    assert (tmp_path / trials.WEBUI_LOST_FILE).read_bytes() == before
    monkeypatch.undo()
    assert trials.note_lost_webui(tmp_path, 3, "http://127.0.0.1:7860", "gone") == 2

def test_a_note_after_a_line_a_power_loss_cut_off_is_a_record_of_its_own(tmp_path):
    # the side logs are not repaired as trials.jsonl is when it opens: glued to the fragment, the next
    # note was no record either, and a trial's WebUI losses were counted two short
    assert trials.note_lost_webui(tmp_path, 3, "http://127.0.0.1:7860", "gone") == 1
    path = tmp_path / trials.WEBUI_LOST_FILE
    path.write_bytes(path.read_bytes() + b'{"trial": 3, "webui": "http://127.0.0.1:78')
    assert trials.note_lost_webui(tmp_path, 3, "http://127.0.0.1:7860", "gone") == 2
    assert trials.note_lost_webui(tmp_path, 3, "http://127.0.0.1:7860", "gone") == 3


class _HalfWrittenImage:
    """An image whose PNG stops half-way: the disk filled up."""

    def save(self, path, pnginfo=None) -> None:
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n")
        raise ENOSPC


def test_an_image_the_disk_has_no_room_for_is_a_storage_error_and_no_file(tmp_path):
    with pytest.raises(StorageError, match=r"t0003-fox-01\.png: No space left on device"):
        save_image(tmp_path, _HalfWrittenImage(), trial=3, payload="fox", index=1, prompt="a fox", seed=1,
                   weights="0.5")
    assert list((tmp_path / "images").iterdir()) == []
    saved = save_image(tmp_path, Image.new("RGB", (4, 4)), trial=3, payload="fox", index=1, prompt="a fox", seed=1,
                       weights="0.5")
    assert saved.is_file()


def test_best_yaml_that_cannot_be_written_is_a_storage_error(tmp_path, monkeypatch):
    def no_room(path, text, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(best_module, "atomic_write_text", no_room)
    with pytest.raises(StorageError, match=r"best\.yaml: Read-only file system; "):
        write_best(tmp_path, _trial(0))


def test_run_json_that_cannot_be_written_is_a_storage_error(tmp_path, monkeypatch):
    def no_room(path, text, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(run_info_module, "atomic_write_text", no_room)
    with pytest.raises(StorageError, match=r"run\.json: No space left on device; "):
        write_run_info(tmp_path, {"seed": 1})


def test_a_cluster_hosts_image_the_disk_has_no_room_for_is_a_storage_error_and_no_file(tmp_path, monkeypatch):
    class _FullPath(type(tmp_path)):
        def write_bytes(self, data):
            with open(self, "wb") as handle:  # half of it lands, then the disk is full
                handle.write(data[: len(data) // 2])
            raise ENOSPC

    monkeypatch.setattr(images_module, "Path", _FullPath)
    with pytest.raises(StorageError, match=r"t0002-fox-00\.png: No space left on device"):
        write_image_file(tmp_path, "images/t0002-fox-00.png", b"\x89PNG" * 64)
    assert list((tmp_path / "images").iterdir()) == []
    monkeypatch.undo()
    assert write_image_file(tmp_path, "images/t0002-fox-00.png", b"png").read_bytes() == b"png"


def test_payloads_whose_names_clean_up_alike_get_image_files_of_their_own(tmp_path):
    # each name once, as the payload loader allows: none may write over another's image
    names = ["fox", "猫", "犬", "close up", "close_up", "a" * 40 + "-one", "a" * 40 + "-two", "close?up"]
    paths = [save_image(tmp_path, Image.new("RGB", (8, 8), (n, 0, 0)), trial=0, payload=name, index=0, prompt="p",
                        seed=1, weights="w") for n, name in enumerate(names)]
    assert len(set(paths)) == len(names)
    assert [Image.open(path).getpixel((0, 0))[0] for path in paths] == list(range(len(names)))
    assert paths[0].name == "t0000-fox-00.png" and paths[4].name == "t0000-close_up-00.png"
