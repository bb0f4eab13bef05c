"""best.yaml: the best trial's score and weights, named and as MBW strings, rewritten after every trial.

The best trial is the one the optimiser's model rates best (the highest posterior mean: one lucky
render does not win), or the highest score while too few are scored for a model: ``chosen_by`` says
which. The trial with the highest raw score, the baseline (trial 0: the centre or the user's start)
with the gain over it, and each weight's importance are written beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from omegaconf import OmegaConf

from bayes_merger.files import atomic_write_text, storage_errors
from bayes_merger.run_folder.paths import BEST_FILE
from bayes_merger.run_folder.trials import Trial, best_trial


def best_fields(best: Trial) -> dict[str, Any]:
    """The fields every best.yaml has."""
    return {
        "score": best.score,
        "trial": best.trial,
        "weights": best.weights,
        "alpha": best.alpha_string,
        "beta": best.beta_string,
        "params": best.params,
        "payload_scores": best.payload_scores,
    }


def write_best(run_dir: Path, best: Trial | None, extra: Mapping[str, Any] | None = None) -> None:
    """(Re)write best.yaml atomically; none while no trial has succeeded (one written before is removed: its
    trials were set aside since); a StorageError when it cannot be.

    ``extra`` adds fields after the standard ones (plain data: numbers, strings, lists, dicts).
    """
    path = Path(run_dir) / BEST_FILE
    if best is None:
        with storage_errors(path):
            path.unlink(missing_ok=True)
        return
    data = {**best_fields(best), **(extra or {})}
    with storage_errors(path):
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(data)))


def best_extras(trials: Sequence[Trial], best: Trial | None, importance: Mapping[str, float],
                chosen_by: str) -> dict[str, Any]:
    """best.yaml's fields beyond the best trial's own: how it was chosen (the optimiser's ``chosen_by``),
    the raw best, the baseline and the gain, importance."""
    extra: dict[str, Any] = {"chosen_by": chosen_by}
    raw = best_trial(trials)
    if raw is not None:
        extra["raw_best"] = {"trial": raw.trial, "score": raw.score}
    baseline = next((t for t in trials if t.trial == 0 and t.ok), None)
    if baseline is not None:
        extra["baseline"] = {"trial": 0, "score": baseline.score, "alpha": baseline.alpha_string,
                             "beta": baseline.beta_string}
        if best is not None:
            extra["gain_over_baseline"] = best.score - baseline.score
    if any(importance.values()):
        extra["importance"] = {name: float(value) for name, value in importance.items()}
    return extra


def read_best(run_dir: Path) -> dict[str, Any]:
    """best.yaml as a plain dict; {} when it is missing or unreadable (a report never fails on it)."""
    path = Path(run_dir) / BEST_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
