"""Several scorers as one: each image scores the weighted mean of its members' scores.

Members keep their own scales (LAION ≈ 1–10, manual 0–10; a future ImageReward ≈ −2…2), so the
weights are also how scales are balanced. The mean is divided by the sum of the weights, so an
ensemble of scorers on one scale stays on that scale.
"""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image

from bayes_merger.scoring.base import ImageContext, Scorer


class EnsembleScorer:
    """Weighted mean of member scorers' per-image scores; members run in the order given."""

    def __init__(self, members: Sequence[tuple[Scorer, float]]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if not all(math.isfinite(w) and w > 0 for _, w in members):
            raise ValueError("ensemble weights must be finite and > 0")
        self.members = tuple(members)
        self.name = "ensemble(" + ", ".join(f"{s.name}={w:g}" for s, w in self.members) + ")"
        self._total = math.fsum(w for _, w in self.members)

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]:
        totals = [0.0] * len(images)
        for scorer, weight in self.members:
            scores = scorer.score(images, contexts)
            if len(scores) != len(images):
                raise RuntimeError(f"{scorer.name} returned {len(scores)} scores for {len(images)} images")
            # A NaN from one member makes the image's score NaN, which combine.py then refuses.
            totals = [t + weight * s for t, s in zip(totals, scores)]
        return [t / self._total for t in totals]
