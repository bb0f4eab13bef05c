"""The list of scorers by name, and ``build_scorer``: config → a ready scorer, models loaded once.

Adding a scorer (ImageReward …) is one new module with a factory
``build(config: ScorerConfig, shared: SharedModels) -> Scorer``, a function naming the weights it loads
``weights(config: ScorerConfig) -> list[Weights]``, and one line in ``SCORERS``.

Config shapes::

    scorer: {name: laion}                                   # one scorer
    scorer: {name: ensemble, ensemble: {laion: 1.0, chad: 0.5}}   # several, weighted per image
    scorer: {name: ensemble, ensemble: {pickscore: 1.0, hpsv2: 1.0, aesthetic_v25: 0.5}}

Ensemble members are put on one scale first (``scales.py``: fixed affine maps, never run statistics).

Ensemble members share the section's other settings (clip, device, batch_size, cache_dir) and one
CLIP backbone; ``scorer.head`` is used by the member that takes a head file (``aesthetic_head``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.files import file_sha256
from bayes_merger.scoring import aesthetic, aesthetic_v25, manual, preference
from bayes_merger.scoring.base import Scorer, SharedModels, Weights
from bayes_merger.scoring.clip import check_batch_size
from bayes_merger.scoring.combine import check_combine_mode
from bayes_merger.scoring.ensemble import EnsembleScorer, ensemble_name
from bayes_merger.scoring.weights import downloads_disabled

log = logging.getLogger(__name__)

ScorerFactory = Callable[[ScorerConfig, SharedModels], Scorer]


class ScorerKind(NamedTuple):
    build: ScorerFactory
    weights: Callable[[ScorerConfig], list[Weights]]  # what ``build`` loads, looked for without loading it


#: Every scorer, by the name ``scorer.name`` (or an ensemble key) gives it. One explicit list.
SCORERS: Mapping[str, ScorerKind] = MappingProxyType(
    {
        "laion": ScorerKind(aesthetic.build_laion, aesthetic.laion_weights),
        "chad": ScorerKind(aesthetic.build_chad, aesthetic.chad_weights),
        "aesthetic_head": ScorerKind(aesthetic.build_aesthetic_head, aesthetic.aesthetic_head_weights),
        "aesthetic_v25": ScorerKind(aesthetic_v25.build_aesthetic_v25, aesthetic_v25.aesthetic_v25_weights),
        "pickscore": ScorerKind(preference.build_pickscore, preference.pickscore_weights),
        "hpsv2": ScorerKind(preference.build_hpsv2, preference.hpsv2_weights),
        "manual": ScorerKind(manual.build_manual, manual.manual_weights),
    }
)

ENSEMBLE = "ensemble"

#: Named ensembles: ``scorer=preference`` composes the same from conf/scorer/preference.yaml (a test
#: keeps the two equal); the finalists and bayes-merger-rescore take these names too.
PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {"preference": MappingProxyType({"pickscore": 1.0, "hpsv2": 1.0, "aesthetic_v25": 0.5})}
)

#: Scorers that read ``scorer.head``; in an ensemble the others use their own published weights.
_TAKES_HEAD_FILE = frozenset({"aesthetic_head"})


def build_scorer(config: ScorerConfig) -> Scorer:
    """The scorer the config names, with its weights checked and its models loaded (once).

    Raises ConfigError for an unknown name or a bad ensemble, ScorerError when weights are missing
    (offline) or wrong — before any trial runs.
    """
    config = _as_dataclass(config)
    check_scorer_config(config)
    shared = SharedModels()
    if config.name == ENSEMBLE:
        return EnsembleScorer([(_kind(name).build(_member_config(config, name), shared), weight)
                               for name, weight in _ensemble_members(config)])
    return _kind(config.name).build(config, shared)


def scorer_name(config: ScorerConfig) -> str:
    """The name the scorer ``config`` builds goes by (``laion``, ``ensemble(pickscore=1, hpsv2=1)``), loading
    nothing: a re-score's file is named by it."""
    config = _as_dataclass(config)
    return ensemble_name(_ensemble_members(config)) if config.name == ENSEMBLE else config.name


def scorer_identity(config: ScorerConfig) -> dict[str, Any]:
    """The scorer settings that decide a score (not its device or batch size): part of a run's record of what
    a score means, and of each re-scored trial's line. The head file by its sha256, wherever it lies."""
    config = _as_dataclass(config)
    head = Path(os.path.expanduser(config.head)).resolve() if config.head else None
    return {"name": config.name, "clip": config.clip, "combine": config.combine,
            "ensemble": dict(sorted(dict(config.ensemble).items())), "tokenizer": config.tokenizer,
            "siglip": config.siglip, "head_sha256": file_sha256(head) if head and head.is_file() else None}


