"""Payloads: the txt2img requests every trial renders, read from YAML with fixed seeds and seeded wildcards.

Two file formats (see ``payloads/README.md``; found and read in ``payload_files``):

- the original tool's: a ``cargo.yaml`` whose Hydra defaults list names the payloads
  (``defaults: [{cargo: [portrait, landscape]}]``) and whose other keys are defaults for all of them,
  next to a ``cargo/`` folder holding one ``<name>.yaml`` per payload, the payload's name as its
  top-level key; a folder of such payload files also works on its own;
- the list form: one file with ``defaults:`` and ``payloads: [{name: ..., prompt: ..., ...}]``.

Layers, lowest first: the file's defaults, the config's ``payloads.defaults``, the payload's own fields.
Everything that makes a render random is fixed here, once, so every trial (and a resumed run) sends
exactly the same requests: seeds are derived from the run seed when a payload gives none, and each
wildcard draw is derived from (run seed, payload, field, occurrence).
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bayes_merger.config import PayloadsConfig
from bayes_merger.errors import ConfigError
from bayes_merger.webui.payload_files import Layer, RawPayload, check_unique, discover
from bayes_merger.webui.samplers import other_checkpoints
from bayes_merger.webui.wildcards import Wildcards, derive, wildcards_dir

__all__ = ["Payload", "load_payloads", "TXT2IMG_FIELDS"]

log = logging.getLogger(__name__)

_TEXT, _INT, _NUMBER, _BOOL = "text", "whole number", "number", "true or false"
_LIST, _TEXT_LIST, _MAPPING = "list", "list of text", "mapping"

# Every field of A1111 1.10's StableDiffusionTxt2ImgProcessingAPI (plus Forge's distilled_cfg_scale)
# and the kind of value it takes; anything else is sent but warned about, since the API ignores it.
TXT2IMG_FIELDS: Mapping[str, str] = {
    "prompt": _TEXT, "negative_prompt": _TEXT, "styles": _TEXT_LIST,
    "seed": _INT, "subseed": _INT, "subseed_strength": _NUMBER,
    "seed_resize_from_h": _INT, "seed_resize_from_w": _INT,
    "sampler_name": _TEXT, "sampler_index": _TEXT, "scheduler": _TEXT,
    "batch_size": _INT, "n_iter": _INT, "steps": _INT,
    "cfg_scale": _NUMBER, "distilled_cfg_scale": _NUMBER, "width": _INT, "height": _INT,
    "restore_faces": _BOOL, "tiling": _BOOL, "do_not_save_samples": _BOOL, "do_not_save_grid": _BOOL,
    "eta": _NUMBER, "denoising_strength": _NUMBER, "s_min_uncond": _NUMBER, "s_churn": _NUMBER,
    "s_tmax": _NUMBER, "s_tmin": _NUMBER, "s_noise": _NUMBER,
    "override_settings": _MAPPING, "override_settings_restore_afterwards": _BOOL,
    "refiner_checkpoint": _TEXT, "refiner_switch_at": _NUMBER, "disable_extra_networks": _BOOL,
    "firstpass_image": _TEXT, "comments": _MAPPING,
    "enable_hr": _BOOL, "firstphase_width": _INT, "firstphase_height": _INT, "hr_scale": _NUMBER,
    "hr_upscaler": _TEXT, "hr_second_pass_steps": _INT, "hr_resize_x": _INT, "hr_resize_y": _INT,
    "hr_checkpoint_name": _TEXT, "hr_sampler_name": _TEXT, "hr_scheduler": _TEXT,
    "hr_prompt": _TEXT, "hr_negative_prompt": _TEXT,
    "force_task_id": _TEXT, "script_name": _TEXT, "script_args": _LIST,
    "send_images": _BOOL, "save_images": _BOOL, "alwayson_scripts": _MAPPING, "infotext": _TEXT,
}
# Our own keys, never sent to the WebUI.
_OWN_FIELDS = frozenset({"score_weight"})
# Typos that the original tool's own templates spread (cfg, neg_prompt, sampler) and a common
# SD.Next field, with what A1111 calls them; checked before the fuzzy match.
_KNOWN_MISTAKES = {
    "cfg": "cfg_scale",
    "neg_prompt": "negative_prompt",
    "negative": "negative_prompt",
    "sampler": "sampler_name",
    "clip_skip": "override_settings: {CLIP_stop_at_last_layers: N}",
}
# Fields where __wildcards__ are expanded.
_PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
_POSITIVE_INTS = ("steps", "batch_size", "n_iter", "width", "height")
# numpy seeds its samplers' noise with 32-bit seeds, and A1111 adds the image index to the seed.
_MAX_SEED = 2**32 - 1
_DERIVED_SEED_RANGE = 2**31


@dataclass(frozen=True)
class Payload:
    """One txt2img request, fully resolved: the same body is sent in every trial.

    ``request`` is a plain JSON-ready dict (so it can go straight to ``requests``); treat it as
    read-only and copy it before changing anything. ``seeds`` are the seeds A1111 gives the
    ``images`` images of the request, in order (-1 each when random seeds were allowed).
    """

    name: str
    request: Mapping[str, Any] = field(hash=False)
    score_weight: float
    images: int
    seeds: tuple[int, ...]


def load_payloads(config: PayloadsConfig, run_seed: int) -> list[Payload]:
    """Read, check and resolve the payloads named by ``config``; ConfigError on anything wrong."""
    if isinstance(run_seed, bool) or not isinstance(run_seed, int):
        raise ConfigError(f"run.seed must be a whole number, got {run_seed!r}.")
    if not config.dir:
        raise ConfigError("payloads.dir is empty: give a payload folder or a payload file.")
    raws, root = discover(Path(str(config.dir)).expanduser())
    check_unique(raws)
    config_defaults = _plain(config.defaults) or {}
    if not isinstance(config_defaults, Mapping):
        raise ConfigError(f"payloads.defaults must be a mapping of txt2img fields, got {config_defaults!r}.")
    builder = _Builder(
        run_seed=run_seed,
        allow_random=bool(config.allow_random_seeds),
        wildcards=Wildcards(wildcards_dir(config.wildcards_dir, root)),
        config_defaults=Layer(dict(config_defaults), "payloads.defaults (config)", "config_defaults"),
    )
    payloads = [builder.build(raw) for raw in raws]
    if all(p.score_weight == 0 for p in payloads):
        raise ConfigError(f"every payload in {config.dir} has score_weight 0, so nothing would be scored.")
    builder.log_summary()
    log.info(
        "Payloads: %d (%s), %d images per trial.",
        len(payloads), ", ".join(p.name for p in payloads), sum(p.images for p in payloads),
    )
    return payloads


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# --- building requests -------------------------------------------------------------------------


class _Fields:
    """One payload's fields after layering, each remembering the layer (file) it came from."""

    def __init__(self, raw: RawPayload, layers: Sequence[Layer]) -> None:
        self.name = raw.name
        self.own = raw.own
        self.origin: dict[str, Layer] = {}
        self.values: dict[str, Any] = {}
        for layer in layers:
            for key, value in layer.fields.items():
                self.origin[key] = layer
                self.values[key] = value

    def where(self, key: str) -> str:
        """'<file>: payload '<name>' field '<key>'' (or 'default field') for messages."""
        return f"{_subject(self.origin.get(key, self.own), self.name)} field '{key}'"


