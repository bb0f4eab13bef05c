"""``aesthetic_v25``: the aesthetic predictor v2.5 — a SigLIP so400m image embedding fed to a small head.

As its authors compute it: SigLIP's pooled image embedding (1152-d, the attention-pooling head's
output), L2-normalised, through a five-layer MLP (``scoring_head.0/2/4/6/8``, dropouts and no
activations between them) to a 1–10 rating (5.5+ is "great" by its authors' reading).

The SigLIP model comes through the Hugging Face cache (``scorer.siglip``); the head, AGPL-3.0, is
downloaded by the user's own run from its GitHub repository, sha256-checked and cached like the other
heads. Preprocessing is SigLIP's: a plain resize to the model's square size (bicubic, no crop), pixels
scaled to [0, 1] and normalised with the processor's mean and std (0.5, 0.5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.devices import resolve_device
from bayes_merger.errors import ScorerError
from bayes_merger.scoring import weights
from bayes_merger.scoring.base import ImageContext, SharedModels, Weights
from bayes_merger.scoring.clip import (MODEL_FILES, batches, cache_first, check_batch_size, from_pretrained,
                                      hub_weights, normalised)
from bayes_merger.scoring.heads import AestheticHead
from bayes_merger.scoring.weights import head_weights, load_head_file, local_file_weights, pinned_head, resolve_cache_dir

log = logging.getLogger(__name__)

#: what the SigLIP model is, where it is set, its files and what a local folder holds: for its load's sentences
_SIGLIP = ("SigLIP model", "scorer.siglip", "config.json preprocessor_config.json model.safetensors", "those files")


@dataclass(frozen=True)
class SquareResize:
    """SigLIP's transform: resize to ``size``×``size`` (no crop), scale to [0, 1], normalise."""

    size: int = 384
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = int(Image.Resampling.BICUBIC)

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=Image.Resampling(self.resample))
        return normalised(image, self.mean, self.std)

    @classmethod
    def from_processor(cls, processor: object) -> SquareResize:
        size = getattr(processor, "size", None) or {}
        return cls(
            size=int(size.get("height") or size.get("shortest_edge") or 384),
            mean=tuple(float(v) for v in getattr(processor, "image_mean", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in getattr(processor, "image_std", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
            resample=int(getattr(processor, "resample", Image.Resampling.BICUBIC)),
        )


class SiglipAestheticScorer:
    """``head(normalise(siglip(image).pooler_output))``, batched; one float per image."""

    def __init__(self, model: torch.nn.Module, head: AestheticHead, preprocessing: SquareResize,
                 device: torch.device, batch_size: int = 8, name: str = "aesthetic_v25") -> None:
        check_batch_size(batch_size)
        width = int(model.config.hidden_size)
        if head.input_dim != width:
            raise ScorerError(f"The {name} head takes {head.input_dim}-d embeddings but the SigLIP model gives "
                              f"{width}-d ones; use google/siglip-so400m-patch14-384.")
        self.name = name
        self.model = model.eval()
        self.head = head.eval()  # tiny: stays on the CPU in float32
        self.preprocessing = preprocessing
        self.device = device
        self.batch_size = batch_size
        self.dtype = next(model.parameters()).dtype

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]:
        scores: list[float] = []
        with torch.inference_mode():
            for batch in batches(images, self.batch_size):
                pixels = torch.from_numpy(np.stack([self.preprocessing(image) for image in batch]))
                pooled = self.model(pixel_values=pixels.to(device=self.device, dtype=self.dtype)).pooler_output
                embeddings = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
                scores += [float(v) for v in self.head(embeddings)]
        return scores


def load_siglip(name: str, device: str) -> tuple[torch.nn.Module, SquareResize, torch.device]:
    """The SigLIP vision tower and its preprocessing, from a Hugging Face id or a local folder."""
    from transformers import SiglipVisionModel

    torch_device = resolve_device(device, "scorer device")
    local = Path(name).expanduser().is_dir()
    source = str(Path(name).expanduser()) if local else name
    model = from_pretrained(SiglipVisionModel, source, name, *_SIGLIP)
    preprocessing = _preprocessing(source, int(model.config.image_size))
    dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
    return model.to(device=torch_device, dtype=dtype).requires_grad_(False), preprocessing, torch_device


def _preprocessing(source: str, size: int) -> SquareResize:
    try:
        from transformers import SiglipImageProcessorPil as Processor  # transformers 5: no torchvision needed
    except ImportError:
        from transformers import SiglipImageProcessor as Processor
    try:
        return SquareResize.from_processor(cache_first(Processor, source))
    except (OSError, ValueError):
        log.warning("%s has no preprocessor_config.json; using SigLIP's preprocessing at %d px", source, size)
        return SquareResize(size=size)


def build_aesthetic_v25(config: ScorerConfig, shared: SharedModels) -> SiglipAestheticScorer:
    source = weights.AESTHETIC_V25
    # The head first: a missing head is reported before the slow SigLIP load.
    path = Path(config.head).expanduser() if config.head else pinned_head(source, resolve_cache_dir(config.cache_dir))
    head = AestheticHead.from_state_dict(load_head_file(path), source=str(path))
    model, preprocessing, device = shared.get(
        ("siglip", config.siglip, config.device), lambda: load_siglip(config.siglip, config.device)
    )
    return SiglipAestheticScorer(model, head, preprocessing, device, config.batch_size)


def aesthetic_v25_weights(config: ScorerConfig) -> list[Weights]:
    head = (local_file_weights("scorer.head", config.head) if config.head
            else head_weights(weights.AESTHETIC_V25, config.cache_dir))
    return [head, hub_weights(config.siglip, *_SIGLIP, needs=MODEL_FILES)]
