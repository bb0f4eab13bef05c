"""How a merge method is declared: the ``merge_method`` decorator, ``MergeMethod`` and its input checks.

A method is written once, as its formula, under one decorator that gives it everything else:

    @merge_method(needs_c=True, description="A + alpha*(B - C)")
    def add_difference(a, b, c, alpha, beta, out): ...

The name is the function's. The formula sees checked inputs only (one shape, one dtype, ``out``
given, ``c`` present when the method needs it): ``MergeMethod.check`` runs once per key when the
Merger builds its plan, and ``MergeMethod.fn`` (the checked call) runs it for a caller with loose
tensors. A method whose formula has work that does not depend on α and β declares it with
``prepare=``: ``prepare(a, b, c, scratch)`` returns that work, and the decorated function finishes the merge
from it (``finish(prepared, alpha, beta, out)``). The Merger may keep the prepared tensors for the
whole run (see ``Merger``: bounded by a memory budget); either way the same code computes the
result, so it is bit for bit the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor

from bayes_merger.errors import MergeError

# formula(a, b, c, alpha, beta, out) -> out, on checked inputs
Formula = Callable[[Tensor, Tensor, Optional[Tensor], float, float, Tensor], Tensor]
# prepare(a, b, c, scratch) -> what does not depend on alpha and beta; scratch is None when the
# result is kept for the run, or the merge's out when it is used at once (prepare may write into it)
Prepare = Callable[[Tensor, Tensor, Optional[Tensor], Optional[Tensor]], tuple[Any, ...]]
# finish(prepared, alpha, beta, out) -> out
Finish = Callable[[tuple[Any, ...], float, float, Tensor], Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: its formula, which inputs it needs, and its weight-independent part if any."""

    name: str
    formula: Formula
    needs_beta: bool
    needs_c: bool
    # one line, shown in error messages and documentation
    description: str
    # both or neither: the split of the formula into the work that does not depend on the weights
    # and the rest (formula = finish(prepare(a, b, c, out), alpha, beta, out))
    prepare: Prepare | None = None
    finish: Finish | None = None

    def fn(
        self, a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor | None = None
    ) -> Tensor:
        """The method on tensors not checked yet: checks them, then merges into ``out`` (or a new tensor)."""
        b, c, out = self.check(a, b, c, out)
        return self.formula(a, b, c, alpha, beta, out)

    def check(
        self, a: Tensor, b: Tensor, c: Tensor | None, out: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Check the inputs fit together; return b and c in a's dtype and the output buffer.

        Refuses a missing model C, non-floating-point tensors (interpolating CLIP's integer
        ``position_ids`` would turn indices into floats), shapes unlike A's, and an output buffer
        unlike A's tensor. A model stored in another precision is brought to A's, the result's.
        """
        inputs = {"A": a, "B": b, "C": c} if self.needs_c else {"A": a, "B": b}
        for model, tensor in inputs.items():
            if tensor is None:
                raise MergeError(f"Merge method '{self.name}' needs model C, but none was given.")
            if not tensor.is_floating_point():
                raise MergeError(
                    f"Merge method '{self.name}' got a {tensor.dtype} tensor from model {model}; only "
                    "floating-point tensors are merged (integer ones are copied from model A)."
                )
            if tensor.shape != a.shape:
                raise MergeError(
                    f"Merge method '{self.name}': model {model}'s tensor has shape {tuple(tensor.shape)}, "
                    f"model A's has {tuple(a.shape)}."
                )
        if out is None:
            out = torch.empty_like(a)
        elif out.shape != a.shape or out.dtype != a.dtype:
            raise MergeError(
                f"Merge method '{self.name}': the output buffer is {out.dtype} {tuple(out.shape)}, "
                f"model A's tensor is {a.dtype} {tuple(a.shape)}."
            )
        if b.dtype != a.dtype:
            b = b.to(a.dtype)
        if not self.needs_c:
            c = None
        elif c is not None and c.dtype != a.dtype:
            c = c.to(a.dtype)
        return b, c, out


def merge_method(
    *,
    needs_beta: bool = False,
    needs_c: bool = False,
    description: str,
    prepare: Prepare | None = None,
) -> Callable[[Callable[..., Tensor]], MergeMethod]:
    """Declare a merge method: the decorated function is its formula, named by the function's name.

    Without ``prepare`` the function is ``formula(a, b, c, alpha, beta, out)``; with it, the function
    is ``finish`` and the formula is ``finish(prepare(a, b, c, out), alpha, beta, out)``: in one merge,
    ``prepare`` may use ``out`` as scratch memory; kept for the run, it is called with ``None``.
    """

    def declare(function: Callable[..., Tensor]) -> MergeMethod:
        name = function.__name__
        if prepare is None:
            return MergeMethod(name, function, needs_beta, needs_c, description)

        def formula(a: Tensor, b: Tensor, c: Tensor | None, alpha: float, beta: float, out: Tensor) -> Tensor:
            return function(prepare(a, b, c, out), alpha, beta, out)

        formula.__name__ = formula.__qualname__ = name
        formula.__doc__ = function.__doc__
        return MergeMethod(name, formula, needs_beta, needs_c, description, prepare, function)

    return declare


def build_registry(methods: Iterable[MergeMethod]) -> Mapping[str, MergeMethod]:
    """A read-only name → method mapping; two methods with one name are a bug and refused."""
    registry: dict[str, MergeMethod] = {}
    for method in methods:
        if method.name in registry:
            raise ValueError(f"Merge method '{method.name}' is registered twice.")
        registry[method.name] = method
    return MappingProxyType(registry)


def fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 for the non-linear methods; for an fp32 input this IS the input: never modify."""
    return t.float()


def prepared_bytes(prepared: Iterable[Any], inputs: Iterable[Tensor | None]) -> int:
    """The memory the prepared tensors hold beyond the inputs' own (views of an input cost nothing)."""
    owned = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in prepared
        if isinstance(t, Tensor)
    }
    return sum(n for pointer, n in storages.items() if pointer not in owned)
