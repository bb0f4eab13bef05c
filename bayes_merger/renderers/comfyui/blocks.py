"""Block weights → the ratios of ComfyUI's block-merge nodes, for a weighted sum merged in the graph.

``ModelMergeSD1`` (and ``ModelMergeSD2``, the same class) and ``ModelMergeSDXL`` take one ratio per
UNet prefix (``time_embed.``, ``label_emb.``, ``input_blocks.N.``, ``middle_block.0.``–``2.``,
``output_blocks.N.``, ``out.``; no trailing dot for SDXL) and compute, per key, the ratio of the
longest prefix it starts with: merged = ratio·model1 + (1 − ratio)·model2 (measured on 0.3.64).
With model1 = A and model2 = B, our weighted sum (1 − α)·A + α·B needs ratio = 1 − α.

Each prefix takes the block our key → block rule (``merge.arch``) gives a key under it, so the graph
merges exactly as the torch merger does: ``time_embed.`` (and SDXL's ``label_emb.``) → IN00,
``middle_block.0–2`` → M00, ``out.`` → the last OUT block, SD2 unCLIP's ``label_emb.`` → BASE. BASE is
the text encoder's weight too:
``CLIPMergeSimple`` with ratio 1 − α(BASE) (both SDXL encoders at once). **The VAE is not merged**:
ComfyUI's core has no VAE merge node, so the graph decodes with model A's VAE, whatever BASE is. The
torch merger merges the VAE with BASE; the two routes render the same picture when BASE is 0 (or
when A and B share their VAE, as most fine-tunes of one base model do).
"""

from __future__ import annotations

from collections.abc import Iterable

from bayes_merger.errors import ConfigError
from bayes_merger.merge.arch import UNET_PREFIX, Architecture, architecture
from bayes_merger.merge.weights import BlockWeights

MERGE_NODES = {"sd1": "ModelMergeSD1", "sd2": "ModelMergeSD2", "sdxl": "ModelMergeSDXL"}


def merge_node(arch: Architecture) -> str:
    return MERGE_NODES[arch.name]


def prefix_block(arch: Architecture, prefix: str) -> str:
    """The block of the UNet keys under a merge node's input ``prefix`` (our key → block rule)."""
    name = prefix if prefix.endswith(".") else prefix + "."
    block = architecture(arch.name).block_of(f"{UNET_PREFIX}{name}0.weight")
    assert block is not None, prefix  # every key under the UNet's prefix is merged
    return block


def block_ratios(arch: Architecture, weights: BlockWeights, prefixes: Iterable[str]) -> dict[str, float]:
    """The merge node's ratio inputs, in ``prefixes`` order (the node's own input order)."""
    alpha = dict(zip(weights.blocks, weights.alpha))
    if set(alpha) != set(arch.blocks):
        raise ConfigError(f"{len(weights.blocks)} block weights do not fit the {arch.label} merge node.")
    return {prefix: _ratio(alpha[prefix_block(arch, prefix)]) for prefix in prefixes}


def clip_ratio(weights: BlockWeights) -> float:
    """``CLIPMergeSimple``'s ratio: the text encoder takes BASE."""
    return _ratio(dict(zip(weights.blocks, weights.alpha))["BASE"])


def _ratio(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"A block weight of {alpha:g} cannot be merged in ComfyUI's graph (its ratios go from 0 to 1): "
            "keep optimiser bounds within [0, 1] or set webui.comfyui_handoff=file."
        )
    return 1.0 - alpha
