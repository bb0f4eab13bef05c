"""The key lists of SD1, SD2 and SDXL checkpoints: every key's name, shape and stored dtype, at real or tiny scale.

The lists are generated the way the models build their modules (LDM UNet, KL autoencoder, CLIP-L
text model, OpenCLIP text towers), so they need no data file: the demo and the tests run on a
user's machine. At ``scale=1`` the shapes are the real ones (a test compares them with the real
key lists when those are at hand); smaller scales shrink every width, keeping every key and rank.
The tensors themselves are made in ``models``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeySpec:
    """One tensor of a checkpoint: its shape, its dtype as stored in real files, and whether real files may lack it."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    optional: bool = False


@dataclass(frozen=True)
class _UNetSpec:
    model_channels: int
    channel_mult: tuple[int, ...]
    attention_levels: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # per level, input side
    middle_depth: int
    context_dim: int
    linear_proj: bool
    adm_in: int | None = None  # SDXL's label_emb input width


class _Keys:
    """An ordered key → KeySpec collector with the few module shapes the models are made of."""

    def __init__(self) -> None:
        self.specs: dict[str, KeySpec] = {}

    def add(self, key: str, *shape: int, dtype: torch.dtype = torch.float32, optional: bool = False) -> None:
        self.specs[key] = KeySpec(tuple(shape), dtype, optional)

    def linear(self, p: str, out: int, inp: int, bias: bool = True, optional: bool = False) -> None:
        self.add(f"{p}.weight", out, inp, optional=optional)
        if bias:
            self.add(f"{p}.bias", out, optional=optional)

    def conv(self, p: str, out: int, inp: int, k: int) -> None:
        self.add(f"{p}.weight", out, inp, k, k)
        self.add(f"{p}.bias", out)

    def norm(self, p: str, ch: int, optional: bool = False) -> None:
        self.add(f"{p}.weight", ch, optional=optional)
        self.add(f"{p}.bias", ch, optional=optional)


# -------------------------------------------------------------------------------------------- UNet


def _resblock(k: _Keys, p: str, ch: int, out: int, emb: int) -> None:
    k.norm(f"{p}.in_layers.0", ch)
    k.conv(f"{p}.in_layers.2", out, ch, 3)
    k.linear(f"{p}.emb_layers.1", out, emb)
    k.norm(f"{p}.out_layers.0", out)
    k.conv(f"{p}.out_layers.3", out, out, 3)
    if out != ch:
        k.conv(f"{p}.skip_connection", out, ch, 1)


def _transformer(k: _Keys, p: str, ch: int, depth: int, context: int, linear: bool) -> None:
    k.norm(f"{p}.norm", ch)
    if linear:
        k.linear(f"{p}.proj_in", ch, ch)
    else:
        k.conv(f"{p}.proj_in", ch, ch, 1)
    for d in range(depth):
        b = f"{p}.transformer_blocks.{d}"
        for attn, kv in (("attn1", ch), ("attn2", context)):
            k.linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
            k.linear(f"{b}.{attn}.to_k", ch, kv, bias=False)
            k.linear(f"{b}.{attn}.to_v", ch, kv, bias=False)
            k.linear(f"{b}.{attn}.to_out.0", ch, ch)
        k.linear(f"{b}.ff.net.0.proj", ch * 8, ch)  # GEGLU: two halves of 4·ch
        k.linear(f"{b}.ff.net.2", ch, ch * 4)
        for n in (1, 2, 3):
            k.norm(f"{b}.norm{n}", ch)
    if linear:
        k.linear(f"{p}.proj_out", ch, ch)
    else:
        k.conv(f"{p}.proj_out", ch, ch, 1)


def _unet(k: _Keys, s: _UNetSpec, in_channels: int) -> None:
    p = "model.diffusion_model"
    mc = s.model_channels
    emb = mc * 4
    k.linear(f"{p}.time_embed.0", emb, mc)
    k.linear(f"{p}.time_embed.2", emb, emb)
    if s.adm_in is not None:
        k.linear(f"{p}.label_emb.0.0", emb, s.adm_in)
        k.linear(f"{p}.label_emb.0.2", emb, emb)

    k.conv(f"{p}.input_blocks.0.0", mc, in_channels, 3)
    chans = [mc]
    ch = mc
    index = 1
    last = len(s.channel_mult) - 1
    for level, mult in enumerate(s.channel_mult):
        for _ in range(2):
            _resblock(k, f"{p}.input_blocks.{index}.0", ch, mult * mc, emb)
            ch = mult * mc
            if level in s.attention_levels:
                depth = s.transformer_depth[level]
                _transformer(k, f"{p}.input_blocks.{index}.1", ch, depth, s.context_dim, s.linear_proj)
            chans.append(ch)
            index += 1
        if level != last:
            k.conv(f"{p}.input_blocks.{index}.0.op", ch, ch, 3)
            chans.append(ch)
            index += 1

    _resblock(k, f"{p}.middle_block.0", ch, ch, emb)
    _transformer(k, f"{p}.middle_block.1", ch, s.middle_depth, s.context_dim, s.linear_proj)
    _resblock(k, f"{p}.middle_block.2", ch, ch, emb)

    index = 0
    for level, mult in reversed(list(enumerate(s.channel_mult))):
        for i in range(3):
            skip = chans.pop()
            b = f"{p}.output_blocks.{index}"
            _resblock(k, f"{b}.0", ch + skip, mult * mc, emb)
            ch = mult * mc
            sub = 1
            if level in s.attention_levels:
                _transformer(k, f"{b}.1", ch, s.transformer_depth[level], s.context_dim, s.linear_proj)
                sub = 2
            if level and i == 2:
                k.conv(f"{b}.{sub}.conv", ch, ch, 3)
            index += 1

    k.norm(f"{p}.out.0", ch)
    k.conv(f"{p}.out.2", 4, mc, 3)


