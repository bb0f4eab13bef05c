"""webui.backend (a1111 | comfyui | auto) and the ComfyUI hand-off (graph | file | auto)."""

from __future__ import annotations

import pytest

from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError
from bayes_merger.merge.arch import architecture
from bayes_merger.renderers.comfyui import ComfyUIClient
from bayes_merger.renderers.probe import choose_handoff, detect_backend, open_renderer
from bayes_merger.webui.client import WebUIClient

SD1 = architecture("sd1")


def test_auto_finds_comfyui(comfy_config):
    assert detect_backend(comfy_config(backend="auto")) == "comfyui"


def test_auto_finds_an_a1111(comfy_config, fake_webui):
    assert detect_backend(comfy_config(backend="auto", url=fake_webui.url)) == "a1111"


def test_a_named_backend_is_taken_without_asking(comfy_config, fake_comfyui):
    fake_comfyui.stop()
    assert detect_backend(comfy_config(backend="a1111")) == "a1111"


def test_auto_with_nothing_running_is_a_connection_error(comfy_config, fake_comfyui):
    fake_comfyui.stop()
    with pytest.raises(WebUIConnectionError, match="could not be reached to ask what it is .connection refused.*set webui.backend"):
        detect_backend(comfy_config(backend="auto", ready_timeout=0.2))


def test_auto_waits_for_a_webui_whose_port_is_open_before_its_api(comfy_config, fake_webui):
    fake_webui.starting_up(3)  # A1111 answers 404 on /sdapi while it starts
    assert detect_backend(comfy_config(backend="auto", url=fake_webui.url)) == "a1111"
    assert [r.status for r in fake_webui.requests_to("/sdapi/v1/progress")] == [404, 404, 404, 200]


@pytest.mark.parametrize("fake_webui", [{"auth": "user:secret"}], indirect=True)
def test_auto_asked_without_the_password_says_so_at_once(comfy_config, fake_webui):
    with pytest.raises(WebUIError, match=r"HTTP 401: .*\(check webui\.auth or the variable named by webui\.auth_env\)"):
        detect_backend(comfy_config(backend="auto", url=fake_webui.url, ready_timeout=30))
    assert len(fake_webui.requests_to("/sdapi/v1/progress")) == 1, "a 401 will not change: no waiting"


def test_an_unknown_backend_is_a_config_error(comfy_config):
    with pytest.raises(ConfigError, match="webui.backend must be one of a1111, comfyui, auto"):
        detect_backend(comfy_config(backend="invokeai"))


@pytest.mark.parametrize("wanted, method, lower, upper, arch, expected", [
    ("auto", "weighted_sum", 0.0, 1.0, SD1, "auto"),  # both routes possible: measured before trial 0
    ("auto", "add_difference", 0.0, 1.0, SD1, "file"),
    ("auto", "weighted_sum", -0.5, 1.0, SD1, "file"),
    ("auto", "weighted_sum", 0.0, 1.0, architecture("sd1", "inpainting"), "file"),
    ("file", "weighted_sum", 0.0, 1.0, SD1, "file"),
    ("graph", "weighted_sum", 0.0, 1.0, architecture("sdxl"), "graph"),
])
def test_the_graph_is_possible_where_the_method_and_bounds_allow_it(comfy_config, wanted, method, lower, upper,
                                                                         arch, expected):
    handoff, reason = choose_handoff(comfy_config(comfyui_handoff=wanted), method, lower, upper, arch)
    assert handoff == expected and reason


def test_graph_asked_for_a_method_it_cannot_merge_is_a_config_error(comfy_config):
    with pytest.raises(ConfigError, match="merge.method is add_difference"):
        choose_handoff(comfy_config(comfyui_handoff="graph"), "add_difference", 0.0, 1.0, SD1)


def test_open_renderer_gives_the_client_of_the_backend(comfy_config, tiny_models):
    with open_renderer(comfy_config(backend="a1111"), "run1") as renderer:
        assert isinstance(renderer, WebUIClient)
    with open_renderer(comfy_config(backend="auto"), "run1", arch=SD1, model_a=tiny_models / "a.safetensors",
                       model_b=tiny_models / "b.safetensors") as renderer:
        assert isinstance(renderer, ComfyUIClient) and renderer.handoff == "auto" and not renderer.merges_in_graph
