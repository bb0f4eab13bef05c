"""The check that a merge holds only finite numbers, before it is handed to a renderer.

Several methods can produce NaN or infinity for some weights (a difference scaled far out of range
overflows fp16, a division by a near-zero norm); a WebUI given such a checkpoint renders black or
noise, or fails every generation. One pass of ``aminmax`` in the tensor's own dtype finds them: both
ends propagate NaN, and an infinity is one of the ends. (Measured on full-size SD1 in fp16, 2 CPU
threads: 0.1 s, against 2.6 s for float64 sums, whose conversion torch does not vectorise.)
"""

from __future__ import annotations

from typing import Mapping

import torch

from bayes_merger.errors import BayesMergerError, BrokenMerge
from bayes_merger.merge.arch import Architecture
from bayes_merger.merge.checkpoint import parse_dtype


def check_finite(tensors: Mapping[str, torch.Tensor], architecture: Architecture, method: str,
                 dtype: str | None = None) -> None:
    """Raise a BrokenMerge naming the method and the first block with a NaN or infinite value, once
    saved in ``dtype`` ("fp16", "bf16", "fp32"; default: each tensor's own): an fp32 merge saved as fp16
    turns a value past 65504 into an infinity."""
    keys = [key for key, t in tensors.items() if t.is_floating_point() and t.numel()]
    if not keys:
        return
    saved_as = parse_dtype(dtype)
    bad = torch.nonzero(~finite_rows([tensors[key] for key in keys], saved_as)).flatten().tolist()
    if not bad:
        return
    blocks: list[str] = []
    for index in bad:
        block = _block(architecture, keys[index])
        if block not in blocks:
            blocks.append(block)
    more = f" (and {len(blocks) - 1} more block(s))" if len(blocks) > 1 else ""
    saved = f" once saved as {dtype}" if saved_as is not None else ""
    raise BrokenMerge(
        f"The {method} merge has NaN or infinite values in block {blocks[0]}{more}{saved}, first in {keys[bad[0]]}; it was "
        f"not handed to the WebUI (narrow that block's weight range in optimiser.custom_ranges, or use another method)."
    )


def finite_rows(tensors: list[torch.Tensor], saved_as: torch.dtype | None) -> torch.Tensor:
    """Whether each tensor holds only finite values that ``saved_as`` (default: its own dtype) can hold: a bool
    per tensor, on the tensors' device. The limits are made there too: a CPU tensor of them beside CUDA ones
    (anything but a 0-dim one) is a device mismatch, which stopped every merge on a GPU at its first trial."""
    with torch.no_grad():
        ends = torch.stack([torch.stack(torch.aminmax(tensor)).float() for tensor in tensors])
        limits = ends.new_tensor([torch.finfo(saved_as or tensor.dtype).max for tensor in tensors])
        # in float32 an fp16 or bf16 limit is exact; NaN fails the comparison, infinity the first test
        return torch.isfinite(ends).all(dim=1) & (ends.abs() <= limits[:, None]).all(dim=1)


def _block(architecture: Architecture, key: str) -> str:
    try:
        return architecture.block_of(key) or "none (a key copied from model A)"
    except BayesMergerError:
        return "unknown"
