"""The bayesian-optimization wrapper: seeded Latin-hypercube start, then GP suggestions.

Each suggestion is a pure function of (run seed, trial index, the trials observed before it): the GP
is rebuilt from the observations for every suggestion and its random state is derived from the seed
and the trial index. So a resumed run suggests exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Mapping

import numpy as np
from bayes_opt import BayesianOptimization, acquisition
from scipy.stats import qmc
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process.kernels import Kernel, Matern

from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import ConfigError
from bayes_merger.space import SearchSpace

log = logging.getLogger(__name__)

ACQUISITIONS = ("ucb", "ei", "poi")


def check_optimiser_config(config: OptimiserConfig) -> None:
    if config.acquisition not in ACQUISITIONS:
        raise ConfigError(f"optimiser.acquisition must be one of {', '.join(ACQUISITIONS)}, got '{config.acquisition}'.")
    if config.init_points < 1:
        raise ConfigError(f"optimiser.init_points must be at least 1, got {config.init_points}.")
    if config.n_iters < 0:
        raise ConfigError(f"optimiser.n_iters must not be negative, got {config.n_iters}.")
    if config.kappa < 0 or config.xi < 0:
        raise ConfigError("optimiser.kappa and optimiser.xi must not be negative.")


class Optimiser:
    """Suggests parameters trial by trial and learns from registered scores."""

    # The acquisition's maximum is searched on n_random uniform points, the best n_smart of them then
    # refined with L-BFGS-B. bayes_opt's 10 starts (numerical gradients) cost 2–15 s a suggestion in
    # 26 dimensions and found no better weights than the random points alone with the ARD kernel
    # below (benchmarks/bench_optimiser.py), so the refinement is off.
    n_random = 10_000
    n_smart = 0

    def __init__(self, space: SearchSpace, config: OptimiserConfig, seed: int) -> None:
        check_optimiser_config(config)
        self.space = space
        self.config = config
        self.seed = seed
        self._observed: list[tuple[dict[str, float], float]] = []
        self._initial = self._latin_hypercube()

    @property
    def budget(self) -> int:
        return self.config.init_points + self.config.n_iters

    def phase(self, trial: int) -> str:
        return "init" if trial < self.config.init_points else "optimise"

    def register(self, params: Mapping[str, float], score: float) -> None:
        self._observed.append(({k: float(v) for k, v in params.items()}, float(score)))

    def suggest(self, trial: int) -> dict[str, float]:
        if trial < len(self._initial):
            return self._initial[trial]
        if not self._observed:
            # every trial so far failed: the GP has nothing to learn from, so keep exploring
            return self._random(trial)
        optimiser = BayesianOptimization(
            f=None,
            pbounds=self.space.bounds(),
            acquisition_function=self._acquisition(),
            random_state=self._trial_seed(trial),
            verbose=0,
            # frozen/grouped parameters and failed-then-retried points can repeat a point
            allow_duplicate_points=True,
        )
        kernel = self._kernel()
        if kernel is not None:
            optimiser.set_gp_params(kernel=kernel)
        for params, score in self._observed:
            optimiser.register(params=params, target=score)
        with warnings.catch_warnings():
            # the GP's length-scale fit often hits its bounds on few points; harmless and noisy
            warnings.simplefilter("ignore", ConvergenceWarning)
            suggestion = optimiser.suggest()
        return {name: float(value) for name, value in suggestion.items()}

    def _kernel(self) -> Kernel | None:
        """Matérn 5/2 with one length scale per parameter (ARD), starting at the parameter's range.

        bayes_opt's default has one length scale for all parameters; the score depends strongly on a
        few blocks and little on most, which one length scale cannot express: on synthetic objectives
        like that (benchmarks/bench_optimiser.py) it ended at 0.89× random search's regret, ARD at 0.55×.
        """
        ranges = np.array([p.upper - p.lower for p in self.space.parameters])
        return Matern(nu=2.5, length_scale=np.clip(ranges, 1e-2, 1e3), length_scale_bounds=(1e-2, 1e3))

    def _acquisition(self) -> acquisition.AcquisitionFunction:
        if self.config.acquisition == "ucb":
            function = acquisition.UpperConfidenceBound(kappa=self.config.kappa)
        elif self.config.acquisition == "ei":
            function = acquisition.ExpectedImprovement(xi=self.config.xi)
        else:
            function = acquisition.ProbabilityOfImprovement(xi=self.config.xi)
        # BayesianOptimization.suggest does not pass the search's size on: bind it here
        function.suggest = functools.partial(function.suggest, n_random=self.n_random, n_smart=self.n_smart)
        return function

    def _trial_seed(self, trial: int) -> int:
        return int(np.random.SeedSequence([self.seed, trial]).generate_state(1)[0])

    def _latin_hypercube(self) -> list[dict[str, float]]:
        parameters = self.space.parameters
        sampler = qmc.LatinHypercube(d=len(parameters), rng=np.random.default_rng([self.seed, 0x1A7]))
        unit = sampler.random(self.config.init_points)
        points = qmc.scale(unit, [p.lower for p in parameters], [p.upper for p in parameters])
        return [{p.name: float(v) for p, v in zip(parameters, row)} for row in points]

    def _random(self, trial: int) -> dict[str, float]:
        rng = np.random.default_rng(self._trial_seed(trial))
        return {p.name: float(rng.uniform(p.lower, p.upper)) for p in self.space.parameters}
