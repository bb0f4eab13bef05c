"""Payloads as ComfyUI graphs: samplers, seeds, refused fields, workflows and the two hand-offs."""

from __future__ import annotations

import json

import pytest

from bayes_merger.errors import ConfigError
from bayes_merger.renderers.comfyui import graph as graphs
from bayes_merger.renderers.comfyui.samplers import comfy_sampler
from bayes_merger.testing.fake_comfyui_nodes import SAMPLERS, SCHEDULERS

PAYLOAD = {"prompt": "a red boat", "negative_prompt": "blurry", "seed": 7, "steps": 3, "width": 64, "height": 64}


@pytest.mark.parametrize("sampler, scheduler, expected", [
    ("Euler a", None, ("euler_ancestral", "normal")),
    ("Euler", "automatic", ("euler", "normal")),
    ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
    ("DPM++ 2M", "karras", ("dpmpp_2m", "karras")),
    ("DPM++ 2M", "automatic", ("dpmpp_2m", "karras")),
    ("DPM++ 2M", "Uniform", ("dpmpp_2m", "normal")),
    ("DPM++ 2M SDE Exponential", None, ("dpmpp_2m_sde", "exponential")),
    ("DPM++ SDE", "sgm_uniform", ("dpmpp_sde", "sgm_uniform")),
    ("UniPC", "", ("uni_pc", "normal")),
    ("DDIM", None, ("ddim", "ddim_uniform")),
    ("dpmpp_3m_sde_gpu", "beta", ("dpmpp_3m_sde_gpu", "beta")),  # ComfyUI's own names pass as they are
    (None, None, ("euler", "normal")),
])
def test_a1111_sampler_names_map_to_comfyui(sampler, scheduler, expected):
    assert comfy_sampler(sampler, scheduler, SAMPLERS, SCHEDULERS) == expected


def test_a_sampler_without_equivalent_is_refused_with_the_valid_names():
    with pytest.raises(ConfigError) as error:
        comfy_sampler("PLMS", None, SAMPLERS, SCHEDULERS, "payload 'portrait'")
    assert "payload 'portrait': sampler 'PLMS' has no ComfyUI equivalent" in str(error.value)
    assert "Euler a" in str(error.value) and "DPM++ 2M" in str(error.value) and "euler_ancestral" in str(error.value)


def test_a_sampler_the_server_lacks_is_refused():
    with pytest.raises(ConfigError, match="'DPM\\+\\+ 2M' has no ComfyUI equivalent"):
        comfy_sampler("DPM++ 2M", None, ["euler"], SCHEDULERS)


def test_an_unknown_scheduler_is_refused():
    with pytest.raises(ConfigError, match="scheduler 'align_your_steps' has no ComfyUI equivalent"):
        comfy_sampler("Euler", "align_your_steps", SAMPLERS, SCHEDULERS)


def test_each_image_is_one_prompt_with_a1111s_seed():
    values = graphs.image_values({**PAYLOAD, "batch_size": 2, "n_iter": 2}, SAMPLERS, SCHEDULERS, "p")
    assert [v["seed"] for v in values] == [7, 8, 9, 10]
    assert values[0] == {"prompt": "a red boat", "negative": "blurry", "width": 64, "height": 64, "steps": 3,
                         "cfg": 7.0, "sampler": "euler", "scheduler": "normal", "seed": 7}


@pytest.mark.parametrize("field, value", [("enable_hr", True), ("restore_faces", True), ("subseed_strength", 0.3),
                                          ("styles", ["cinematic"]), ("alwayson_scripts", {"controlnet": {}}),
                                          ("override_settings", {"CLIP_stop_at_last_layers": 2})])
def test_fields_the_graph_cannot_apply_are_refused(field, value):
    with pytest.raises(ConfigError, match=field if field != "override_settings" else "override_settings"):
        graphs.image_values({**PAYLOAD, field: value}, SAMPLERS, SCHEDULERS, "payload 'p'")


