"""Models A and B with different VAEs: the graph (A's VAE) and the file (VAE merged with BASE) would
render different models, so auto takes the file without measuring, and graph warns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from bayes_merger.merge.arch import architecture
from bayes_merger.renderers.comfyui import ComfyUIClient, vae
from bayes_merger.renderers.comfyui.route import settle_route
from bayes_merger.renderers.comfyui.vae import VAE_PREFIX, vaes_differ
from bayes_merger.testing.models import make_checkpoint

SD1 = architecture("sd1")
REQUEST = {"prompt": "a red boat", "seed": 7, "steps": 1, "width": 64, "height": 64}
CLIENT_LOG = "bayes_merger.renderers.comfyui.client"


def rewritten(source: Path, target: Path, change) -> Path:
    """``source``'s tensors, changed in place by ``change(tensors)``, saved as ``target``."""
    tensors = load_file(source)
    change(tensors)
    save_file(tensors, str(target))
    return target


def with_vae_of(source: Path, donor: Path, target: Path) -> Path:
    vae_tensors = {k: v for k, v in load_file(donor).items() if k.startswith(VAE_PREFIX)}
    return rewritten(source, target, lambda tensors: tensors.update(vae_tensors))


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_vaes_of_two_fine_tunes_are_told_apart_from_a_shared_one(tmp_path, arch):
    a = make_checkpoint(tmp_path / "a.safetensors", arch, seed=1)
    b = make_checkpoint(tmp_path / "b.safetensors", arch, seed=2)
    shared = with_vae_of(b, a, tmp_path / "b-shared.safetensors")
    assert vaes_differ(a, b) and vaes_differ(b, a)
    assert not vaes_differ(a, shared)
    assert not vaes_differ(a, a)


def test_one_changed_value_an_extra_tensor_or_a_missing_vae_is_a_difference(tmp_path, tiny_models):
    a = tiny_models / "a.safetensors"
    last = max(k for k in load_file(a) if k.startswith(VAE_PREFIX))

    def nudge(tensors):
        tensors[last] = tensors[last].clone()
        tensors[last].view(-1)[0] += 1

    assert vaes_differ(a, rewritten(a, tmp_path / "nudged.safetensors", nudge))
    assert vaes_differ(a, rewritten(a, tmp_path / "extra.safetensors",
                                    lambda t: t.update({VAE_PREFIX + "extra.weight": t[last].clone()})))
    no_vae = rewritten(a, tmp_path / "no-vae.safetensors",
                       lambda t: [t.pop(k) for k in [k for k in t if k.startswith(VAE_PREFIX)]])
    assert vaes_differ(a, no_vae)
    assert not vaes_differ(no_vae, no_vae)


def test_the_same_vae_in_fp32_or_in_a_ckpt_file_is_the_same(tmp_path, tiny_models):
    a = tiny_models / "a.safetensors"
    fp32 = rewritten(a, tmp_path / "a32.safetensors",
                     lambda t: t.update({k: v.float() for k, v in t.items() if k.startswith(VAE_PREFIX)}))
    assert not vaes_differ(a, fp32)
    assert not vaes_differ(make_checkpoint(tmp_path / "a.ckpt", "sd1", seed=1), a)
    assert vaes_differ(make_checkpoint(tmp_path / "b.ckpt", "sd1", seed=2), a)


def test_the_comparison_stops_at_the_first_different_tensor(tiny_models, monkeypatch):
    reads = []
    real = vae.read_tensors
    monkeypatch.setattr(vae, "read_tensors", lambda path, entries, *rest: reads.append(path) or real(path, entries, *rest))
    assert vaes_differ(tiny_models / "a.safetensors", tiny_models / "b.safetensors")
    assert len(reads) == 2  # the first tensor of each file; seeded fine-tunes differ there already


def auto_client(comfy_config, models: Path, base_max: float | None = None, handoff: str = "auto") -> ComfyUIClient:
    return ComfyUIClient(comfy_config(), "run1", handoff=handoff, arch=SD1, model_a=models / "a.safetensors",
                         model_b=models / "b.safetensors", base_max=base_max)


def test_auto_with_different_vaes_takes_the_file_without_measuring(comfy_config, fake_comfyui, tiny_models, caplog):
    with auto_client(comfy_config, tiny_models, base_max=0.7) as client, \
            caplog.at_level(logging.WARNING, logger=CLIENT_LOG):
        client.check_checkpoint_dir()
        record = settle_route(client, None, REQUEST, [], lambda i: pytest.fail("measured"), False)
    assert client.handoff == "file" and record["route"] == "file"
    assert record["reason"].startswith("the graph cannot be used: models A and B have different VAEs and BASE can "
                                       "reach 0.7: ComfyUI cannot merge a VAE")
    expected = f"ComfyUI hand-off auto at {fake_comfyui.url}: file, since {record['reason']}"
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert not fake_comfyui.requests_to("/prompt", "POST")


def test_auto_with_different_vaes_and_base_at_0_keeps_both_routes(comfy_config, tiny_models, monkeypatch):
    monkeypatch.setattr("bayes_merger.renderers.comfyui.client.vaes_differ", lambda *paths: pytest.fail("compared"))
    with auto_client(comfy_config, tiny_models, base_max=0.0) as client:
        client.check_checkpoint_dir()
        assert client.handoff == "auto" and client.route_reason is None


def test_auto_with_an_unknown_base_range_and_different_vaes_takes_the_file(comfy_config, tiny_models):
    with auto_client(comfy_config, tiny_models) as client:
        client.check_checkpoint_dir()
        assert client.handoff == "file" and "BASE may be above 0" in str(client.route_reason)


def test_auto_with_a_shared_vae_keeps_both_routes(comfy_config, shared_vae_models):
    with auto_client(comfy_config, shared_vae_models, base_max=1.0) as client:
        client.check_checkpoint_dir()
        assert client.handoff == "auto"


@pytest.mark.parametrize("shared, warned", [(False, True), (True, False)])
def test_graph_asked_for_warns_once_when_the_vaes_differ(comfy_config, request, caplog, shared, warned):
    models = request.getfixturevalue("shared_vae_models" if shared else "tiny_models")
    with auto_client(comfy_config, models, base_max=1.0, handoff="graph") as client, \
            caplog.at_level(logging.WARNING, logger=CLIENT_LOG):
        client.check_checkpoint_dir()
        assert client.handoff == "graph"
    warning = ("webui.comfyui_handoff is graph, but models A and B have different VAEs and BASE can reach 1: ComfyUI "
               "cannot merge a VAE, so the graph decodes with A's while the merge by file (and best.safetensors) "
               "merges it with BASE.")
    assert [r.getMessage() for r in caplog.records] == ([warning] if warned else [])
