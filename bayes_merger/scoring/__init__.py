"""Aesthetic scorers and how their per-image scores become one objective.

    scorer = build_scorer(config.scorer)               # loads the models once, checks the weights
    scores = scorer.score(images, contexts)            # one float per image
    means = payload_scores({"portrait": scores})       # per-payload means (NaN/inf → ScorerError)
    value = objective(means, {"portrait": 1.0}, "arithmetic")
"""

from bayes_merger.scoring.base import ImageContext, Scorer, SharedModels
from bayes_merger.scoring.combine import COMBINE_MODES, check_combine_mode, objective, payload_scores, score_trial
from bayes_merger.scoring.registry import SCORERS, build_scorer, for_run_folder, needs_image_files

__all__ = [
    "COMBINE_MODES",
    "SCORERS",
    "ImageContext",
    "Scorer",
    "SharedModels",
    "build_scorer",
    "for_run_folder",
    "needs_image_files",
    "check_combine_mode",
    "objective",
    "payload_scores",
    "score_trial",
]