def test_neutral_values_of_those_fields_are_fine():
    request = {**PAYLOAD, "enable_hr": False, "styles": [], "override_settings": {"CLIP_stop_at_last_layers": 1},
               "send_images": True, "save_images": False}
    assert len(graphs.image_values(request, SAMPLERS, SCHEDULERS, "p")) == 1


def test_placeholders_take_their_values_with_their_types():
    filled = graphs.fill(graphs.builtin_workflow(), {"prompt": "boat", "negative": "", "seed": 5, "width": 64,
                                                     "height": 64, "steps": 3, "cfg": 7.0, "sampler": "euler",
                                                     "scheduler": "normal", "output": "bm/run"})
    assert filled["5"]["inputs"]["seed"] == 5 and filled["5"]["inputs"]["cfg"] == 7.0
    assert filled["2"]["inputs"]["text"] == "boat"
    assert filled["1"]["inputs"]["ckpt_name"] == graphs.MODEL  # left for the hand-off
    assert graphs.BUILTIN["5"]["inputs"]["seed"] == "{{seed}}"  # the template is untouched


def test_in_graph_hand_off_loads_a_and_b_and_moves_the_links_onto_the_merge_nodes():
    workflow = graphs.builtin_workflow()
    graph = graphs.in_graph(graphs.fill(workflow, {}), workflow, "a.safetensors", "b.safetensors", "ModelMergeSD1",
                            {"time_embed.": 0.5}, 0.25)
    assert graph["1"]["inputs"]["ckpt_name"] == "a.safetensors"
    assert graph["8"] == {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}}
    assert graph["9"]["inputs"] == {"model1": ["1", 0], "model2": ["8", 0], "time_embed.": 0.5}
    assert graph["10"]["inputs"] == {"clip1": ["1", 1], "clip2": ["8", 1], "ratio": 0.25}
    assert graph["5"]["inputs"]["model"] == ["9", 0]
    assert graph["2"]["inputs"]["clip"] == ["10", 0] and graph["3"]["inputs"]["clip"] == ["10", 0]
    assert graph["6"]["inputs"]["vae"] == ["1", 2]  # no VAE merge node: model A's VAE decodes


def test_by_file_hand_off_names_the_merge():
    workflow = graphs.builtin_workflow()
    graph = graphs.by_file(graphs.fill(workflow, {}), workflow, "bayes-merger/bm-r-t0001.safetensors")
    assert graph["1"]["inputs"]["ckpt_name"] == "bayes-merger/bm-r-t0001.safetensors"


def test_a_user_workflow_with_placeholders_is_read(tmp_path):
    graph = json.loads(json.dumps(graphs.BUILTIN))
    graph["2"]["inputs"]["text"] = "masterpiece, {{prompt}}"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph))
    workflow = graphs.load_workflow(path)
    assert workflow.model_node == "1"
    assert graphs.fill(workflow, {"prompt": "boat"})["2"]["inputs"]["text"] == "masterpiece, boat"


@pytest.mark.parametrize("change, message", [
    (lambda g: g["1"]["inputs"].update(ckpt_name="x.safetensors"), "exactly one CheckpointLoaderSimple"),
    (lambda g: g["5"]["inputs"].update(seed=1), "no \\{\\{seed\\}\\} placeholder"),
    (lambda g: g["5"]["inputs"].update(steps="{{stepz}}"), "unknown placeholders \\{\\{stepz\\}\\}"),
])
def test_a_workflow_without_what_bayes_merger_fills_is_refused(tmp_path, change, message):
    graph = json.loads(json.dumps(graphs.BUILTIN))
    change(graph)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph))
    with pytest.raises(ConfigError, match=message):
        graphs.load_workflow(path)


def test_a_workflow_not_in_api_format_is_refused(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ConfigError, match="not a workflow in API format"):
        graphs.load_workflow(path)