# --------------------------------------------------------------------------------------------- VAE


def _vae_resnet(k: _Keys, p: str, inp: int, out: int) -> None:
    k.norm(f"{p}.norm1", inp)
    k.conv(f"{p}.conv1", out, inp, 3)
    k.norm(f"{p}.norm2", out)
    k.conv(f"{p}.conv2", out, out, 3)
    if inp != out:
        k.conv(f"{p}.nin_shortcut", out, inp, 1)


def _vae_mid(k: _Keys, p: str, ch: int) -> None:
    _vae_resnet(k, f"{p}.block_1", ch, ch)
    k.norm(f"{p}.attn_1.norm", ch)
    for name in ("q", "k", "v", "proj_out"):
        k.conv(f"{p}.attn_1.{name}", ch, ch, 1)
    _vae_resnet(k, f"{p}.block_2", ch, ch)


def _vae(k: _Keys, ch: int) -> None:
    p = "first_stage_model"
    mult = (1, 2, 4, 4)
    z = 4
    k.conv(f"{p}.encoder.conv_in", ch, 3, 3)
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(2):
            _vae_resnet(k, f"{p}.encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            k.conv(f"{p}.encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _vae_mid(k, f"{p}.encoder.mid", block_in)
    k.norm(f"{p}.encoder.norm_out", block_in)
    k.conv(f"{p}.encoder.conv_out", 2 * z, block_in, 3)

    block_in = ch * mult[-1]
    k.conv(f"{p}.decoder.conv_in", block_in, z, 3)
    _vae_mid(k, f"{p}.decoder.mid", block_in)
    for i in reversed(range(len(mult))):
        for j in range(3):
            _vae_resnet(k, f"{p}.decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            k.conv(f"{p}.decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    k.norm(f"{p}.decoder.norm_out", block_in)
    k.conv(f"{p}.decoder.conv_out", 3, block_in, 3)
    k.conv(f"{p}.quant_conv", 2 * z, 2 * z, 1)
    k.conv(f"{p}.post_quant_conv", z, z, 1)


# ----------------------------------------------------------------------------------- text encoders


def _clip_l(k: _Keys, p: str, width: int, vocab: int, optional_last: bool) -> None:
    """The transformers CLIPTextModel (SD1, SDXL's first encoder). SDXL files may lack the last layer."""
    t = f"{p}.transformer.text_model"
    k.add(f"{t}.embeddings.position_embedding.weight", 77, width)
    k.add(f"{t}.embeddings.position_ids", 1, 77, dtype=torch.int64, optional=True)
    k.add(f"{t}.embeddings.token_embedding.weight", vocab, width)
    layers = 12
    for n in range(layers):
        opt = optional_last and n == layers - 1
        lp = f"{t}.encoder.layers.{n}"
        k.norm(f"{lp}.layer_norm1", width, optional=opt)
        k.norm(f"{lp}.layer_norm2", width, optional=opt)
        k.linear(f"{lp}.mlp.fc1", width * 4, width, optional=opt)
        k.linear(f"{lp}.mlp.fc2", width, width * 4, optional=opt)
        for proj in ("k_proj", "out_proj", "q_proj", "v_proj"):
            k.linear(f"{lp}.self_attn.{proj}", width, width, optional=opt)
    k.norm(f"{t}.final_layer_norm", width, optional=optional_last)


def _open_clip(k: _Keys, p: str, width: int, layers: int, vocab: int, optional_last: bool) -> None:
    """An OpenCLIP text tower (SD2's ViT-H, SDXL's bigG). SDXL files may lack the last layer and the head."""
    m = f"{p}.model"
    k.norm(f"{m}.ln_final", width, optional=optional_last)
    k.add(f"{m}.logit_scale", optional=optional_last)
    k.add(f"{m}.positional_embedding", 77, width)
    k.add(f"{m}.text_projection", width, width, optional=optional_last)
    k.add(f"{m}.token_embedding.weight", vocab, width)
    for n in range(layers):
        opt = optional_last and n == layers - 1
        r = f"{m}.transformer.resblocks.{n}"
        k.add(f"{r}.attn.in_proj_bias", 3 * width, optional=opt)
        k.add(f"{r}.attn.in_proj_weight", 3 * width, width, optional=opt)
        k.linear(f"{r}.attn.out_proj", width, width, optional=opt)
        k.norm(f"{r}.ln_1", width, optional=opt)
        k.norm(f"{r}.ln_2", width, optional=opt)
        k.linear(f"{r}.mlp.c_fc", 4 * width, width, optional=opt)
        k.linear(f"{r}.mlp.c_proj", width, 4 * width, optional=opt)


# ------------------------------------------------------------------------------------- the models

SCHEDULER_KEYS = (
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "betas",
    "log_one_minus_alphas_cumprod",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_variance",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)

_IN_CHANNELS = {"": 4, "inpainting": 9, "pix2pix": 8}


def ema_key(unet_key: str) -> str:
    """The EMA copy's name of a UNet key, as LDM stores it (dots removed)."""
    return "model_ema.diffusion_model" + unet_key[len("model.diffusion_model.") :].replace(".", "")


def key_specs(
    arch: str = "sd1",
    *,
    variant: str = "",
    scale: float = 1.0,
    ema: bool = False,
    scheduler: bool = True,
    sdxl_extras: bool = False,
) -> dict[str, KeySpec]:
    """Every key of an ``arch`` checkpoint ("sd1", "sd2", "sdxl") with its shape at ``scale`` (1 = real).

    ``ema`` adds the SD1 EMA copies, ``scheduler`` the 12 noise-schedule buffers, ``sdxl_extras`` the
    optional SDXL markers (``v_pred``, ``ztsnr``, ``edm_vpred.*``). Widths shrink with ``scale``;
    layer counts, the 77 text positions and the latent channels do not.
    """
    if arch not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"unknown architecture {arch!r}")
    if variant not in _IN_CHANNELS:
        raise ValueError(f"unknown variant {variant!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")

    def w(real: int) -> int:
        return max(1, round(real * scale))

    k = _Keys()
    vocab = w(49408)
    if arch == "sd1":
        clip = w(768)
        _clip_l(k, "cond_stage_model", clip, vocab, optional_last=False)
        unet = _UNetSpec(w(320), (1, 2, 4, 4), (0, 1, 2), (1, 1, 1, 0), 1, clip, linear_proj=False)
    elif arch == "sd2":
        clip = w(1024)
        _open_clip(k, "cond_stage_model", clip, 24, vocab, optional_last=False)
        unet = _UNetSpec(w(320), (1, 2, 4, 4), (0, 1, 2), (1, 1, 1, 0), 1, clip, linear_proj=True)
    else:
        clip_l, clip_g = w(768), w(1280)
        _clip_l(k, "conditioner.embedders.0", clip_l, vocab, optional_last=True)
        _open_clip(k, "conditioner.embedders.1", clip_g, 32, vocab, optional_last=True)
        # label_emb sees the pooled bigG embedding and six 256-wide size/crop embeddings
        unet = _UNetSpec(w(320), (1, 2, 4), (1, 2), (0, 2, 10), 10, clip_l + clip_g, True, adm_in=clip_g + 6 * w(256))
    _vae(k, w(128))
    unet_keys = _Keys()
    _unet(unet_keys, unet, _IN_CHANNELS[variant])
    k.specs.update(unet_keys.specs)

    if ema:
        k.add("model_ema.decay", optional=True)
        k.add("model_ema.num_updates", dtype=torch.int32, optional=True)
        for key, spec in unet_keys.specs.items():
            k.specs[ema_key(key)] = KeySpec(spec.shape, spec.dtype, optional=True)
    if scheduler:
        for name in SCHEDULER_KEYS:
            k.add(name, 1000, optional=True)
    if sdxl_extras and arch == "sdxl":
        k.add("edm_vpred.sigma_max", optional=True)
        k.add("edm_vpred.sigma_min", optional=True)
        k.add("v_pred", 0, dtype=torch.int64, optional=True)
        k.add("ztsnr", 0, dtype=torch.int64, optional=True)
    return k.specs


def legacy_key(key: str) -> str:
    """An older alias of a canonical key, where one exists (the inverse of the loader's normalisation)."""
    if key.startswith("cond_stage_model.transformer.text_model."):
        return "cond_stage_model.transformer." + key[len("cond_stage_model.transformer.text_model.") :]
    if key.startswith("model_ema.diffusion_model"):
        return "model_ema." + key[len("model_ema.diffusion_model") :]
    return key


def parameter_count(specs: dict[str, KeySpec]) -> int:
    return sum(math.prod(s.shape) for s in specs.values())
