"""Merge methods: the per-tensor formulas users know from sd-meh and supermerger, in one registry.

Each method merges one key's tensors ``a``, ``b`` (and ``c``) with that key's block weights α, β:

==========================  ===  ===  ============================================================
method                      β    C    result
==========================  ===  ===  ============================================================
weighted_sum                no   no   (1 − α)·a + α·b
add_difference              no   yes  a + α·(b − c)
sum_twice                   yes  yes  (1 − β)·((1 − α)·a + α·b) + β·c
triple_sum                  yes  yes  (1 − α − β)·a + α·b + β·c
weighted_subtraction        yes  no   (a − α·β·b) / (1 − α·β); β nudged down by 1e-10 where α·β = 1
tensor_sum                  yes  no   a with a band of rows of dim 0 (width α, offset β) from b
euclidean_add_difference    no   yes  c + the α-weighted RMS of the unit deltas a − c and b − c,
                                      signed and scaled like ((1 − α)·a + α·b) − c
multiply_difference         yes  yes  c + sign((1 − β)·a + β·b − c) · |a − c|^(1 − α) · |b − c|^α
similarity_add_difference   yes  yes  lerp(a + α·(b − c), (1 − α/2)·a + (α/2)·b, s) with the
                                      similarity s = β·(a·b / max(|a|, |b|)² + 1) / 2 (β at 0/0)
top_k_tensor_sum            yes  no   a, with a's own values laid out in b's rank order wherever
                                      their magnitude rank falls in the band (width α, offset β)
distribution_crossover      yes  yes  a and b ordered by c, mixed in frequency space (rfft): low
                                      frequencies from a, high from b, cut at α, soft over β
ties_add_difference         yes  yes  c + α·(mean of the deltas a − c, b − c agreeing with their
                                      elected sign, each first trimmed to its top-β magnitudes)
==========================  ===  ===  ============================================================

Every method has the signature ``fn(a, b, c, alpha, beta, out=None)``: ``c`` is ``None`` and
``beta`` 0.0 for methods that do not use them; the result is written into ``out`` when given (same
shape and dtype as ``a``, never aliasing an input) and returned, otherwise a new tensor is returned.
The inputs are never modified. Only floating-point tensors are merged: an integer or bool tensor
(such as CLIP's ``position_ids``) is refused with a ``MergeError`` rather than silently turned into
floats. The linear methods compute in the inputs' dtype, in place, without temporaries (they run on
every parameter of every trial); the non-linear ones compute in fp32 and write back in ``out``'s
dtype. sd-meh 0.9.5 is the oracle the tests compare with; where we deliberately differ, the
function's comment says so.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor

from bayes_merger.errors import MergeError

__all__ = [
    "METHODS",
    "MergeFn",
    "MergeMethod",
    "build_registry",
    "clip_to_inputs",
    "get_method",
]

# fn(a, b, c, alpha, beta, out) -> the merged tensor (out itself when given)
MergeFn = Callable[[Tensor, Tensor, Optional[Tensor], float, float, Optional[Tensor]], Tensor]

# Nudge applied to β where α·β = 1 would divide by zero in weighted_subtraction, and the width under
# which distribution_crossover's soft cut becomes a hard one (the same value sd-meh uses).
_EPSILON = 1e-10


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its formula and which inputs it needs."""

    name: str
    fn: MergeFn
    needs_beta: bool
    needs_c: bool
    # one line, shown in error messages and documentation
    description: str


# --------------------------------------------------------------------------------------------------
# Input checks shared by every method


