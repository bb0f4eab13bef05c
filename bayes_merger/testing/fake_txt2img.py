"""What the fake WebUI's "model" does: txt2img request validation as pydantic would, and the pictures.

Kept apart from the HTTP server of ``fake_webui``. The picture of a request is a deterministic
function of the loaded checkpoint's tensors, the prompt and the seed: colour and stripes come from
the means of model parts (so they move smoothly with merge weights), grain from prompt and seed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

# txt2img fields and their kinds, from A1111's StableDiffusionTxt2ImgProcessingAPI (a "?" kind
# accepts null). Unknown fields are ignored, as pydantic does there.
TXT2IMG_FIELDS: dict[str, tuple[str, Any]] = {
    "prompt": ("str", ""), "negative_prompt": ("str", ""), "styles": ("list?", None),
    "seed": ("int", -1), "subseed": ("int", -1), "subseed_strength": ("float", 0.0),
    "seed_resize_from_h": ("int", -1), "seed_resize_from_w": ("int", -1),
    "sampler_name": ("str?", None), "scheduler": ("str?", None), "sampler_index": ("str", "Euler"),
    "batch_size": ("int", 1), "n_iter": ("int", 1), "steps": ("int", 50), "cfg_scale": ("float", 7.0),
    "width": ("int", 512), "height": ("int", 512), "restore_faces": ("bool?", None), "tiling": ("bool?", None),
    "do_not_save_samples": ("bool", False), "do_not_save_grid": ("bool", False), "eta": ("float?", None),
    "denoising_strength": ("float?", None), "s_min_uncond": ("float?", None), "s_churn": ("float?", None),
    "s_tmax": ("float?", None), "s_tmin": ("float?", None), "s_noise": ("float?", None),
    "override_settings": ("dict?", None), "override_settings_restore_afterwards": ("bool", True),
    "refiner_checkpoint": ("str?", None), "refiner_switch_at": ("float?", None),
    "disable_extra_networks": ("bool", False), "comments": ("dict?", None), "enable_hr": ("bool", False),
    "firstphase_width": ("int", 0), "firstphase_height": ("int", 0), "hr_scale": ("float", 2.0),
    "hr_upscaler": ("str?", None), "hr_second_pass_steps": ("int", 0), "hr_resize_x": ("int", 0),
    "hr_resize_y": ("int", 0), "hr_checkpoint_name": ("str?", None), "hr_sampler_name": ("str?", None),
    "hr_scheduler": ("str?", None), "hr_prompt": ("str", ""), "hr_negative_prompt": ("str", ""),
    "force_task_id": ("str?", None), "script_name": ("str?", None), "script_args": ("list", []),
    "send_images": ("bool", True), "save_images": ("bool", False), "alwayson_scripts": ("dict", {}),
    "infotext": ("str?", None),
}

# pydantic's words for a value of the wrong kind: v1 (A1111, SD.Next) and v2 (Forge)
TYPE_ERRORS = {
    "int": (("value is not a valid integer", "type_error.integer"),
            ("Input should be a valid integer, unable to parse string as an integer", "int_parsing")),
    "float": (("value is not a valid float", "type_error.float"),
              ("Input should be a valid number, unable to parse string as a number", "float_parsing")),
    "str": (("str type expected", "type_error.str"), ("Input should be a valid string", "string_type")),
    "bool": (("value could not be parsed to a boolean", "type_error.bool"),
             ("Input should be a valid boolean, unable to interpret input", "bool_parsing")),
    "dict": (("value is not a valid dict", "type_error.dict"), ("Input should be a valid dictionary", "dict_type")),
    "list": (("value is not a valid list", "type_error.list"), ("Input should be a valid list", "list_type")),
}

# ------------------------------------------------------------------------------ rendering


def _group_of(key: str) -> str:
    """A coarse part of the model that exists in SD1, SD2 and SDXL layouts alike."""
    for prefix, label in (("model.diffusion_model.input_blocks.", "IN"), ("model.diffusion_model.output_blocks.", "OUT")):
        if key.startswith(prefix):
            return label + key[len(prefix):].split(".", 1)[0]
    if "middle_block" in key:
        return "M"
    if key.startswith("model.diffusion_model."):
        return "UNET"
    if key.startswith(("cond_stage_model.", "conditioner.")):
        return "TEXT"
    if key.startswith("first_stage_model."):
        return "VAE"
    return "OTHER"


def model_features(tensors: dict[str, Any]) -> np.ndarray:
    """Five numbers in (0, 1) that sum up the merged parts of a model (UNet, text encoder, VAE).

    Each part contributes the alternating-sign sum of its values (a fixed projection, linear in
    the values, blind to constants such as norm weights of 1 that every model shares), scaled so
    that random weights of std 0.1 give about 1; each feature is a fixed mix of the parts through a
    tanh. A weighted-sum merge moves each part linearly with its block weight, so the picture (and
    any score of it) moves smoothly with the weights, which an optimiser can follow. Buffers that
    merges copy from model A (the noise schedule: group "OTHER") are left out.
    """
    import torch

    sums: dict[str, list[float]] = {}
    for key, tensor in tensors.items():
        if not getattr(tensor, "is_floating_point", lambda: False)() or tensor.numel() < 2:
            continue
        group = _group_of(key)
        if group == "OTHER":
            continue
        even = tensor.numel() // 2 * 2
        flat = tensor.reshape(-1)[:even]
        if flat.dtype not in (torch.float16, torch.float32, torch.float64):  # bf16, fp8: numpy has neither
            flat = flat.float()
        values = flat.numpy()
        # numpy's sums, on one thread: torch splits a long sum among its threads, so the picture of one model
        # changed with OMP_NUM_THREADS. In float64 as numpy buffers it, without a converted copy of the tensor.
        acc = sums.setdefault(group, [0.0, 0.0])
        acc[0] += float(values[0::2].sum(dtype=np.float64)) - float(values[1::2].sum(dtype=np.float64))
        acc[1] += even
    features = np.zeros(5)
    for group, (total, count) in sorted(sums.items()):
        mix = np.frombuffer(hashlib.sha256(group.encode()).digest()[:5], dtype=np.uint8) / 127.5 - 1.0
        features += mix * total / (0.1 * math.sqrt(count))
    return 0.5 + 0.5 * np.tanh(1.5 * features / math.sqrt(max(len(sums), 1)))


def render(features: np.ndarray, prompt: str, negative: str, seed: int, width: int, height: int,
           max_size: int = 64) -> Image.Image:
    """A deterministic RGB picture: colour and stripes from the model, grain from prompt and seed."""
    scale = min(1.0, max_size / max(width, height, 1))
    w, h = max(8, round(width * scale)), max(8, round(height * scale))
    digest = hashlib.sha256(f"{prompt}\0{negative}\0{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    yy, xx = np.mgrid[0:h, 0:w]
    angle = features[3] * math.pi
    frequency = 1.0 + 5.0 * features[4]
    phase = rng.random() * 2 * math.pi
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (xx / w * math.cos(angle) + yy / h * math.sin(angle)) + phase)
    colour = features[:3].reshape(1, 1, 3)
    pixels = colour * (0.55 + 0.45 * wave[..., None]) + 0.12 * (rng.random((h, w, 3)) - 0.5)
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8), "RGB")


def grid(images: list[Image.Image]) -> Image.Image:
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


def encode(image: Image.Image, image_format: str) -> str:
    buffer = io.BytesIO()
    if image_format in ("jpg", "jpeg"):
        image.save(buffer, "JPEG", quality=90)
    elif image_format == "webp":
        image.save(buffer, "WEBP", quality=90)
    else:
        image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")




def read_tensors(path: Path) -> dict[str, Any]:
    """The state dict of a .safetensors file, or of a .ckpt through torch's weights-only loader."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {}


