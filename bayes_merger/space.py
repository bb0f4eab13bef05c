"""The search space: block weights ↔ the optimiser's named parameters (bounds, frozen, groups).

Every block of the architecture has an α weight (named by its block, ``IN00``) and, when the merge
method takes one, a β weight (``IN00_beta``). The original tool's names (``base_alpha``,
``block_3_alpha``, ``block_3_beta``) are accepted everywhere a name is read. Frozen weights are held
at a value; a group is one optimiser parameter (named by joining its members with ``-``, as the
original tool did) that sets all of its members.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import ConfigError
from bayes_merger.merge.arch import SD_BLOCKS
from bayes_merger.merge.weights import BlockWeights

log = logging.getLogger(__name__)

BETA_SUFFIX = "_beta"
_LEGACY = re.compile(r"^(base|block_(\d+))_(alpha|beta)$")


@dataclass(frozen=True)
class Parameter:
    """One optimiser dimension: the weights it sets and its range."""

    name: str
    members: tuple[str, ...]
    lower: float
    upper: float


@dataclass(frozen=True)
class SearchSpace:
    blocks: tuple[str, ...]
    uses_beta: bool
    parameters: tuple[Parameter, ...]
    frozen: Mapping[str, float]

    @property
    def weight_names(self) -> tuple[str, ...]:
        return weight_names(self.blocks, self.uses_beta)

    def bounds(self) -> dict[str, tuple[float, float]]:
        return {p.name: (p.lower, p.upper) for p in self.parameters}

    def weight_range(self) -> tuple[float, float]:
        """The lowest and highest value any weight of a trial can take: the searched ranges and the frozen values."""
        values = [bound for p in self.parameters for bound in (p.lower, p.upper)] + list(self.frozen.values())
        return min(values), max(values)

    def to_block_weights(self, params: Mapping[str, float]) -> BlockWeights:
        """Expand the optimiser's parameters (frozen and grouped ones included) into BlockWeights."""
        values = dict(self.frozen)
        for parameter in self.parameters:
            value = float(params[parameter.name])
            for member in parameter.members:
                values[member] = value
        alpha = tuple(values[block] for block in self.blocks)
        beta = tuple(values[block + BETA_SUFFIX] for block in self.blocks) if self.uses_beta else None
        return BlockWeights(blocks=self.blocks, alpha=alpha, beta=beta)

    def to_params(self, weights: BlockWeights) -> dict[str, float]:
        """The optimiser's parameters for block weights that came from this space (a logged trial)."""
        values = dict(zip(self.blocks, weights.alpha))
        if self.uses_beta and weights.beta is not None:
            values.update({block + BETA_SUFFIX: v for block, v in zip(self.blocks, weights.beta)})
        return {p.name: values[p.members[0]] for p in self.parameters}

    def start_params(self, start: object = None) -> dict[str, float]:
        """Trial 0: the centre of every range, or the user's recipe (``optimiser.start``) checked here."""
        params = {p.name: (p.lower + p.upper) / 2 for p in self.parameters}
        if start is None:
            return params
        given = _start_values(start, self.blocks, self.uses_beta)
        for name, value in given.items():
            if name in self.frozen and not math.isclose(self.frozen[name], value, abs_tol=1e-9):
                raise ConfigError(f"optimiser.start sets {name} to {value:g}, but it is frozen at {self.frozen[name]:g}.")
        for parameter in self.parameters:
            values = {given[m] for m in parameter.members if m in given}
            if len(values) > 1:
                raise ConfigError(f"optimiser.start gives the group {parameter.name} different values: {sorted(values)}.")
            if values:
                value = values.pop()
                if not parameter.lower - 1e-9 <= value <= parameter.upper + 1e-9:
                    raise ConfigError(f"optimiser.start sets {parameter.name} to {value:g}, outside its range "
                                      f"[{parameter.lower:g}, {parameter.upper:g}].")
                params[parameter.name] = min(max(value, parameter.lower), parameter.upper)
        return params

    def contains(self, weights: BlockWeights, tolerance: float = 1e-9) -> bool:
        """Whether block weights respect every bound, frozen value and group of this space."""
        try:
            params = self.to_params(weights)
        except KeyError:
            return False
        expected = self.to_block_weights(params)
        same = all(
            math.isclose(x, y, abs_tol=tolerance)
            for x, y in zip(expected.alpha + (expected.beta or ()), weights.alpha + (weights.beta or ()))
        )
        inside = all(p.lower - tolerance <= params[p.name] <= p.upper + tolerance for p in self.parameters)
        return same and inside