def weights_to_fetch(config: ScorerConfig) -> list[str]:
    """The weights ``build_scorer`` would download (each scorer's, an ensemble's once each), found without
    loading any. Raises what the build would for a weight that is missing and cannot be fetched: a file
    or folder the config names, or anything while downloads are off (HF_HUB_OFFLINE) — a ScorerError."""
    config = _as_dataclass(config)
    members = ([_member_config(config, name) for name, _ in _ensemble_members(config)] if config.name == ENSEMBLE
               else [config])
    wanted = {w.name: w for member in members for w in _kind(member.name).weights(member)}
    for weights in wanted.values():
        if not weights.here and (not weights.downloadable or downloads_disabled()):
            raise ScorerError(weights.missing)
    return [name for name, weights in wanted.items() if not weights.here]


def check_scorer_config(config: ScorerConfig) -> None:
    """What ``build_scorer`` refuses without a file or a model: the name, the ensemble, the combine mode and
    the batch size, so that a typo is said before the WebUI is asked anything (a ConfigError)."""
    config = _as_dataclass(config)
    check_combine_mode(config.combine)
    check_batch_size(config.batch_size)
    if config.name == ENSEMBLE:
        _ensemble_members(config)
        return
    if config.ensemble:
        raise ConfigError(
            f"scorer.ensemble is set but scorer.name is {config.name!r}; "
            "set scorer.name: ensemble to combine scorers, or remove scorer.ensemble."
        )
    _kind(config.name)


def keeps_head(given_for: str, name: str) -> bool:
    """Whether scorer ``name`` scores with a local head file given for scorer ``given_for``: a head file is
    the head of the scorer it was given for, another one takes its own published weights (the head-file
    scorer, and an ensemble's member of it, take any head file)."""
    return name == given_for or name in _TAKES_HEAD_FILE or name in PRESETS or name == ENSEMBLE


def named_scorer(config: ScorerConfig, name: str) -> ScorerConfig:
    """``config`` scoring with ``name`` instead: a scorer, a named ensemble (``PRESETS``) or ``ensemble``
    (``config``'s own); the names checked (a ConfigError), nothing loaded."""
    named = renamed_scorer(config, name)
    if named.name == ENSEMBLE:
        _ensemble_members(named)
    else:
        _kind(named.name)
    return named


def renamed_scorer(config: ScorerConfig, name: str) -> ScorerConfig:
    """``named_scorer`` with nothing checked yet: for a caller that may still set the ensemble's members
    (``bayes-merger-rescore scorer=ensemble scorer.ensemble={…}``) and checks the result once it is whole."""
    config = _as_dataclass(config)
    if not keeps_head(config.name, name):
        config = dataclasses.replace(config, head=None)
    if name in PRESETS:
        return dataclasses.replace(config, name=ENSEMBLE, ensemble=dict(PRESETS[name]))
    return dataclasses.replace(config, name=name, ensemble=dict(config.ensemble) if name == ENSEMBLE else {})


def _kind(name: str) -> ScorerKind:
    try:
        return SCORERS[name]
    except KeyError:
        known = [*SCORERS, ENSEMBLE, *PRESETS]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"scorer.name {name!r} is not a scorer; use one of: {', '.join(known)}.{hint}") from None


def _ensemble_members(config: ScorerConfig) -> list[tuple[str, float]]:
    if not config.ensemble:
        raise ConfigError("scorer.name is ensemble but scorer.ensemble is empty; give {scorer name: weight}.")
    members: list[tuple[str, float]] = []
    for name, weight in config.ensemble.items():
        if name == ENSEMBLE:
            raise ConfigError("scorer.ensemble cannot contain another ensemble.")
        _kind(name)  # unknown names fail here, before anything loads
        weight = float(weight)
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"scorer.ensemble weight of {name} is {weight}; it must be a number > 0.")
        members.append((name, weight))
    return members


def _member_config(config: ScorerConfig, name: str) -> ScorerConfig:
    # One `head` setting cannot be every member's head: only the head-file scorer reads it.
    head = config.head if name in _TAKES_HEAD_FILE else None
    return dataclasses.replace(config, name=name, head=head, ensemble={})


def _as_dataclass(config: ScorerConfig) -> ScorerConfig:
    """Accept Hydra's DictConfig of the ScorerConfig schema as well as the dataclass itself."""
    if isinstance(config, ScorerConfig):
        return config
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        merged = OmegaConf.merge(OmegaConf.structured(ScorerConfig), config)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    raise TypeError(f"build_scorer takes a ScorerConfig, not {type(config).__name__}")


def _uses_manual(config: ScorerConfig) -> bool:
    return config.name == "manual" or (config.name == ENSEMBLE and "manual" in config.ensemble)


def needs_image_files(config: ScorerConfig) -> bool:
    """Whether the scorer shows the user the rendered images as files (manual scoring does)."""
    return _uses_manual(config)


def for_run_folder(config: ScorerConfig, ratings_file: Path) -> ScorerConfig:
    """The scorer config for a run: manual ratings (its scorer's, or its finalists'), unless set elsewhere, live
    in the run folder (``ratings_file``), so a resumed run finds them (the finalists' went to the folder the run
    was started from)."""
    if (_uses_manual(config) or config.finalists == "manual") and not config.manual_ratings:
        return dataclasses.replace(config, manual_ratings=str(ratings_file))
    return config