def _from_text(number: Callable[[str], Any], value: str) -> tuple[bool, Any]:
    """A number written as text, as pydantic reads it: (True, the number), or (False, the text)."""
    try:
        return True, number(value.strip())
    except ValueError:
        return False, value


def _coerce(kind: str, value: Any) -> tuple[bool, Any]:
    """pydantic's lax coercion: numbers given as strings are accepted."""
    base = kind.rstrip("?")
    if value is None:
        return kind.endswith("?"), None
    if base == "int":
        if isinstance(value, bool):
            return True, int(value)
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str):
            return _from_text(int, value)
        return False, value
    if base == "float":
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            return _from_text(float, value)
        return False, value
    if base == "str":
        return (True, str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else (False, value)
    if base == "bool":
        if isinstance(value, bool):
            return True, value
        if value in (0, 1):
            return True, bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return True, value.lower() in ("true", "yes", "on", "1")
        return False, value
    if base == "dict":
        return isinstance(value, dict), value
    return isinstance(value, list), value


def validate(body: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[list[Any], str, Any]]]:
    values: dict[str, Any] = {}
    errors = []
    for name, (kind, default) in TXT2IMG_FIELDS.items():
        if name not in body:
            values[name] = default
            continue
        ok, value = _coerce(kind, body[name])
        if ok:
            values[name] = value
        else:
            errors.append((["body", name], kind.rstrip("?"), body[name]))
    return values, errors


