"""Several scorers as one: each image scores the weighted mean of its members' scores.

Members' scores are first put on one common scale by a fixed affine map per scorer (``scales.py``:
PickScore ≈ 21 ± 1 and HPS v2.1 ≈ 0.27 ± 0.025 become ≈ 5.5 ± 1 like the LAION rating), so the
weights say how much each scorer counts, not how its units compare. The mean is divided by the sum
of the weights; rating scorers (laion, chad, manual, aesthetic_v25) are unchanged by their map, so
an ensemble of them stays on their scale.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from PIL import Image

from bayes_merger.scoring.base import ImageContext, Scorer
from bayes_merger.scoring.scales import Scale, scale_of


def ensemble_name(members: Iterable[tuple[str, float]]) -> str:
    """``ensemble(pickscore=1, hpsv2=1)``: what an ensemble of these members and weights goes by."""
    return "ensemble(" + ", ".join(f"{name}={weight:g}" for name, weight in members) + ")"


class EnsembleScorer:
    """Weighted mean of member scorers' per-image scores; members run in the order given."""

    def __init__(self, members: Sequence[tuple[Scorer, float]], scales: Sequence[Scale] | None = None) -> None:
        """``scales``: each member's scale (default: by its name, from ``scales.SCALES``)."""
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if not all(math.isfinite(w) and w > 0 for _, w in members):
            raise ValueError("ensemble weights must be finite and > 0")
        self.members = tuple(members)
        self.name = ensemble_name((s.name, w) for s, w in self.members)
        self._total = math.fsum(w for _, w in self.members)
        self.scales = tuple(scales) if scales is not None else tuple(scale_of(s.name) for s, _ in self.members)
        if len(self.scales) != len(self.members):
            raise ValueError("an ensemble needs one scale per member")

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]:
        totals = [0.0] * len(images)
        for (scorer, weight), scale in zip(self.members, self.scales):
            scores = [scale.to_common(value) for value in scorer.score(images, contexts)]
            if len(scores) != len(images):
                raise RuntimeError(f"{scorer.name} returned {len(scores)} scores for {len(images)} images")
            # A NaN from one member makes the image's score NaN, which combine.py then refuses.
            totals = [t + weight * s for t, s in zip(totals, scores)]
        return [t / self._total for t in totals]
