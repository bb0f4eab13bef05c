"""Architecture detection and key → block, checked over every key of real SD1/SDXL checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bayes_merger.errors import CheckpointError
from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS, architecture, detect_architecture
from bayes_merger.testing.checkpoint_keys import key_specs

DATA = Path(__file__).resolve().parents[1] / "data" / "architectures"  # real key names and shapes (no weights)
_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


def _real(name: str) -> dict[str, dict]:
    components = json.loads((DATA / name).read_text())["components"]
    return {key: meta for component in components.values() for key, meta in component.items()}


def _shapes(keys: dict[str, dict]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(m["shape"]) for k, m in keys.items()}


def _sd2_keys() -> dict[str, tuple[int, ...]]:
    """SD2: the SD1 UNet/VAE layout with SDXL's OpenCLIP tower renamed and narrowed to ViT-H's width."""
    sd1 = _real("sd1-ldm.json")
    sdxl = _real("sdxl-sgm.json")
    keys = {k: tuple(m["shape"]) for k, m in sd1.items() if not k.startswith("cond_stage_model.")}
    for k, m in sdxl.items():
        if k.startswith("conditioner.embedders.1.model."):
            shape = tuple(1024 * d // 1280 if d in (1280, 3840, 5120) else d for d in m["shape"])
            keys["cond_stage_model.model." + k[len("conditioner.embedders.1.model.") :]] = shape
    return keys


# ---------------------------------------------------------------------------------------- layouts


def test_sd_layout_has_26_blocks_base_first_then_in_mid_out():
    assert len(SD_BLOCKS) == 26
    assert SD_BLOCKS[:2] == ("BASE", "IN00") and SD_BLOCKS[12:15] == ("IN11", "M00", "OUT00")
    assert SD_BLOCKS[-1] == "OUT11"


def test_sdxl_layout_has_20_blocks():
    assert len(SDXL_BLOCKS) == 20
    assert SDXL_BLOCKS[9:12] == ("IN08", "M00", "OUT00") and SDXL_BLOCKS[-1] == "OUT08"


def test_labels_name_family_and_variant():
    assert architecture("sd1").label == "SD1"
    assert architecture("sdxl", "inpainting").label == "SDXL inpainting"
    assert architecture("sd2", "pix2pix").label == "SD2 pix2pix"


# ------------------------------------------------------------------------------------ key → block


def test_every_real_sd1_key_goes_to_the_same_block_as_in_sd_meh():
    from sd_meh import merge  # the test oracle, in the [test] extra: missing, this fails rather than skips
    keys = _real("sd1-ldm.json")
    arch = architecture("sd1")
    # sd-meh has no key → block function: merge a 0 and a 1 with a distinct α per block and read the α back
    weights = {"alpha": [(i + 1) / 100 for i in range(25)]}
    bases = {"alpha": 0.9}
    differing = []
    for key in keys:
        thetas = {"model_a": {key: torch.zeros(1)}, "model_b": {key: torch.ones(1)}}
        result = merge.merge_key(key, thetas, weights, bases, "weighted_sum", precision=32)
        if result is None:
            theirs = None
        else:
            value = round(float(result), 4)
            theirs = "BASE" if value == 0.9 else SD_BLOCKS[round(value * 100)]
        if arch.block_of(key) != theirs:
            differing.append((key, arch.block_of(key), theirs))
    assert differing == [], f"{len(differing)} keys differ from sd-meh, first: {differing[:3]}"
    assert len(keys) == 1831  # the UNet, VAE, text encoder, EMA and scheduler: nothing skipped


def test_sd1_key_rule_of_the_reference():
    arch = architecture("sd1")
    assert arch.block_of("model.diffusion_model.time_embed.0.weight") == "IN00"
    assert arch.block_of("model.diffusion_model.out.2.weight") == "OUT11"
    assert arch.block_of("model.diffusion_model.input_blocks.7.1.proj_in.weight") == "IN07"
    assert arch.block_of("model.diffusion_model.middle_block.1.norm.bias") == "M00"
    assert arch.block_of("model.diffusion_model.output_blocks.10.1.transformer_blocks.0.attn1.to_out.0.bias") == "OUT10"
    assert arch.block_of("cond_stage_model.transformer.text_model.final_layer_norm.weight") == "BASE"
    assert arch.block_of("first_stage_model.decoder.conv_out.weight") == "BASE"
    # the EMA copies contain "model": sd-meh merges them with BASE, and so do we
    assert arch.block_of("model_ema.diffusion_modeltime_embed0weight") == "BASE"


def test_scheduler_buffers_and_position_ids_are_not_merged():
    for arch in (architecture("sd1"), architecture("sdxl")):
        assert arch.block_of("alphas_cumprod") is None
        assert arch.block_of("betas") is None
    assert architecture("sd1").block_of("cond_stage_model.transformer.text_model.embeddings.position_ids") is None
    assert architecture("sdxl").block_of("conditioner.embedders.0.transformer.text_model.embeddings.position_ids") is None
    assert architecture("sdxl").block_of("v_pred") is None


def test_every_real_sdxl_key_has_a_supermerger_xl_block():
    keys = _real("sdxl-sgm.json")
    arch = architecture("sdxl")
    seen = set()
    for key in keys:
        block = arch.block_of(key)
        seen.add(block)
        if key.startswith(("conditioner.", "first_stage_model.")):
            expected = None if key.endswith("position_ids") else "BASE"
        elif not key.startswith("model.diffusion_model."):
            expected = None  # v_pred, ztsnr, edm_vpred.*, scheduler buffers
        elif "time_embed" in key or "label_emb" in key:
            expected = "IN00"
        elif key.startswith("model.diffusion_model.out."):
            expected = "OUT08"
        elif m := re.match(r"model\.diffusion_model\.input_blocks\.(\d+)\.", key):
            expected = f"IN{int(m.group(1)):02d}"
        elif key.startswith("model.diffusion_model.middle_block."):
            expected = "M00"
        else:
            m = re.match(r"model\.diffusion_model\.output_blocks\.(\d+)\.", key)
            expected = f"OUT{int(m.group(1)):02d}"
        assert block == expected, key
    assert seen == set(SDXL_BLOCKS) | {None}  # every block is used


def test_sd2_openclip_text_encoder_goes_to_base():
    keys = _sd2_keys()
    arch = detect_architecture(keys, keys)
    assert arch.name == "sd2" and arch.blocks == SD_BLOCKS
    text = [k for k in keys if k.startswith("cond_stage_model.model.")]
    assert len(text) == 390
    assert {arch.block_of(k) for k in text} == {"BASE"}
    assert arch.block_of("model.diffusion_model.output_blocks.11.0.skip_connection.weight") == "OUT11"


# -------------------------------------------------------------------------------------- detection


def test_real_key_lists_are_detected_as_their_architecture():
    sd1 = _real("sd1-ldm.json")
    sdxl = _real("sdxl-sgm.json")
    assert detect_architecture(sd1, _shapes(sd1)) == architecture("sd1")
    assert detect_architecture(sdxl, _shapes(sdxl)) == architecture("sdxl")


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize(("variant", "channels"), [("", 4), ("inpainting", 9), ("pix2pix", 8)])
def test_variants_are_told_apart_by_the_input_convolution(arch, variant, channels):
    specs = key_specs(arch, variant=variant, scale=1 / 64)
    assert specs["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == channels
    detected = detect_architecture(specs, {k: s.shape for k, s in specs.items()})
    assert (detected.name, detected.variant) == (arch, variant)


def test_unknown_input_channel_count_is_refused():
    specs = {k: s.shape for k, s in key_specs("sd1", scale=1 / 64).items()}
    specs["model.diffusion_model.input_blocks.0.0.weight"] = (5, 7, 3, 3)
    with pytest.raises(CheckpointError, match=r"m\.safetensors: unknown model layout.*\[5, 7, 3, 3\]"):
        detect_architecture(specs, specs, "m.safetensors")


def test_keys_without_a_unet_are_not_a_stable_diffusion_checkpoint():
    with pytest.raises(CheckpointError, match=r"lora\.safetensors: not a Stable Diffusion checkpoint"):
        detect_architecture(["lora_unet_down.weight", "lora_te_up.weight"], source="lora.safetensors")


def test_a_unet_without_a_known_text_encoder_is_an_unknown_layout():
    keys = [k for k in key_specs("sd1", scale=1 / 64) if not k.startswith("cond_stage_model.")]
    with pytest.raises(CheckpointError, match="unet.safetensors: unknown model layout"):
        detect_architecture(keys, source="unet.safetensors")


def test_a_text_encoder_that_does_not_fit_the_unet_is_an_unknown_layout():
    # an SD1 text encoder on an SDXL UNet (9 input blocks where SD1 has 12)
    keys = [k for k in key_specs("sdxl", scale=1 / 64) if not k.startswith("conditioner.")]
    keys += [k for k in key_specs("sd1", scale=1 / 64) if k.startswith("cond_stage_model.")]
    with pytest.raises(CheckpointError, match="9 input and 9 output blocks"):
        detect_architecture(keys, source="odd.safetensors")


# -------------------------------------------------------------------- the model factory's key lists


@pytest.mark.parametrize(("arch", "name", "options"), [("sd1", "sd1-ldm.json", {"ema": True}), ("sdxl", "sdxl-sgm.json", {"sdxl_extras": True})])
def test_model_factory_reproduces_every_real_key_with_its_shape_and_dtype(arch, name, options):
    real = {k: (tuple(m["shape"]), _DTYPES[m["dtype"]], bool(m.get("optional"))) for k, m in _real(name).items()}
    generated = {k: (s.shape, s.dtype, s.optional) for k, s in key_specs(arch, **options).items()}
    assert generated == real
