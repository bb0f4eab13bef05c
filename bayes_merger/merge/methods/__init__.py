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

Each method is declared once, by ``merge_method`` (``registry.py``), in a file by theme: ``linear.py``
(computed in the inputs' dtype, in place), ``difference.py`` (built on a − c and b − c) and
``rank.py`` (values reordered by rank or in frequency space); the non-linear ones compute in fp32 and
write back in the output's dtype. ``MergeMethod.fn(a, b, c, alpha, beta, out=None)`` merges one
key: ``c`` is ``None`` and ``beta`` 0.0 for methods that do not use them; the result is written into
``out`` when given (same shape and dtype as ``a``, never aliasing an input) and returned, otherwise a
new tensor is returned. The inputs are never modified. Only floating-point tensors are merged: an
integer or bool tensor (such as CLIP's ``position_ids``) is refused with a ``MergeError`` rather
than silently turned into floats. The Merger checks each key once, when it builds its plan, and then
calls the unchecked ``formula`` (or ``finish`` on what ``prepare`` computed once) every trial.
sd-meh 0.9.5 is the oracle the tests compare with; where we deliberately differ, the function's
comment says so.
"""

from __future__ import annotations

import difflib
from typing import Mapping

import torch
from torch import Tensor

from bayes_merger.errors import ConfigError
from bayes_merger.merge.methods.difference import (
    euclidean_add_difference,
    multiply_difference,
    similarity_add_difference,
    ties_add_difference,
)
from bayes_merger.merge.methods.linear import (
    add_difference,
    sum_twice,
    tensor_sum,
    triple_sum,
    weighted_subtraction,
    weighted_sum,
)
from bayes_merger.merge.methods.rank import distribution_crossover, top_k_tensor_sum
from bayes_merger.merge.methods.registry import MergeMethod, build_registry, merge_method

__all__ = [
    "METHODS",
    "MergeMethod",
    "build_registry",
    "clip_to_inputs",
    "get_method",
    "merge_method",
]

# The one list of methods, in the reference table's order; nothing is discovered by introspection.
METHODS: Mapping[str, MergeMethod] = build_registry(
    (
        weighted_sum,
        add_difference,
        sum_twice,
        triple_sum,
        weighted_subtraction,
        tensor_sum,
        euclidean_add_difference,
        multiply_difference,
        similarity_add_difference,
        top_k_tensor_sum,
        distribution_crossover,
        ties_add_difference,
    )
)

def get_method(name: str) -> MergeMethod:
    """The method called ``name``; a ConfigError (a setting, exit 2) suggesting the closest name when there is none."""
    method = METHODS.get(name)
    if method is not None:
        return method
    valid = ", ".join(METHODS)
    close = difflib.get_close_matches(name.strip().lower(), METHODS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    raise ConfigError(f"Unknown merge method '{name}'{hint} Valid methods: {valid}.")


def clip_to_inputs(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """weights_clip: clamp out in place to [min(a, b), max(a, b)] elementwise; returns out."""
    # One temporary holds first the lower, then the upper bound.
    bound = torch.minimum(a, b)
    torch.maximum(out, bound, out=out)
    torch.maximum(a, b, out=bound)
    return torch.minimum(out, bound, out=out)
