"""Checkpoint factories: SD1, SD2 and SDXL state dicts and files with the real key names and tiny (or real) shapes.

The keys come from ``checkpoint_keys``; the tensors are random and seeded (any key's values depend
only on the seed and the key), so two models with different seeds merge into something new. The
scheduler buffers are the real noise schedule, ``position_ids`` the real positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bayes_merger.merge.safetensors_file import write_safetensors
from bayes_merger.testing.checkpoint_keys import SCHEDULER_KEYS, KeySpec, key_specs, legacy_key

# the default for tests and the demo: about 0.3 M parameters for SD1 (0.6 MB in fp16)
TINY_SCALE = 1 / 64


def _schedule() -> dict[str, torch.Tensor]:
    """The LDM "scaled linear" noise schedule buffers (1000 steps), as real checkpoints carry them."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    variance = betas * (1 - prev) / (1 - alphas_cumprod)
    values = {
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "betas": betas,
        "log_one_minus_alphas_cumprod": torch.log(1 - alphas_cumprod),
        "posterior_log_variance_clipped": torch.log(torch.cat([variance[1:2], variance[1:]])),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        "posterior_variance": variance,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
    }
    return {k: v.float() for k, v in values.items()}


def _tensor_maker(seed: int, dtype: torch.dtype, std: float) -> Callable[[str, KeySpec], torch.Tensor]:
    schedule = _schedule()

    def make(key: str, spec: KeySpec) -> torch.Tensor:
        if key in schedule:
            return schedule[key]  # real files keep these in fp32 even when the weights are fp16
        if key.endswith("position_ids"):
            return torch.arange(77, dtype=torch.int64).reshape(1, 77)
        if key == "model_ema.num_updates":
            return torch.tensor(1000, dtype=torch.int32)
        if not spec.dtype.is_floating_point:
            return torch.zeros(spec.shape, dtype=spec.dtype)
        if key == "model_ema.decay":
            return torch.tensor(0.9999, dtype=dtype)
        # one generator per key: any key's values depend only on (seed, key), not on which keys precede it
        gen = torch.Generator().manual_seed(seed * 1_000_003 + _stable_hash(key))
        return (torch.randn(spec.shape, generator=gen) * std).to(dtype)

    return make


def _stable_hash(text: str) -> int:
    h = 0
    for byte in text.encode():
        h = (h * 131 + byte) % 2_147_483_647
    return h


@dataclass(frozen=True, kw_only=True)
class FakeModel:
    """What a fake checkpoint is made of: the options of ``make_state_dict`` and ``make_checkpoint``.

    ``arch``: "sd1", "sd2" or "sdxl"; ``variant``: "", "inpainting" (9 input channels) or "pix2pix"
    (8). ``scale``: 1 for the real shapes (SD1: 1.07 G parameters), the default for tiny ones. Float
    weights in ``dtype``, drawn with standard deviation ``std``; the scheduler buffers in fp32 and
    ``position_ids`` in int64, as real files have them. ``ema`` adds the EMA copies, ``scheduler``
    the noise-schedule buffers; ``legacy_keys`` names the text encoder (and EMA) keys by their older
    aliases. ``vae_seed``: the VAE drawn with this seed, not ``seed`` (two models sharing a VAE, as
    fine-tunes of one base often do).
    """

    arch: str = "sd1"
    seed: int
    variant: str = ""
    scale: float = TINY_SCALE
    dtype: torch.dtype = torch.float16
    ema: bool = False
    scheduler: bool = True
    std: float = 0.1
    legacy_keys: bool = False
    vae_seed: int | None = None

    def specs(self) -> dict[str, KeySpec]:
        return key_specs(self.arch, variant=self.variant, scale=self.scale, ema=self.ema, scheduler=self.scheduler)

    def stored_name(self, key: str) -> str:
        return legacy_key(key) if self.legacy_keys else key

    def maker(self) -> Callable[[str, KeySpec], torch.Tensor]:
        """key, spec → its tensor: from ``seed``, the VAE's from ``vae_seed`` where given."""
        make = _tensor_maker(self.seed, self.dtype, self.std)
        if self.vae_seed is None:
            return make
        vae = _tensor_maker(self.vae_seed, self.dtype, self.std)
        return lambda key, spec: (vae if key.startswith("first_stage_model.") else make)(key, spec)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(stored name, tensor) for every key, in order, made one at a time."""
        make = self.maker()
        for key, spec in self.specs().items():
            yield self.stored_name(key), make(key, spec)

    def write(self, path: Path, wrap: bool) -> Path:
        """Write to ``path`` (.ckpt/.pt/.pth: a torch zip file; otherwise .safetensors, tensor by tensor)."""
        if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
            state = dict(self.tensors())
            torch.save({"state_dict": state} if wrap else state, path)
            return path
        specs = self.specs()
        make = self.maker()
        schedule_keys = set(SCHEDULER_KEYS)

        def stored_dtype(key: str, spec: KeySpec) -> torch.dtype:
            if key in schedule_keys or not spec.dtype.is_floating_point:
                return spec.dtype
            return self.dtype

        names = {self.stored_name(k): k for k in specs}
        entries = [(name, stored_dtype(key, specs[key]), specs[key].shape) for name, key in names.items()]
        return write_safetensors(path, entries, lambda name: make(names[name], specs[names[name]]), {"format": "pt"})


def make_state_dict(arch: str = "sd1", **options) -> dict[str, torch.Tensor]:
    """An ``arch`` state dict in memory, with random (seeded) weights; ``options``: those of ``FakeModel``."""
    return dict(FakeModel(arch=arch, **options).tensors())


def make_checkpoint(path: Path | str, arch: str = "sd1", *, wrap: bool = True, **options) -> Path:
    """Write an ``arch`` checkpoint ("sd1", "sd2", "sdxl") with the real key names to ``path``.

    ``options``: those of ``FakeModel`` (``seed`` is required). At the real scale memory stays
    small: .safetensors files are written tensor by tensor. A .ckpt/.pt path gets a torch zip file,
    the dict wrapped in "state_dict" unless ``wrap`` is false; any other path gets .safetensors.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FakeModel(arch=arch, **options).write(path, wrap)
