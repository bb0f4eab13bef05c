"""A txt2img answer read: the images (grid and script extras left out), the parsed ``info``, the seeds."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError

from bayes_merger.errors import WebUIError

TXT2IMG = "/sdapi/v1/txt2img"


@dataclass(frozen=True)
class Generation:
    """The images of one txt2img call (grid left out), its parsed ``info``, each image's seed and the
    prompt the server rendered it from (``all_prompts``: the payload's, with the WebUI's saved styles
    applied; empty where the server does not say)."""

    images: list[Image.Image]
    info: dict[str, Any]
    seeds: list[int]
    prompts: list[str] = field(default_factory=list)


def parse_info(body: Any) -> dict[str, Any]:
    """The ``info`` of a txt2img answer as an object (the API sends it as a JSON string)."""
    if not isinstance(body, Mapping):
        raise WebUIError(f"POST {TXT2IMG} answered {type(body).__name__}, not an object with images and info.")
    info = body.get("info") or {}
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as exc:
            raise WebUIError(f"POST {TXT2IMG} answered an info string that is not JSON ({exc.msg}).") from exc
    if not isinstance(info, dict):
        raise WebUIError(f"POST {TXT2IMG} answered an info field that is not an object.")
    return info


def read_generation(body: Mapping[str, Any], info: dict[str, Any]) -> Generation:
    encoded = list(body.get("images") or [])[int(info.get("index_of_first_image") or 0):]
    seeds = _seeds(info, len(encoded))
    # scripts such as ControlNet append extra pictures (detect maps) after the generations
    if len(seeds) < len(encoded) and "all_seeds" in info:
        encoded = encoded[: len(seeds)]
    if not encoded:
        raise WebUIError(f"POST {TXT2IMG} returned no images (is send_images false in the payload?).")
    images = [_decode_image(data, i) for i, data in enumerate(encoded)]
    prompts = info.get("all_prompts")
    if not (isinstance(prompts, list) and len(prompts) >= len(images) and all(isinstance(p, str) for p in prompts)):
        prompts = []
    return Generation(images=images, info=info, seeds=seeds[: len(images)], prompts=prompts[: len(images)])


def _seeds(info: Mapping[str, Any], count: int) -> list[int]:
    seeds = info.get("all_seeds")
    if isinstance(seeds, list):
        return [int(seed) for seed in seeds]
    seed = info.get("seed")
    return [int(seed) + i for i in range(count)] if isinstance(seed, int) else []


def _decode_image(data: Any, index: int) -> Image.Image:
    try:
        text = str(data)
        if text.startswith("data:"):
            text = text.split(",", 1)[1]
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=False)))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError, IndexError) as exc:
        raise WebUIError(f"Image {index} of the txt2img answer is not a PNG, JPEG or WebP image ({exc}).") from exc
    return image
