"""How per-image scores become one objective: per-payload means, then a weighted mean over payloads.

A NaN or infinite score is an error of the trial (ScorerError), never averaged in: one broken image
must not turn the optimiser's target into NaN, nor be hidden inside a mean.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from bayes_merger.errors import ConfigError, ScorerError

#: The ways per-payload scores are combined (``scorer.combine``):
#: arithmetic  Σ w·s / Σ w                 (the plain weighted mean)
#: geometric   exp(Σ w·ln s / Σ w)         (punishes one bad payload more; needs scores > 0)
#: quadratic   sqrt(Σ w·s² / Σ w)          (rewards one excellent payload more; needs scores ≥ 0)
COMBINE_MODES: tuple[str, ...] = ("arithmetic", "geometric", "quadratic")


def check_combine_mode(mode: str) -> str:
    """Return ``mode`` if it is a known combine mode, else raise ConfigError listing the known ones."""
    if mode not in COMBINE_MODES:
        raise ConfigError(
            f"scorer.combine is {mode!r}, which is not a way to combine scores; "
            f"use one of: {', '.join(COMBINE_MODES)}."
        )
    return mode


def payload_scores(per_image: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The mean score of each payload's images, in the mapping's order."""
    means: dict[str, float] = {}
    for payload, scores in per_image.items():
        if len(scores) == 0:
            raise ScorerError(f"Payload {payload!r} has no image scores to average.")
        for index, value in enumerate(scores):
            if not math.isfinite(value):
                raise ScorerError(
                    f"Image {index} of payload {payload!r} scored {value}, which is not a finite "
                    "number; the trial is failed rather than averaging it in."
                )
        means[payload] = math.fsum(scores) / len(scores)
    return means


def objective(
    per_payload: Mapping[str, float], weights: Mapping[str, float], mode: str = "arithmetic"
) -> float:
    """The ``score_weight``-weighted mean of the per-payload scores, by ``mode`` (see COMBINE_MODES).

    ``weights`` maps each payload to its score_weight (≥ 0; a payload with weight 0 does not count).
    """
    check_combine_mode(mode)
    if not per_payload:
        raise ScorerError("There are no payload scores to combine into an objective.")
    missing = [name for name in per_payload if name not in weights]
    if missing:
        # The loop passes a weight for every payload it scored; a gap is a bug, not a user error.
        raise ValueError(f"No score_weight given for payload(s): {', '.join(missing)}.")

    pairs: list[tuple[str, float, float]] = []
    for name, score in per_payload.items():
        weight = float(weights[name])
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"Payload {name!r} has score_weight {weight}; it must be a finite number ≥ 0."
            )
        if not math.isfinite(score):
            raise ScorerError(
                f"Payload {name!r} scored {score}, which is not a finite number; "
                "the trial is failed rather than averaging it in."
            )
        pairs.append((name, float(score), weight))

    total = math.fsum(w for _, _, w in pairs)
    if total <= 0:
        raise ConfigError("Every payload has score_weight 0, so there is nothing to optimise.")

    if mode == "arithmetic":
        return math.fsum(w * s for _, s, w in pairs) / total
    if mode == "geometric":
        for name, score, weight in pairs:
            if score < 0 and weight > 0:
                raise ScorerError(
                    f"Payload {name!r} scored {score}; the geometric mean needs scores ≥ 0 "
                    "(use scorer.combine: arithmetic for scorers that can go below 0)."
                )
        if any(s == 0 and w > 0 for _, s, w in pairs):
            return 0.0  # a payload at the bottom of the scale (a manual 0): the worst, not a failed trial
        return math.exp(math.fsum(w * math.log(s) for _, s, w in pairs if w > 0) / total)
    # quadratic
    for name, score, weight in pairs:
        if score < 0 and weight > 0:
            raise ScorerError(
                f"Payload {name!r} scored {score}; the quadratic mean needs scores ≥ 0, or a "
                "more negative score would count as better (use scorer.combine: arithmetic)."
            )
    return math.sqrt(math.fsum(w * s * s for _, s, w in pairs) / total)


def score_trial(
    scores: Sequence[float], payloads: Sequence[str], weights: Mapping[str, float], mode: str = "arithmetic"
) -> tuple[dict[str, float], float]:
    """One trial's per-image ``scores`` (of the images of ``payloads``, one name per image, in order):
    (per-payload means, the objective)."""
    per_image: dict[str, list[float]] = {}
    for payload, value in zip(payloads, scores):
        per_image.setdefault(payload, []).append(value)
    per_payload = payload_scores(per_image)
    return per_payload, objective(per_payload, weights, mode)
