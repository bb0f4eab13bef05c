"""The Merger: models read once and kept resident, a per-key plan, and each merge written in place.

Construction checks everything that can be checked from the files' headers — the method, model C,
the architectures — before any tensor is read. It then loads A, B [, C] once onto the merge device
and allocates one output tensor per merged key. Every ``merge(weights)`` writes into those same
tensors, so memory stays flat over hundreds of trials.

Per key (A's keys, in A's order):
- merged with its block's α/β when the key has a block (see ``arch.Architecture.block_of``), is a
  floating-point tensor in every model and has the same shape in every model;
- otherwise A's tensor itself is the result (scheduler buffers, ``position_ids``, keys missing from
  B or C): never copied, never converted;
- with ``merge.prune`` (the default), what pruning drops (EMA copies, scheduler buffers, extras)
  is never loaded: it would never be saved. The EMA keys are merged with BASE, as sd-meh does,
  only when ``prune`` is off;
- the input convolution of an inpainting/instruct-pix2pix model A merged with a normal B merges its
  first 4 input channels and keeps A's for the rest, as A1111 and supermerger do.

The method's input checks (shapes, dtypes, model C) run once per key, when the plan is built; each
trial calls the unchecked formula. For a method that declares work independent of α and β
(``MergeMethod.prepare``: differences, sorts, spectra), that work is done once per key at load and
kept, within a memory budget (``precompute_bytes``; see ``Merger``); keys beyond the budget do it
every trial. Both ways run the same code, so the merge is bit for bit the same.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import torch

from bayes_merger import __version__
from bayes_merger.config import MergeConfig
from bayes_merger.devices import available_bytes, release_cached_memory, resolve_device
from bayes_merger.errors import CheckpointError, ConfigError, MergeError
from bayes_merger.merge.arch import INPUT_CONV_KEY, Architecture, detect_architecture
from bayes_merger.merge.checkpoint import (
    TensorInfo,
    checkpoint_sha256,
    is_kept_by_prune,
    is_prediction_marker,
    load_state_dict,
    parse_dtype,
    read_tensor_info,
    save_state_dict,
)
from bayes_merger.merge.methods import MergeMethod, clip_to_inputs, get_method
from bayes_merger.merge.methods.registry import prepared_bytes
from bayes_merger.merge.weights import BlockWeights, layout_label

log = logging.getLogger(__name__)

# two (α, β) settings under which any two different models merge differently, whatever the method
_PROBE_WEIGHTS = ((0.25, 0.25), (0.75, 0.75))


def held_dtype(a_dtype: torch.dtype, load_dtype: torch.dtype | None, save_dtype: torch.dtype | None) -> torch.dtype:
    """The precision a key is held and merged in: ``merge.load_dtype``, else model A's.

    Except that a bf16 A saved as fp16 is held in fp16, in the same memory: bf16 keeps 3 fewer bits
    than fp16, so a bf16 merge saved as fp16 had only bf16's precision, B's fp16 values rounded
    to bf16 before the merge and the merge rounded again. And an fp8 A, which torch cannot add or
    interpolate in, is held in the saved precision (fp16 when that is fp8 too or A's own).
    """
    if not a_dtype.is_floating_point:
        return a_dtype
    if load_dtype is not None:
        return load_dtype
    if a_dtype == torch.bfloat16 and save_dtype == torch.float16:
        return torch.float16
    if a_dtype.itemsize == 1:  # fp8: torch has no arithmetic in it; held in the precision it is saved in
        return save_dtype if save_dtype is not None and save_dtype.itemsize > 1 else torch.float16
    return a_dtype


def _fewer_channels(shape: tuple[int, ...], a_shape: tuple[int, ...]) -> bool:
    """A convolution like A's but with fewer input channels (a normal model beside an inpainting A)."""
    return len(shape) == 4 == len(a_shape) and shape[1] <= a_shape[1] and (shape[0], *shape[2:]) == (a_shape[0], *a_shape[2:])


@dataclass(frozen=True)
class _Step:
    """One merged key: its block, its inputs and where the result goes."""

    key: str
    block: int
    # None once ``prepared`` holds what the method needs of them (and no weights_clip reads them)
    a: torch.Tensor | None
    b: torch.Tensor | None
    c: torch.Tensor | None
    out: torch.Tensor
    # for a partial merge (the first input channels only): the slice of the key's output that
    # receives ``out``; None when ``out`` is the key's output itself
    into: torch.Tensor | None = None
    # what the method's ``prepare`` computed once for this key; None: computed every trial
    prepared: tuple | None = None


@dataclass(frozen=True)
class MergeInputs:
    """What the files' headers tell about a merge, before any tensor is read."""

    method: MergeMethod
    models: Mapping[str, Path]  # "A", "B" [, "C"]
    infos: Mapping[str, Mapping[str, TensorInfo]]
    architecture: Architecture  # model A's
    # each model's sha256 where the run has it (run.json's record, merge/fingerprint.py), so the merges'
    # recipes do not read the files again; a model missing here is hashed at the first save
    sha256: Mapping[str, str] = field(default_factory=dict)


def inspect_inputs(model_a: Path, model_b: Path, model_c: Path | None, config: MergeConfig) -> MergeInputs:
    """Check the method, model C, the precisions and the architectures from the headers alone; raise on a mismatch.

    The one place these are checked: the run calls it once, before the WebUI is contacted, and hands
    the result to ``Merger.from_inputs``.
    """
    method = get_method(config.method)
    if method.needs_c and model_c is None:
        raise ConfigError(f"Merge method '{method.name}' needs model C (model_c), but none was given.")
    if model_c is not None and not method.needs_c:
        log.warning("Merge method %s does not use model C; ignoring %s.", method.name, model_c)
        model_c = None
    parse_dtype(config.load_dtype, "merge.load_dtype")
    parse_dtype(config.dtype, "merge.dtype")  # a wrong save precision is refused now, not at the first save
    models = {"A": Path(model_a), "B": Path(model_b)}
    if model_c is not None:
        models["C"] = Path(model_c)
    infos = {m: read_tensor_info(p) for m, p in models.items()}
    archs = {
        m: detect_architecture(info, {k: v.shape for k, v in info.items()}, str(models[m]))
        for m, info in infos.items()
    }
    _check_architectures(models, archs)
    _check_prediction_markers(models, infos)
    return MergeInputs(method, models, infos, archs["A"])


def _check_architectures(models: Mapping[str, Path], archs: Mapping[str, Architecture]) -> None:
    a = archs["A"]
    for m, arch in archs.items():
        if m == "A":
            continue
        if arch.name != a.name:
            raise CheckpointError(
                f"Models of different architectures cannot be merged: model A ({models['A']}) is "
                f"{a.label}, model {m} ({models[m]}) is {arch.label}."
            )
        if arch.variant and arch.variant != a.variant:
            raise CheckpointError(
                f"Model {m} ({models[m]}) is an {arch.label} model and model A ({models['A']}) is "
                f"{a.label}: an inpainting or instruct-pix2pix model can only be merged as model A."
            )


def _check_prediction_markers(models: Mapping[str, Path], infos: Mapping[str, Mapping[str, TensorInfo]]) -> None:
    """Warn when the models' prediction-type markers (``v_pred``, ``ztsnr``, …) differ: the merge carries
    model A's, so a renderer loads it as A's kind of model whatever the weights say."""
    def markers(m: str) -> list[str]:
        return sorted(k for k in infos[m] if is_prediction_marker(k))
    for m in models:
        if m != "A" and markers(m) != markers("A"):
            log.warning("Model %s (%s) has the prediction-type markers %s and model A (%s) %s: the merge carries "
                        "model A's, so renderers load it as model A's kind of model (eps or v-prediction); "
                        "merge models of one kind, or make the other one model A.", m, models[m],
                        ", ".join(markers(m)) or "none", models["A"], ", ".join(markers("A")) or "none")


def warn_of_lost_precision(inputs: MergeInputs, load_dtype: str | None, saved: Mapping[str, str | None]) -> None:
    """Warn where a merge is saved in more precision than it is made in while model B or C has more: made in
    model A's fp16, an fp32 file of an fp32 B holds fp16's precision in twice the bytes (``saved``: the settings
    that save a merge, by name, e.g. ``merge.dtype`` and ``best_precision``)."""
    def precision(model: str) -> torch.dtype | None:
        counts: dict[torch.dtype, int] = {}
        for key, info in inputs.infos[model].items():
            if info.dtype.is_floating_point and inputs.architecture.block_of(key) is not None:
                counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return max(counts, key=counts.__getitem__) if counts else None

    a_dtype, save_dtype = precision("A"), parse_dtype(saved.get("merge.dtype"))
    if a_dtype is None:
        return
    held = held_dtype(a_dtype, parse_dtype(load_dtype), save_dtype)
    finer = [(m, d) for m in inputs.models if m != "A" and (d := precision(m)) is not None and d.itemsize > held.itemsize]
    wider = [name for name, value in saved.items() if (d := parse_dtype(value)) is not None and d.itemsize > held.itemsize]
    if finer and wider:
        others = " and ".join(f"model {m} is {_DTYPE_WORDS.get(d, d)}" for m, d in finer)
        log.warning("The merges are made in %s (model A's precision) while %s, so what %s saves in more precision holds "
                    "%s's: set merge.load_dtype=fp32 to merge in fp32, at twice the memory.",
                    _DTYPE_WORDS.get(held, held), others, " and ".join(wider), _DTYPE_WORDS.get(held, held))


_DTYPE_WORDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


class Merger:
    """Merges models A, B [, C] with block weights, in place, as often as asked.

    Memory: the models as loaded, one output tensor per merged key, and what the method precomputes
    (``MergeMethod.prepare``; 8 to 16 bytes per merged value for the non-linear methods, one
    tensor the size of the merged keys for add_difference, nothing for the others), which is kept
    only up to ``precompute_bytes`` in all (default: half the memory the merge device has
    available once the models are loaded; 0 turns precomputing off).
    """

    def __init__(self, model_a: Path, model_b: Path, model_c: Path | None, config: MergeConfig,
                 inputs: MergeInputs | None = None, *, precompute_bytes: int | None = None) -> None:
        """Check the inputs (unless ``inputs`` holds them, already checked), then load the models."""
        self.config = config
        self._precompute_bytes = precompute_bytes
        if inputs is None:
            inputs = inspect_inputs(model_a, model_b, model_c, config)
        self.method: MergeMethod = inputs.method
        self.models: dict[str, Path] = dict(inputs.models)
        self.architecture: Architecture = inputs.architecture
        self.device: torch.device = resolve_device(config.device, "merge device")

        plan, partial, extra = self._plan(inputs.infos)
        self._load(inputs.infos, plan, partial, extra, parse_dtype(config.load_dtype), parse_dtype(config.dtype))
        release_cached_memory(self.device)  # the inputs the load and the precompute let go of
        self._hashes: dict[str, str] = dict(inputs.sha256)
        self._weights: BlockWeights | None = None

    @classmethod
    def from_inputs(cls, inputs: MergeInputs, config: MergeConfig, *, precompute_bytes: int | None = None) -> "Merger":
        """The merger of inputs ``inspect_inputs`` has already checked (the files are not inspected again)."""
        return cls(
            inputs.models["A"], inputs.models["B"], inputs.models.get("C"), config, inputs,
            precompute_bytes=precompute_bytes,
        )

    # ------------------------------------------------------------------------------------- plan

    def _plan(self, infos: Mapping[str, Mapping[str, TensorInfo]]
              ) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
        """key → block index for the merged keys, key → channel count for the partial ones, and key → model
        for the weights model A lacks: copied from B (else C), as supermerger and sd-meh do (a model A
        saved without its VAE would otherwise give merges without one)."""
        arch = self.architecture
        index = {name: i for i, name in enumerate(arch.blocks)}
        others = [m for m in self.models if m != "A"]
        plan: dict[str, int] = {}
        partial: dict[str, int] = {}
        missing: dict[str, int] = {m: 0 for m in others}
        mismatched: list[str] = []
        for key, info in infos["A"].items():
            block = arch.block_of(key)
            if block is None or not info.dtype.is_floating_point:
                continue
            if self.config.prune and not is_kept_by_prune(key):
                continue  # never saved: merging it would cost time for nothing
            found = [infos[m].get(key) for m in others]
            if any(f is None for f in found):
                for m, f in zip(others, found):
                    missing[m] += f is None
                continue
            if not all(f.dtype.is_floating_point for f in found):
                mismatched.append(key)
                continue
            if all(f.shape == info.shape for f in found):
                plan[key] = index[block]
            elif key == INPUT_CONV_KEY and arch.variant and all(_fewer_channels(f.shape, info.shape) for f in found):
                plan[key] = index[block]
                partial[key] = min(f.shape[1] for f in found)
            else:
                mismatched.append(key)
        for m, n in missing.items():
            if n:
                log.warning(
                    "%d keys of model A are missing from model %s (%s); they keep A's values.", n, m, self.models[m]
                )
        if mismatched:
            log.warning(
                "%d keys differ in shape or type between the models (first: %s); they keep A's values.",
                len(mismatched),
                mismatched[0],
            )
        # the models' weights only: a prediction-type marker or a buffer of B's would change A's kind of model
        extra: dict[str, str] = {}
        for m in others:
            for key in infos[m]:
                if key in infos["A"] or key in extra or arch.block_of(key) is None:
                    continue
                if not self.config.prune or is_kept_by_prune(key):
                    extra[key] = m
        for m in others:
            copied = [key for key, source in extra.items() if source == m]
            if copied:
                log.warning("%d keys of model %s are not in model A (first: %s); they are copied from model %s.",
                            len(copied), m, copied[0], m)
        return plan, partial, extra

    # ----------------------------------------------------------------------------------- loading

    def _load(
        self,
        infos: Mapping[str, Mapping[str, TensorInfo]],
        plan: Mapping[str, int],
        partial: Mapping[str, int],
        extra: Mapping[str, str],
        load_dtype: torch.dtype | None,
        save_dtype: torch.dtype | None,
    ) -> None:
        # the held dtype per key is the dtype of the result: B and C are brought to it as they load
        dtypes = {k: held_dtype(v.dtype, load_dtype, save_dtype) for k, v in infos["A"].items()}
        dtypes.update({k: held_dtype(infos[m][k].dtype, load_dtype, save_dtype) for k, m in extra.items()})
        # with prune, what pruning drops (EMA copies: as large as the UNet) is never saved, so never loaded
        a_keys = [k for k in infos["A"] if is_kept_by_prune(k)] if self.config.prune else None
        log.info("Loading model A %s onto %s", self.models["A"], self.device)
        a = load_state_dict(self.models["A"], self.device, keys=a_keys, dtypes=dtypes)
        inputs = {"A": a}
        for m in self.models:
            if m != "A":
                log.info("Loading model %s %s onto %s", m, self.models[m], self.device)
                keys = [*plan, *(k for k, source in extra.items() if source == m)]
                inputs[m] = load_state_dict(self.models[m], self.device, keys=keys, dtypes=dtypes)

        outputs: dict[str, torch.Tensor] = {}
        steps: list[_Step] = []
        with torch.no_grad():
            for key, t in a.items():
                if key not in plan:
                    outputs[key] = t  # A's own tensor: not merged, never copied
                    continue
                b = inputs["B"][key]
                c = inputs["C"][key] if "C" in inputs else None
                if key in partial:
                    n = partial[key]
                    out = t.clone()  # the channels beyond n keep A's values for good
                    outputs[key] = out
                    a_part = t[:, :n].contiguous()
                    c_part = None if c is None else c[:, :n].contiguous()
                    b_part = b[:, :n].contiguous()
                    steps.append(self._step(key, plan[key], a_part, b_part, c_part, torch.empty_like(a_part), out[:, :n]))
                    log.info("%s: merging the first %d of %d input channels; the rest is A's.", key, n, t.shape[1])
                else:
                    # a copy of A rather than empty memory: the pages are touched now, at load,
                    # not during the first trial's merge
                    out = t.clone()
                    outputs[key] = out
                    steps.append(self._step(key, plan[key], t, b, c, out))
            for key, source in extra.items():
                outputs[key] = inputs[source][key]  # not merged, never copied
            self._check_weights_matter(steps)
        self._steps = self._prepare(steps)
        self._outputs = outputs
        self._view: Mapping[str, torch.Tensor] = MappingProxyType(outputs)
        log.info(
            "%s models loaded: %d keys merged, %d taken from model A, %d from the others.",
            self.architecture.label, len(steps), len(outputs) - len(steps) - len(extra), len(extra),
        )

    def _step(self, key: str, block: int, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
              out: torch.Tensor, into: torch.Tensor | None = None) -> _Step:
        """A key's step, its inputs checked by the method once, here, rather than every trial."""
        try:
            b, c, out = self.method.check(a, b, c, out)
        except MergeError as err:
            raise MergeError(f"{key}: {err}") from None
        return _Step(key, block, a, b, c, out, into)

    def _check_weights_matter(self, steps: list[_Step]) -> None:
        """Refuse models whose merge is one model whatever the weights (two copies of a model, even in other
        precisions or files; B = C for add_difference): every trial would render the same pictures, and the
        run would stop at its third trial blaming the WebUI. A key merged at two weight settings that give
        any two different models different merges, UNet keys first (fine-tunes often share their text
        encoder and VAE), until one differs: a key or two for models that differ."""
        clip = self.config.weights_clip
        for step in sorted(steps, key=lambda step: self.architecture.blocks[step.block] == "BASE"):
            merged = []
            for alpha, beta in _PROBE_WEIGHTS:
                out = self.method.formula(step.a, step.b, step.c, alpha, beta, torch.empty_like(step.out))
                merged.append(clip_to_inputs(out, step.a, step.b) if clip else out)
            if not torch.equal(*merged):
                return
        names = {m: f"model_{m.lower()} ({path.name})" for m, path in self.models.items()}
        same = [(x, y) for x, y in (("A", "B"), ("B", "C"), ("A", "C")) if x in names and y in names
                and all(torch.equal(getattr(step, x.lower()), getattr(step, y.lower())) for step in steps)]
        what = (" and ".join(f"{names[x]} and {names[y]} hold the same weights" for x, y in same)
                + f", so every {self.method.name} merge" if same
                else f"Every {self.method.name} merge of {', '.join(names.values())}")
        raise ConfigError(f"{what} is the same model whatever the block weights, and the run would score it over and "
                          "over: give models that differ.")

    def _prepare(self, steps: list[_Step]) -> list[_Step]:
        """The steps with what the method precomputes, key by key while the total fits the budget.

        A prepared step lets go of its inputs: what ``finish`` reads is in ``prepared`` (add_difference
        keeps A and B − C, not B and C), so memory holds no copy no trial reads; with weights_clip every
        trial clips to A and B, which stay."""
        prepare = self.method.prepare
        if prepare is None or self.method.finish is None:
            return steps
        lean = not self.config.weights_clip
        budget = self._precompute_bytes
        if budget is None:
            budget = available_bytes(self.device) // 2
        used, spent, done = 0, budget <= 0, []
        with torch.no_grad():
            for step in steps:
                kept = None if spent else prepare(step.a, step.b, step.c, None)
                size = 0 if kept is None else prepared_bytes(kept, (step.a, step.b, step.c))
                if kept is None or used + size > budget:
                    spent = True  # the keys after the first that does not fit are not tried
                    done.append(step)
                    continue
                used += size
                done.append(replace(step, prepared=kept, a=None, b=None, c=None) if lean
                            else replace(step, prepared=kept))
        log.info("%s: the work independent of the weights precomputed for %d of %d keys (%.2f GB).",
                 self.method.name, sum(s.prepared is not None for s in done), len(done), used / 1e9)
        return done

    # ------------------------------------------------------------------------------------- merge

    def check_weights(self, weights: BlockWeights) -> None:
        """Refuse weights that do not fit the models' block layout or the method."""
        if tuple(weights.blocks) != self.architecture.blocks:
            raise MergeError(
                f"The weights are for the {layout_label(weights.blocks)} layout ({len(weights.blocks)} blocks), "
                f"but the models are {self.architecture.label} ({len(self.architecture.blocks)} blocks)."
            )
        if self.method.needs_beta and weights.beta is None:
            raise MergeError(f"Merge method '{self.method.name}' needs beta weights, but only alpha was given.")

    def merge(self, weights: BlockWeights) -> Mapping[str, torch.Tensor]:
        """Merge with ``weights`` into the reused output tensors; returns them (read-only, A's key order).

        The mapping and its tensors are the same objects on every call: a later merge overwrites
        them. Keys that are not merged are model A's own tensors: do not modify them.
        """
        self.check_weights(weights)
        alpha = weights.alpha
        beta = weights.beta if weights.beta is not None else (0.0,) * len(alpha)
        formula, finish = self.method.formula, self.method.finish
        clip = self.config.weights_clip
        with torch.no_grad():
            for step in self._steps:
                if step.prepared is not None and finish is not None:
                    finish(step.prepared, alpha[step.block], beta[step.block], step.out)
                else:
                    formula(step.a, step.b, step.c, alpha[step.block], beta[step.block], step.out)
                if clip:
                    clip_to_inputs(step.out, step.a, step.b)
                if step.into is not None:
                    step.into.copy_(step.out)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # "merged" means done, for callers that time it
        self._weights = weights
        return self._view

    # ------------------------------------------------------------------------------------ output

    def model_sha256(self, model: str) -> str:
        """sha256 of model "A", "B" or "C"'s file: the run's record of it, else computed on first use and kept."""
        if model not in self._hashes:
            self._hashes[model] = checkpoint_sha256(self.models[model])
        return self._hashes[model]

    def recipe(self) -> dict[str, str]:
        """How the last merge was made: method, models (file names and sha256), weights, versions."""
        recipe = {
            "bayes_merger_version": __version__,
            "merge_method": self.method.name,
            "architecture": self.architecture.label,
            "weights_clip": str(bool(self.config.weights_clip)).lower(),
        }
        for m, path in self.models.items():
            recipe[f"model_{m.lower()}"] = path.name
            recipe[f"model_{m.lower()}_sha256"] = self.model_sha256(m)
        if self._weights is not None:
            recipe["alpha"] = self._weights.alpha_string()
            if self.method.needs_beta and self._weights.beta is not None:
                recipe["beta"] = self._weights.beta_string()
        return recipe

    def save(
        self,
        path: Path,
        *,
        dtype: str | None = None,
        prune: bool | None = None,
        metadata: dict[str, str] | None = None,
        durable: bool = False,
    ) -> Path:
        """Write the last merge as .safetensors (atomically), the recipe in its metadata; ``durable``: on
        disk before this returns (fsync), for a file that is kept (the best merge), not a trial's."""
        if self._weights is None:
            raise MergeError("Nothing to save yet: merge() has not been called.")
        meta = {"format": "pt", **self.recipe(), **(metadata or {})}
        return save_state_dict(
            self._outputs,
            Path(path),
            meta,
            dtype if dtype is not None else self.config.dtype,
            self.config.prune if prune is None else prune,
            durable=durable,
        )
