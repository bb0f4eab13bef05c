"""Acquisition functions and their maximisation over the unit cube.

The functions are bayes_opt ``AcquisitionFunction`` subclasses (their ``base_acq`` scores a posterior
mean and standard deviation), evaluated on our own GP (``gp.FittedGP``) because its posterior comes with
exact gradients. Expected improvement is computed in log space (Ament et al., 2023, "Unexpected
Improvements to Expected Improvement"): in 26 dimensions EI underflows to 0 on most of the box, which
leaves a gradient optimiser nothing to follow and random candidates nothing to rank.

Where the maximum is searched: random points over the whole box find a far-away maximum, but in 20–52
dimensions almost none of them lands near the good points seen so far, where the maximum usually is
once a few trials have been scored. So three candidates in four perturb a random subset of the coordinates
of the best points (by posterior mean) by steps of 1–30 % of the range (as BoTorch's
``sample_perturbed_subset_dims`` and TuRBO's trust regions do), and the best candidates are then
polished with L-BFGS-B on the exact gradient. The optimiser confines the whole search to a trust
region around the best point (``bayes_merger.optimiser.trust_region``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from bayes_opt.acquisition import AcquisitionFunction
from scipy.optimize import minimize
from scipy.special import erfcx, log_ndtr

from bayes_merger.optimiser.gp import FittedGP, Posterior

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_h(z: np.ndarray) -> np.ndarray:
    """log(φ(z) + z Φ(z)), the log of EI's standardised form, without underflow for very negative z."""
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    high = z > -1.0
    zh = z[high]
    out[high] = np.log(np.exp(-0.5 * zh * zh - _LOG_SQRT_2PI) + zh * np.exp(log_ndtr(zh)))
    zl = np.maximum(z[~high], -1e6)
    # φ(z)(1 + z Φ(z)/φ(z)), and Φ(z)/φ(z) = erfcx(−z/√2) √(π/2) stays finite
    out[~high] = -0.5 * zl * zl - _LOG_SQRT_2PI + np.log1p(zl * erfcx(-zl / math.sqrt(2)) * math.sqrt(math.pi / 2))
    return out


