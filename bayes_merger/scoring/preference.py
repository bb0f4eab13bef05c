"""Prompt-conditioned preference scorers on CLIP ViT-H/14: ``pickscore`` and ``hpsv2`` (HPS v2.1).

Both score an image *against the prompt it was rendered from* (``ImageContext.prompt``): the cosine
of the image's and the prompt's projected CLIP embeddings, times the model's ``logit_scale`` for
PickScore (as its authors score, ≈ 100·cos) and as it is for HPS v2.1. The prompt is compared without
the WebUI's markup (``(word:1.2)``, ``<lora:…>``, ``BREAK``: ``prompt_text.plain_prompt``).

Both run on transformers' own ``CLIPModel`` (no open_clip, no pinned old libraries):

- PickScore is published in transformers' layout (``yuvalkirstain/PickScore_v1``, model.safetensors);
- HPS v2.1 is an open_clip ViT-H/14 state dict (``{"state_dict": …}`` in ``HPS_v2.1_compressed.pt``);
  its keys are renamed to transformers' layout here (``open_clip_to_transformers``): the fused
  attention ``in_proj`` is split into q/k/v, the projections are transposed. open_clip's ViT-H/14
  uses exact GELU and LayerNorm eps 1e-5, as transformers' config below does.

The model's shape (widths, depths, patch and image size, vocabulary, context) is read from the
tensors; only the head count (16 in both towers of ViT-H/14) is fixed. The tokenizer is the OpenAI
CLIP BPE both were trained with, from ``scorer.tokenizer`` (a Hugging Face id, by default the one
PickScore's authors load, or a local folder); prompts are cut at the model's 77 tokens.

Preprocessing is each model's own: PickScore's processor is OpenAI CLIP's (shortest side to 224,
centre crop); HPS v2.1 fits the longest side to 224 and pads with black to a square, as its
reference inference code does.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.devices import resolve_device
from bayes_merger.errors import ScorerError
from bayes_merger.scoring import weights
from bayes_merger.scoring.base import ImageContext, SharedModels, Weights
from bayes_merger.scoring.clip import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessing, batches, check_batch_size,
                                       from_pretrained, hub_weights, normalised)
from bayes_merger.scoring.prompt_text import plain_prompt
from bayes_merger.scoring.weights import HeadSource, head_weights, load_head_file, pinned_head, resolve_cache_dir

log = logging.getLogger(__name__)

#: Attention heads of both towers of CLIP ViT-H/14 (the one number the tensors do not show).
VIT_H_HEADS = 16
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
#: what the tokenizer is, where it is set, its files and what a local folder holds: for its load's sentences
_TOKENIZER = ("CLIP tokenizer", "scorer.tokenizer", " ".join(_TOKENIZER_FILES), "vocab.json and merges.txt")


@dataclass(frozen=True)
class PadToSquare:
    """HPS v2's transform: longest side to ``size`` (bicubic), black padding to a square, normalised."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        width, height = image.size
        scale = self.size / max(width, height)
        new_w, new_h = round(width * scale), round(height * scale)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(image, ((self.size - new_w) // 2, (self.size - new_h) // 2))
        return normalised(canvas, self.mean, self.std)


class PromptScorer:
    """Scores each image against its prompt with a CLIP model: cosine (× logit_scale, if asked)."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        tokenizer: object,
        preprocessing: object,
        device: torch.device,
        batch_size: int = 8,
        times_logit_scale: bool = False,
    ) -> None:
        check_batch_size(batch_size)
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.device = device
        self.batch_size = batch_size
        self.dtype = next(model.parameters()).dtype
        self.times_logit_scale = times_logit_scale
        self.context_length = int(model.config.text_config.max_position_embeddings)

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]:
        if not images:
            return []
        if contexts is None or len(contexts) != len(images):
            raise ScorerError(f"{self.name} scores each image against its prompt, but no prompts were given.")
        # what each image is compared with: its prompt without the WebUI's markup (weights, LoRA tags)
        prompts = [plain_prompt(context.prompt) for context in contexts]
        for context, prompt in zip(contexts, prompts):
            if not prompt:  # a re-scored PNG whose text was stripped, an empty payload prompt, or only markup
                where = context.path or f"payload {context.payload!r} image {context.index}"
                raise ScorerError(f"{self.name} scores each image against its prompt, but {where} has none.")
        scores: list[float] = []
        with torch.inference_mode():
            for batch, texts in zip(batches(images, self.batch_size), batches(prompts, self.batch_size)):
                scores += self._score_batch(batch, texts)
        return scores

    def _score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        pixels = torch.from_numpy(np.stack([self.preprocessing(image) for image in images]))
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        text = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        model = self.model
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text_out = model.text_model(
            input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
        )
        text_embeds = model.text_projection(text_out.pooler_output)
        image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
        text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
        values = (image_embeds * text_embeds).sum(-1)
        if self.times_logit_scale:
            values = values * model.logit_scale.float().exp()
        return [float(v) for v in values.cpu()]


# ----------------------------------------------------------------------------------- loading


def open_clip_to_transformers(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip (OpenAI-layout) CLIP state dict with transformers' ``CLIPModel`` key names.

    Keys a ``CLIPModel`` has no place for (open_clip's ``attn_mask`` buffer, if saved) are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix("module.")
        tower, rest = ("vision_model", key[len("visual."):]) if key.startswith("visual.") else ("text_model", key)
        block = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", rest)
        if block:
            base = f"{tower}.encoder.layers.{block.group(1)}."
            part = block.group(2)
            if part.startswith("attn.in_proj_"):
                kind = part.removeprefix("attn.in_proj_")  # weight or bias
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = chunk
                continue
            for old, new in (("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."),
                             ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")):
                if part.startswith(old):
                    out[base + new + part[len(old):]] = value
                    break
            continue
        renamed = _OPEN_CLIP_KEYS.get(key)
        if renamed is None:
            continue
        out[renamed] = value.t().contiguous() if key in ("visual.proj", "text_projection") else value
    return out


_OPEN_CLIP_KEYS = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
}


def clip_model_from_tensors(
    tensors: Mapping[str, torch.Tensor], *, eos_token_id: int, bos_token_id: int, source: str = ""
) -> torch.nn.Module:
    """A transformers ``CLIPModel`` holding ``tensors`` (its key layout), its shape read from them."""
    from transformers import CLIPConfig, CLIPModel

    where = f" in {source}" if source else ""
    try:
        patch = tensors["vision_model.embeddings.patch_embedding.weight"]
        vision_positions = tensors["vision_model.embeddings.position_embedding.weight"].shape[0]
        tokens = tensors["text_model.embeddings.token_embedding.weight"]
        text_positions = tensors["text_model.embeddings.position_embedding.weight"].shape[0]
        projection = tensors["visual_projection.weight"].shape[0]
        vision_mlp = tensors["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        text_mlp = tensors["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as missing:
        raise ScorerError(f"The CLIP weights{where} have no {missing}: they are not a CLIP model.") from None
    grid = round((vision_positions - 1) ** 0.5)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=tokens.shape[0], hidden_size=tokens.shape[1], intermediate_size=text_mlp,
            num_hidden_layers=_depth(tensors, "text_model"), num_attention_heads=VIT_H_HEADS,
            max_position_embeddings=text_positions, hidden_act="gelu", layer_norm_eps=1e-5,
            projection_dim=projection, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
        ),
        vision_config=dict(
            hidden_size=patch.shape[0], intermediate_size=vision_mlp, num_hidden_layers=_depth(tensors, "vision_model"),
            num_attention_heads=VIT_H_HEADS, patch_size=patch.shape[-1], image_size=grid * patch.shape[-1],
            hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=projection,
        ),
        projection_dim=projection,
    )
    with _no_init_weights():
        model = CLIPModel(config)
    result = model.load_state_dict(dict(tensors), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise ScorerError(f"The CLIP weights{where} have no {', '.join(missing[:5])}; they are not a whole CLIP model.")
    return model.requires_grad_(False)


def _depth(tensors: Mapping[str, torch.Tensor], tower: str) -> int:
    layer = re.compile(re.escape(tower) + r"\.encoder\.layers\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in tensors if (m := layer.match(k))), default=-1)


def _no_init_weights():  # type: ignore[no-untyped-def]
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_tokenizer(name: str) -> object:
    """The CLIP BPE tokenizer from a Hugging Face id or a local folder; ScorerError naming the files."""
    from transformers import CLIPTokenizer

    # transformers 5 answers a name it cannot find offline with a 2-token tokenizer, not an error
    return from_pretrained(CLIPTokenizer, name, name, *_TOKENIZER, usable=lambda tokenizer: len(tokenizer) > 2)


def _weights_file(source: HeadSource, config: ScorerConfig) -> Path:
    return pinned_head(source, resolve_cache_dir(config.cache_dir))


def _load_model(
    source: HeadSource, config: ScorerConfig, tokenizer: object, convert: bool
) -> tuple[torch.nn.Module, torch.device]:
    device = resolve_device(config.device, "scorer device")
    path = _weights_file(source, config)
    tensors = load_head_file(path)
    if convert:
        tensors = open_clip_to_transformers(tensors)
    model = clip_model_from_tensors(
        tensors, eos_token_id=int(tokenizer.eos_token_id), bos_token_id=int(tokenizer.bos_token_id), source=str(path)
    )
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = model.to(device=device, dtype=dtype)
    log.info("%s loaded from %s on %s (%s)", source.description, path, device, str(dtype).removeprefix("torch."))
    return model, device


def _shared_tokenizer(config: ScorerConfig, shared: SharedModels) -> object:
    return shared.get(("clip-tokenizer", config.tokenizer), lambda: load_tokenizer(config.tokenizer))


def build_pickscore(config: ScorerConfig, shared: SharedModels) -> PromptScorer:
    source = weights.PICKSCORE
    _weights_file(source, config)  # a missing file is reported before the tokenizer is looked for
    tokenizer = _shared_tokenizer(config, shared)
    model, device = _load_model(source, config, tokenizer, convert=False)
    size = int(model.config.vision_config.image_size)
    return PromptScorer("pickscore", model, tokenizer, Preprocessing(size=size, crop_height=size, crop_width=size),
                        device, config.batch_size, times_logit_scale=True)


def build_hpsv2(config: ScorerConfig, shared: SharedModels) -> PromptScorer:
    source = weights.HPS_V21
    _weights_file(source, config)
    tokenizer = _shared_tokenizer(config, shared)
    model, device = _load_model(source, config, tokenizer, convert=True)
    size = int(model.config.vision_config.image_size)
    return PromptScorer("hpsv2", model, tokenizer, PadToSquare(size=size), device, config.batch_size)


def pickscore_weights(config: ScorerConfig) -> list[Weights]:
    return [head_weights(weights.PICKSCORE, config.cache_dir), _tokenizer_weights(config)]


def hpsv2_weights(config: ScorerConfig) -> list[Weights]:
    return [head_weights(weights.HPS_V21, config.cache_dir), _tokenizer_weights(config)]


def _tokenizer_weights(config: ScorerConfig) -> Weights:
    return hub_weights(config.tokenizer, *_TOKENIZER, needs=("vocab.json", "merges.txt"))