def _prepare(
    method: str, a: Tensor, b: Tensor, c: Tensor | None, out: Tensor | None, needs_c: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Check the inputs fit together; return b and c in a's dtype and the output buffer.

    The checks are a few attribute reads per key, nothing next to the arithmetic.
    """
    inputs = {"A": a, "B": b, "C": c} if needs_c else {"A": a, "B": b}
    for model, tensor in inputs.items():
        if tensor is None:
            raise MergeError(f"Merge method '{method}' needs model C, but none was given.")
        if not tensor.is_floating_point():
            # Interpolating an integer tensor (CLIP's position_ids) would turn indices into floats.
            raise MergeError(
                f"Merge method '{method}' got a {tensor.dtype} tensor from model {model}; only "
                "floating-point tensors are merged (integer ones are copied from model A)."
            )
        if tensor.shape != a.shape:
            raise MergeError(
                f"Merge method '{method}': model {model}'s tensor has shape {tuple(tensor.shape)}, "
                f"model A's has {tuple(a.shape)}."
            )
    if out is None:
        out = torch.empty_like(a)
    elif out.shape != a.shape or out.dtype != a.dtype:
        raise MergeError(
            f"Merge method '{method}': the output buffer is {out.dtype} {tuple(out.shape)}, "
            f"model A's tensor is {a.dtype} {tuple(a.shape)}."
        )
    # The linear kernels (lerp, add with alpha) need one dtype; a model stored in another precision
    # is brought to A's, which is the precision of the result anyway.
    if b.dtype != a.dtype:
        b = b.to(a.dtype)
    if needs_c and c is not None and c.dtype != a.dtype:
        c = c.to(a.dtype)
    return b, c, out


def _fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 for the non-linear methods; for an fp32 input this IS the input: never modify."""
    return t.float()


# --------------------------------------------------------------------------------------------------
# Linear methods: in place in the inputs' dtype


def weighted_sum(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """(1 − α)·a + α·b."""
    b, _, out = _prepare("weighted_sum", a, b, c, out, needs_c=False)
    # A copy moves a third less memory than a lerp; α = 0 and 1 are common block values.
    if alpha == 0:
        return out.copy_(a)
    if alpha == 1:
        return out.copy_(b)
    # One fused pass, no temporary. Measured on 64 M fp16 values (2 CPU threads): 1.3x faster than
    # mul + add_ into out, 1.6x than sub + add(alpha), 11-19x than (1 − α)·a + α·b with temporaries.
    return torch.lerp(a, b, alpha, out=out)


def add_difference(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """a + α·(b − c)."""
    b, c, out = _prepare("add_difference", a, b, c, out, needs_c=True)
    if alpha == 0:
        return out.copy_(a)
    # Two passes into out, no temporary. Measured on 64 M fp16 values: as fast as a + α·b − α·c
    # (the other two-pass order), 1.25-1.3x faster than sub + mul_ + add_; allocating b − c costs
    # 3-5x, a + α·(b − c) with all its temporaries 7-12x. We keep this order because b − c is rounded before it is scaled, so a small difference
    # between two large weights is not lost to cancellation in fp16. torch.add rounds α itself to
    # the tensors' dtype on CPU (a relative 2^-11 in fp16): an error the size of rounding α·(b − c).
    torch.sub(b, c, out=out)
    return torch.add(a, out, alpha=alpha, out=out)


def sum_twice(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """(1 − β)·((1 − α)·a + α·b) + β·c."""
    b, c, out = _prepare("sum_twice", a, b, c, out, needs_c=True)
    torch.lerp(a, b, alpha, out=out)
    return out.lerp_(c, beta)


def triple_sum(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """(1 − α − β)·a + α·b + β·c."""
    b, c, out = _prepare("triple_sum", a, b, c, out, needs_c=True)
    torch.mul(a, 1 - alpha - beta, out=out)
    return out.add_(b, alpha=alpha).add_(c, alpha=beta)


def weighted_subtraction(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """(a − α·β·b) / (1 − α·β)."""
    b, _, out = _prepare("weighted_subtraction", a, b, c, out, needs_c=False)
    # sd-meh nudges β only for α = β = 1; we nudge wherever α·β = 1 (reachable only with weights
    # outside [0, 1]) so that no bound can make it divide by zero. The results agree for α = β = 1.
    product = alpha * beta
    if product == 1:
        product = alpha * (beta - _EPSILON)
    torch.add(a, b, alpha=-product, out=out)
    return out.div_(1 - product)


def tensor_sum(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """a with rows [⌊nβ⌋, ⌊n(α+β)⌋) of dim 0 from b; past the end (α + β > 1) the band wraps."""
    b, _, out = _prepare("tensor_sum", a, b, c, out, needs_c=False)
    # A 0-d tensor (OpenCLIP's logit_scale) is taken as one row; sd-meh raises IndexError on it.
    a_rows, b_rows, out_rows = (t.reshape(1) for t in (a, b, out)) if a.dim() == 0 else (a, b, out)
    rows = a_rows.shape[0]
    if alpha + beta <= 1:
        base, band, start, stop = a_rows, b_rows, int(rows * beta), int(rows * (alpha + beta))
    else:
        # The band wraps past the last row: b everywhere except rows [n(α+β−1), nβ) from a.
        base, band, start, stop = b_rows, a_rows, int(rows * (alpha + beta - 1)), int(rows * beta)
    out_rows.copy_(base)
    out_rows[start:stop] = band[start:stop]
    return out


# --------------------------------------------------------------------------------------------------
# Non-linear methods: in fp32, written back in out's dtype


def _unit(delta: Tensor) -> Tensor:
    """delta / ‖delta‖ in place, all zeros when delta is all zeros."""
    return delta.div_(torch.linalg.vector_norm(delta)).nan_to_num_()


def euclidean_add_difference(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """c + RMS_α(unit(a − c), unit(b − c)), signed and scaled like ((1 − α)·a + α·b) − c."""
    b, c, out = _prepare("euclidean_add_difference", a, b, c, out, needs_c=True)
    af, bf, cf = _fp32(a), _fp32(b), _fp32(c)
    spread = torch.lerp(_unit(af - cf).square_(), _unit(bf - cf).square_(), alpha).sqrt_()
    target = torch.lerp(af, bf, alpha).sub_(cf)
    spread.copysign_(target)
    spread_norm = torch.linalg.vector_norm(spread)
    # Deliberate difference: where a − c and b − c are both zero (three identical tensors, common
    # for shared VAE / text-encoder keys) sd-meh divides 0 by 0 and returns NaN; the merge is c.
    if spread_norm == 0:
        return out.copy_(c)
    spread.mul_(torch.linalg.vector_norm(target) / spread_norm).add_(cf)
    return out.copy_(spread)


def multiply_difference(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """c + sign((1 − β)·a + β·b − c) · |a − c|^(1 − α) · |b − c|^α (sign of 0 taken as +)."""
    b, c, out = _prepare("multiply_difference", a, b, c, out, needs_c=True)
    af, bf, cf = _fp32(a), _fp32(b), _fp32(c)
    # 0^0 is 1 here (torch.pow), as in sd-meh: at α = 1 the result is c ± |b − c|.
    magnitude = (af - cf).abs_().pow_(1 - alpha).mul_((bf - cf).abs_().pow_(alpha))
    magnitude.copysign_(torch.lerp(af, bf, beta).sub_(cf))
    return out.copy_(magnitude.add_(cf))


def similarity_add_difference(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """Blend of add-difference and a half-α weighted sum, leaning to the sum where a and b agree."""
    b, c, out = _prepare("similarity_add_difference", a, b, c, out, needs_c=True)
    af, bf, cf = _fp32(a), _fp32(b), _fp32(c)
    # fp32 also keeps max(|a|, |b|)² from overflowing, which it does in fp16 for |x| > 256.
    scale = torch.maximum(af.abs(), bf.abs()).square_()
    similarity = (af * bf).div_(scale).add_(1).mul_(beta / 2).nan_to_num_(nan=beta)
    with_difference = torch.add(af, bf - cf, alpha=alpha)
    blended = torch.lerp(af, bf, alpha / 2)
    return out.copy_(torch.lerp(with_difference, blended, similarity))


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


def top_k_tensor_sum(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """a, with a's own values laid out in b's rank order where their magnitude is in the band."""
    b, _, out = _prepare("top_k_tensor_sum", a, b, c, out, needs_c=False)
    flat_a = _fp32(a).reshape(-1)
    count = flat_a.numel()
    start, end, wraps = _band(alpha, beta, count)
    magnitudes = flat_a.abs()
    low, high = _kth_smallest(magnitudes, start), _kth_smallest(magnitudes, end)
    # b_rank[i]: the rank of b[i] among b's values; a stable sort makes ties deterministic.
    b_order = torch.argsort(_fp32(b).reshape(-1), stable=True)
    b_rank = torch.empty_like(b_order)
    b_rank[b_order] = torch.arange(count, device=b_order.device)
    # The value of a's distribution that takes b's place: a's b_rank[i]-th smallest value.
    moved = torch.sort(flat_a).values[b_rank]
    moved_magnitudes = moved.abs()
    in_band = (moved_magnitudes > low) & (moved_magnitudes <= high)
    if wraps:
        in_band.logical_not_()
    return out.copy_(torch.where(in_band, moved, flat_a).reshape(a.shape))


def distribution_crossover(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """a and b ordered by c, frequencies below α from a and above from b (soft over β), reordered."""
    b, c, out = _prepare("distribution_crossover", a, b, c, out, needs_c=True)
    af, bf = _fp32(a), _fp32(b)
    if a.dim() == 0:
        # No spectrum to split: the α-weighted mix, leaning to a as α grows (sd-meh's rule).
        return out.copy_(torch.lerp(bf, af, alpha))
    # Deliberate difference: a stable sort, so tied values of c (frequent in fp16 checkpoints) give
    # the same order on every run and device; sd-meh's unstable sort may order them either way.
    c_order = torch.argsort(c.reshape(-1), stable=True)
    a_spectrum = torch.fft.rfft(af.reshape(-1)[c_order])
    b_spectrum = torch.fft.rfft(bf.reshape(-1)[c_order])
    bins = a_spectrum.numel()
    frequency = torch.arange(bins, device=a.device, dtype=torch.float32) / bins
    if beta > _EPSILON:
        b_share = frequency.sub_(alpha).div_(beta).add_(0.5).clamp_(0.0, 1.0)
    else:
        b_share = (frequency >= alpha).float()
    mixed = a_spectrum * (1 - b_share) + b_spectrum * b_share
    ordered = torch.fft.irfft(mixed, n=c_order.numel())
    merged = torch.empty_like(ordered)
    merged[c_order] = ordered
    return out.copy_(merged.reshape(a.shape))


def _keep_top(delta: Tensor, fraction: float) -> Tensor:
    """delta in place with all but its largest magnitudes (the top fraction, ties kept) set to 0."""
    # The threshold is the k-th smallest magnitude, k = max(⌊(1 − fraction)·n⌋, 1): at fraction 0
    # only the largest survive, at 1 everything does; the same k as sd-meh.
    k = max(int((1 - fraction) * delta.numel()), 1)
    magnitudes = delta.abs()
    threshold = torch.kthvalue(magnitudes.reshape(-1), k).values
    return delta.mul_(magnitudes >= threshold)


def ties_add_difference(
    a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
) -> Tensor:
    """c + α·(mean of the trimmed deltas a − c, b − c that agree with their elected sign)."""
    b, c, out = _prepare("ties_add_difference", a, b, c, out, needs_c=True)
    af, bf, cf = _fp32(a), _fp32(b), _fp32(c)
    delta_a, delta_b = _keep_top(af - cf, beta), _keep_top(bf - cf, beta)
    sign_a, sign_b = delta_a.sign(), delta_b.sign()
    elected = torch.sign(sign_a + sign_b)
    agree_a, agree_b = sign_a == elected, sign_b == elected
    total = delta_a.mul_(agree_a).add_(delta_b.mul_(agree_b))
    agreeing = agree_a.float().add_(agree_b)
    # Where no delta agrees (+ against −) the sum is 0: divide by 1 instead of 0 (sd-meh's 0/0 → 0).
    mean = total.div_(agreeing.clamp_(min=1))
    return out.copy_(mean.mul_(alpha).add_(cf))


# --------------------------------------------------------------------------------------------------
# Registry


def build_registry(methods: Iterable[MergeMethod]) -> Mapping[str, MergeMethod]:
    """A read-only name → method mapping; two methods with one name are a bug and refused."""
    registry: dict[str, MergeMethod] = {}
    for method in methods:
        if method.name in registry:
            raise ValueError(f"Merge method '{method.name}' is registered twice.")
        registry[method.name] = method
    return MappingProxyType(registry)


# The one list of methods, in the reference table's order; nothing is discovered by introspection.
METHODS: Mapping[str, MergeMethod] = build_registry(
    (
        MergeMethod("weighted_sum", weighted_sum, False, False, "(1 - alpha)*A + alpha*B"),
        MergeMethod("add_difference", add_difference, False, True, "A + alpha*(B - C)"),
        MergeMethod(
            "sum_twice", sum_twice, True, True, "(1 - beta)*((1 - alpha)*A + alpha*B) + beta*C"
        ),
        MergeMethod(
            "triple_sum", triple_sum, True, True, "(1 - alpha - beta)*A + alpha*B + beta*C"
        ),
        MergeMethod(
            "weighted_subtraction",
            weighted_subtraction,
            True,
            False,
            "(A - alpha*beta*B) / (1 - alpha*beta)",
        ),
        MergeMethod(
            "tensor_sum",
            tensor_sum,
            True,
            False,
            "A with a band of rows (width alpha, offset beta) taken from B",
        ),
        MergeMethod(
            "euclidean_add_difference",
            euclidean_add_difference,
            False,
            True,
            "C + alpha-weighted RMS of the unit deltas A - C, B - C, scaled like the weighted sum",
        ),
        MergeMethod(
            "multiply_difference",
            multiply_difference,
            True,
            True,
            "C + sign(lerp(A, B, beta) - C) * |A - C|^(1 - alpha) * |B - C|^alpha",
        ),
        MergeMethod(
            "similarity_add_difference",
            similarity_add_difference,
            True,
            True,
            "add_difference where A and B differ, a weighted sum where they agree (beta: how much)",
        ),
        MergeMethod(
            "top_k_tensor_sum",
            top_k_tensor_sum,
            True,
            False,
            "A's values laid out in B's order inside a magnitude band (width alpha, offset beta)",
        ),
        MergeMethod(
            "distribution_crossover",
            distribution_crossover,
            True,
            True,
            "A and B sorted by C, low frequencies from A, high from B (cut alpha, softness beta)",
        ),
        MergeMethod(
            "ties_add_difference",
            ties_add_difference,
            True,
            True,
            "C + alpha * sign-elected mean of the deltas A - C, B - C trimmed to their top beta",
        ),
    )
)


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; a MergeError suggesting the closest name when there is none."""
    method = METHODS.get(name)
    if method is not None:
        return method
    valid = ", ".join(METHODS)
    close = difflib.get_close_matches(name.strip().lower(), METHODS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    raise MergeError(f"Unknown merge method '{name}'{hint} Valid methods: {valid}.")


def clip_to_inputs(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """weights_clip: clamp out in place to [min(a, b), max(a, b)] elementwise; returns out."""
    # One temporary holds first the lower, then the upper bound.
    bound = torch.minimum(a, b)
    torch.maximum(out, bound, out=out)
    torch.maximum(a, b, out=bound)
    return torch.minimum(out, bound, out=out)