class Acquisition(AcquisitionFunction):
    """An acquisition maximised over the unit cube with random, local and gradient-polished search."""

    n_global = 512
    n_local = 1536
    n_polish = 4

    def __init__(self) -> None:
        super().__init__()
        self.incumbent = 0.0

    def value(self, posterior: Posterior) -> tuple[np.ndarray, np.ndarray | None]:
        """The acquisition (to maximise) and, when the posterior has gradients, its gradient."""
        raise NotImplementedError

    def unit(self, model: FittedGP) -> float:
        """What one unit of ``value`` is worth in the GP's own units: L-BFGS-B's tolerances are absolute
        below 1, so an acquisition in score units is polished on ``value / unit`` (1: scale-free)."""
        return 1.0

    def base_acq(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return self.value(Posterior(np.asarray(mean), np.asarray(std)))[0]

    def get_acquisition_params(self) -> dict[str, Any]:
        return {"incumbent": self.incumbent}

    def set_acquisition_params(self, params: dict[str, Any]) -> None:
        self.incumbent = float(params["incumbent"])

    def maximise(self, model: FittedGP, centres: np.ndarray, rng: np.random.Generator,
                 box: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The point of ``box`` (default: the unit cube) where the acquisition is highest, searched
        near ``centres`` too."""
        dim = model.x.shape[1]
        lower, upper = box if box is not None else (np.zeros(dim), np.ones(dim))
        candidates = np.vstack([lower + rng.random((self.n_global, dim)) * (upper - lower),
                                np.clip(self._perturb(centres, dim, rng), lower, upper)])
        values = self.value(model.predict(candidates))[0]
        order = np.argsort(-values)
        starts = [candidates[order[0]]]
        for index in order[1:]:
            if len(starts) >= self.n_polish:
                break
            if min(np.abs(candidates[index] - s).max() for s in starts) > 1e-3:
                starts.append(candidates[index])
        unit = self.unit(model)
        best_x, best_value = candidates[order[0]], values[order[0]] / unit

        def negative(x: np.ndarray) -> tuple[float, np.ndarray]:
            value, grad = self.value(model.predict(x[None, :], gradient=True))
            return -float(value[0]) / unit, -grad[0] / unit

        for start in starts:
            result = minimize(negative, start, jac=True, method="L-BFGS-B", bounds=list(zip(lower, upper)),
                              options={"maxiter": 200})
            if np.isfinite(result.fun) and -result.fun > best_value:
                best_x, best_value = result.x, -result.fun
        return np.clip(best_x, lower, upper)

    def _perturb(self, centres: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
        # the best centre gets half of the local candidates, the others share the rest
        share = np.where(np.arange(len(centres)) == 0, 1.0, 1.0 / max(len(centres) - 1, 1))
        share = share / share.sum() if len(centres) > 1 else np.ones(1)
        owner = rng.choice(len(centres), size=self.n_local, p=share)
        base = centres[owner]
        mask = rng.random((self.n_local, dim)) < min(1.0, 20.0 / dim)
        mask[np.arange(self.n_local), rng.integers(0, dim, self.n_local)] = True  # at least one moves
        step = 10.0 ** rng.uniform(-2.0, math.log10(0.3), (self.n_local, 1))
        return np.clip(base + mask * rng.normal(0.0, 1.0, base.shape) * step, 0.0, 1.0)


class _OverIncumbent(Acquisition):
    """An acquisition of the standardised improvement z = (μ − incumbent − ξ)/σ."""

    def __init__(self, xi: float = 0.0) -> None:
        super().__init__()
        self.xi = xi

    def _z(self, posterior: Posterior) -> tuple[np.ndarray, np.ndarray]:
        std = np.maximum(posterior.std, 1e-12)
        return std, (posterior.mean - self.incumbent - self.xi) / std


class LogExpectedImprovement(_OverIncumbent):
    """log EI over the incumbent (the best posterior mean among the points scored and the trials still
    running), plus ``xi``."""

    def value(self, posterior: Posterior) -> tuple[np.ndarray, np.ndarray | None]:
        std, z = self._z(posterior)
        logh = log_h(z)
        value = np.log(std) + logh
        if posterior.mean_grad is None:
            return value, None
        # d log EI = (Φ(z) dμ + φ(z) dσ) / (σ h(z))
        cdf_ratio = np.exp(log_ndtr(z) - logh)
        pdf_ratio = np.exp(-0.5 * z * z - _LOG_SQRT_2PI - logh)
        grad = (cdf_ratio[:, None] * posterior.mean_grad + pdf_ratio[:, None] * posterior.std_grad) / std[:, None]
        return value, grad


class LogProbabilityOfImprovement(_OverIncumbent):
    """log PI over the incumbent plus ``xi``."""

    def value(self, posterior: Posterior) -> tuple[np.ndarray, np.ndarray | None]:
        std, z = self._z(posterior)
        value = log_ndtr(z)
        if posterior.mean_grad is None:
            return value, None
        ratio = np.exp(-0.5 * z * z - _LOG_SQRT_2PI - value)  # φ(z)/Φ(z)
        dz = (posterior.mean_grad - z[:, None] * posterior.std_grad) / std[:, None]
        return value, ratio[:, None] * dz


class UpperConfidenceBound(Acquisition):
    """μ + κσ, in score units (so polished in the GP's: scores of 1e-6 are polished as scores of 1)."""

    def __init__(self, kappa: float) -> None:
        super().__init__()
        self.kappa = kappa

    def unit(self, model: FittedGP) -> float:
        return model.score_scale

    def value(self, posterior: Posterior) -> tuple[np.ndarray, np.ndarray | None]:
        value = posterior.mean + self.kappa * posterior.std
        if posterior.mean_grad is None:
            return value, None
        return value, posterior.mean_grad + self.kappa * posterior.std_grad
