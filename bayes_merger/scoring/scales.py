"""Fixed per-scorer affine maps onto one common scale, so an ensemble can average unlike scorers.

The common scale is the LAION aesthetic predictor's 1–10 rating: a typical Stable Diffusion image
scores about 5.5 on it and one typical spread between images is about 1. Each scorer's raw score
``s`` becomes ``5.5 + (s − centre) / spread``, with ``centre`` a typical raw score of an SD image
and ``spread`` a typical difference between a good and an ordinary one, both on that scorer's own
scale. The numbers are fixed here, stated once, and never fitted to the run being scored: a
statistic of the current run would move the objective under the optimiser between trials.

Scorers already on a 1–10 (or 0–10) rating scale are left as they are (``centre`` 5.5, ``spread``
1), so an ensemble of ``laion`` and ``chad`` means what it always meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

#: Where the common scale puts a typical SD image, and how far one typical spread moves it.
COMMON_CENTRE = 5.5
COMMON_SPREAD = 1.0


@dataclass(frozen=True)
class Scale:
    """A scorer's raw scale: a typical SD image's raw score and one typical spread of it."""

    centre: float
    spread: float

    def to_common(self, raw: float) -> float:
        return COMMON_CENTRE + COMMON_SPREAD * (raw - self.centre) / self.spread


RATING = Scale(centre=5.5, spread=1.0)  # already a 1–10 / 0–10 rating: unchanged

#: Every scorer's scale, by name. Sources of the numbers (rounded, typical SD1.5/SDXL outputs):
#: PickScore  logit_scale·cos ≈ 100·cos: SD images score ≈ 19–23, pairwise gaps of ≈ 1 decide
#:            preferences in the Pick-a-Pic paper's examples.
#: HPS v2.1   a plain cosine: the HPS v2 benchmark's model means lie ≈ 0.25–0.31, images within a
#:            model spread by ≈ 0.02–0.03.
#: ImageReward is already standardised by its authors (mean 0, sd 1 on their data).
SCALES: Mapping[str, Scale] = MappingProxyType(
    {
        "laion": RATING,
        "chad": RATING,
        "aesthetic_head": RATING,
        "manual": RATING,
        "aesthetic_v25": RATING,
        "pickscore": Scale(centre=21.0, spread=1.0),
        "hpsv2": Scale(centre=0.27, spread=0.025),
    }
)


def scale_of(name: str) -> Scale:
    """The scale of the scorer ``name``; a scorer with none listed is taken to be a rating already."""
    return SCALES.get(name, RATING)
