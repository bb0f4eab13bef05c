"""Block weights: one α (and optionally one β) per block, and the supermerger "MBW" string form.

The string is what supermerger users paste: 26 comma-separated numbers for SD1/SD2 (20 for SDXL),
BASE first, then IN00…, M00, OUT00….
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bayes_merger.errors import MergeError
from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS, Architecture


def layout_label(blocks: Sequence[str] | Architecture) -> str:
    """A name for a block layout in messages: the architecture's label, or the family the layout fits."""
    if isinstance(blocks, Architecture):
        return blocks.label
    blocks = tuple(blocks)
    if blocks == SD_BLOCKS:
        return "SD1/SD2"
    if blocks == SDXL_BLOCKS:
        return "SDXL"
    return f"{len(blocks)}-block"


def _blocks_of(blocks: Sequence[str] | Architecture) -> tuple[str, ...]:
    return blocks.blocks if isinstance(blocks, Architecture) else tuple(blocks)


def _format(value: float) -> str:
    # shortest text that reads back to the same float; "1" rather than "1.0", as users write them
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _parse(text: str, blocks: Sequence[str] | Architecture, which: str) -> tuple[float, ...]:
    names = _blocks_of(blocks)
    parts = [p.strip() for p in str(text).strip().strip("[]").split(",")]
    if parts and parts[-1] == "":
        parts.pop()  # a trailing comma, as pasted from some tools
    if len(parts) != len(names):
        raise MergeError(
            f"The {which} weights {text!r} have {len(parts)} values; {layout_label(blocks)} needs "
            f"{len(names)} (BASE, IN…, M00, OUT…)."
        )
    values = []
    for name, part in zip(names, parts):
        try:
            values.append(float(part))
        except ValueError:
            raise MergeError(f"The {which} weight for {name} is {part!r}, which is not a number.") from None
    return tuple(values)


@dataclass(frozen=True)
class BlockWeights:
    """α (and β, for methods that take one) for each block of a layout, in layout order."""

    blocks: tuple[str, ...]
    alpha: tuple[float, ...]
    beta: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # accept any sequences, store tuples of floats: instances are hashable and compare by value
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for which in ("alpha", "beta"):
            values = getattr(self, which)
            if values is None:
                continue
            values = tuple(float(v) for v in values)
            if len(values) != len(self.blocks):
                raise MergeError(
                    f"{len(values)} {which} weights given; {layout_label(self.blocks)} needs {len(self.blocks)} "
                    "(BASE, IN…, M00, OUT…)."
                )
            for name, v in zip(self.blocks, values):
                if not math.isfinite(v):
                    raise MergeError(f"The {which} weight for {name} is {v}; weights must be finite numbers.")
            object.__setattr__(self, which, values)

    @classmethod
    def uniform(cls, blocks: Sequence[str] | Architecture, alpha: float, beta: float | None = None) -> BlockWeights:
        """The same α (and β) for every block."""
        names = _blocks_of(blocks)
        return cls(names, (alpha,) * len(names), None if beta is None else (beta,) * len(names))

    @classmethod
    def from_strings(
        cls, blocks: Sequence[str] | Architecture, alpha: str, beta: str | None = None
    ) -> BlockWeights:
        """Read the supermerger strings: ``alpha`` (and ``beta``) as "0.5,0.5,…", BASE first."""
        return cls(
            _blocks_of(blocks),
            _parse(alpha, blocks, "alpha"),
            None if beta is None else _parse(beta, blocks, "beta"),
        )

    def alpha_string(self) -> str:
        return ",".join(_format(v) for v in self.alpha)

    def beta_string(self) -> str | None:
        return None if self.beta is None else ",".join(_format(v) for v in self.beta)

    def as_dict(self) -> dict[str, dict[str, float] | None]:
        return {
            "alpha": dict(zip(self.blocks, self.alpha)),
            "beta": None if self.beta is None else dict(zip(self.blocks, self.beta)),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Mapping[str, float] | None], blocks: Sequence[str] | Architecture
    ) -> BlockWeights:
        """The inverse of ``as_dict``: every block of ``blocks`` must be given, and no other name."""
        names = _blocks_of(blocks)

        def values(which: str) -> tuple[float, ...] | None:
            given = data.get(which)
            if given is None:
                if which == "alpha":
                    raise MergeError("Block weights without alpha values.")
                return None
            missing = [n for n in names if n not in given]
            unknown = [n for n in given if n not in names]
            if missing or unknown:
                raise MergeError(
                    f"The {which} weights do not fit the {layout_label(blocks)} layout of {len(names)} blocks"
                    + (f"; missing: {', '.join(missing)}" if missing else "")
                    + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else "")
                    + "."
                )
            return tuple(float(given[n]) for n in names)

        return cls(names, values("alpha"), values("beta"))
