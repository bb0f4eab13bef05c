"""ComfyUIClient against the fake ComfyUI: both hand-offs, images and seeds, the renderer seam."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from bayes_merger.config import MergeConfig
from bayes_merger.errors import ConfigError, WebUIError
from bayes_merger.merge.arch import architecture
from bayes_merger.merge.merger import Merger
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.renderers import Renderer
from bayes_merger.renderers.comfyui import ComfyUIClient
from bayes_merger.webui.client import WebUIClient

PAYLOAD = {"prompt": "a red boat", "negative_prompt": "blurry", "seed": 7, "steps": 3, "width": 64, "height": 64,
           "sampler_name": "Euler a"}
SD1 = architecture("sd1")


class Payload:
    def __init__(self, name, request):
        self.name, self.request = name, request


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_every_backend_is_a_renderer_and_its_own_capabilities_win_over_the_defaults(comfy_config, graph_client):
    from bayes_merger.cluster.hosts import RayHost

    a1111 = WebUIClient(comfy_config(), "run1")
    assert isinstance(a1111, Renderer) and isinstance(graph_client, Renderer) and issubclass(RayHost, Renderer)
    assert (a1111.selects_a_model, a1111.merges_in_graph, a1111.handoff, a1111.renders_remotely) == \
        (True, False, None, False)
    assert (graph_client.merges_in_graph, graph_client.handoff, graph_client.selects_a_model) == (True, "graph", False)
    assert RayHost.renders_remotely and not RayHost.merges_in_graph and RayHost.handoff is None


def test_in_graph_renders_every_image_with_a1111s_seeds(graph_client, fake_comfyui):
    graph_client.wait_until_ready()
    graph_client.check_checkpoint_dir()
    graph_client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
    generation = graph_client.txt2img({**PAYLOAD, "batch_size": 2})

    assert generation.seeds == [7, 8]
    assert [image.size for image in generation.images] == [(64, 64), (64, 64)]
    assert "a.safetensors + b.safetensors" in generation.info["sd_model_name"]
    sent = fake_comfyui.requests_to("/prompt", "POST")[0].body
    assert sent["client_id"].startswith("bayes-merger-run1-")
    classes = sorted(node["class_type"] for node in sent["prompt"].values())
    assert classes.count("CheckpointLoaderSimple") == 2 and "ModelMergeSD1" in classes and "CLIPMergeSimple" in classes


def test_changing_only_the_weights_reloads_no_checkpoint(graph_client, fake_comfyui):
    for trial, alpha in enumerate((0.2, 0.7, 0.4)):
        graph_client.load_weights(BlockWeights.uniform(SD1.blocks, alpha), trial=trial)
        graph_client.txt2img(PAYLOAD)
    assert fake_comfyui.load_count == 2  # A and B, once: one graph shape for the whole run


def test_different_weights_render_different_pictures_and_the_same_weights_the_same(graph_client):
    def render(alpha):
        graph_client.load_weights(BlockWeights.uniform(SD1.blocks, alpha), trial=0)
        return pixels(graph_client.txt2img(PAYLOAD).images[0])

    first, other, again = render(0.1), render(0.9), render(0.1)
    assert np.abs(first - other).mean() > 1
    assert (first == again).all()


def test_the_graph_merge_renders_what_the_torch_merge_renders_by_file(graph_client, file_client, tiny_models):
    """BASE = 0 (the VAE, which ComfyUI cannot merge, is then A's on both routes); other blocks vary."""
    weights = BlockWeights(SD1.blocks, [0.0] + [round(0.1 + 0.03 * i, 2) for i in range(25)])
    merger = Merger(tiny_models / "a.safetensors", tiny_models / "b.safetensors", None, MergeConfig(device="cpu"))
    merger.merge(weights)
    file_client.load_checkpoint(lambda path: merger.save(path, dtype="fp32"), trial=0)
    by_file = pixels(file_client.txt2img(PAYLOAD).images[0])
    graph_client.load_weights(weights, trial=0)
    in_graph = pixels(graph_client.txt2img(PAYLOAD).images[0])
    assert np.abs(by_file - in_graph).max() <= 2


def test_by_file_writes_into_the_sub_folder_loads_by_listed_name_and_deletes_the_previous(file_client, fake_comfyui,
                                                                                         tiny_models):
    tensors = load_file(tiny_models / "a.safetensors")
    folder = fake_comfyui.checkpoint_dir / "bayes-merger"
    file_client.check_checkpoint_dir()
    assert file_client.load_checkpoint(lambda p: save_file(tensors, str(p)), trial=0) == \
        "bayes-merger/bm-run1-t0000.safetensors"
    file_client.txt2img(PAYLOAD)
    file_client.load_checkpoint(lambda p: save_file(tensors, str(p)), trial=1)
    file_client.txt2img(PAYLOAD)

    assert sorted(p.name for p in folder.iterdir()) == ["bm-run1-t0001.safetensors"]
    assert fake_comfyui.loaded == ["bayes-merger/bm-run1-t0000.safetensors", "bayes-merger/bm-run1-t0001.safetensors"]
    file_client.hand_back()
    assert list(folder.iterdir()) == []
    assert fake_comfyui.frees[-1] == {"unload_models": True, "free_memory": True}


def test_a_trial_redone_by_file_gets_a_new_name_so_comfyuis_cache_cannot_serve_the_old_merge(file_client, tiny_models):
    tensors = load_file(tiny_models / "a.safetensors")
    first = file_client.load_checkpoint(lambda p: save_file(tensors, str(p)), trial=3)
    again = file_client.load_checkpoint(lambda p: save_file(tensors, str(p)), trial=3)
    assert (first, again) == ("bayes-merger/bm-run1-t0003.safetensors", "bayes-merger/bm-run1-t0003-r2.safetensors")


def test_a_checkpoint_dir_comfyui_does_not_scan_is_an_error_before_the_first_merge(comfy_config, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with ComfyUIClient(comfy_config(checkpoint_dir=str(elsewhere)), "run1") as client:
        with pytest.raises(WebUIError, match="does not list bm-run1-probe.safetensors.*models/checkpoints"):
            client.check_checkpoint_dir()
    assert list(elsewhere.iterdir()) == []


def test_the_write_probe_never_writes_through_a_link_planted_at_its_name(file_client, fake_comfyui, tmp_path):
    precious = b"the victim's own file\n"
    victim = tmp_path / "home" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(precious)
    planted = fake_comfyui.checkpoint_dir / "bayes-merger" / "bm-run1-probe.safetensors"
    planted.symlink_to(victim)  # what another user who can write the folder can plant
    with pytest.raises(ConfigError, match="bm-run1-probe.safetensors is already there and is not a file of ours"):
        file_client.check_checkpoint_dir()

    assert victim.read_bytes() == precious
    assert not fake_comfyui.requests_to("/models/checkpoints")  # refused before ComfyUI was asked to list it


def test_models_comfyui_does_not_list_are_an_error_before_the_first_trial(comfy_config, tmp_path):
    with ComfyUIClient(comfy_config(), "run1", handoff="graph", arch=SD1, model_a=tmp_path / "a.safetensors",
                       model_b=tmp_path / "other.safetensors") as client:
        with pytest.raises(ConfigError, match="does not list model B \\(other.safetensors\\).*webui.comfyui_model_b"):
            client.check_checkpoint_dir()


def test_models_can_be_named_as_comfyui_lists_them(comfy_config, fake_comfyui, tmp_path):
    """The files here (x, y) are not listed: the configured names are what the graph loads, A as A."""
    config = comfy_config(comfyui_model_a="a.safetensors", comfyui_model_b="b.safetensors")
    with ComfyUIClient(config, "run1", handoff="graph", arch=SD1, model_a=tmp_path / "x.safetensors",
                       model_b=tmp_path / "y.safetensors") as client:
        client.check_checkpoint_dir()
        client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
        assert len(client.txt2img(PAYLOAD).images) == 1

    [post] = fake_comfyui.requests_to("/prompt", "POST")
    graph = post.body["prompt"]
    [merge] = [node for node in graph.values() if node["class_type"] == "ModelMergeSD1"]
    loaded = [graph[merge["inputs"][model][0]]["inputs"]["ckpt_name"] for model in ("model1", "model2")]
    assert loaded == ["a.safetensors", "b.safetensors"]  # model1 is A
    assert sorted(fake_comfyui.loaded) == ["a.safetensors", "b.safetensors"]


def listed_also_as(fake_comfyui, tiny_models, *names):
    for name in names:
        path = fake_comfyui.checkpoint_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(tiny_models / "a.safetensors")


def test_a_model_listed_in_several_folders_none_of_which_its_path_prefers_is_an_error(comfy_config, fake_comfyui,
                                                                                     tiny_models, tmp_path):
    listed_also_as(fake_comfyui, tiny_models, "sd15/c.safetensors", "xl/c.safetensors")
    with ComfyUIClient(comfy_config(), "run1", handoff="graph", arch=SD1, model_a=tmp_path / "mine" / "c.safetensors",
                       model_b=tiny_models / "b.safetensors") as client:
        with pytest.raises(ConfigError) as error:
            client.check_checkpoint_dir()
    message = str(error.value)
    assert "several checkpoints named c.safetensors" in message and "model A's path" in message
    assert "sd15/c.safetensors, xl/c.safetensors" in message and "webui.comfyui_model_a" in message


@pytest.mark.parametrize("path, chosen", [
    ("models/xl/c.safetensors", "xl/c.safetensors"),  # more of the path's end matches
    ("models/c.safetensors", "c.safetensors"),  # equal counts: the name that is the path's whole end
    ("models\\sd15\\c.safetensors", "sd15/c.safetensors"),  # a Windows path
])
def test_a_model_listed_in_several_folders_is_the_one_matching_most_of_its_path(comfy_config, fake_comfyui,
                                                                                tiny_models, tmp_path, path, chosen):
    listed_also_as(fake_comfyui, tiny_models, "c.safetensors", "sd15/c.safetensors", "xl/c.safetensors")
    with ComfyUIClient(comfy_config(), "run1", handoff="graph", arch=SD1, model_a=f"/data/{path}",
                       model_b=tiny_models / "b.safetensors") as client:
        assert client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0).startswith(f"{chosen} + ")


def test_an_unknown_sampler_is_refused_before_the_run_with_the_servers_names(graph_client):
    with pytest.raises(ConfigError, match="payload 'portrait': sampler 'Restart' has no ComfyUI equivalent.*uni_pc"):
        graph_client.check_payloads([Payload("ok", PAYLOAD), Payload("portrait", {**PAYLOAD, "sampler_name": "Restart"})])


def test_a_comfyui_without_the_websocket_saver_is_refused_before_the_first_merge(graph_client, fake_comfyui):
    # ComfyUI ships SaveImageWebsocket in custom_nodes/: without custom nodes every prompt would be refused
    graph_client.check_payloads([Payload("ok", PAYLOAD)])
    fake_comfyui.without_node("SaveImageWebsocket")
    with pytest.raises(ConfigError, match="has no SaveImageWebsocket node, which the built-in graph sends its "
                                          "images with: .*--disable-all-custom-nodes"):
        graph_client.check_payloads([Payload("ok", PAYLOAD)])


def test_a_user_workflows_node_comfyui_does_not_have_is_refused_before_the_first_merge(workflow_client, tmp_path):
    def edit(workflow: dict) -> None:
        workflow["8"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"image": ["6", 0]}}

    with workflow_client(edit) as client, pytest.raises(
            ConfigError, match=f"has no ImageUpscaleWithModel node, which {tmp_path / 'workflow_api.json'} uses"):
        client.check_payloads([Payload("ok", PAYLOAD)])