def weight_names(blocks: Sequence[str], uses_beta: bool) -> tuple[str, ...]:
    names = tuple(blocks)
    return names + tuple(block + BETA_SUFFIX for block in blocks) if uses_beta else names


def canonical_name(name: str, blocks: Sequence[str], uses_beta: bool) -> str:
    """``IN03``, ``IN03_beta``, ``block_3_alpha`` or ``base_beta`` → the canonical weight name."""
    legacy = _LEGACY.match(name.strip())
    if legacy:
        index = 0 if legacy.group(1) == "base" else int(legacy.group(2)) + 1
        if index >= len(blocks):
            raise ConfigError(f"Parameter '{name}' does not exist: this architecture has {len(blocks) - 1} blocks besides BASE.")
        block = blocks[index]
        name = block if legacy.group(3) == "alpha" else block + BETA_SUFFIX
    name = name.strip()
    if name.endswith("_alpha"):
        name = name[: -len("_alpha")]
    upper = name.upper() if not name.endswith(BETA_SUFFIX) else name[: -len(BETA_SUFFIX)].upper() + BETA_SUFFIX
    valid = weight_names(blocks, uses_beta)
    if upper in valid:
        return upper
    if upper.endswith(BETA_SUFFIX) and upper[: -len(BETA_SUFFIX)] in blocks:
        raise ConfigError(f"Parameter '{name}' is a β weight, but the merge method takes only α.")
    close = difflib.get_close_matches(upper, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Valid names: {', '.join(valid)}."
    raise ConfigError(f"Unknown parameter '{name}'.{hint}")


def _numbering(blocks: Sequence[str]) -> str:
    """'block_0 IN00 … block_8 IN08, block_9 M00, …': how the old names count an architecture's blocks."""
    runs: list[list[int]] = []
    for index, block in enumerate(blocks[1:]):
        if runs and block[:-2] == blocks[runs[-1][-1] + 1][:-2]:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"block_{r[0]} {blocks[r[0] + 1]}" if len(r) == 1 else
                     f"block_{r[0]}…block_{r[-1]} {blocks[r[0] + 1]}…{blocks[r[-1] + 1]}" for r in runs)


def build_space(config: OptimiserConfig, blocks: Sequence[str], uses_beta: bool) -> SearchSpace:
    """Check the optimiser section against the architecture and turn it into a SearchSpace."""
    blocks = tuple(blocks)
    names = weight_names(blocks, uses_beta)

    said: set[str] = set()

    def canon(name: str) -> str:
        found = canonical_name(str(name), blocks, uses_beta)
        legacy = _LEGACY.match(str(name).strip())
        index = 0 if not legacy or legacy.group(1) == "base" else int(legacy.group(2)) + 1
        block = found.removesuffix(BETA_SUFFIX)
        if legacy and index < len(SD_BLOCKS) and SD_BLOCKS[index] != block and name not in said:
            said.add(name)  # the old tool knew SD1 only: its guides' numbers mean SD1's blocks
            log.warning("%s is %s on this architecture (its blocks numbered in order: %s), where on SD1 it is %s; write "
                        "%s to be plain.", str(name).strip(), block, _numbering(blocks), SD_BLOCKS[index], block)
        return found

    _check_range("the default range (optimiser.lower, optimiser.upper)", config.lower, config.upper)
    ranges: dict[str, tuple[float, float]] = {}
    for raw, bounds in config.custom_ranges.items():
        if len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
            raise ConfigError(f"optimiser.custom_ranges.{raw} must be [lower, upper], two numbers, got {list(bounds)}.")
        lower, upper = float(bounds[0]), float(bounds[1])
        _check_range(f"optimiser.custom_ranges.{raw}", lower, upper)
        _once(ranges, canon(raw), "optimiser.custom_ranges")
        ranges[canon(raw)] = (lower, upper)
    frozen: dict[str, float] = {}
    for raw, value in config.frozen.items():
        _once(frozen, canon(raw), "optimiser.frozen")
        if canon(raw) in ranges:
            raise ConfigError(f"{canon(raw)} is both frozen and given a custom range: a frozen weight does not move; "
                              "remove one of the two.")
        frozen[canon(raw)] = float(value)
    for name, value in frozen.items():
        if not math.isfinite(value):
            raise ConfigError(f"optimiser.frozen.{name} must be a finite number, got {value}.")

    groups = _groups(config.groups, canon)
    grouped = {member for group in groups for member in group}
    single = [(name,) for name in names if name not in grouped]
    parameters: list[Parameter] = []
    for members in sorted(groups + single, key=lambda m: names.index(m[0])):
        held = {frozen[m] for m in members if m in frozen}
        if len(held) > 1:
            raise ConfigError(f"Group {'-'.join(members)} has members frozen at different values: {sorted(held)}.")
        if held:
            ranged = [m for m in members if m in ranges]
            if ranged:  # as for one weight frozen and ranged: the group does not move
                raise ConfigError(f"Group {'-'.join(members)} is frozen (through {next(m for m in members if m in frozen)})"
                                  f" and {ranged[0]} is given a custom range: a frozen group does not move; remove "
                                  "one of the two.")
            value = held.pop()
            frozen.update({m: value for m in members})
            continue
        given = {ranges[m] for m in members if m in ranges}
        if len(given) > 1:
            raise ConfigError(f"Group {'-'.join(members)} has members with different custom ranges: {sorted(given)}.")
        lower, upper = given.pop() if given else (config.lower, config.upper)
        parameters.append(Parameter("-".join(members), members, lower, upper))
    if not parameters:
        raise ConfigError("Every weight is frozen: there is nothing left to optimise.")
    return SearchSpace(blocks=blocks, uses_beta=uses_beta, parameters=tuple(parameters), frozen=frozen)


