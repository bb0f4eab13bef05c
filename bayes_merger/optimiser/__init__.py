"""The optimiser: a start point, a seeded Latin hypercube, then Gaussian-process suggestions.

Trial 0 is the start point (the centre of the space, the even merge, unless the user gives a recipe):
it is the baseline every later trial is measured against. The next ``init_points − 1`` trials are a
seeded Latin hypercube; after them a GP (``gp.py``) is fitted to every score so far and the next point
maximises the acquisition (``acquisition.py``), the last trial of the run the posterior mean.

Each suggestion is a pure function of (run seed, trial index, budget, the trials observed before it):
the GP is refitted from the observations for every suggestion and the search's random state is derived
from the seed and the trial index. So a resumed run suggests exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
from scipy.stats import qmc
from threadpoolctl import threadpool_limits

from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import ConfigError
from bayes_merger.optimiser.acquisition import (
    Acquisition,
    LogExpectedImprovement,
    LogProbabilityOfImprovement,
    UpperConfidenceBound,
)
from bayes_merger.optimiser.gp import FittedGP
from bayes_merger.space import SearchSpace

log = logging.getLogger(__name__)

ACQUISITIONS = ("ei", "ucb", "poi")

# the libraries whose arithmetic decides a suggestion to the last bit (the GP is scikit-learn's, on numpy and
# scipy): another version of one may change a bit, and the search grows it into other weights
NUMERIC_LIBRARIES = ("numpy", "scipy", "scikit-learn")

# how the best trial is chosen (best.yaml's chosen_by): by the model's posterior mean once it has
# MODEL_MIN_SCORES scores, by the highest score before (a GP fitted to one or two points is no judge of them)
BY_POSTERIOR_MEAN, BY_SCORE = "posterior mean", "best score"
MODEL_MIN_SCORES = 3


# the most trials a run may have: a GP's fit grows with the cube of its scores
MAX_TRIALS = 100_000


def check_optimiser_config(config: OptimiserConfig) -> None:
    if config.acquisition not in ACQUISITIONS:
        raise ConfigError(f"optimiser.acquisition must be one of {', '.join(ACQUISITIONS)}, got '{config.acquisition}'.")
    if config.init_points < 1:
        raise ConfigError(f"optimiser.init_points must be at least 1, got {config.init_points}.")
    if config.n_iters < 0:
        raise ConfigError(f"optimiser.n_iters must not be negative, got {config.n_iters}.")
    if config.init_points + config.n_iters > MAX_TRIALS:  # the budget's bookkeeping alone filled the memory
        raise ConfigError(f"optimiser.init_points + optimiser.n_iters must be at most {MAX_TRIALS:,}, got "
                          f"{config.init_points + config.n_iters:,}: a Gaussian process fitted to more scores takes "
                          "longer per trial than the trial (the overnight runner's --max-hours ends a night instead).")
    for key in ("kappa", "xi"):
        if not 0 <= getattr(config, key) < math.inf:  # nan too: the first suggestion of the GP would fail on it
            raise ConfigError(f"optimiser.{key} must be a number, 0 or more, got {getattr(config, key)}.")


def library_versions() -> dict[str, str]:
    """The version of each of ``NUMERIC_LIBRARIES`` installed here."""
    return {name: importlib.metadata.version(name) for name in NUMERIC_LIBRARIES}


class Optimiser:
    """Suggests parameters trial by trial and learns from registered scores."""

    # how many of the best points (by posterior mean) the acquisition search perturbs
    n_centres = 3

    def __init__(self, space: SearchSpace, config: OptimiserConfig, seed: int) -> None:
        check_optimiser_config(config)
        self.space = space
        self.config = config
        self.seed = seed
        self._lower = np.array([p.lower for p in space.parameters])
        self._upper = np.array([p.upper for p in space.parameters])
        self._range = self._upper - self._lower
        self._observed: list[tuple[dict[str, float], float]] = []
        self._trials: list[int] = []  # the trial number of each observation
        self._failed: list[dict[str, float]] = []  # the parameters of failed trials
        self._model: tuple[list, FittedGP] | None = None
        self.start = space.start_params(config.start)
        self._initial = [self.start] + self._latin_hypercube(config.init_points - 1)

    @property
    def budget(self) -> int:
        return self.config.init_points + self.config.n_iters

    def phase(self, trial: int) -> str:
        if trial == 0:
            return "start"
        return "init" if trial < self.config.init_points else "optimise"

    def register(self, params: Mapping[str, float], score: float) -> None:
        """Add the score of the trial after the last one registered."""
        self._observed.append(({k: float(v) for k, v in params.items()}, float(score)))
        self._trials.append(self._trials[-1] + 1 if self._trials else 0)

    def observe(self, observations: Sequence[tuple[Mapping[str, float], float]],
                trials: Sequence[int] | None = None, failed: Sequence[Mapping[str, float]] = ()) -> None:
        """Replace what was registered: the scores a suggestion may know (``schedule.Schedule``), in
        trial order, with their trial numbers (default 0, 1, …; a failed trial has no score), and the
        parameters of the failed trials it may know."""
        self._observed = [({k: float(v) for k, v in p.items()}, float(s)) for p, s in observations]
        self._trials = list(range(len(self._observed))) if trials is None else [int(t) for t in trials]
        if len(self._trials) != len(self._observed):
            raise ValueError("observe needs one trial number per observation")
        self._failed = [{k: float(v) for k, v in p.items()} for p in failed]

    def suggest(self, trial: int, pending: Sequence[Mapping[str, float]] = ()) -> dict[str, float]:
        """The parameters of trial ``trial``, given the scores registered so far and the parameters of
        the trials still running (``pending``: suggested, not yet scored), which it steers away from."""
        if trial < len(self._initial):
            return dict(self._initial[trial])
        with one_blas_thread():
            return self._suggest(trial, pending)

    def _suggest(self, trial: int, pending: Sequence[Mapping[str, float]]) -> dict[str, float]:
        model = self.model()
        if model is None:
            # every trial so far failed: the GP has nothing to learn from, so keep exploring
            return self._random(trial)
        rng = np.random.default_rng(self._trial_seed(trial))
        means = model.predict(model.x).mean
        bar = float(means.max())
        centres = model.x[np.argsort(-means)[: self.n_centres]]
        box = trust_region(centres[0], model.length_scale, trust_length([s for _, s in self._observed],
                                                                          self.config.init_points, len(pending),
                                                                          self._trials))
        if pending:
            running = self._units(pending)
            model = model.believing(running)
            # a running trial predicted to beat the best is, for all the model knows, the new best: a
            # suggestion must improve on it, not repeat it (bench_optimiser, 3 pending, ξ = 0.01: 1.21× →
            # 1.19× the sequential regret at 40 trials, 1.25× → 1.18× at 80; with ξ = 0, not raising the
            # bar measured 1.03× / 1.08× the regret of raising it); believed scores are the predictions
            bar = max(bar, float(model.y[-len(running):].max()))
        if self._failed:
            # a failed trial is believed as a running one is, without raising the bar: it is not suggested
            # again as it was (told nothing, the next suggestion repeats it, and with a broken merge fails
            # again until the run stops). Scored as the worst score seen instead, a broken merge kept the
            # search further from its weights (9 failed trials in 80 against 32) but from an optimum beside
            # them too: 1.04× / 1.20× / 1.34× this rule's regret at 20 / 40 / 80 trials (broken26, 20 seeds)
            model = model.believing(self._units(self._failed))

        def search(acquisition: Acquisition) -> np.ndarray:
            acquisition.incumbent = bar
            return acquisition.maximise(model, centres, rng, box)

        # the run's last trial is its best guess, the highest posterior mean in the trust region: no later
        # trial can use what exploring would teach, and the trial a run reports is decided here
        # (bench_optimiser, 8 landscapes, seeds 1000–1039: 0.94× the regret at 80 trials, better in
        # 213 runs of 320 and worse in 104; 0.99× at 40). Where that guess is a merge already scored, the
        # last trial searches as the others do
        chosen = search(UpperConfidenceBound(kappa=0.0)) if self.guesses(trial) else None
        if chosen is None or _repeats(chosen, model.x):
            chosen = search(self._acquisition())
        if _repeats(chosen, model.x):
            # with fixed seeds the same merge scores the same: a repeat (the best point on a bound of a
            # space of one or two weights) would teach nothing, so the trial goes where the model knows least
            candidates = rng.random((DUPLICATE_CANDIDATES, chosen.size))
            chosen = candidates[int(np.argmax(model.predict(candidates).std))]
        return self._to_params(chosen)

    def guesses(self, trial: int) -> bool:
        """Whether ``trial`` goes to the model's best guess rather than to the acquisition's choice: the
        run's last trial."""
        return trial == self.budget - 1

    def model(self) -> FittedGP | None:
        """The GP fitted to every registered score (None before the first); fitted once per new score."""
        if not self._observed:
            return None
        if self._model is None or self._model[0] != self._observed:
            self._model = (list(self._observed), self._fit(self._observed))
        return self._model[1]

    def _fit(self, observed: Sequence[tuple[Mapping[str, float], float]]) -> FittedGP:
        x = np.array([self._to_unit(params) for params, _ in observed])
        with one_blas_thread():
            return FittedGP(x, np.array([score for _, score in observed]))

    def best(self, observed: Sequence[tuple[Mapping[str, float], float]] | None = None) -> int | None:
        with one_blas_thread():
            return self._best(observed)

    def chosen_by(self, observed: Sequence[tuple[Mapping[str, float], float]] | None = None) -> str:
        """How ``best`` chooses among ``observed`` (default: what was registered): ``BY_POSTERIOR_MEAN``, or
        ``BY_SCORE`` while there are fewer than ``MODEL_MIN_SCORES`` scores."""
        points = self._observed if observed is None else observed
        return BY_POSTERIOR_MEAN if len(points) >= MODEL_MIN_SCORES else BY_SCORE

    def _best(self, observed: Sequence[tuple[Mapping[str, float], float]] | None) -> int | None:
        """Index of the observation with the highest posterior mean: the best merge, noise discounted
        (with too few scores for a model, the highest score: ``chosen_by``).

        With noisy scores the highest raw score is often a lucky render; the posterior mean weighs each
        score against its neighbours'. ``observed`` defaults to what was registered.
        """
        points = self._observed if observed is None else [(dict(p), float(s)) for p, s in observed]
        if not points:
            return None
        if self.chosen_by(points) == BY_SCORE:
            return int(np.argmax([s for _, s in points]))
        model = self.model() if observed is None else self._fit(points)
        return int(np.argmax(model.predict(model.x).mean))

    def importance(self) -> dict[str, float]:
        """How much each weight matters, from the fitted length scales: 1/ℓ, the largest scaled to 1.

        A weight the model found the score to change fast along has a short length scale. Frozen
        weights have none (not searched, not measured: a 0 would read as "does not matter"); every
        member of a group gets the group's value.
        """
        model = self.model()
        values = dict.fromkeys((name for name in self.space.weight_names if name not in self.space.frozen), 0.0)
        if model is None or len(self._observed) < MODEL_MIN_SCORES:
            return values
        inverse = 1.0 / model.length_scale
        inverse = inverse / inverse.max()
        for parameter, value in zip(self.space.parameters, inverse):
            for member in parameter.members:
                values[member] = round(float(value), 4)
        return values

    def _acquisition(self) -> Acquisition:
        if self.config.acquisition == "ucb":
            return UpperConfidenceBound(kappa=self.config.kappa)
        if self.config.acquisition == "poi":
            return LogProbabilityOfImprovement(xi=self.config.xi)
        return LogExpectedImprovement(xi=self.config.xi)

    def _units(self, points: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array([self._to_unit(p) for p in points])

    def _to_unit(self, params: Mapping[str, float]) -> np.ndarray:
        values = np.array([params[p.name] for p in self.space.parameters], dtype=float)
        return (values - self._lower) / self._range

    def _to_params(self, unit: np.ndarray) -> dict[str, float]:
        # clipped again: lower + 1 × (upper − lower) can round one step past upper
        values = np.clip(self._lower + np.clip(unit, 0.0, 1.0) * self._range, self._lower, self._upper)
        return {p.name: float(v) for p, v in zip(self.space.parameters, values)}

    def _trial_seed(self, trial: int) -> int:
        return int(np.random.SeedSequence([self.seed, trial]).generate_state(1)[0])

    def _latin_hypercube(self, n: int) -> list[dict[str, float]]:
        if n <= 0:
            return []
        sampler = qmc.LatinHypercube(d=len(self.space.parameters), rng=np.random.default_rng([self.seed, 0x1A7]))
        return [self._to_params(row) for row in sampler.random(n)]

    def _random(self, trial: int) -> dict[str, float]:
        rng = np.random.default_rng(self._trial_seed(trial))
        return self._to_params(rng.random(len(self.space.parameters)))


# a suggestion closer than this to a scored or running point (in the unit cube, every weight) repeats it
DUPLICATE_TOLERANCE = 1e-6
DUPLICATE_CANDIDATES = 1024


def _repeats(point: np.ndarray, points: np.ndarray) -> bool:
    return bool(points.size) and bool((np.abs(points - point).max(axis=1) < DUPLICATE_TOLERANCE).any())


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while the GP is fitted and asked: its sums are then added in one order on
    every machine, so a run resumed where the CPU count differs suggests what it would have (with
    several threads the last bits change past ~120 scores, and the search is chaotic enough to grow
    them into other weights). The matrices are at most a few hundred wide: one thread costs nothing."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# TuRBO's trust region (Eriksson et al., 2019), with tolerances for budgets of tens of trials, not
# thousands: the side doubles after 2 improvements in a row and halves after 3 failures, and starts over
# at its initial size when it falls below the smallest (the region has converged).
TRUST_INITIAL, TRUST_MIN, TRUST_MAX = 0.8, 0.05, 1.6
TRUST_SUCCESSES, TRUST_FAILURES = 2, 3


def trust_length(scores: Sequence[float], init_points: int, lag: int = 0,
                 trials: Sequence[int] | None = None) -> float:
    """The trust region's side in the unit cube, replayed from the scores in trial order.

    A pure function of the trial log, so a resumed run has the same region as an uninterrupted one.
    ``trials`` are the scores' trial numbers (default 0, 1, …; a failed trial has no score). A score
    counts as an improvement when it beats the best so far by 0.1% of the scores' spread.
    With ``lag`` trials in flight, trial j was suggested knowing the scores of trials before j − lag,
    so the ``lag`` trials after an improvement were suggested before it was known: that they fall
    short of it says nothing about the region, so they are not failures (counted as failures, they
    halve the region after most improvements: bench_optimiser, 3 pending, seeds 0–39, ξ = 0.01, 1.19× →
    1.15× the sequential regret at 40 trials, 1.23× → 1.18× at 80; with ξ = 0, 1.02× / 1.03× the
    regret of excusing them).
    """
    if not scores:
        return TRUST_INITIAL
    trials = range(len(scores)) if trials is None else trials
    start = sum(1 for trial in trials if trial < init_points)
    best = max(scores[:start], default=-math.inf)
    spread = (max(scores) - min(scores)) or 1.0
    length, wins, losses, aware_from = TRUST_INITIAL, 0, 0, 0
    for trial, score in zip(trials[start:], scores[start:]):
        if score > best + 1e-3 * spread:
            wins, losses, best, aware_from = wins + 1, 0, score, trial + lag + 1
        elif trial < aware_from:
            continue
        else:
            wins, losses = 0, losses + 1
        if wins >= TRUST_SUCCESSES:
            length, wins = min(2 * length, TRUST_MAX), 0
        elif losses >= TRUST_FAILURES:
            length, losses = length / 2, 0
            if length < TRUST_MIN:
                length = TRUST_INITIAL
    return length


def trust_region(centre: np.ndarray, length_scale: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """The box of side ``side`` around ``centre``, stretched along the weights the GP finds smooth.

    As in TuRBO each side is scaled by its length scale over their geometric mean, but only by ½–2×:
    with tens of points, a length scale far beyond the others means "not learned yet", not "irrelevant".
    """
    weights = np.clip(length_scale / np.exp(np.log(length_scale).mean()), 0.5, 2.0)
    half = 0.5 * side * weights
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
