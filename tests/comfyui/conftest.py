"""A fake ComfyUI with two tiny SD1 checkpoints (a, b) and a ``bayes-merger`` sub-folder for merges.

A and B have different VAEs; ``shared_vae_models`` gives B model A's VAE, as most fine-tunes of one
base model have it, which leaves the graph route open under ``comfyui_handoff: auto``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from safetensors.torch import load_file, save_file

from bayes_merger.config import WebUIConfig
from bayes_merger.merge.arch import architecture
from bayes_merger.renderers.comfyui import ComfyUIClient
from bayes_merger.renderers.comfyui.graph import BUILTIN
from bayes_merger.testing.fake_comfyui import FakeComfyUI

PAYLOAD = {"prompt": "a red boat", "negative_prompt": "blurry", "seed": 7, "steps": 3, "width": 64, "height": 64,
           "sampler_name": "Euler a"}


@pytest.fixture(scope="session")
def tiny_models(assets: dict[str, Path]) -> Path:
    """The folder of the suite's tiny SD1 pair, a.safetensors and b.safetensors."""
    return assets["model_a"].parent


@pytest.fixture
def fake_comfyui(tmp_path: Path, tiny_models: Path) -> Iterator[FakeComfyUI]:
    checkpoints = tmp_path / "models" / "checkpoints"
    (checkpoints / "bayes-merger").mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        (checkpoints / name).symlink_to(tiny_models / name)
    with FakeComfyUI(checkpoints, tmp_path / "output") as server:
        yield server
    server.check_sound()


@pytest.fixture
def shared_vae_models(tmp_path: Path, tiny_models: Path, fake_comfyui: FakeComfyUI) -> Path:
    """A folder with a.safetensors and b.safetensors whose VAE is A's; the fake ComfyUI lists that B."""
    folder = tmp_path / "shared-vae"
    folder.mkdir()
    (folder / "a.safetensors").symlink_to(tiny_models / "a.safetensors")
    vae = {k: v for k, v in load_file(tiny_models / "a.safetensors").items() if k.startswith("first_stage_model.")}
    save_file({**load_file(tiny_models / "b.safetensors"), **vae}, str(folder / "b.safetensors"))
    listed = fake_comfyui.checkpoint_dir / "b.safetensors"
    listed.unlink()
    listed.symlink_to(folder / "b.safetensors")
    return folder


@pytest.fixture
def comfy_config(fake_comfyui: FakeComfyUI) -> Callable[..., WebUIConfig]:
    def make(**overrides: Any) -> WebUIConfig:
        values: dict[str, Any] = dict(
            url=fake_comfyui.url, checkpoint_dir=str(fake_comfyui.checkpoint_dir / "bayes-merger"), backend="comfyui",
            connect_timeout=2.0, read_timeout=10.0, retries=2, backoff_factor=0.0, ready_timeout=3.0,
            poll_interval=0.02,
        )
        values.update(overrides)
        return WebUIConfig(**values)

    return make


@pytest.fixture
def graph_client(comfy_config, tiny_models) -> Iterator[ComfyUIClient]:
    with ComfyUIClient(comfy_config(), "run1", handoff="graph", arch=architecture("sd1"),
                       model_a=tiny_models / "a.safetensors", model_b=tiny_models / "b.safetensors") as client:
        yield client


@pytest.fixture
def workflow_client(comfy_config, tiny_models, tmp_path) -> Callable[[Callable[[dict], None]], ComfyUIClient]:
    """``make(edit)``: a graph client whose graph is a user's workflow file: the built-in graph, changed in
    place by ``edit`` (to be used in a ``with``)."""
    def make(edit: Callable[[dict], None]) -> ComfyUIClient:
        workflow = copy.deepcopy(BUILTIN)
        edit(workflow)
        path = tmp_path / "workflow_api.json"
        path.write_text(json.dumps(workflow))
        return ComfyUIClient(comfy_config(comfyui_workflow=str(path)), "run1", handoff="graph", arch=architecture("sd1"),
                             model_a=tiny_models / "a.safetensors", model_b=tiny_models / "b.safetensors")

    return make


@pytest.fixture
def file_client(comfy_config) -> Iterator[ComfyUIClient]:
    with ComfyUIClient(comfy_config(), "run1", handoff="file") as client:
        yield client
