"""The linear merge methods: computed in the inputs' dtype, in place, without temporaries.

They run on every parameter of every trial, so each is the fewest passes over memory that keeps
sd-meh's results; the measurements behind each choice are in its comments.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayes_merger.merge.methods.registry import merge_method

# Nudge applied to β where α·β = 1 would divide by zero in weighted_subtraction (sd-meh's value).
EPSILON = 1e-10


@merge_method(description="(1 - alpha)*A + alpha*B")
def weighted_sum(a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor) -> Tensor:
    """(1 − α)·a + α·b."""
    # A copy moves a third less memory than a lerp; α = 0 and 1 are common block values.
    if alpha == 0:
        return out.copy_(a)
    if alpha == 1:
        return out.copy_(b)
    # One fused pass, no temporary. Measured on 64 M fp16 values (2 CPU threads): 1.3x faster than
    # mul + add_ into out, 1.6x than sub + add(alpha), 11-19x than (1 − α)·a + α·b with temporaries.
    return torch.lerp(a, b, alpha, out=out)


def _difference(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple[Tensor, Tensor]:
    """a and b − c, in a's dtype: kept, one tensor the size of a; in one merge, written into ``scratch``."""
    assert c is not None  # needs_c: the checks guarantee it
    return a, torch.sub(b, c, out=scratch) if scratch is not None else torch.sub(b, c)


@merge_method(needs_c=True, description="A + alpha*(B - C)", prepare=_difference)
def add_difference(prepared: tuple[Tensor, Tensor], alpha: float, beta: float, out: Tensor) -> Tensor:
    """a + α·(b − c)."""
    a, difference = prepared  # in one merge, ``difference`` is ``out`` itself
    if alpha == 0:
        return out.copy_(a)
    # b − c is rounded before it is scaled, so a small difference between two large weights is not
    # lost to cancellation in fp16. In one merge, this is two passes into out (b − c, then the add):
    # measured on 64 M fp16 values as fast as a + α·b − α·c, 1.25-1.3x faster than sub + mul_ +
    # add_, 7-12x faster than a + α·(b − c) with all its temporaries; prepared, one pass. torch.add
    # rounds α itself to the tensors' dtype on CPU (a relative 2^-11 in fp16): an error the size of
    # rounding α·(b − c).
    return torch.add(a, difference, alpha=alpha, out=out)


@merge_method(needs_beta=True, needs_c=True, description="(1 - beta)*((1 - alpha)*A + alpha*B) + beta*C")
def sum_twice(a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor) -> Tensor:
    """(1 − β)·((1 − α)·a + α·b) + β·c."""
    assert c is not None
    torch.lerp(a, b, alpha, out=out)
    return out.lerp_(c, beta)


@merge_method(needs_beta=True, needs_c=True, description="(1 - alpha - beta)*A + alpha*B + beta*C")
def triple_sum(a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor) -> Tensor:
    """(1 − α − β)·a + α·b + β·c."""
    assert c is not None
    torch.mul(a, 1 - alpha - beta, out=out)
    return out.add_(b, alpha=alpha).add_(c, alpha=beta)


@merge_method(needs_beta=True, description="(A - alpha*beta*B) / (1 - alpha*beta)")
def weighted_subtraction(a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor) -> Tensor:
    """(a − α·β·b) / (1 − α·β)."""
    # sd-meh nudges β only for α = β = 1; we nudge wherever α·β = 1 (reachable only with weights
    # outside [0, 1]) so that no bound can make it divide by zero. The results agree for α = β = 1.
    product = alpha * beta
    if product == 1:
        product = alpha * (beta - EPSILON)
    torch.add(a, b, alpha=-product, out=out)
    return out.div_(1 - product)


@merge_method(needs_beta=True, description="A with a band of rows (width alpha, offset beta) taken from B")
def tensor_sum(a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor) -> Tensor:
    """a with rows [⌊nβ⌋, ⌊n(α+β)⌋) of dim 0 from b; past the end (α + β > 1) the band wraps."""
    # A 0-d tensor (OpenCLIP's logit_scale) is taken as one row; sd-meh raises IndexError on it.
    a_rows, b_rows, out_rows = (t.reshape(1) for t in (a, b, out)) if a.dim() == 0 else (a, b, out)
    rows = a_rows.shape[0]

    def row(x: float) -> int:  # cut at the tensor's ends: sd-meh's int() and slice took a band begun before row 0
        return min(max(math.floor(rows * x), 0), rows)  # (β < 0, a custom range) from the end, or not at all

    if alpha + beta <= 1:
        base, band, start, stop = a_rows, b_rows, row(beta), row(alpha + beta)
    else:
        # The band wraps past the last row: b everywhere except rows [n(α+β−1), nβ) from a.
        base, band, start, stop = b_rows, a_rows, row(alpha + beta - 1), row(beta)
    out_rows.copy_(base)
    out_rows[start:stop] = band[start:stop]
    return out