def test_nothing_renders_before_a_hand_off(graph_client):
    with pytest.raises(WebUIError, match="No merge is shown"):
        graph_client.txt2img(PAYLOAD)


def save_image(workflow: dict) -> None:
    """The built-in graph's output as a user's exported workflow would have it: SaveImage, not the websocket."""
    workflow["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "{{output}}"}}


def test_a_user_workflow_renders_with_the_merge(workflow_client):
    def edit(workflow: dict) -> None:
        workflow["2"]["inputs"]["text"] = "masterpiece, {{prompt}}"

    with workflow_client(edit) as client:
        client.load_weights(BlockWeights.uniform(SD1.blocks, 0.5), trial=0)
        assert len(client.txt2img(PAYLOAD).images) == 1


def test_a_workflow_output_comfyui_refuses_while_it_runs_the_others_is_said_once(workflow_client, caplog):
    # ComfyUI answers 200 and runs the valid outputs only, naming the others in node_errors
    def edit(workflow: dict) -> None:
        workflow["8"] = {"class_type": "PreviewImage", "inputs": {}}

    with workflow_client(edit) as client:
        client.load_weights(BlockWeights.uniform(SD1.blocks, 0.5), trial=0)
        for _ in range(2):
            assert len(client.txt2img(PAYLOAD).images) == 1
    said = [r.message for r in caplog.records if "without the outputs it refused" in r.message]
    assert said == ["ComfyUI runs the workflow without the outputs it refused: node 8 (PreviewImage) input 'images': "
                    "Required input is missing."]


def test_the_built_in_graph_leaves_no_image_in_comfyuis_output_folder(graph_client, fake_comfyui):
    graph_client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
    generation = graph_client.txt2img({**PAYLOAD, "batch_size": 2})

    assert len(generation.images) == 2 and generation.images[0].mode == "RGB"
    sent = fake_comfyui.requests_to("/prompt", "POST")[0].body["prompt"]
    assert [n["class_type"] for n in sent.values()].count("SaveImageWebsocket") == 1
    assert not [n for n in sent.values() if n["class_type"] == "SaveImage"]
    assert not fake_comfyui.requests_to("/view")  # the images came over the websocket
    assert not [p for p in fake_comfyui.output_dir.rglob("*") if p.is_file()]


def test_sampler_previews_on_the_websocket_are_not_taken_for_images(graph_client, fake_comfyui):
    graph_client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
    plain = pixels(graph_client.txt2img(PAYLOAD).images[0])
    fake_comfyui.previews = True
    graph_client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=1)
    generation = graph_client.txt2img(PAYLOAD)

    assert len(generation.images) == 1 and generation.images[0].size == (64, 64)  # previews are 8×8 JPEGs
    assert (pixels(generation.images[0]) == plain).all()


