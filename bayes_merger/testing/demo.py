"""The offline demo: tiny SD1 models, a tiny random CLIP scorer and the fake WebUI, made on first use.

Everything the demo needs is generated into the paths its config names (``conf/demo.yaml``), so the
whole loop runs with no GPU, no WebUI and no downloads.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from bayes_merger.config import Config
from bayes_merger.errors import ConfigError
from bayes_merger.testing.fake_webui import FakeWebUI
from bayes_merger.testing.models import make_checkpoint
from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head

log = logging.getLogger(__name__)


@contextmanager
def demo_environment(config: Config) -> Iterator[Config]:
    """Create the demo's models and scorer if missing, start the fake WebUI, yield the config to run."""
    if config.scorer.name != "aesthetic_head" or not config.scorer.head:
        raise ConfigError("The demo scores with a tiny random head: set scorer.name=aesthetic_head and scorer.head.")
    for seed, path in enumerate((config.model_a, config.model_b), start=1):
        if not Path(path).exists():
            log.info("demo: writing a tiny SD1-layout checkpoint %s", path)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            make_checkpoint(Path(path), "sd1", seed=seed)
    clip = Path(config.scorer.clip).expanduser()
    if not (clip / "config.json").exists():
        if not config.scorer.clip or (clip.exists() and (not clip.is_dir() or any(clip.iterdir()))):
            # the tiny CLIP's files (model.safetensors, …) would replace whatever of the same names is there
            raise ConfigError(f"scorer.clip '{config.scorer.clip}' holds no CLIP model (no config.json) but is not a new "
                              "or empty folder, where the demo writes its tiny one: name a new folder.")
        log.info("demo: writing a tiny random CLIP to %s", clip)
        make_tiny_clip(clip)
    head = Path(config.scorer.head)
    if not head.exists():
        head.parent.mkdir(parents=True, exist_ok=True)
        make_tiny_head(head)
    if config.webui.backend == "comfyui":
        with _fake_comfyui(config) as demo_config:
            yield demo_config
        return
    checkpoint_dir = Path(config.webui.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with FakeWebUI(checkpoint_dir) as webui:
        log.info("demo: a fake A1111 WebUI serves %s at %s", checkpoint_dir, webui.url)
        yield replace(config, webui=replace(config.webui, url=webui.url))


@contextmanager
def _fake_comfyui(config: Config) -> Iterator[Config]:
    """``webui.backend=comfyui``: a fake ComfyUI whose models/checkpoints folder holds links to the demo
    models (merged in its graph) and a ``bayes-merger`` sub-folder for merges handed over by file."""
    from bayes_merger.testing.fake_comfyui import FakeComfyUI

    root = Path(config.webui.checkpoint_dir).with_name("comfyui-models")
    merges = root / "bayes-merger"
    merges.mkdir(parents=True, exist_ok=True)
    for model in (config.model_a, config.model_b):
        link = root / Path(model).name
        if not link.exists():
            link.symlink_to(Path(model).resolve())
    with FakeComfyUI(root, root.with_name("comfyui-output")) as comfy:
        log.info("demo: a fake ComfyUI serves %s at %s", root, comfy.url)
        yield replace(config, webui=replace(config.webui, url=comfy.url, checkpoint_dir=str(merges)))
