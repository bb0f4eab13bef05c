"""Block weights → ModelMergeSD1/SDXL ratios: every UNet key gets 1 − α of the block our rule gives it."""

from __future__ import annotations

import pytest

from bayes_merger.errors import ConfigError
from bayes_merger.merge.arch import architecture
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.renderers.comfyui.blocks import block_ratios, clip_ratio, merge_node, prefix_block
from bayes_merger.testing.fake_comfyui_nodes import SD1_MERGE_INPUTS, SDXL_MERGE_INPUTS, UNET, _merge_unet
from bayes_merger.testing.models import make_state_dict

SD1_EXPECTED = {
    # label_emb. of SD2 unCLIP: BASE, as the torch merger's rule has it (no SD1/SD2 rule names it)
    "time_embed.": "IN00", "label_emb.": "BASE",
    **{f"input_blocks.{i}.": f"IN{i:02d}" for i in range(12)},
    "middle_block.0.": "M00", "middle_block.1.": "M00", "middle_block.2.": "M00",
    **{f"output_blocks.{i}.": f"OUT{i:02d}" for i in range(12)},
    "out.": "OUT11",
}
SDXL_EXPECTED = {
    "time_embed.": "IN00", "label_emb.": "IN00",
    **{f"input_blocks.{i}": f"IN{i:02d}" for i in range(9)},
    "middle_block.0": "M00", "middle_block.1": "M00", "middle_block.2": "M00",
    **{f"output_blocks.{i}": f"OUT{i:02d}" for i in range(9)},
    "out.": "OUT08",
}


def distinct_weights(blocks):
    """α = i / 100 for block i: every block has its own weight, so a wrong mapping shows."""
    return BlockWeights(blocks, [i / 100 for i in range(len(blocks))])


@pytest.mark.parametrize("arch_name, inputs, expected", [("sd1", SD1_MERGE_INPUTS, SD1_EXPECTED),
                                                         ("sd2", SD1_MERGE_INPUTS, SD1_EXPECTED),
                                                         ("sdxl", SDXL_MERGE_INPUTS, SDXL_EXPECTED)])
def test_each_merge_input_takes_the_block_of_our_key_rule(arch_name, inputs, expected):
    arch = architecture(arch_name)
    assert {prefix: prefix_block(arch, prefix) for prefix in inputs} == expected


@pytest.mark.parametrize("arch_name, inputs", [("sd1", SD1_MERGE_INPUTS), ("sdxl", SDXL_MERGE_INPUTS)])
def test_the_ratio_is_one_minus_alpha_of_the_block(arch_name, inputs):
    arch = architecture(arch_name)
    weights = distinct_weights(arch.blocks)
    alpha = dict(zip(weights.blocks, weights.alpha))
    ratios = block_ratios(arch, weights, inputs)
    assert list(ratios) == list(inputs)
    for prefix, ratio in ratios.items():
        assert ratio == pytest.approx(1 - alpha[prefix_block(arch, prefix)])


@pytest.mark.parametrize("arch_name, inputs", [("sd1", SD1_MERGE_INPUTS), ("sd2", SD1_MERGE_INPUTS),
                                               ("sdxl", SDXL_MERGE_INPUTS)])
def test_every_unet_key_is_merged_with_the_weight_of_its_block(arch_name, inputs):
    """Through ComfyUI's longest-prefix rule, on the real key names: the in-graph merge of each key is
    (1 − α)·A + α·B with α of ``Architecture.block_of(key)``, as the torch merger does it."""
    arch = architecture(arch_name)
    weights = distinct_weights(arch.blocks)
    alpha = dict(zip(weights.blocks, weights.alpha))
    ones = {k: v.float() * 0 + 1 for k, v in make_state_dict(arch_name, seed=1).items() if k.startswith(UNET)}
    zeros = {k: v * 0 for k, v in ones.items()}
    merged = _merge_unet(ones, zeros, block_ratios(arch, weights, inputs))  # ratio·1 + (1 − ratio)·0
    assert merged
    for key, value in merged.items():
        assert float(value.flatten()[0]) == pytest.approx(1 - alpha[arch.block_of(key)]), key


def test_base_is_the_text_encoder_ratio():
    weights = distinct_weights(architecture("sd1").blocks)
    assert clip_ratio(weights) == 1.0  # BASE is block 0: α = 0 keeps model A's text encoder


def test_merge_node_per_architecture():
    assert [merge_node(architecture(n)) for n in ("sd1", "sd2", "sdxl")] == ["ModelMergeSD1", "ModelMergeSD2", "ModelMergeSDXL"]


def test_a_weight_outside_zero_one_cannot_be_merged_in_the_graph():
    arch = architecture("sd1")
    weights = BlockWeights.uniform(arch.blocks, 0.5)
    weights = BlockWeights(arch.blocks, (1.2,) + weights.alpha[1:])
    with pytest.raises(ConfigError, match="cannot be merged in ComfyUI's graph.*comfyui_handoff=file"):
        clip_ratio(weights)
