"""Architectures (SD1, SD2, SDXL and their inpainting/instruct-pix2pix variants), block layouts and key → block.

The key → block rule is the one sd-meh and supermerger share, so a weight string moves between
those tools and ours unchanged:

- keys containing ``model.diffusion_model.`` (the UNet), first match wins: ``time_embed`` (and, for
  SDXL, ``label_emb``) → IN00; ``.out.`` → the last OUT block; ``.input_blocks.N.`` → IN{N};
  ``.middle_block.`` → M00; ``.output_blocks.N.`` → OUT{N}; anything else → BASE;
- other keys containing ``model`` — text encoders (``cond_stage_model.*``, ``conditioner.*``), the
  VAE (``first_stage_model.*``) and the EMA copies (``model_ema.*``, as sd-meh does) → BASE;
- keys without ``model`` (scheduler buffers such as ``betas``, SDXL's ``v_pred``) and the integer
  ``position_ids`` → ``None``: not merged, copied from model A.

sd-mecha sends ``time_embed`` to BASE; we follow sd-meh/supermerger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bayes_merger.errors import CheckpointError

SD_BLOCKS: tuple[str, ...] = (
    ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
)
SDXL_BLOCKS: tuple[str, ...] = (
    ("BASE",) + tuple(f"IN{i:02d}" for i in range(9)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(9))
)

ARCH_NAMES = ("sd1", "sd2", "sdxl")
VARIANTS = ("", "inpainting", "pix2pix")

UNET_PREFIX = "model.diffusion_model."
# the first convolution: its input channels tell the variant apart (4 latent channels, plus the
# masked image and the mask for inpainting, plus the image latent for instruct-pix2pix)
INPUT_CONV_KEY = "model.diffusion_model.input_blocks.0.0.weight"
_VARIANT_OF_CHANNELS = {4: "", 9: "inpainting", 8: "pix2pix"}

# one key of each text encoder, enough to tell the families apart (supermerger tests the same SDXL key)
_SDXL_MARK = "conditioner.embedders.1.model.transformer.resblocks."
_SD2_MARK = "cond_stage_model.model."
_SD1_MARK = "cond_stage_model.transformer.text_model."

_INPUT_RE = re.compile(r"\.input_blocks\.(\d+)\.")
_MIDDLE_RE = re.compile(r"\.middle_block\.(\d+)\.")
_OUTPUT_RE = re.compile(r"\.output_blocks\.(\d+)\.")

_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


@dataclass(frozen=True)
class Architecture:
    """A model family, its variant and its block layout (BASE first, as in the supermerger string)."""

    name: str
    variant: str = ""
    blocks: tuple[str, ...] = SD_BLOCKS

    @property
    def label(self) -> str:
        """The name users read, e.g. "SD1", "SDXL inpainting"."""
        return f"{_NAMES.get(self.name, self.name)} {self.variant}".strip()

    @property
    def n_in(self) -> int:
        return sum(1 for b in self.blocks if b.startswith("IN"))

    @property
    def n_out(self) -> int:
        return sum(1 for b in self.blocks if b.startswith("OUT"))

    def block_of(self, key: str) -> str | None:
        """The block whose weight merges this key, or None when the key is not merged (copied from A)."""
        if "model" not in key or key.endswith("position_ids"):
            return None
        if UNET_PREFIX not in key:
            return "BASE"
        if "time_embed" in key or (self.name == "sdxl" and "label_emb" in key):
            return "IN00"
        if ".out." in key:
            return f"OUT{self.n_out - 1:02d}"
        if match := _INPUT_RE.search(key):
            return self._checked(f"IN{int(match.group(1)):02d}", key)
        if _MIDDLE_RE.search(key):
            return "M00"
        if match := _OUTPUT_RE.search(key):
            return self._checked(f"OUT{int(match.group(1)):02d}", key)
        return "BASE"

    def _checked(self, block: str, key: str) -> str:
        if block not in self.blocks:
            raise CheckpointError(f"Key {key!r} has no block in the {self.label} layout ({len(self.blocks)} blocks).")
        return block


def architecture(name: str, variant: str = "") -> Architecture:
    """The Architecture called ``name`` ("sd1", "sd2", "sdxl") with ``variant``."""
    if name not in ARCH_NAMES:
        raise CheckpointError(f"Unknown architecture {name!r}; expected one of {', '.join(ARCH_NAMES)}.")
    if variant not in VARIANTS:
        raise CheckpointError(f"Unknown model variant {variant!r}; expected one of inpainting, pix2pix or none.")
    return Architecture(name, variant, SDXL_BLOCKS if name == "sdxl" else SD_BLOCKS)


def detect_architecture(
    keys: Iterable[str],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    source: str = "",
) -> Architecture:
    """Tell SD1, SD2 and SDXL (and their variants) apart from a checkpoint's keys.

    ``shapes`` (at least the one of ``input_blocks.0.0.weight``) is needed to see inpainting and
    instruct-pix2pix models; without it the variant is "". ``source`` names the file in errors.
    """
    keys = set(keys)
    where = f"{source}: " if source else ""
    if INPUT_CONV_KEY not in keys:
        if not any(k.startswith(UNET_PREFIX) for k in keys):
            raise CheckpointError(
                f"{where}not a Stable Diffusion checkpoint (no {UNET_PREFIX}* keys among its {len(keys)} tensors)."
            )
        raise CheckpointError(f"{where}unknown model layout: the UNet has no {INPUT_CONV_KEY}.")

    if any(k.startswith(_SDXL_MARK) for k in keys):
        name = "sdxl"
    elif any(k.startswith(_SD2_MARK) for k in keys):
        name = "sd2"
    elif any(k.startswith(_SD1_MARK) for k in keys):
        name = "sd1"
    else:
        raise CheckpointError(
            f"{where}unknown model layout: a UNet without a known text encoder "
            "(expected SD1, SD2 or SDXL keys; SDXL refiners and UNet-only files are not supported)."
        )

    variant = ""
    if shapes is not None and INPUT_CONV_KEY in shapes:
        shape = tuple(shapes[INPUT_CONV_KEY])
        channels = shape[1] if len(shape) == 4 else None
        if channels not in _VARIANT_OF_CHANNELS:
            raise CheckpointError(
                f"{where}unknown model layout: {INPUT_CONV_KEY} has shape {list(shape)} "
                "(expected 4, 8 or 9 input channels)."
            )
        variant = _VARIANT_OF_CHANNELS[channels]

    arch = architecture(name, variant)
    _check_unet_indices(arch, keys, where)
    return arch


def _check_unet_indices(arch: Architecture, keys: set[str], where: str) -> None:
    """Refuse a UNet whose block count does not fit the layout (it would merge with the wrong weights)."""
    n_in = max((int(m.group(1)) for k in keys if (m := _INPUT_RE.search(k)) and UNET_PREFIX in k), default=-1) + 1
    n_out = max((int(m.group(1)) for k in keys if (m := _OUTPUT_RE.search(k)) and UNET_PREFIX in k), default=-1) + 1
    if (n_in, n_out) != (arch.n_in, arch.n_out):
        raise CheckpointError(
            f"{where}unknown model layout: its text encoder says {arch.label} but its UNet has {n_in} input and "
            f"{n_out} output blocks ({arch.label} has {arch.n_in} and {arch.n_out})."
        )
