"""Aesthetic scorers: a CLIP image embedding fed to a small head (``laion``, ``chad``, ``aesthetic_head``).

``laion`` and ``chad`` use their published heads (pinned sha256, downloaded once, cached as
safetensors; ``scorer.head`` may point at a local copy of the same file). ``aesthetic_head`` takes
any compatible head file from ``scorer.head``: the LAION MLP layout or one linear layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.scoring.base import ImageContext, SharedModels, Weights
from bayes_merger.scoring.clip import ClipEmbedder, clip_weights
from bayes_merger.scoring.heads import AestheticHead
from bayes_merger.scoring.weights import (
    CHAD_HEAD,
    LAION_HEAD,
    HeadSource,
    check_sha256,
    converted_from,
    head_weights,
    load_head_file,
    local_file_weights,
    pinned_head,
    resolve_cache_dir,
)

log = logging.getLogger(__name__)


class AestheticScorer:
    """Scores images with ``head(normalise(clip(image)))``: one float per image, higher is better."""

    def __init__(self, name: str, embedder: ClipEmbedder, head: AestheticHead) -> None:
        if head.input_dim != embedder.dim:
            raise ScorerError(
                f"The {name} head takes {head.input_dim}-d embeddings but CLIP {embedder.source!r} "
                f"gives {embedder.dim}-d ones; use the CLIP model the head was trained on."
            )
        self.name = name
        self.embedder = embedder
        # The head is tiny: it stays on the CPU in float32 whatever the backbone runs on.
        self.head = head.eval()

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]:
        if not images:
            return []
        embeddings = self.embedder.embed(images)
        with torch.inference_mode():
            return [float(v) for v in self.head(embeddings)]


def pinned_head_module(source: HeadSource, local: str | None, cache_dir: str | None) -> AestheticHead:
    """A published head: a local copy when ``local`` is given (checked it is that file), else the cache."""
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise ScorerError(local_file_weights("scorer.head", local).missing)
        if path.suffix == ".safetensors":
            if converted_from(path) != source.sha256:
                raise ScorerError(
                    f"{path} is not the {source.description} converted by bayes-merger; "
                    "to score with another head, use scorer.name: aesthetic_head."
                )
        else:
            try:
                check_sha256(path, source.sha256, what=source.description, url=source.url)
            except ScorerError as exc:
                raise ScorerError(f"{exc} To score with another head, use scorer.name: aesthetic_head.") from exc
    else:
        path = pinned_head(source, resolve_cache_dir(cache_dir))
    return AestheticHead.from_state_dict(load_head_file(path), source=str(path))


def shared_embedder(config: ScorerConfig, shared: SharedModels) -> ClipEmbedder:
    """The run's CLIP backbone, loaded on first use and shared with the other scorers that need it."""
    key = ("clip", config.clip, config.device, config.batch_size)
    return shared.get(key, lambda: ClipEmbedder.load(config.clip, config.device, config.batch_size))


def build_laion(config: ScorerConfig, shared: SharedModels) -> AestheticScorer:
    return _build_pinned(LAION_HEAD, config, shared)


def build_chad(config: ScorerConfig, shared: SharedModels) -> AestheticScorer:
    return _build_pinned(CHAD_HEAD, config, shared)


def build_aesthetic_head(config: ScorerConfig, shared: SharedModels) -> AestheticScorer:
    _check_head_given(config)
    path = Path(config.head).expanduser()
    head = AestheticHead.from_state_dict(load_head_file(path), source=str(path))
    log.info("Aesthetic head %s: %s layout", path, head.layout)
    return AestheticScorer("aesthetic_head", shared_embedder(config, shared), head)


def laion_weights(config: ScorerConfig) -> list[Weights]:
    return _pinned_weights(LAION_HEAD, config)


def chad_weights(config: ScorerConfig) -> list[Weights]:
    return _pinned_weights(CHAD_HEAD, config)


def aesthetic_head_weights(config: ScorerConfig) -> list[Weights]:
    _check_head_given(config)
    return [local_file_weights("scorer.head", str(config.head)), clip_weights(config.clip)]


def _pinned_weights(source: HeadSource, config: ScorerConfig) -> list[Weights]:
    head = local_file_weights("scorer.head", config.head) if config.head else head_weights(source, config.cache_dir)
    return [head, clip_weights(config.clip)]


def _check_head_given(config: ScorerConfig) -> None:
    if not config.head:
        raise ConfigError(
            "scorer.name aesthetic_head needs scorer.head: a .pth or .safetensors head file "
            "(the LAION MLP layout or one linear layer)."
        )


def _build_pinned(source: HeadSource, config: ScorerConfig, shared: SharedModels) -> AestheticScorer:
    # The head first: a missing head is reported before the slow CLIP load.
    head = pinned_head_module(source, config.head, config.cache_dir)
    return AestheticScorer(source.name, shared_embedder(config, shared), head)