def apply_styles(prompt: str, names: list[str] | None, styles: dict[str, str]) -> str:
    """A1111's ``apply_styles_to_prompt``: each named style's prompt, with ``{prompt}`` standing for the
    prompt so far, or appended after a comma; a name the server does not have is skipped."""
    for name in names or []:
        style = styles.get(name)
        if style:
            prompt = style.replace("{prompt}", prompt) if "{prompt}" in style else ", ".join(p for p in (prompt, style) if p)
    return prompt


def generate(features: np.ndarray, name: str, sha256: str, values: dict[str, Any], sampler: str, image_format: str,
             return_grid: bool, max_image_size: int, version: str, styles: dict[str, str] | None = None,
             batches: int | None = None) -> dict[str, Any]:
    """The txt2img answer (images, parameters, info) of the model ``name`` (its file's stem, A1111's
    name_for_extra) with these ``features``, as A1111 gives it for checked request ``values``; ``styles``
    are the server's saved styles (name → prompt), applied to the prompt rendered (``all_prompts``).
    ``batches``: only that many of the n_iter batches came back (an interrupted generation); its info
    still lists every seed."""
    count = max(values["batch_size"], 1) * max(values["n_iter"], 1)
    seed = values["seed"] if values["seed"] != -1 else random.randrange(4294967294)
    subseed = values["subseed"] if values["subseed"] != -1 else random.randrange(4294967294)
    # A1111: consecutive seeds, unless a variation seed is mixed in
    seeds = [seed + (i if values["subseed_strength"] == 0 else 0) for i in range(count)]
    prompt, negative = values["prompt"], values["negative_prompt"]
    styled = apply_styles(prompt, values["styles"], styles or {})
    rendered = seeds if batches is None else seeds[: batches * max(values["batch_size"], 1)]
    images = [render(features, styled, negative, s, values["width"], values["height"], max_image_size)
              for s in rendered]
    index_of_first_image = 0
    if values["save_images"] and return_grid and count > 1:
        images.insert(0, grid(images))
        index_of_first_image = 1
    infotexts = [
        f"{styled}\nNegative prompt: {negative}\nSteps: {values['steps']}, Sampler: {sampler}, "
        f"CFG scale: {values['cfg_scale']}, Seed: {s}, Size: {values['width']}x{values['height']}, "
        f"Model hash: {sha256[:10]}, Model: {name}, Version: {version}"
        for s in seeds
    ]
    info = {
        "prompt": prompt, "all_prompts": [styled] * count, "negative_prompt": negative,
        "all_negative_prompts": [negative] * count, "seed": seed, "all_seeds": seeds, "subseed": subseed,
        "all_subseeds": [subseed + i for i in range(count)], "subseed_strength": values["subseed_strength"],
        "width": values["width"], "height": values["height"], "sampler_name": sampler,
        "cfg_scale": values["cfg_scale"], "steps": values["steps"], "batch_size": values["batch_size"],
        "restore_faces": bool(values["restore_faces"]), "face_restoration_model": None,
        "sd_model_name": name, "sd_model_hash": sha256[:10], "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": values["seed_resize_from_w"], "seed_resize_from_h": values["seed_resize_from_h"],
        "denoising_strength": values["denoising_strength"], "extra_generation_params": {},
        "index_of_first_image": index_of_first_image, "infotexts": infotexts, "styles": values["styles"] or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": version,
    }
    encoded = [encode(image, image_format) for image in images] if values["send_images"] else []
    return {"images": encoded, "parameters": values, "info": json.dumps(info)}


def validation_detail(errors: list[tuple[list[Any], str, Any]], pydantic_v2: bool) -> list[dict[str, Any]]:
    """A 422's ``detail`` for (location, kind, value) triples, worded as pydantic v1 (A1111) or v2 (Forge)."""
    detail = []
    for loc, kind, value in errors:
        v1, v2 = TYPE_ERRORS[kind]
        if pydantic_v2:
            detail.append({"type": v2[1], "loc": loc, "msg": v2[0], "input": value})
        else:
            detail.append({"loc": loc, "msg": v1[0], "type": v1[1]})
    return detail
