"""Synthetic block-weight landscapes for benchmarks/bench_optimiser.py: stand-ins for "the aesthetic
score of a merge" that cost nothing to evaluate, each seed with its own optimum and importances.

Every landscape is rescaled like aesthetic scores: the optimum scores 7, the far corner 4 (score range
3), so regrets are comparable across landscapes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import minimize

from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS

SCORE_TOP, SCORE_RANGE = 7.0, 3.0


@dataclasses.dataclass(frozen=True)
class Landscape:
    name: str
    blocks: tuple[str, ...]
    uses_beta: bool
    shape: str  # "few": a few weights matter; "graded": importance graded across all; "peaks": two bumps;
    # held out: "cone": a sharp peak; "rugged": ripples with local optima; "cliff": merges past a line break;
    # "bumps": six bumps, the highest at the optimum; "banana": curved valleys; "jagged": ripples in random
    # directions, as a fixed-seed render's jumps
    noise: float = 0.0  # σ as a fraction of the score range
    edge: int = 0  # weights whose optimum lies on the boundary
    interaction: float = 0.4  # σ of the interaction term's coefficients on the important weights
    # "broken": the merges past cliff26's line fail, their merge broken (NaN: a property of the weights);
    # "flaky": one trial in ten fails whatever its weights (a WebUI's error), the baseline excepted
    fails: str = ""
    about: str = ""
    # not run unless named: no default was chosen on it (but the rule for failed trials, chosen on broken26),
    # to see the defaults on a landscape they never saw
    held_out: bool = False


LANDSCAPES = {
    ls.name: ls
    for ls in (
        Landscape("few26", SD_BLOCKS, False, "few", about="4 of 26 weights matter, the rest barely; mild interaction"),
        Landscape("graded26", SD_BLOCKS, False, "graded", about="importance graded over all 26 weights (20× from first to last)"),
        Landscape("noisy2", SD_BLOCKS, False, "graded", noise=0.02, about="graded26 with noise σ = 2% of the range"),
        Landscape("noisy5", SD_BLOCKS, False, "graded", noise=0.05, about="graded26 with noise σ = 5% of the range"),
        Landscape("edge26", SD_BLOCKS, False, "graded", edge=6, about="graded26 with 6 optima on the boundary"),
        Landscape("peaks26", SD_BLOCKS, False, "peaks", about="two separated peaks, the second 20% lower"),
        Landscape("sdxl20", SDXL_BLOCKS, False, "graded", about="graded on SDXL's 20 blocks"),
        Landscape("beta52", SD_BLOCKS, True, "graded", about="graded on α and β of 26 blocks (52 weights)"),
        Landscape("cone26", SD_BLOCKS, False, "cone", held_out=True,
                  about="graded26's importances under a square root: a sharp peak, no smooth top to fit"),
        Landscape("rugged26", SD_BLOCKS, False, "rugged", held_out=True,
                  about="graded26 with ripples (two periods per weight): many local optima"),
        Landscape("cliff26", SD_BLOCKS, False, "cliff", held_out=True,
                  about="graded26 where raising either of two important weights 0.1 past its best breaks the "
                        "merge (40% of the range lost at once)"),
        Landscape("corner26", SD_BLOCKS, False, "graded", edge=26, held_out=True,
                  about="graded26 with every optimum on the boundary: one model is better in every block"),
        Landscape("ridge26", SD_BLOCKS, False, "graded", interaction=1.5, held_out=True,
                  about="graded26 with a strong interaction: a narrow ridge across the important weights"),
        Landscape("noisy10", SD_BLOCKS, False, "graded", noise=0.10, held_out=True,
                  about="graded26 with noise σ = 10% of the range"),
        Landscape("bumps26", SD_BLOCKS, False, "bumps", held_out=True,
                  about="six bumps, the highest at the optimum, five others 10–40% lower and up to 1.5× as wide "
                        "(local optima that draw a search)"),
        Landscape("banana26", SD_BLOCKS, False, "banana", held_out=True,
                  about="graded26 whose four most important weights pair into curved valleys (Rosenbrock's "
                        "banana): the best of one weight moves with the square of another"),
        Landscape("jagged26", SD_BLOCKS, False, "jagged", held_out=True,
                  about="graded26 with ripples along 12 random directions, 15% of the range: a score that "
                        "jumps as a fixed-seed render's composition does"),
        Landscape("broken26", SD_BLOCKS, False, "cliff", fails="broken", held_out=True,
                  about="cliff26 where the merges past the line fail instead (NaN: the WebUI renders nothing)"),
        Landscape("flaky26", SD_BLOCKS, False, "graded", fails="flaky", held_out=True,
                  about="graded26 where one trial in ten fails whatever its weights (a WebUI's error)"),
    )
}
TUNED = [name for name, ls in LANDSCAPES.items() if not ls.held_out]


class Objective:
    """One landscape drawn for one seed: ``true(x)`` for x in [0, 1]^d, ``observe`` adds the noise."""

    def __init__(self, landscape: Landscape, seed: int) -> None:
        self.landscape = landscape
        self.seed = seed
        d = len(landscape.blocks) * (2 if landscape.uses_beta else 1)
        self.dim = d
        rng = np.random.default_rng([seed, sum(map(ord, landscape.shape)), d, landscape.edge])
        order = rng.permutation(d)
        if landscape.shape == "few":
            self.weights = rng.uniform(0.02, 0.1, d)
            self.weights[order[:4]] = rng.uniform(0.6, 1.2, 4)
            important = order[:4]
        else:
            # 20× from the most to the least important weight, log-uniformly graded, in random order
            self.weights = np.geomspace(1.0, 0.05, d)[np.argsort(order)] * rng.uniform(0.8, 1.25, d)
            important = order[: max(3, d // 6)]
        self.center = rng.uniform(0.15, 0.85, d)
        if landscape.edge:
            edged = np.concatenate([order[:2], order[-(landscape.edge - 2):]])
            # the unconstrained optimum lies outside [0, 1]: the best weight is 0 or 1
            self.center[edged] = np.where(rng.random(len(edged)) < 0.5, -0.25, 1.25)
        # a mild interaction between the important weights, so the landscape is not axis-aligned
        self.cross = np.zeros(d)
        self.cross[important] = rng.normal(0.0, landscape.interaction, len(important))
        if landscape.shape == "bumps":
            # the top bump at the centre; five lower ones elsewhere, 0.7–1.5× as wide, each its own importances
            self.others = rng.uniform(0.1, 0.9, (5, d))
            self.heights = rng.uniform(0.6, 0.9, 5)
            self.widths = rng.uniform(0.7, 1.5, 5)
            self.other_weights = np.stack([self.weights[rng.permutation(d)] for _ in range(5)])
            q = self._q(rng.random((4000, d)), self.center, self.weights)
            self.tau = float(np.median(q)) / np.log(4.0)  # a random merge scores a quarter of the top bump
        if landscape.shape == "banana":
            self.pairs = order[:4].reshape(2, 2)
            self.bend = rng.choice([-3.0, 3.0], 2)
        if landscape.shape == "jagged":
            self.directions = rng.normal(0.0, 1.0, (12, d))
            self.directions *= rng.uniform(10.0, 25.0, (12, 1)) / np.linalg.norm(self.directions, axis=1, keepdims=True)
            # each ripple's mean depth over the 12: 15% of the bowl's depth at the far corner, in all
            corner0 = np.where(self.center < 0.5, 1.0, 0.0)
            self.ripple = 0.15 * float(self._q(corner0, self.center, self.weights)) / 12
        if landscape.shape == "peaks":
            # the second peak sits at the first's mirror image in half of the weights
            flip = rng.random(d) < 0.5
            self.center2 = np.where(flip, 1.0 - self.center, self.center)
            self.center2[order[:3]] = 1.0 - self.center[order[:3]]
            self.weights2 = self.weights[rng.permutation(d)]
            q = self._q(rng.random((4000, d)), self.center, self.weights)
            self.tau = float(np.median(q)) / np.log(3.0)  # a random merge scores a third of the peak
        self.cliff_dims, self.cliff_drop = order[:2], 0.0  # the drop is set once the range without it is known
        if landscape.shape in ("cone", "rugged", "cliff", "bumps", "banana", "jagged"):
            # every term is 0 at the centre (inside the box) and ≤ 0 elsewhere (bumps: the top bump is 1 there, the
            # others at most 0.9); L-BFGS-B cannot polish a cone
            self.raw_best = float(self.raw(self.center))
        else:
            starts = [np.clip(self.center, 0, 1)] + ([np.clip(self.center2, 0, 1)] if landscape.shape == "peaks" else [])
            best = [minimize(lambda x: -self.raw(x), s, bounds=[(0.0, 1.0)] * d, method="L-BFGS-B",
                             options={"ftol": 1e-15, "gtol": 1e-12}) for s in starts]
            self.raw_best = max(float(-b.fun) for b in best)
        corner = np.where(self.center < 0.5, 1.0, 0.0)
        self.raw_worst = float(self.raw(corner))
        if landscape.shape == "cliff" and landscape.fails != "broken":
            self.cliff_drop = 0.4 * (self.raw_best - self.raw_worst)
            self.raw_worst = float(self.raw(corner))

    def _q(self, x: np.ndarray, center: np.ndarray, weights: np.ndarray) -> np.ndarray:
        diff = np.asarray(x) - center
        return (weights * diff * diff).sum(-1) + (diff @ self.cross) ** 2

    def raw(self, x: np.ndarray) -> np.ndarray:
        shape = self.landscape.shape
        if shape == "peaks":
            return np.exp(-self._q(x, self.center, self.weights) / self.tau) + 0.8 * np.exp(
                -self._q(x, self.center2, self.weights2) / self.tau)
        q = self._q(x, self.center, self.weights)
        if shape == "cone":
            return -np.sqrt(q)
        if shape == "rugged":
            diff = np.asarray(x) - self.center
            return -q - 0.05 * (self.weights * (1.0 - np.cos(4.0 * np.pi * diff))).sum(-1)
        if shape == "cliff":
            return -q - self.cliff_drop * self._past_cliff(x)
        if shape == "bumps":
            x = np.asarray(x)
            value = np.exp(-q / self.tau)
            for centre, height, width, weights in zip(self.others, self.heights, self.widths, self.other_weights):
                # the highest bump where they overlap: a sum would make one broad hill of them
                value = np.maximum(value, height * np.exp(-self._q(x, centre, weights) / (width * self.tau)))
            return value
        if shape == "banana":
            diff = np.asarray(x) - self.center
            bent = sum(self.weights[j] * (diff[..., j] - bend * diff[..., i] ** 2) ** 2
                       for (i, j), bend in zip(self.pairs, self.bend))
            return -q - 4.0 * bent
        if shape == "jagged":
            diff = np.asarray(x) - self.center
            return -q - self.ripple * (1.0 - np.cos(diff @ self.directions.T)).sum(-1)
        return -q

    def _past_cliff(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x)[..., self.cliff_dims] > self.center[self.cliff_dims] + 0.1).any(-1)

    def failure(self, x: np.ndarray, trial: int) -> str | None:
        """How trial ``trial`` at ``x`` fails: "broken" (its merge: the weights' fault), "failed" (not the
        weights' fault), or None (it is scored)."""
        if self.landscape.fails == "broken" and bool(self._past_cliff(x)):
            return "broken"
        if self.landscape.fails == "flaky" and trial > 0 and np.random.default_rng([self.seed, trial, 0xF1A]).random() < 0.1:
            return "failed"
        return None

    def true(self, x: np.ndarray) -> float:
        return SCORE_TOP - SCORE_RANGE * (self.raw_best - float(self.raw(x))) / (self.raw_best - self.raw_worst)

    def observe(self, x: np.ndarray, trial: int) -> float | None:
        """The score of trial ``trial`` at ``x``; None if it failed (``failure``)."""
        if self.failure(x, trial) is not None:
            return None
        value = self.true(x)
        if self.landscape.noise:
            # the same noise for trial t under every method (common random numbers)
            value += self.landscape.noise * SCORE_RANGE * np.random.default_rng([self.seed, trial, 0x5EED]).normal()
        return value
