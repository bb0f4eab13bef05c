"""The Gaussian process the optimiser learns from: a Matérn 5/2 ARD kernel on the unit cube, with
priors on its length scales and its noise, fitted by maximum a posteriori.

Why the runs of the first version were no better than random search (benchmarks/bench_optimiser.py,
landscapes where every block matters a little): a GP fitted to 10–40 points in 26 dimensions by maximum
likelihood, with a constant prior mean at the *average* score, has two ways to be wrong far from its
points, and both send the acquisition to the corners of the box:
- a few length scales collapse to explain every wiggle of the few points, so the uncertainty reaches
  its maximum a short step from any observation, and an untried corner looks "average, and maybe
  much better";
- with the √D-scaled prior of Hvarfner et al. (2024) the length scales grow to ~20× the box instead:
  the model is nearly linear in every weight and extrapolates the trend of the initial points to the
  corners, predicting 6.6 where the truth is 4.9.
Merges are not like that: every block's weight changes the images over its range, and a merge far from
every good one is bad, not average. So the prior says exactly that: log ℓ ~ N(0, 1) (a weight's full
range is about one length scale, between 1/3 and 3 of it in two cases of three, whatever the number of
weights), and the prior mean is the *worst* score seen, so an untried region has to be earned by the
data, not assumed. A learned noise level (log-normal prior, BoTorch's default) keeps one lucky render
from bending the whole surface.

The fitted model also gives its posterior *with gradients* (``FittedGP.predict``), so the acquisition
can be maximised with L-BFGS-B on exact gradients instead of finite differences.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from scipy.spatial.distance import cdist
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

SQRT5 = math.sqrt(5.0)

# log-normal priors, as (mean, standard deviation) of the log of the hyperparameter
LENGTH_SCALE_PRIOR = (0.0, 1.0)  # ℓ on the unit cube; see the module's docstring
NOISE_PRIOR = (-4.0, 1.0)  # noise variance of the standardised score (BoTorch's default since 0.12)
LENGTH_SCALE_BOUNDS = (1e-2, 1e4)
NOISE_BOUNDS = (1e-6, 1.0)


class MAPGaussianProcess(GaussianProcessRegressor):
    """scikit-learn's GP with a log-normal prior on each hyperparameter added to its objective.

    The hyperparameters are fitted from the prior's median (one start: the prior makes the optimum
    near it, and a start drawn log-uniformly from the bounds, as scikit-learn's restarts are, mostly
    lands in the flat tails).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        ls_mean = LENGTH_SCALE_PRIOR[0]
        kernel = ConstantKernel(1.0, "fixed") * Matern(
            length_scale=np.full(dim, math.exp(ls_mean)), length_scale_bounds=LENGTH_SCALE_BOUNDS, nu=2.5
        ) + WhiteKernel(noise_level=math.exp(NOISE_PRIOR[0]), noise_level_bounds=NOISE_BOUNDS)
        # the scores are standardised by FittedGP (around the worst score, not the mean)
        super().__init__(kernel=kernel, alpha=1e-8, normalize_y=False, n_restarts_optimizer=0)

    def get_params(self, deep: bool = True) -> dict:
        return {"dim": self.dim}

    def _prior(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the log-normal prior of each free hyperparameter, in the order of theta."""
        means, stds = [], []
        for hyper in self.kernel.hyperparameters:
            if hyper.fixed:
                continue
            prior = LENGTH_SCALE_PRIOR if "length_scale" in hyper.name else NOISE_PRIOR
            means += [prior[0]] * hyper.n_elements
            stds += [prior[1]] * hyper.n_elements
        return np.array(means), np.array(stds)

    def log_marginal_likelihood(self, theta=None, eval_gradient=False, clone_kernel=True):
        if theta is None:
            return super().log_marginal_likelihood(theta, eval_gradient, clone_kernel)
        mean, std = self._prior()
        z = (np.asarray(theta) - mean) / std
        log_prior = float(-0.5 * (z * z).sum())
        if eval_gradient:
            lml, grad = super().log_marginal_likelihood(theta, True, clone_kernel)
            return lml + log_prior, grad - z / std
        return super().log_marginal_likelihood(theta, False, clone_kernel) + log_prior


@dataclass(frozen=True)
class Posterior:
    """The posterior of the latent score at n points, with gradients when asked for."""

    mean: np.ndarray  # (n,)
    std: np.ndarray  # (n,)
    mean_grad: np.ndarray | None = None  # (n, D)
    std_grad: np.ndarray | None = None  # (n, D)


class FittedGP:
    """A GP fitted to points in the unit cube and their scores; predicts the noise-free score."""

    def __init__(self, x: np.ndarray, y: np.ndarray, _fixed: FittedGP | None = None) -> None:
        self.x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self.y = y
        self.gp = MAPGaussianProcess(self.x.shape[1])
        if _fixed is None:
            self._y_std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
            # the prior mean is the worst score seen, not the average: see the module's docstring
            self._y_mean = float(y.min())
        else:  # conditioned on more points with the hyperparameters and scaling of a fitted model
            self._y_mean, self._y_std = _fixed._y_mean, _fixed._y_std
            self.gp.kernel, self.gp.optimizer = _fixed.gp.kernel_, None
        with warnings.catch_warnings():
            # the length scales may end at a bound on few points; the prior keeps that harmless
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp.fit(self.x, (y - self._y_mean) / self._y_std)
        kernel = self.gp.kernel_
        self.length_scale = np.asarray(kernel.k1.k2.length_scale, dtype=float) * np.ones(self.x.shape[1])
        self.noise = float(kernel.k2.noise_level)
        self._alpha = np.asarray(self.gp.alpha_, dtype=float).reshape(-1)
        self._chol = self.gp.L_

    def believing(self, points: np.ndarray) -> FittedGP:
        """This model, told that ``points`` (trials still running) score what it predicts there.

        The "kriging believer" of Ginsbourger et al. (2010): the posterior mean does not move, but the
        uncertainty around a running trial collapses, so the next suggestion goes elsewhere. The
        hyperparameters are kept, not refitted to the made-up scores.
        """
        points = np.atleast_2d(np.asarray(points, dtype=float))
        if not len(points):
            return self
        believed = self.predict(points).mean
        return FittedGP(np.vstack([self.x, points]), np.concatenate([self.y, believed]), _fixed=self)

    @property
    def score_scale(self) -> float:
        """The unit the GP works in, in score units: the scores' standard deviation (1 for a single score)."""
        return self._y_std

    def predict(self, points: np.ndarray, gradient: bool = False) -> Posterior:
        points = np.atleast_2d(np.asarray(points, dtype=float))
        if gradient:
            diff = (points[:, None, :] - self.x[None, :, :]) / self.length_scale  # (n, N, D)
            r = np.sqrt(np.maximum((diff * diff).sum(-1), 1e-30))
        else:
            # many candidates at once: no (n, N, D) tensor
            r = np.maximum(cdist(points / self.length_scale, self.x / self.length_scale), 1e-15)
        decay = np.exp(-SQRT5 * r)
        k = (1.0 + SQRT5 * r + 5.0 / 3.0 * r * r) * decay  # (n, N)
        mean = k @ self._alpha
        v = solve_triangular(self._chol, k.T, lower=True)  # (N, n)
        var = np.maximum(1.0 - (v * v).sum(0), 1e-12)
        std = np.sqrt(var)
        if not gradient:
            return Posterior(mean * self._y_std + self._y_mean, std * self._y_std)
        # dk/dx for Matérn 5/2: −5/3 (1 + √5 r) e^{−√5 r} (x − x_j) / ℓ²
        dk = -(5.0 / 3.0) * ((1.0 + SQRT5 * r) * decay)[..., None] * diff / self.length_scale
        mean_grad = np.einsum("j,njd->nd", self._alpha, dk)
        weights = cho_solve((self._chol, True), k.T).T  # K⁻¹k, (n, N)
        var_grad = -2.0 * np.einsum("nj,njd->nd", weights, dk)
        std_grad = var_grad / (2.0 * std[:, None])
        return Posterior(mean * self._y_std + self._y_mean, std * self._y_std,
                         mean_grad * self._y_std, std_grad * self._y_std)