def test_a_user_workflow_with_save_image_still_renders_and_its_files_stay_where_it_saves_them(
        workflow_client, fake_comfyui):
    with workflow_client(save_image) as client:
        client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
        generation = client.txt2img(PAYLOAD)

    assert len(generation.images) == 1 and len(fake_comfyui.requests_to("/view")) == 1
    saved = [p for p in fake_comfyui.output_dir.rglob("*.png")]
    assert [p.relative_to(fake_comfyui.output_dir).as_posix() for p in saved] == ["bayes-merger/run1_00001_.png"]


def test_an_image_file_comfyui_no_longer_has_is_said_so_not_taken_for_another_server(workflow_client, fake_comfyui):
    # a saved image deleted since (an identical prompt's SaveImage names the file of the earlier one): the
    # reference's "Missing file or wrong type: 404 empty"
    with workflow_client(save_image) as client:
        client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
        fake_comfyui.fail_next(1, status=404, path="/view", body=b"")
        with pytest.raises(WebUIError) as error:
            client.txt2img(PAYLOAD)
    assert str(error.value) == ("GET /view failed with HTTP 404: Not Found (ComfyUI has no such image file: deleted "
                                "from its output folder since a workflow saved it?).")


@pytest.mark.parametrize("outputs", [("SaveImage", "PreviewImage"), ("PreviewImage", "SaveImage"), ("PreviewImage",)],
                         ids=["saved-and-previewed", "previewed-and-saved", "previewed-only"])
def test_a_user_workflows_previews_are_not_scored_beside_what_it_saves(workflow_client, fake_comfyui, outputs):
    # a workflow that previews an intermediate image and saves the result: the result is the trial's image
    def edit(workflow: dict) -> None:
        for node_id, class_type in zip(("7", "8"), outputs):
            workflow[node_id] = {"class_type": class_type, "inputs": {"images": ["6", 0]}}
            if class_type == "SaveImage":
                workflow[node_id]["inputs"]["filename_prefix"] = "{{output}}"

    with workflow_client(edit) as client:
        client.load_weights(BlockWeights.uniform(SD1.blocks, 0.3), trial=0)
        generation = client.txt2img({**PAYLOAD, "batch_size": 2})

    assert len(generation.images) == 2 and len(fake_comfyui.requests_to("/view")) == 2
    saved = list(fake_comfyui.output_dir.rglob("*.png"))
    assert len(saved) == (2 if "SaveImage" in outputs else 0) and len(list(fake_comfyui.temp_dir.rglob("*.png"))) == 2
