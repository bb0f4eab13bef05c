"""The fake WebUI speaks the A1111 contract (shared/reference/a1111-api.md), so client tests mean something."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from bayes_merger.testing.fake_txt2img import model_features, render
from bayes_merger.testing.fake_webui import FakeWebUI
from bayes_merger.testing.models import make_checkpoint

API = "/sdapi/v1"
KEYS = ("model.diffusion_model.input_blocks.4.1.proj_in.weight", "model.diffusion_model.middle_block.0.in_layers.2.weight",
        "model.diffusion_model.output_blocks.2.0.out_layers.3.weight", "cond_stage_model.transformer.text_model.final_layer_norm.weight")


def weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: 0.1 * torch.randn((4, 4), generator=generator) for key in KEYS}


def tiny(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights(seed), str(path))
    return path


def get(fake: FakeWebUI, path: str, **kwargs) -> requests.Response:
    return requests.get(fake.url + API + path, timeout=5, **kwargs)


def post(fake: FakeWebUI, path: str, body=None, **kwargs) -> requests.Response:
    return requests.post(fake.url + API + path, json=body, timeout=5, **kwargs)


def generate(fake: FakeWebUI, **fields) -> tuple[list[Image.Image], dict]:
    response = post(fake, "/txt2img", {"prompt": "a cat", "seed": 3, "width": 64, "height": 64, **fields})
    response.raise_for_status()
    body = response.json()
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in body["images"]], json.loads(body["info"])


def test_refresh_lists_checkpoints_recursively_with_a1111_names(fake_webui):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    tiny(fake_webui.checkpoint_dir / "sub" / "b.safetensors", 2)
    (fake_webui.checkpoint_dir / "c.safetensors.tmp").write_bytes(b"being written")
    assert get(fake_webui, "/sd-models").json() == []

    assert post(fake_webui, "/refresh-checkpoints").json() is None
    listed = {m["model_name"]: m for m in get(fake_webui, "/sd-models").json()}

    assert sorted(listed) == ["a", "sub_b"]
    assert listed["sub_b"]["title"] == "sub/b.safetensors"  # no hash before the first load
    assert listed["sub_b"]["hash"] is None
    assert listed["sub_b"]["filename"] == str(fake_webui.checkpoint_dir / "sub" / "b.safetensors")


def test_selecting_a_checkpoint_loads_it_and_its_title_gains_the_hash(fake_webui):
    path = tiny(fake_webui.checkpoint_dir / "sub" / "b.safetensors", 2)
    post(fake_webui, "/refresh-checkpoints")

    assert post(fake_webui, "/options", {"sd_model_checkpoint": "sub_b"}).json() is None

    sha = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert fake_webui.loaded_model == "sub/b.safetensors"
    assert get(fake_webui, "/options").json()["sd_model_checkpoint"] == f"sub/b.safetensors [{sha[:10]}]"
    assert get(fake_webui, "/sd-models").json()[0]["title"] == f"sub/b.safetensors [{sha[:10]}]"


@pytest.mark.parametrize(("fake_webui", "key"), [("a1111", "errors"), ("forge", "message")], indirect=["fake_webui"])
def test_an_unknown_checkpoint_is_a_500_with_model_not_found(fake_webui, key):
    response = post(fake_webui, "/options", {"sd_model_checkpoint": "nope"})

    assert response.status_code == 500
    assert response.json()[key] == "model 'nope' not found"
    assert response.json()["error"] == "RuntimeError"


@pytest.mark.parametrize("fake_webui", ["sdnext"], indirect=True)
def test_sdnext_keeps_the_old_model_on_an_unknown_name_and_says_updated(fake_webui):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    fake_webui.restart()
    response = post(fake_webui, "/options", {"sd_model_checkpoint": "nope"})

    assert response.status_code == 200
    assert response.json() == {"updated": [{"sd_model_checkpoint": False}]}
    assert fake_webui.loaded_model == "a.safetensors"
    assert get(fake_webui, "/options").json()["sd_model_checkpoint"].startswith("a.safetensors [")


@pytest.mark.parametrize("fake_webui", ["forge"], indirect=True)
def test_forge_records_the_choice_and_loads_at_the_next_generation(fake_webui):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    post(fake_webui, "/refresh-checkpoints")
    post(fake_webui, "/options", {"sd_model_checkpoint": "a.safetensors"}).raise_for_status()
    assert fake_webui.load_count == 0

    _, info = generate(fake_webui)

    assert fake_webui.load_count == 1
    assert info["sd_model_name"] == "a"


def test_a_checkpoint_that_cannot_be_read_keeps_the_old_model_and_still_answers_200(fake_webui):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    fake_webui.restart()
    (fake_webui.checkpoint_dir / "broken.safetensors").write_bytes(b"\x00garbage")
    post(fake_webui, "/refresh-checkpoints")

    response = post(fake_webui, "/options", {"sd_model_checkpoint": "broken.safetensors"})

    assert response.status_code == 200 and response.json() is None
    assert fake_webui.loaded_model == "a.safetensors"
    assert not get(fake_webui, "/options").json()["sd_model_checkpoint"]  # as at start: none named


@pytest.mark.parametrize(("fake_webui", "named"), [("a1111", False), ("forge", True)], indirect=["fake_webui"])
def test_a_fresh_start_loads_the_first_checkpoint_and_only_forge_names_it(fake_webui, named):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    fake_webui.restart(forget_selection=True)
    assert bool(get(fake_webui, "/options").json()["sd_model_checkpoint"]) is named
    post(fake_webui, "/options", {"sd_model_checkpoint": "a.safetensors"})
    fake_webui.restart()  # a selection is remembered: A1111 names it at the next start
    assert get(fake_webui, "/options").json()["sd_model_checkpoint"].startswith("a.safetensors")


def test_selecting_the_loaded_file_name_again_does_not_reread_it(fake_webui):
    path = tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    fake_webui.restart()
    tiny(path, 7)  # new content under the same name
    post(fake_webui, "/refresh-checkpoints")
    post(fake_webui, "/options", {"sd_model_checkpoint": "a.safetensors"}).raise_for_status()

    assert fake_webui.load_count == 1


def test_txt2img_info_follows_the_contract(fake_webui):
    tiny(fake_webui.checkpoint_dir / "m.safetensors", 1)
    fake_webui.restart()
    images, info = generate(fake_webui, seed="40", batch_size=2, n_iter=2, steps="12", width=512, height=768)

    assert info["all_seeds"] == [40, 41, 42, 43] and info["seed"] == 40
    assert info["steps"] == 12  # numbers given as strings are coerced
    assert info["all_prompts"] == ["a cat"] * 4
    assert info["sd_model_name"] == "m" and info["sd_model_hash"] == fake_webui.loaded_sha256[:10]
    assert info["index_of_first_image"] == 0 and len(info["infotexts"]) == 4
    assert (info["width"], info["height"]) == (512, 768) and info["version"] == "v1.10.1"
    assert [image.size for image in images] == [(43, 64)] * 4  # capped, aspect kept


def test_seed_minus_one_is_random(fake_webui):
    tiny(fake_webui.checkpoint_dir / "m.safetensors", 1)
    fake_webui.restart()
    seeds = {generate(fake_webui, seed=-1)[1]["seed"] for _ in range(3)}

    assert len(seeds) == 3 and all(seed >= 0 for seed in seeds)


@pytest.mark.parametrize(
    ("fake_webui", "detail"),
    [("a1111", [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]),
     ("forge", [{"type": "int_parsing", "loc": ["body", "steps"],
                 "msg": "Input should be a valid integer, unable to parse string as an integer", "input": "abc"}])],
    indirect=["fake_webui"],
)
def test_a_wrong_type_is_a_422_list_shaped_as_the_server_s_pydantic(fake_webui, detail):
    response = post(fake_webui, "/txt2img", {"prompt": "x", "steps": "abc"})

    assert response.status_code == 422
    assert response.json() == {"detail": detail}


def test_images_are_deterministic_and_depend_on_model_prompt_and_seed(fake_webui):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    tiny(fake_webui.checkpoint_dir / "b.safetensors", 3)
    fake_webui.restart()
    picture = lambda **fields: generate(fake_webui, **fields)[0][0].tobytes()  # noqa: E731

    first = picture()
    assert picture() == first
    assert picture(seed=4) != first
    assert picture(prompt="a dog") != first
    post(fake_webui, "/options", {"sd_model_checkpoint": "b.safetensors"}).raise_for_status()
    assert picture() != first


def test_the_picture_moves_smoothly_with_a_merge_weight():
    a, b = weights(1), weights(2)
    features = [model_features({k: (1 - t) * a[k] + t * b[k] for k in KEYS}) for t in (0.0, 0.5, 0.51, 1.0)]
    pixels = [torch.tensor(np.asarray(render(f, "p", "", 1, 32, 32)), dtype=torch.float) for f in features]

    assert abs(features[2] - features[1]).max() < 0.02  # a small step moves the picture a little
    assert abs(features[3] - features[0]).max() > 0.1  # the ends differ clearly
    assert (pixels[2] - pixels[1]).abs().mean() < (pixels[3] - pixels[0]).abs().mean() / 10


def test_the_picture_of_a_model_does_not_depend_on_the_number_of_threads(tmp_path):
    # torch split a long sum among its threads: the same merge drew other pictures under another OMP_NUM_THREADS.
    # A thread count is fixed as a process starts, so each is its own process.
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "big.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.0.in_layers.2.weight": torch.randn(4_000_000, generator=generator),
               "first_stage_model.decoder.conv_in.weight": torch.randn(2_000_000, generator=generator).half()}, path)
    script = ("import sys; from safetensors.torch import load_file; from bayes_merger.testing.fake_txt2img import "
              "model_features; print(model_features(load_file(sys.argv[1])).tobytes().hex())")
    drawn = {subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": threads}, timeout=120).stdout
             for threads in ("1", "2", "3")}
    assert len(drawn) == 1, drawn


def test_constants_every_model_shares_do_not_swamp_the_difference_between_models():
    shared = {"model.diffusion_model.input_blocks.4.0.in_layers.0.weight": torch.ones(320),
              "model.diffusion_model.out.0.weight": torch.full((320,), 3.0),
              "model.alphas_cumprod": torch.linspace(1.0, 0.01, 1000)}
    plain = abs(model_features(weights(1)) - model_features(weights(2))).max()
    with_shared = abs(model_features({**weights(1), **shared}) - model_features({**weights(2), **shared})).max()

    assert with_shared > plain / 2 > 0.05


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_tiny_checkpoints_of_every_layout_render_distinct_pictures(fake_webui, arch):
    make_checkpoint(fake_webui.checkpoint_dir / "a.safetensors", arch, seed=1)
    make_checkpoint(fake_webui.checkpoint_dir / "b.ckpt", arch, seed=2)
    fake_webui.restart()
    first = generate(fake_webui)[0][0]
    post(fake_webui, "/options", {"sd_model_checkpoint": "b"}).raise_for_status()
    second = generate(fake_webui)[0][0]

    difference = np.abs(np.asarray(first, dtype=float) - np.asarray(second, dtype=float)).mean()
    assert fake_webui.loaded_model == "b.ckpt"
    assert difference > 10  # clearly different pictures, not a rounding difference


@pytest.mark.parametrize("fake_webui", [{"auth": "alice:pw,bob:pw2"}], indirect=True)
def test_basic_auth_guards_the_api_with_fastapi_s_answers(fake_webui):
    assert get(fake_webui, "/progress").json() == {"detail": "Not authenticated"}
    wrong = get(fake_webui, "/progress", auth=("alice", "nope"))
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Incorrect username or password"})
    assert wrong.headers["WWW-Authenticate"] == "Basic"
    assert get(fake_webui, "/progress", auth=("bob", "pw2")).status_code == 200


def test_unknown_routes_and_methods_answer_like_fastapi(fake_webui):
    assert (get(fake_webui, "/nope").status_code, get(fake_webui, "/nope").json()) == (404, {"detail": "Not Found"})
    assert requests.delete(fake_webui.url + API + "/options", timeout=5).status_code == 405


@pytest.mark.parametrize("fake_webui", ["sdnext"], indirect=True)
def test_sdnext_has_no_schedulers_and_rejects_unknown_samplers(fake_webui):
    tiny(fake_webui.checkpoint_dir / "m.safetensors", 1)
    fake_webui.restart()

    assert get(fake_webui, "/schedulers").status_code == 404
    response = post(fake_webui, "/txt2img", {"prompt": "x", "sampler_name": "Nope"})
    assert (response.status_code, response.json()["detail"]) == (404, "Sampler not found")


@pytest.mark.parametrize(("fake_webui", "key"), [("a1111", "errors"), ("forge", "message")], indirect=["fake_webui"])
def test_a_hires_fix_with_an_upscaler_or_sampler_a1111_lacks_is_a_500_and_without_enable_hr_renders(fake_webui, key):
    tiny(fake_webui.checkpoint_dir / "m.safetensors", 1)
    fake_webui.restart()
    upscalers = get(fake_webui, "/upscalers").json()
    modes = [entry["name"] for entry in get(fake_webui, "/latent-upscale-modes").json()]

    assert [entry["name"] for entry in upscalers[:3]] == ["None", "Lanczos", "Nearest"]
    assert {"LDSR", "R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B", "ScuNET GAN", "ScuNET PSNR", "SwinIR 4x"} <= {
        entry["name"] for entry in upscalers}
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert modes == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]
    hires = {"prompt": "x", "enable_hr": True}
    upscaler = post(fake_webui, "/txt2img", {**hires, "hr_upscaler": "R-ESRGAN 4x"})
    assert (upscaler.status_code, upscaler.json()["error"], upscaler.json()[key]) == (
        500, "Exception", "could not find upscaler named R-ESRGAN 4x")
    sampler = post(fake_webui, "/txt2img", {**hires, "hr_upscaler": "Latent", "hr_sampler_name": "Use same sampler"})
    assert (sampler.status_code, sampler.json()["error"], sampler.json()[key]) == (
        500, "AssertionError", "bad sampler name: Use same sampler")
    for fields in ({**hires, "hr_upscaler": "Latent (nearest)", "hr_sampler_name": "Euler a"},
                   {**hires, "hr_upscaler": "SwinIR 4x"}, hires,
                   {"prompt": "x", "enable_hr": False, "hr_upscaler": "R-ESRGAN 4x", "hr_sampler_name": "nope"}):
        assert post(fake_webui, "/txt2img", fields).status_code == 200


@pytest.mark.parametrize("fake_webui", ["sdnext"], indirect=True)
def test_sdnext_lists_upscalers_but_no_latent_upscale_modes(fake_webui):
    assert "R-ESRGAN 4x+" in [entry["name"] for entry in get(fake_webui, "/upscalers").json()]
    assert get(fake_webui, "/latent-upscale-modes").status_code == 404


def test_a_stop_ends_held_requests_unanswered_and_the_restart_keeps_the_port(fake_webui):
    port = fake_webui.port
    fake_webui.hold(f"{API}/progress")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(get, fake_webui, "/progress")
        fake_webui.wait_until_held()
        fake_webui.stop()
        with pytest.raises(requests.ConnectionError):
            waiting.result(timeout=5)
    fake_webui.start()

    assert fake_webui.port == port
    assert get(fake_webui, "/progress").status_code == 200


def test_a_delay_for_one_method_leaves_the_others_alone_and_in_all_counts_the_server_s_own_work(fake_webui):
    tiny(fake_webui.checkpoint_dir / "a.safetensors", 1)
    tiny(fake_webui.checkpoint_dir / "b.safetensors", 2)
    fake_webui.delay(API + "/options", 60, "POST")
    with ThreadPoolExecutor(1) as pool:
        switching = pool.submit(post, fake_webui, "/options", {"sd_model_checkpoint": "a.safetensors"})
        fake_webui.wait_until_held(1)  # the POST has come and waits out its delay
        assert get(fake_webui, "/options").status_code == 200  # answered while the POST still waits
        assert not switching.done()
        fake_webui.stop()
    # in_all: the answer comes ``seconds`` after the request, the load's own work inside that time
    fake_webui.start()
    fake_webui.delay(API + "/options", 0.5, "POST", in_all=True)
    began = time.monotonic()
    assert post(fake_webui, "/options", {"sd_model_checkpoint": "b.safetensors"}).status_code == 200
    assert time.monotonic() - began >= 0.5
    assert fake_webui.loaded_model == "b.safetensors"


def _read_lines(stream, into: queue.Queue) -> None:
    """Put each line of ``stream`` into ``into``, then "" at its end."""
    for line in iter(stream.readline, ""):
        into.put(line)
    into.put("")


def test_the_command_line_server_runs_until_sigterm(tmp_path):
    tiny(tmp_path / "models" / "m.safetensors", 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "bayes_merger.testing.fake_webui", "--checkpoint-dir", str(tmp_path / "models"),
         "--port", "0", "--mode", "forge", "--api-auth", "u:p"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    # a thread reads stderr to its end (so the pipe never fills); the test waits on the queue, with a deadline
    reader = threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        line, seen = "", []
        while "serving http://" not in line:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no 'serving http://' line from the server within 60 s; it wrote: {''.join(seen)!r}")
            assert line, f"the server exited before serving; it wrote: {''.join(seen)!r}"
            seen.append(line)
        url = line.split("serving ", 1)[1].split(",", 1)[0]
        response = requests.get(url + API + "/sd-models", auth=("u", "p"), timeout=5)
        assert [m["title"] for m in response.json()] == ["m.safetensors"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)  # the pipe's end comes with the process's
        process.stderr.close()


def test_a_bug_of_the_fake_is_answered_500_and_fails_its_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # answered as a real server answers any exception, and remembered: the fixtures' check_sound fails the test
    def broken(self, method: str, path: str, raw: bytes):
        raise KeyError("a bug of the fake")

    monkeypatch.setattr(FakeWebUI, "_route", broken)
    with FakeWebUI(tmp_path) as fake:
        fake.check_sound()  # nothing failed yet
        assert requests.get(fake.url + "/sdapi/v1/options", timeout=10).status_code == 500
        with pytest.raises(AssertionError, match=r"failed in its own code .*GET /sdapi/v1/options: KeyError"):
            fake.check_sound()