class _Builder:
    """Turns raw payloads into resolved Payloads; remembers which warnings it already gave."""

    def __init__(
        self, *, run_seed: int, allow_random: bool, wildcards: Wildcards, config_defaults: Layer
    ) -> None:
        self.run_seed = run_seed
        self.allow_random = allow_random
        self.wildcards = wildcards
        self.config_defaults = config_defaults
        self._warned: set[tuple[str, str]] = set()
        self._no_steps: list[str] = []
        self._random: list[str] = []

    def build(self, raw: RawPayload) -> Payload:
        layers = [layer for layer in (raw.file_defaults, self.config_defaults, raw.own) if layer is not None]
        for layer in layers:
            for key in layer.fields:
                self._warn_unknown(key, layer, raw.name)
        fields = _Fields(raw, layers)
        score_weight = _score_weight(fields)
        for key, value in fields.values.items():
            if key in TXT2IMG_FIELDS and value is not None:
                value = fields.values[key] = _coerced(value, TXT2IMG_FIELDS[key])
                _check_kind(value, TXT2IMG_FIELDS[key], fields.where(key))
        _check_values(fields)
        # null means "the WebUI's default": it also clears a value set by a defaults layer.
        request = {
            k: copy.deepcopy(v) for k, v in fields.values.items() if v is not None and k not in _OWN_FIELDS
        }
        for key in _PROMPT_FIELDS:
            if key in request:
                where = fields.where(key)
                # the hires pass draws as the first pass: an hr_prompt written as the prompt renders its subject
                drawn_as = key.removeprefix("hr_")
                request[key] = self.wildcards.expand(request[key], self.run_seed, raw.name, drawn_as, where)
        images = request.get("batch_size", 1) * request.get("n_iter", 1)
        seeds = self._fix_seeds(request, fields, images)
        self._force_output_fields(request, fields)
        if "steps" not in request:
            self._no_steps.append(raw.name)
        return Payload(name=raw.name, request=request, score_weight=score_weight, images=images, seeds=seeds)

    def _warn_unknown(self, key: str, layer: Layer, name: str) -> None:
        if key in TXT2IMG_FIELDS or key in _OWN_FIELDS or (layer.label, key) in self._warned:
            return
        if layer.kind != "payload":  # shared defaults: once, not once per payload
            self._warned.add((layer.label, key))
        closest = _KNOWN_MISTAKES.get(key) or next(
            iter(difflib.get_close_matches(key, [*TXT2IMG_FIELDS, *_OWN_FIELDS], n=1, cutoff=0.5)), None
        )
        hint = f"did you mean '{closest}'?" if closest else "no known field is close"
        log.warning(
            "%s field '%s' is not a known txt2img field (%s); it is sent as written, and A1111 ignores "
            "fields it does not know.", _subject(layer, name), key, hint,
        )

    def _fix_seeds(self, request: dict[str, Any], fields: _Fields, images: int) -> tuple[int, ...]:
        seed = self._fixed(request, fields, "seed", required=True)
        assert seed is not None  # required=True always yields a seed
        strength = request.get("subseed_strength", 0)
        # The subseed only matters with a variation strength; a given one is fixed too, for stable infotexts.
        self._fixed(request, fields, "subseed", required=strength != 0)
        if seed == -1:
            return (-1,) * images
        if seed + images - 1 > _MAX_SEED:
            raise ConfigError(f"{fields.where('seed')} is too large: seeds go up to {_MAX_SEED}.")
        # A1111 gives image i the seed seed+i, except with variation seeds, where all share the seed.
        return tuple(seed + (i if strength == 0 else 0) for i in range(images))

    def _fixed(self, request: dict[str, Any], fields: _Fields, key: str, *, required: bool) -> int | None:
        """Make ``request[key]`` (seed or subseed) a fixed number; -1 only where random seeds are allowed."""
        derived = derive(self.run_seed, key, fields.name) % _DERIVED_SEED_RANGE
        if key not in request:
            if required:
                request[key] = derived
            return request.get(key)
        value, layer = request[key], fields.origin[key]
        if value >= 0:
            return value
        if value != -1:
            raise ConfigError(f"{fields.where(key)} must be -1 (random) or a whole number >= 0, got {value}.")
        if self.allow_random:
            if required:
                self._random.append(f"{fields.name} ({key})")
            return -1
        if required and layer.kind != "file_defaults":
            raise ConfigError(
                f"{fields.where(key)} is -1 (random), which makes the same weights score differently in "
                "each trial: give a fixed seed, remove the field (a fixed one is derived from run.seed), "
                "or set payloads.allow_random_seeds=true."
            )
        # The original tool's cargo template ships seed: -1 for every payload; fixing it, rather than
        # refusing every migrated folder, is what its users need. A -1 subseed without a variation
        # strength does not change the image, so it is fixed quietly.
        if required and layer.kind == "file_defaults" and (layer.label, f"-1 {key}") not in self._warned:
            self._warned.add((layer.label, f"-1 {key}"))
            log.warning(
                "%s: default %s -1 (random) replaced by fixed seeds derived from run.seed; "
                "set payloads.allow_random_seeds=true to keep random seeds.", layer.label, key,
            )
        request[key] = derived
        return derived

    @staticmethod
    def _force_output_fields(request: dict[str, Any], fields: _Fields) -> None:
        # We need the images in the answer, and nothing written into the WebUI's output folders.
        for key, wanted in (("send_images", True), ("save_images", False)):
            if request.get(key, wanted) != wanted:
                log.warning("%s is overridden: bayes-merger always sends %s: %s.",
                            fields.where(key), key, str(wanted).lower())
            request[key] = wanted
        # false leaves each override in the WebUI's settings, and our next POST /options saves them into its
        # config.json: the user's WebUI changed for good. Set only where the payload set it (the API's default
        # is true), so that the requests of runs that never set it stay as they were.
        key = "override_settings_restore_afterwards"
        if request.get(key) is False:
            log.warning("%s is overridden: bayes-merger always sends %s: true (false would leave the payload's "
                        "override_settings in the WebUI's settings after the run).", fields.where(key), key)
            request[key] = True

    def log_summary(self) -> None:
        if self._no_steps:
            log.warning(
                "Payloads %s set no steps: the API's default of 50 steps applies, which is slow; "
                "set steps in the payloads or their defaults.", ", ".join(self._no_steps),
            )
        if self._random:
            log.warning(
                "Random seeds in %s (allowed by payloads.allow_random_seeds): the objective is noisy, the same "
                "weights will score differently in each trial, and the best trial is partly luck.",
                ", ".join(self._random),
            )


