"""bayes-merger-overnight with a ComfyUI as its WebUI: ready when /system_stats answers, started by
WEBUI_COMMAND, restarted when it dies mid-run and the run resumed; no A1111 options sent to it (and to an
A1111, an option it lacks refused alone)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from bayes_merger.errors import ConfigError
from bayes_merger.overnight.processes import WebUIApi
from bayes_merger.testing.fake_comfyui import FakeComfyUI
from tests.overnight.test_overnight import PYTHON, World, finished, trials

PROMPTS_PER_TRIAL = 4  # payloads/demo.yaml: two payloads of two images, one prompt an image

DYING_COMFYUI = '''
"""The fake ComfyUI, mortal: its first DEATHS lives exit when the client queues prompt N + 1."""
import os, shutil, sys, time
from pathlib import Path
from bayes_merger.testing.fake_comfyui import FakeComfyUI, main

checkpoint_dir, port, counter, deaths, n = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
died = int(counter.read_text()) if counter.exists() else 0
if died >= deaths:  # a healthy ComfyUI from now on
    sys.exit(main(["--checkpoint-dir", checkpoint_dir, "--port", str(port)]))


class Mortal(FakeComfyUI):
    queued = 0

    def _route(self, method, path, raw):
        # die in the request that queues prompt N + 1 itself (a poll of the records could miss a whole
        # trial on a busy machine, as it once did for the A1111 fake)
        if method == "POST" and path.removeprefix("/api") == "/prompt":
            self.queued += 1
            if self.queued > n:
                self.die()
        return super()._route(method, path, raw)

    def die(self):
        counter.write_text(str(died + 1))
        # os._exit runs no finaliser: the fake's temporary output and temp folders (in the system's temporary
        # folder) go first, or every run of the test leaves a pair behind
        shutil.rmtree(self.output_dir, ignore_errors=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        os._exit(1)  # a crash: no goodbye, every connection reset


mortal = Mortal(Path(checkpoint_dir), port=port)
mortal.start()
time.sleep(120)  # a life that is never asked enough ends all the same
mortal.die()
'''


# ------------------------------------------------------------------------------ the probe


@pytest.fixture
def comfyui(tmp_path: Path):
    with FakeComfyUI(tmp_path / "checkpoints") as server:
        yield server
    server.check_sound()


def test_a_comfyui_is_ready_when_system_stats_answers(comfyui: FakeComfyUI) -> None:
    with WebUIApi(comfyui.url, None, "comfyui") as api:
        assert api.status(timeout=5) == 200 and api.kind == "ComfyUI"
    assert [r.path for r in comfyui.requests] == ["/system_stats"]
    with WebUIApi(comfyui.url, None, "a1111") as api:  # the A1111 probe gets ComfyUI's 404
        assert api.status(timeout=5) == 404
    with WebUIApi(comfyui.url, None, "auto") as api:
        assert api.status(timeout=5) == 200


def test_a_stopped_comfyui_does_not_answer(comfyui: FakeComfyUI) -> None:
    comfyui.stop()
    with WebUIApi(comfyui.url, None, "comfyui") as api:
        assert api.status(timeout=2) is None


def test_no_a1111_options_are_posted_to_a_comfyui(comfyui: FakeComfyUI) -> None:
    with WebUIApi(comfyui.url, None, "auto") as api:
        api.set_options({"sd_checkpoints_limit": 1})
    assert not comfyui.requests_to("/sdapi/v1/options", "POST")


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_an_option_the_webui_lacks_is_refused_alone_and_the_others_are_set(fake_webui, caplog) -> None:
    # A1111 answers 500 KeyError for an option it has not (a fork's, or a typo in WEBUI_OPTIONS)
    with WebUIApi(fake_webui.url, None, "auto") as api:
        api.set_options({"sd_checkpoints_limit": 2, "no_such_option": 3, "sd_checkpoint_cache": 1})
    assert (fake_webui.options["sd_checkpoints_limit"], fake_webui.options["sd_checkpoint_cache"]) == (2, 1)
    assert "no_such_option" not in fake_webui.options
    assert "The WebUI refused option no_such_option = 3 (HTTP 500)" in caplog.text


@pytest.mark.parametrize("fake_webui", ["a1111", "forge"], indirect=True)
def test_the_options_set_are_answered_with_their_values_before_and_set_back_by_restore(fake_webui, caplog) -> None:
    caplog.set_level(logging.INFO, logger="overnight")
    fake_webui.set_option("sd_checkpoints_limit", 3)
    with WebUIApi(fake_webui.url, None, "auto") as api:
        before = api.set_options({"sd_checkpoints_limit": 1, "sd_checkpoint_cache": fake_webui.options[
            "sd_checkpoint_cache"], "no_such_option": 3})
        assert before == {"sd_checkpoints_limit": 3}  # neither the one unchanged nor the one refused
        assert fake_webui.options["sd_checkpoints_limit"] == 1
        api.restore_options(before)
    assert fake_webui.options["sd_checkpoints_limit"] == 3
    assert "WebUI option sd_checkpoints_limit set back to 3." in caplog.text


def test_a_hung_webui_is_asked_to_set_back_one_option_not_each(fake_webui, caplog, monkeypatch) -> None:
    # each would wait the read timeout (60 s) before the WebUI's own stop, past systemd's TimeoutStopSec
    monkeypatch.setattr(WebUIApi, "read_timeout", 0.5)
    caplog.set_level(logging.INFO, logger="overnight")
    hung = fake_webui.hold("/sdapi/v1/options", "POST")
    try:
        with WebUIApi(fake_webui.url, None, "a1111") as api:
            api.restore_options({"sd_checkpoints_limit": 3, "sd_checkpoint_cache": 0, "CLIP_stop_at_last_layers": 1})
    finally:
        hung.set()
    # one wait for the first: the others were not asked, each waiting its own
    assert ("set these options back in its Settings: sd_checkpoints_limit = 3, sd_checkpoint_cache = 0, "
            "CLIP_stop_at_last_layers = 1.") in caplog.text
    assert "Could not set WebUI option" not in caplog.text


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="webui.backend must be one of"):
        WebUIApi("http://127.0.0.1:1", None, "invokeai")


# ------------------------------------------------------------------------------ a night


def write_comfyui_config(world: World, init_points: int) -> Path:
    """conf/demo.yaml's settings against the ComfyUI at the world's port, merged in its graph."""
    (world.checkpoint_dir / "bayes-merger").mkdir()
    for key in ("model_a", "model_b"):
        (world.checkpoint_dir / world.assets[key].name).symlink_to(world.assets[key])
    return world.write_config("comfyui.yaml", init_points=init_points, backend="comfyui", comfyui_handoff="graph",
                              checkpoint_dir=world.checkpoint_dir / "bayes-merger", ready_timeout=5.0)


def test_a_comfyui_that_dies_mid_run_is_restarted_and_the_run_finished(tmp_path: Path,
                                                                        assets: dict[str, Path]) -> None:
    world = World(tmp_path, assets)
    config = write_comfyui_config(world, init_points=2)
    wrapper = tmp_path / "mortal_comfyui.py"
    wrapper.write_text(DYING_COMFYUI)
    mortal = (f"{PYTHON} {wrapper} {world.checkpoint_dir} {world.port} {tmp_path / 'deaths'} 1 "
              f"{PROMPTS_PER_TRIAL}")

    night = world.night("--max-restarts", "1", webui_command=mortal, config=config)

    assert night.returncode == 0, night.log[-3000:]
    assert "Waiting up to 60 s for the ComfyUI API at" in night.log and "The ComfyUI API answers." in night.log
    assert "The WebUI went down; restarting it and resuming (restart 1 of 1)." in night.log
    assert len(re.findall(r"WebUI started, pid", night.log)) == 2
    assert "ComfyUI has no options API" in night.log and "sd_checkpoints_limit = 1 set" not in night.log
    [folder] = night.run_folders
    assert [t["trial"] for t in trials(folder)] == [0, 1] and all(t["status"] == "ok" for t in trials(folder))
    assert finished(folder)
    world.assert_webui_gone()