def _once(seen: Mapping[str, object], name: str, setting: str) -> None:
    if name in seen:  # IN00 and in00, or block_0_alpha beside IN00: the last one would win without a word
        raise ConfigError(f"{setting} names {name} twice (under two spellings); keep one.")


def _start_values(start: object, blocks: tuple[str, ...], uses_beta: bool) -> dict[str, float]:
    """``optimiser.start`` as {weight name: value}: a mapping of names, or an MBW string/list of numbers."""
    if isinstance(start, Mapping):
        try:
            return {canonical_name(str(k), blocks, uses_beta): float(v) for k, v in start.items()}
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimiser.start must map weight names to numbers: {error}.") from None
    if not isinstance(start, Sequence):  # a lone number, true: what the model would be is anyone's guess
        raise ConfigError(f"optimiser.start must be an MBW string of numbers, a list of numbers or a mapping of "
                          f"weight names to numbers, got {start!r}.")
    items = re.split(r"[,\s]+", start.strip()) if isinstance(start, str) else list(start)
    try:
        values = [float(v) for v in items if str(v) != ""]
    except (TypeError, ValueError):
        raise ConfigError(f"optimiser.start must be numbers separated by commas, got '{start}'.") from None
    names = weight_names(blocks, uses_beta)
    if len(values) not in {len(blocks), len(names)}:
        expected = f"{len(blocks)}" + (f" (α) or {len(names)} (α then β)" if uses_beta else "")
        raise ConfigError(f"optimiser.start has {len(values)} numbers; this architecture and method take {expected}.")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("optimiser.start must contain finite numbers only.")
    return dict(zip(names, values))


def _check_range(what: str, lower: float, upper: float) -> None:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ConfigError(f"{what} must be finite numbers, got [{lower}, {upper}].")
    if lower >= upper:
        raise ConfigError(f"{what} must have lower < upper, got [{lower}, {upper}] (freeze a weight to hold it at one value).")


def _groups(raw_groups: Iterable[Sequence[str]], canon) -> list[tuple[str, ...]]:
    groups: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_groups):
        members = tuple(dict.fromkeys(canon(m) for m in raw))
        if len(members) < 2:
            raise ConfigError(f"optimiser.groups[{index}] needs at least two different members, got {list(raw)}.")
        for member in members:
            if member in seen:
                raise ConfigError(f"{member} is in two groups (optimiser.groups[{seen[member]}] and [{index}]).")
            seen[member] = index
        groups.append(members)
    return groups
