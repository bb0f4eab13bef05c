"""The methods that reorder values: by magnitude rank (top_k_tensor_sum) and by c's order in frequency space
(distribution_crossover). Computed in fp32, written back in out's dtype.

Their sorts and spectra do not depend on α and β: each splits them off as ``prepare``, its
docstring saying how much memory that is when the Merger keeps it for the run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayes_merger.merge.methods.linear import EPSILON
from bayes_merger.merge.methods.registry import fp32, merge_method


def _band(width: float, offset: float, count: int) -> tuple[int, int, bool]:
    """The [start, end) rank band of top_k_tensor_sum and whether it wraps (then it is the outside).

    A negative width extends the band below the offset; the offset wraps into [0, 1). Python's round
    (half to even) is used, as in sd-meh, so the band's ends agree with it element for element.
    """
    if width < 0:
        offset, width = offset + width, -width
    width = min(width, 1.0)
    offset %= 1.0
    if width + offset <= 1:
        return round(offset * count), round((width + offset) * count), False
    return round((width + offset - 1) * count), round(offset * count), True


def _kth_smallest(values: Tensor, k: int) -> Tensor | float:
    """The k-th smallest (1-based) of values; -1 for k = 0, below every magnitude."""
    return torch.kthvalue(values, k).values if k > 0 else -1.0


def _in_b_order(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple[Tensor, Tensor]:
    """a flat in fp32 and a's values laid out in b's rank order: 4 bytes per value, 8 for fp16/bf16 a."""
    flat_a = fp32(a).reshape(-1)
    # b_rank[i]: the rank of b[i] among b's values; a stable sort makes ties deterministic.
    b_order = torch.argsort(fp32(b).reshape(-1), stable=True)
    b_rank = torch.empty_like(b_order)
    b_rank[b_order] = torch.arange(flat_a.numel(), device=b_order.device)
    # The value of a's distribution that takes b's place: a's b_rank[i]-th smallest value.
    return flat_a, torch.sort(flat_a).values[b_rank]


@merge_method(
    needs_beta=True,
    description="A's values laid out in B's order inside a magnitude band (width alpha, offset beta)",
    prepare=_in_b_order,
)
def top_k_tensor_sum(prepared: tuple[Tensor, Tensor], alpha: float, beta: float, out: Tensor) -> Tensor:
    """a, with a's own values laid out in b's rank order where their magnitude is in the band."""
    flat_a, moved = prepared
    count = flat_a.numel()
    start, end, wraps = _band(alpha, beta, count)
    magnitudes = flat_a.abs()
    low, high = _kth_smallest(magnitudes, start), _kth_smallest(magnitudes, end)
    moved_magnitudes = moved.abs()
    in_band = (moved_magnitudes > low) & (moved_magnitudes <= high)
    if wraps:
        in_band.logical_not_()
    return out.copy_(torch.where(in_band, moved, flat_a).reshape(out.shape))


def _spectra_in_c_order(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple:
    """c's order and the spectra of a and b in that order: 16 bytes per value (int64 order, two
    complex64 half-spectra); a 0-d tensor has no spectrum and keeps a and b."""
    assert c is not None
    if a.dim() == 0:
        return a, b, None, None, None
    # Deliberate difference: a stable sort, so tied values of c (frequent in fp16 checkpoints) give
    # the same order on every run and device; sd-meh's unstable sort may order them either way.
    c_order = torch.argsort(c.reshape(-1), stable=True)
    a_spectrum = torch.fft.rfft(fp32(a).reshape(-1)[c_order])
    b_spectrum = torch.fft.rfft(fp32(b).reshape(-1)[c_order])
    return None, None, c_order, a_spectrum, b_spectrum


@merge_method(
    needs_beta=True,
    needs_c=True,
    description="A and B sorted by C, low frequencies from A, high from B (cut alpha, softness beta)",
    prepare=_spectra_in_c_order,
)
def distribution_crossover(prepared: tuple, alpha: float, beta: float, out: Tensor) -> Tensor:
    """a and b ordered by c, frequencies below α from a and above from b (soft over β), reordered."""
    a, b, c_order, a_spectrum, b_spectrum = prepared
    if c_order is None:
        # No spectrum to split: the α-weighted mix, leaning to a as α grows (sd-meh's rule).
        return out.copy_(torch.lerp(fp32(b), fp32(a), alpha))
    bins = a_spectrum.numel()
    frequency = torch.arange(bins, device=a_spectrum.device, dtype=torch.float32) / bins
    if beta > EPSILON:
        b_share = frequency.sub_(alpha).div_(beta).add_(0.5).clamp_(0.0, 1.0)
    else:
        b_share = (frequency >= alpha).float()
    mixed = a_spectrum * (1 - b_share) + b_spectrum * b_share
    ordered = torch.fft.irfft(mixed, n=c_order.numel())
    merged = torch.empty_like(ordered)
    merged[c_order] = ordered
    return out.copy_(merged.reshape(out.shape))
