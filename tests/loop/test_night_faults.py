"""A long night's faults and bad input: 200 trials in flat memory, the WebUI password never written
anywhere, and run folders of older versions or cut by a power loss (issue 11)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from bayes_merger.files import atomic_write_text
from bayes_merger.run_folder.paths import resume_command
from bayes_merger.testing.fake_http import free_port

from test_cli_run import REPO, _args, _cli, _only_run, _trials

PASSWORD = "s3cret-Pa55word"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class _PixelMean:
    """A scorer that costs nothing: the mean pixel value (the memory under test is the loop's)."""

    name = "pixel_mean"

    def score(self, images, contexts=None):
        return [float(np.asarray(image, dtype=np.float32).mean()) for image in images]


@pytest.fixture
def webui_process(tmp_path):
    """The fake WebUI in a process of its own, as a real WebUI is: our RSS is then bayes-merger's alone."""
    port = free_port()
    folder = tmp_path / "webui-models"
    server = subprocess.Popen([sys.executable, "-m", "bayes_merger.testing.fake_webui", "--checkpoint-dir", str(folder),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    webui = SimpleNamespace(url=f"http://127.0.0.1:{port}", checkpoint_dir=folder)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(webui.url + "/sdapi/v1/progress", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None:
                pytest.fail(f"the fake WebUI exited with {server.returncode} before answering")
            time.sleep(0.1)  # polling a starting server with a deadline
        else:
            pytest.fail(f"the fake WebUI did not answer at {webui.url} within 60 s")
        yield webui
    finally:
        server.terminate()
        server.wait(30)


def _measured_night(job: Path) -> None:
    """200 trials as a user's run has them: in a process of their own (the suite's long-lived heap, grown
    and fragmented by a thousand other tests, stepped now and then by megabytes that no run of ours
    makes). ``job`` holds the run's arguments; its RSS and checkpoint-folder size after each trial are
    written beside it."""
    import bayes_merger.run as run_module
    from bayes_merger.run import TrialLoop

    spec = json.loads(job.read_text())
    checkpoint_dir = Path(spec["checkpoint_dir"])
    original_render, original_report, original_best = TrialLoop.render, run_module._refresh_report, run_module.record_best
    rss, files, reports, bests = [], [], [], []

    def measured(self, index, *args):
        trial = original_render(self, index, *args)
        files.append(len([p for p in checkpoint_dir.iterdir() if p.name.startswith("bm-")]))
        rss.append(_rss_mb())
        return trial

    def some_reports(run_dir, live):  # the report is rebuilt every 25th trial (each rebuild costs a second)
        reports.append(run_dir)
        if len(reports) % 25 == 0:
            original_report(run_dir, live)

    def some_bests(run_dir, trial_log, optimiser):  # the GP's view of the best every 50th trial (it grows with n³)
        bests.append(run_dir)
        return original_best(run_dir, trial_log, optimiser) if len(bests) % 50 == 0 else trial_log.best()

    TrialLoop.render = measured
    run_module._refresh_report = some_reports
    run_module.record_best = some_bests
    run_module.build_scorer = lambda config: _PixelMean()
    code = _cli(spec["args"])
    job.with_suffix(".out.json").write_text(json.dumps({"code": code, "rss": rss, "files": files}))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_200_trials_keep_memory_flat_and_the_checkpoint_folder_small(assets, webui_process, tmp_path):
    fake_webui = webui_process
    payloads = tmp_path / "one.yaml"
    payloads.write_text("defaults: {steps: 1, width: 64, height: 64}\npayloads:\n  - name: one\n    prompt: a fox\n")
    keep_last = 1
    args = _args(assets, fake_webui, tmp_path / "runs", "optimiser.init_points=200", "optimiser.n_iters=0",
                 f"webui.keep_last={keep_last}", "save_best=false", "save_images=false", f"payloads.dir={payloads}")
    job = tmp_path / "night.json"
    job.write_text(json.dumps({"args": args, "checkpoint_dir": str(fake_webui.checkpoint_dir)}))
    child = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
             "from test_night_faults import _measured_night; _measured_night(Path(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", child, str(Path(__file__).parent), str(job)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(job.with_suffix(".out.json").read_text())
    rss, files = measured["rss"], measured["files"]
    assert measured["code"] == 0, done.stderr[-3000:]
    trials = _trials(_only_run(tmp_path / "runs"))
    assert len(trials) == 200 and all(t["status"] == "ok" for t in trials)
    assert len(rss) == 200 and max(files) <= keep_last + 1
    # warm-up: the first 100 trials and the report and best.yaml made after the 100th. Each of those
    # rebuilds may raise the heap's high-water mark (measured: +10, +8, 0, +5 MB at the report's first
    # four, +3 and +5.5 MB at the GP's first two views of the best; from then on 0), a peak that grows with
    # the trials it draws, not with each trial. A trial that kept 0.1 MB would add 10 MB here.
    warm = float(np.median(rss[100:110]))
    end = float(np.median(rss[-10:]))
    assert end - warm < 10.0, f"RSS grew {end - warm:.1f} MB over the last 100 trials ({rss[::20]})"
    assert [p.name for p in fake_webui.checkpoint_dir.iterdir()] == []


def _files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()]


def test_the_webui_password_is_never_written_nor_said(assets, fake_webui, tmp_path):
    """A sweep of two runs with auth in the config file, each with its own log, as a user runs it."""
    secured = type(fake_webui)(fake_webui.checkpoint_dir, auth=f"user:{PASSWORD}").start()
    try:
        shutil.copytree(REPO / "conf", tmp_path / "conf")  # the config groups beside the config
        config = tmp_path / "conf" / "night.yaml"
        config.write_text((REPO / "conf" / "demo.yaml").read_text().replace("webui:\n", f"webui:\n  auth: user:{PASSWORD}\n", 1))
        args = [a for a in _args(assets, secured, tmp_path / "runs") if not a.startswith("hydra/")]
        args[1] = str(config)
        args += ["optimiser.init_points=2", "optimiser.n_iters=0", "merge.method=weighted_sum,tensor_sum", "-m"]
        done = subprocess.run([sys.executable, "-c", "from bayes_merger.cli import main; main()", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        files = _files_under(tmp_path / "runs")
        names = {p.name for p in files}
        assert {"config.yaml", "bayes-merger.log", "trials.jsonl", "report.html", "multirun.yaml"} <= names
        assert len([p for p in files if p.name == "bayes-merger.log"]) == 2
        for path in files:
            assert PASSWORD.encode() not in path.read_bytes(), path
        assert PASSWORD not in done.stdout + done.stderr

        # a wrong password: the error names the problem, never the password tried
        wrong = "Wr0ng-Pa55"
        code = _cli(_args(assets, secured, tmp_path / "wrong", f"webui.auth=user:{wrong}"))
        assert code == 4
        for path in _files_under(tmp_path / "wrong"):
            assert wrong.encode() not in path.read_bytes(), path
    finally:
        secured.stop()


def test_auth_env_keeps_the_password_out_of_the_run_folder(assets, tmp_path, monkeypatch, caplog):
    from bayes_merger.testing.fake_webui import FakeWebUI

    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("BM_TEST_AUTH", f"user:{PASSWORD}")
    with FakeWebUI(folder, auth=f"user:{PASSWORD}") as secured:
        assert _cli(_args(assets, secured, tmp_path / "runs", "webui.auth_env=BM_TEST_AUTH",
                          "optimiser.init_points=2", "optimiser.n_iters=0")) == 0
    secured.check_sound()
    for path in _files_under(tmp_path / "runs"):
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in caplog.text


# ------------------------------------------------------------------- run folders of other times


@pytest.fixture
def stopped_run(assets, fake_webui, tmp_path):
    """A run folder stopped after 3 of its 5 trials."""
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", "optimiser.n_iters=0")) == 0
    run_dir = _only_run(tmp_path / "runs")
    info = json.loads((run_dir / "run.json").read_text())
    info.pop("finished_at")
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def _resume(assets, fake_webui, run_dir: Path) -> int:
    return _cli(_args(assets, fake_webui, run_dir.parent, f"resume={run_dir}"))


def test_a_trial_log_cut_mid_line_by_a_power_loss_resumes(assets, fake_webui, stopped_run):
    log = stopped_run / "trials.jsonl"
    log.write_bytes(log.read_bytes()[:-40])  # the last line lost its end
    assert _resume(assets, fake_webui, stopped_run) == 0
    assert [t["trial"] for t in _trials(stopped_run)] == [0, 1, 2, 3, 4]


def test_a_folder_of_an_older_version_resumes(assets, fake_webui, stopped_run):
    # what the first versions wrote: no webui_model_before, no best_saved_trial, no version; and a
    # trial line without the fields added later (timings, images, payload scores)
    info = json.loads((stopped_run / "run.json").read_text())
    for key in ("webui_model_before", "best_saved_trial", "version"):
        info.pop(key, None)
    (stopped_run / "run.json").write_text(json.dumps(info))
    lines = [json.loads(line) for line in (stopped_run / "trials.jsonl").read_text().splitlines()]
    for line in lines:
        for key in ("timings", "images", "payload_scores", "started_at", "finished_at"):
            line.pop(key)
    (stopped_run / "trials.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert _resume(assets, fake_webui, stopped_run) == 0
    assert len(_trials(stopped_run)) == 5


def test_a_run_json_without_a_run_id_resumes_under_a_new_one(assets, fake_webui, stopped_run):
    info = json.loads((stopped_run / "run.json").read_text())
    info.pop("run_id")
    (stopped_run / "run.json").write_text(json.dumps(info))
    assert _resume(assets, fake_webui, stopped_run) == 0
    assert len(_trials(stopped_run)) == 5
    assert json.loads((stopped_run / "run.json").read_text())["run_id"]


@pytest.mark.skipif(sys.platform == "win32", reason="no liveness on Windows")
def test_a_best_merge_cut_off_by_kill_9_is_removed_when_the_run_resumes(assets, fake_webui, stopped_run, caplog):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a writer that is gone, as one killed with -9 is
    cut_off = stopped_run / f".best.safetensors.{child.pid}.tmp"
    cut_off.write_bytes(b"\0" * 4096)
    in_use = stopped_run / f".report.html.{os.getppid()}.tmp"  # a live process writes it now
    in_use.write_text("<html>")
    caplog.set_level(logging.INFO)
    assert _resume(assets, fake_webui, stopped_run) == 0
    assert not cut_off.exists() and in_use.exists()
    assert f"Deleted {cut_off} (0.0 MB), left by process {child.pid}" in caplog.text


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "run.json").write_text('{"run_id": "x", "model_a"'), "run.json is unreadable"),
    (lambda d: (d / "trials.jsonl").write_text('{"trial": 0, "status": "ok"}\n{"trial": 1}\n'), "line 1 is not a trial record"),
])
def test_a_damaged_run_folder_is_one_sentence(assets, fake_webui, stopped_run, caplog, damage, words):
    damage(stopped_run)
    assert _resume(assets, fake_webui, stopped_run) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0]


# ------------------------------------------------------------------- a full disk


def _full_disk_at_trial_3_line(monkeypatch):
    from bayes_merger.run_folder import trials

    class DiskFull(types.ModuleType):  # half the line fits, then the disk is full
        def __getattr__(self, name):
            return getattr(os, name)

        def write(self, fd, data):
            if bytes(data).startswith(b'{"trial": 3,'):
                os.write(fd, bytes(data)[:30])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

    monkeypatch.setattr(trials, "os", DiskFull("os"))
    return "trials.jsonl"


def _full_disk_at_trial_2_images(monkeypatch):
    from PIL import Image

    original = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if isinstance(fp, Path) and fp.name.startswith("t0002-"):
            fp.write_bytes(b"\x89PNG\r\n\x1a\n")  # cut off where the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    return "images/t0002-"


def _full_disk_at_the_third_best_yaml(monkeypatch):
    from bayes_merger.run_folder import best

    writes = []

    def write(path, text, **kwargs):
        writes.append(path)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return atomic_write_text(path, text, **kwargs)

    monkeypatch.setattr(best, "atomic_write_text", write)
    return "best.yaml"


def _full_disk_at_the_best_merge(monkeypatch):
    from bayes_merger.merge import safetensors_file

    original = safetensors_file.atomic_path

    @contextmanager
    def atomic_path(path, tmp=None, **options):
        with original(path, tmp, **options) as temporary:
            yield temporary
            if Path(path).name == "best.safetensors":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors_file, "atomic_path", atomic_path)
    return "best.safetensors"


