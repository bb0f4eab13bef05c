"""The non-linear methods built on the differences a − c and b − c: computed in fp32, written back in out's dtype.

Each splits off, as ``prepare``, what does not depend on α and β (the differences, their norms or
magnitudes); its docstring says how much memory that is when the Merger keeps it for the run.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from bayes_merger.merge.methods.registry import fp32, merge_method


def _unit(delta: Tensor) -> Tensor:
    """delta / ‖delta‖ in place, all zeros when delta is all zeros."""
    return delta.div_(torch.linalg.vector_norm(delta)).nan_to_num_()


def _each_delta(a: Tensor, b: Tensor, c: Tensor | None, then: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """then(a − c) and then(b − c), the deltas in fp32 (new tensors: ``then`` may change them in place)."""
    assert c is not None  # needs_c: the checks guarantee it
    cf = fp32(c)
    return then(fp32(a) - cf), then(fp32(b) - cf)


def _unit_deltas_squared(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple[Tensor, ...]:
    """The inputs and unit(a − c)², unit(b − c)²: 8 bytes per value (two fp32 tensors)."""
    return (a, b, c, *_each_delta(a, b, c, lambda delta: _unit(delta).square_()))


@merge_method(
    needs_c=True,
    description="C + alpha-weighted RMS of the unit deltas A - C, B - C, scaled like the weighted sum",
    prepare=_unit_deltas_squared,
)
def euclidean_add_difference(prepared: tuple[Tensor, ...], alpha: float, beta: float, out: Tensor) -> Tensor:
    """c + RMS_α(unit(a − c), unit(b − c)), signed and scaled like ((1 − α)·a + α·b) − c."""
    a, b, c, unit_a_squared, unit_b_squared = prepared
    af, bf, cf = fp32(a), fp32(b), fp32(c)
    spread = torch.lerp(unit_a_squared, unit_b_squared, alpha).sqrt_()
    target = torch.lerp(af, bf, alpha).sub_(cf)
    spread.copysign_(target)
    spread_norm = torch.linalg.vector_norm(spread)
    # Deliberate difference: where a − c and b − c are both zero (three identical tensors, common
    # for shared VAE / text-encoder keys) sd-meh divides 0 by 0 and returns NaN; the merge is c.
    if spread_norm == 0:
        return out.copy_(c)
    spread.mul_(torch.linalg.vector_norm(target) / spread_norm).add_(cf)
    return out.copy_(spread)


def _distances(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple[Tensor, ...]:
    """The inputs and |a − c|, |b − c|: 8 bytes per value (two fp32 tensors)."""
    return (a, b, c, *_each_delta(a, b, c, Tensor.abs_))


@merge_method(
    needs_beta=True,
    needs_c=True,
    description="C + sign(lerp(A, B, beta) - C) * |A - C|^(1 - alpha) * |B - C|^alpha",
    prepare=_distances,
)
def multiply_difference(prepared: tuple[Tensor, ...], alpha: float, beta: float, out: Tensor) -> Tensor:
    """c + sign((1 − β)·a + β·b − c) · |a − c|^(1 − α) · |b − c|^α (sign of 0 taken as +)."""
    a, b, c, distance_a, distance_b = prepared
    af, bf, cf = fp32(a), fp32(b), fp32(c)
    # 0^0 is 1 here (torch.pow), as in sd-meh: at α = 1 the result is c ± |b − c|.
    magnitude = torch.pow(distance_a, 1 - alpha).mul_(torch.pow(distance_b, alpha))
    magnitude.copysign_(torch.lerp(af, bf, beta).sub_(cf))
    return out.copy_(magnitude.add_(cf))


def _agreement(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple[Tensor, ...]:
    """a, b, a·b / max(|a|, |b|)² + 1 (NaN at 0/0) and b − c: 8 bytes per value (two fp32 tensors)."""
    assert c is not None
    af, bf, cf = fp32(a), fp32(b), fp32(c)
    # fp32 also keeps max(|a|, |b|)² from overflowing, which it does in fp16 for |x| > 256.
    scale = torch.maximum(af.abs(), bf.abs()).square_()
    return a, b, (af * bf).div_(scale).add_(1), bf - cf


@merge_method(
    needs_beta=True,
    needs_c=True,
    description="add_difference where A and B differ, a weighted sum where they agree (beta: how much)",
    prepare=_agreement,
)
def similarity_add_difference(prepared: tuple[Tensor, ...], alpha: float, beta: float, out: Tensor) -> Tensor:
    """Blend of add-difference and a half-α weighted sum, leaning to the sum where a and b agree."""
    a, b, agreement, difference = prepared
    af, bf = fp32(a), fp32(b)
    similarity = agreement.mul(beta / 2).nan_to_num_(nan=beta)
    with_difference = torch.add(af, difference, alpha=alpha)
    blended = torch.lerp(af, bf, alpha / 2)
    return out.copy_(torch.lerp(with_difference, blended, similarity))


def _keep_top(delta: Tensor, fraction: float) -> Tensor:
    """A copy of delta with all but its largest magnitudes (the top fraction, ties kept) set to 0."""
    # The threshold is the k-th smallest magnitude, k = max(⌊(1 − fraction)·n⌋, 1): at fraction 0
    # only the largest survive, at 1 everything does; the same k as sd-meh. A β outside [0, 1] (a user's
    # optimiser.custom_ranges) keeps what its nearest edge keeps: a k past n would stop the run, hours in.
    k = max(int((1 - min(max(fraction, 0.0), 1.0)) * delta.numel()), 1)
    magnitudes = delta.abs()
    threshold = torch.kthvalue(magnitudes.reshape(-1), k).values
    return delta.mul(magnitudes >= threshold)


def _deltas(a: Tensor, b: Tensor, c: Tensor | None, scratch: Tensor | None) -> tuple[Tensor, ...]:
    """c and the deltas a − c, b − c: 8 bytes per value (two fp32 tensors)."""
    return (c, *_each_delta(a, b, c, lambda delta: delta))


@merge_method(
    needs_beta=True,
    needs_c=True,
    description="C + alpha * sign-elected mean of the deltas A - C, B - C trimmed to their top beta",
    prepare=_deltas,
)
def ties_add_difference(prepared: tuple[Tensor, ...], alpha: float, beta: float, out: Tensor) -> Tensor:
    """c + α·(mean of the trimmed deltas a − c, b − c that agree with their elected sign)."""
    c, delta_a, delta_b = prepared
    delta_a, delta_b = _keep_top(delta_a, beta), _keep_top(delta_b, beta)
    sign_a, sign_b = delta_a.sign(), delta_b.sign()
    elected = torch.sign(sign_a + sign_b)
    agree_a, agree_b = sign_a == elected, sign_b == elected
    total = delta_a.mul_(agree_a).add_(delta_b.mul_(agree_b))
    agreeing = agree_a.float().add_(agree_b)
    # Where no delta agrees (+ against −) the sum is 0: divide by 1 instead of 0 (sd-meh's 0/0 → 0).
    mean = total.div_(agreeing.clamp_(min=1))
    return out.copy_(mean.mul_(alpha).add_(fp32(c)))
