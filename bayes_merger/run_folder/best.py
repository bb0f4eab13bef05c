"""best.yaml: the best trial's score and weights, named and as MBW strings, rewritten after every trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from bayes_merger.files import atomic_write_text
from bayes_merger.run_folder.paths import BEST_FILE
from bayes_merger.run_folder.trials import Trial


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
    """(Re)write best.yaml atomically; nothing while no trial has succeeded.

    ``extra`` adds fields after the standard ones (plain data: numbers, strings, lists, dicts).
    """
    if best is None:
        return
    data = {**best_fields(best), **(extra or {})}
    atomic_write_text(Path(run_dir) / BEST_FILE, OmegaConf.to_yaml(OmegaConf.create(data)))