@pytest.mark.parametrize("fill", [_full_disk_at_trial_3_line, _full_disk_at_trial_2_images,
                                  _full_disk_at_the_third_best_yaml, _full_disk_at_the_best_merge])
def test_a_full_run_folder_disk_stops_resumably_in_one_sentence_and_resume_finishes(
        assets, fake_webui, tmp_path, monkeypatch, caplog, fill):
    where = fill(monkeypatch)
    assert _cli(_args(assets, fake_webui, tmp_path / "runs")) == 6
    run_dir = _only_run(tmp_path / "runs")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(f"Could not write {run_dir / where}")
    assert errors[0].endswith(f": No space left on device; free space on its disk or make it writable, "
                              f"then resume with: {resume_command(run_dir)}")
    assert not list(run_dir.glob(".*.tmp")) and not list((run_dir / "images").glob("t0002-*-??.png"))
    done = _trials(run_dir)  # the log reads back whole: the trial that could not be logged is not in it
    assert [t["trial"] for t in done] == list(range(len(done))) and len(done) <= 5
    if len(done) < 5:  # what a kill -9 in the next trial's render leaves, and an attempt of it scored, never logged
        for name in (f"t{len(done):04d}-cut-00.png", f"t{len(done):04d}-a-00-9.999.png"):
            (run_dir / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.undo()
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"resume={run_dir}")) == 0
    assert [t["status"] for t in _trials(run_dir)] == ["ok"] * 5
    # images/ holds the images of scored trials only, as the README says
    assert ({image["path"] for t in _trials(run_dir) for image in t["images"]}
            == {f"images/{path.name}" for path in (run_dir / "images").iterdir()})
    assert (run_dir / "best.safetensors").is_file() and not list(run_dir.glob("trials.jsonl.incomplete-*"))