def _score_weight(fields: _Fields) -> float:
    value = fields.values.get("score_weight", 1.0)
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or value < 0:
        raise ConfigError(f"{fields.where('score_weight')} must be a number >= 0, got {_show(value)}.")
    return float(value)


def _check_values(fields: _Fields) -> None:
    """Checks beyond the kind of each value; kinds are already checked."""
    values = {k: v for k, v in fields.values.items() if v is not None}
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{fields.where('prompt')} is empty: every payload needs a prompt.")
    for key in _POSITIVE_INTS:
        if key in values and values[key] < 1:
            raise ConfigError(f"{fields.where(key)} must be at least 1, got {values[key]}.")
    for key in ("width", "height"):
        if key in values and values[key] % 8:
            log.warning("%s is %d, not a multiple of 8: the image will be %d pixels.",
                        fields.where(key), values[key], values[key] // 8 * 8)
    if "sd_model_checkpoint" in (values.get("override_settings") or {}):
        raise ConfigError(
            f"{fields.where('override_settings')} sets sd_model_checkpoint, which would render with "
            "another model than the merge being scored."
        )
    for key, _ in other_checkpoints(values):
        log.warning("%s brings in another checkpoint: scores will only partly measure the merge.", fields.where(key))


def _subject(layer: Layer, name: str) -> str:
    if layer.kind == "payload":
        return f"{layer.label}: payload '{name}'"
    return f"{layer.label}: default"


def _coerced(value: Any, kind: str) -> Any:
    """A number written as text (``steps: "20"``) as the number, as the WebUI's API coerces it: the seeds and
    the image count are worked out from it here. Anything else as it is, for ``_check_kind`` to judge."""
    if isinstance(value, str) and kind in (_INT, _NUMBER):
        try:
            return int(value) if kind == _INT else float(value)
        except ValueError:
            return value
    return value


def _check_kind(value: Any, kind: str, where: str) -> None:
    if kind == _TEXT:
        ok = isinstance(value, str)
    elif kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == _NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == _LIST:
        ok = isinstance(value, list)
    elif kind == _TEXT_LIST:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, Mapping)
    if not ok:
        article = "an" if kind[0] in "aeiou" else "a"
        what = kind if kind == _BOOL else f"{article} {kind}"
        raise ConfigError(f"{where} must be {what}, got {_show(value)}.")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
