"""Optimiser quality benchmark: simple regret of OptimiserConfig settings on synthetic block-weight objectives.

    nice python benchmarks/bench_optimiser.py          # 3 BO configs × 5 objectives × 3 seeds, ~11 min
    nice python benchmarks/bench_optimiser.py --quick  # 2 BO configs × 2 objectives × 1 seed, ~1 min
    nice python benchmarks/bench_optimiser.py --configs default ucb:kappa=1 ei:xi=0.01,init=5 \
        --objectives bowl26 sdxl20 --seeds 10
    nice python benchmarks/bench_optimiser.py --configs random default legacy --seeds 3   # ~1 h: legacy is slow

It measures quality, not speed: every run drives the real ``bayes_merger.optimiser.Optimiser`` over a
``build_space`` of the real block names, trial by trial as the trial loop does (suggest → score →
register), on deterministic stand-ins for "aesthetic score of a merge" that cost nothing to evaluate:

- bowl26:  SD1/SD2, 26 α weights. A smooth concave quadratic with its optimum at a random interior
           point; a few blocks matter a lot (curvature 0.6–1.2), most little (0.02–0.1), plus a mild
           interaction between the important ones. Rescaled like aesthetic scores: the optimum scores
           7, the worst corner about 4, a random merge about 6.2.
- noisy26: bowl26 with Gaussian observation noise, σ = 0.02 of the range (0.06).
- edge26:  bowl26 with the optimum on the boundary (weight 0 or 1) for 5 weights, 2 of them important.
- sdxl20:  the same recipe on SDXL's 20 blocks.
- beta52:  α and β of the 26 SD blocks (52 weights) with a short budget: 40 trials instead of 60.

Each seed draws its own objective (optimum, which blocks matter) and is also the optimiser's seed; the
noise of trial t is the same for every config (common random numbers). Per config and objective the
table gives the simple regret (true optimum − best true score among the first 20 / 40 / 60 trials,
in score units; the range is 3) averaged over the seeds, its standard error at the end, under
"report" the regret of the trial the tool would report as best (the highest *observed* score: it
differs from the best only under noise) and the median seconds per GP suggestion. Baselines: uniform
random search and one Latin hypercube of the whole budget.

Configs (``--configs``): see the epilog of ``--help``. ``legacy`` is the optimiser as it was before
this benchmark (bayes_opt's stock GP with one length scale for all weights, its 10-start L-BFGS-B
acquisition search; 2–15 s a suggestion, so minutes a run) with the defaults of then (ucb κ=2.576).

The table and a final line of name=value pairs go to stdout, progress to stderr. On the final line
``X/random`` and ``X/default`` are geometric means over objectives of (mean final regret of X) / (that
of the baseline): lower is better, 0.5 = half the regret. ``X_beats_default=k/n``: in k of n
(objective, seed) pairs X ended with a lower regret. ``X_reported_noisy/random``: the same ratio for
the reported trial's regret on the noisy objective. ``X_s_per_suggestion``: median seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

# one BLAS thread: the machine is shared, and the GP's matrices are tiny
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.stats import qmc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bayes_merger.config import OptimiserConfig  # noqa: E402
from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS  # noqa: E402
from bayes_merger.optimiser import Optimiser  # noqa: E402
from bayes_merger.space import build_space  # noqa: E402

log = logging.getLogger("bench_optimiser")

SCORE_TOP, SCORE_RANGE = 7.0, 3.0
CHECKPOINTS = (20, 40, 60)


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------- objectives


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    blocks: tuple[str, ...]
    uses_beta: bool
    budget: int
    important: int  # how many weights matter a lot
    noise: float = 0.0  # σ as a fraction of the score range
    edge: int = 0  # weights whose optimum lies on the boundary (the first 2 of them important)


RECIPES = {
    r.name: r
    for r in (
        Recipe("bowl26", SD_BLOCKS, False, 60, important=4),
        Recipe("noisy26", SD_BLOCKS, False, 60, important=4, noise=0.02),
        Recipe("edge26", SD_BLOCKS, False, 60, important=4, edge=5),
        Recipe("sdxl20", SDXL_BLOCKS, False, 60, important=3),
        Recipe("beta52", SD_BLOCKS, True, 40, important=6),
    )
}


class Objective:
    """A concave quadratic in [0, 1]^d, rescaled to aesthetic-score-like values (optimum 7)."""

    def __init__(self, recipe: Recipe, seed: int) -> None:
        self.recipe = recipe
        self.seed = seed
        d = len(recipe.blocks) * (2 if recipe.uses_beta else 1)
        self.dim = d
        rng = np.random.default_rng([seed, sum(map(ord, recipe.name))])
        order = rng.permutation(d)
        important, minor = order[: recipe.important], order[recipe.important :]
        self.weights = np.empty(d)
        self.weights[important] = rng.uniform(0.6, 1.2, len(important))
        self.weights[minor] = rng.uniform(0.02, 0.1, len(minor))
        self.center = rng.uniform(0.15, 0.85, d)
        if recipe.edge:
            edged = np.concatenate([important[:2], minor[: recipe.edge - 2]])
            # the unconstrained optimum lies outside [0, 1]: the best weight is 0 or 1
            self.center[edged] = np.where(rng.random(len(edged)) < 0.5, -0.3, 1.3)
        # a mild interaction between the important weights, so the bowl is not axis-aligned
        self.cross = np.zeros(d)
        self.cross[important] = rng.normal(0.0, 0.4, len(important))
        best = minimize(lambda x: -self.raw(x), np.clip(self.center, 0, 1), jac=lambda x: -self.raw_grad(x),
                        bounds=[(0.0, 1.0)] * d, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12})
        self.raw_best = float(-best.fun)
        self.argbest = best.x
        far = np.where(self.center < 0.5, 1.0, 0.0)  # the separable part's worst corner
        self.raw_worst = float(self.raw(far))

    def raw(self, x: np.ndarray) -> np.ndarray:
        diff = np.asarray(x) - self.center
        return -(self.weights * diff * diff).sum(-1) - (diff @ self.cross) ** 2

    def raw_grad(self, x: np.ndarray) -> np.ndarray:
        diff = np.asarray(x) - self.center
        return -2 * self.weights * diff - 2 * (diff @ self.cross) * self.cross

    def true(self, x: np.ndarray) -> float:
        return SCORE_TOP - SCORE_RANGE * (self.raw_best - float(self.raw(x))) / (self.raw_best - self.raw_worst)

    def observe(self, x: np.ndarray, trial: int) -> float:
        value = self.true(x)
        if self.recipe.noise:
            # the same noise for trial t under every config (common random numbers)
            noise = np.random.default_rng([self.seed, trial, 0x5EED]).normal()
            value += self.recipe.noise * SCORE_RANGE * noise
        return value


# ------------------------------------------------------------------------------------------ configs


@dataclasses.dataclass(frozen=True)
class Spec:
    label: str
    kind: str  # "bo", "legacy", "random" or "lhs"
    acquisition: str = "ucb"
    kappa: float = 2.576
    xi: float = 0.01
    init: int = 10

    @property
    def short(self) -> str:
        """The label as a name on the final line: ucb:kappa=0.5,init=5 → ucb_kappa0.5_init5."""
        return self.label.replace(":", "_").replace(",", "_").replace("=", "")

    def config(self, budget: int) -> OptimiserConfig:
        init = min(self.init, budget)
        return OptimiserConfig(init_points=init, n_iters=budget - init, acquisition=self.acquisition,
                               kappa=self.kappa, xi=self.xi)


class LegacyOptimiser(Optimiser):
    """The optimiser before this benchmark: bayes_opt's stock GP (one length scale) and acquisition search."""

    n_random = 10_000
    n_smart = 10

    def _kernel(self):
        return None


def parse_spec(text: str) -> Spec:
    """random, lhs, default (OptimiserConfig's defaults), legacy (ucb kappa=2.576 init 10 with the
    optimiser's GP and acquisition search before this benchmark: slow, minutes a run) or
    acquisition[:key=value,...] with acquisition ucb, ei or poi and keys kappa, xi, init (init_points;
    n_iters makes up the objective's budget); unset keys take OptimiserConfig's defaults."""
    head, _, tail = text.partition(":")
    if text in ("random", "lhs"):
        return Spec(text, text)
    d = OptimiserConfig()
    if text == "default":
        return Spec(text, "bo", acquisition=d.acquisition, kappa=d.kappa, xi=d.xi, init=d.init_points)
    if text == "legacy":
        return Spec(text, "legacy", acquisition="ucb", kappa=2.576, xi=0.01, init=10)
    if head not in ("ucb", "ei", "poi"):
        raise SystemExit(f"unknown config '{text}': see --help")
    values: dict = {"kappa": d.kappa, "xi": d.xi, "init": d.init_points}
    for item in filter(None, tail.split(",")):
        key, _, value = item.partition("=")
        if key not in values:
            raise SystemExit(f"unknown key '{key}' in config '{text}' (kappa, xi, init)")
        values[key] = int(value) if key == "init" else float(value)
    return Spec(text, "bo", acquisition=head, **values)


def describe_default() -> str:
    d = OptimiserConfig()
    value = f"kappa={d.kappa:g}" if d.acquisition == "ucb" else f"xi={d.xi:g}"
    return f"{d.acquisition} {value} init_points={d.init_points}"


# ------------------------------------------------------------------------------------------ running


def run_one(spec: Spec, recipe: Recipe, seed: int) -> dict:
    objective = Objective(recipe, seed)
    budget = recipe.budget
    cfg = spec.config(budget)
    space = build_space(cfg, recipe.blocks, recipe.uses_beta)
    names = [p.name for p in space.parameters]
    true_values, observed, seconds = [], [], []
    if spec.kind == "random":
        rng = np.random.default_rng([seed, 0xAB])
        points = rng.random((budget, objective.dim))
    elif spec.kind == "lhs":
        points = qmc.LatinHypercube(d=objective.dim, rng=np.random.default_rng([seed, 0xCD])).random(budget)
    else:
        points = None
        optimiser = (LegacyOptimiser if spec.kind == "legacy" else Optimiser)(space, cfg, seed=seed)
    for trial in range(budget):
        if points is not None:
            x = points[trial]
        else:
            start = time.perf_counter()
            params = optimiser.suggest(trial)
            if trial >= cfg.init_points:
                seconds.append(time.perf_counter() - start)
            x = np.array([params[n] for n in names])
        score = objective.observe(x, trial)
        if points is None:
            optimiser.register(params, score)
        true_values.append(objective.true(x))
        observed.append(score)
    true_values, observed = np.array(true_values), np.array(observed)
    result = {"seconds": seconds}
    for n in sorted(set(CHECKPOINTS) | {budget}):
        if n > budget:
            continue
        result[f"best@{n}"] = SCORE_TOP - float(true_values[:n].max())
        result[f"reported@{n}"] = SCORE_TOP - float(true_values[: n][int(np.argmax(observed[:n]))])
    result["final"] = result[f"best@{budget}"]
    result["reported"] = result[f"reported@{budget}"]
    return result


DEFAULT_CONFIGS = ["random", "lhs", "default", "ucb:kappa=0.5", "ei:xi=0.01"]
QUICK = {"configs": ["random", "lhs", "default", "ucb:kappa=0.5"], "objectives": ["noisy26", "sdxl20"], "seeds": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="configs: " + " ".join(parse_spec.__doc__.split()))
    parser.add_argument("--quick", action="store_true", help=f"configs {' '.join(QUICK['configs'])}, objectives {' '.join(QUICK['objectives'])}, 1 seed (about a minute)")
    parser.add_argument("--configs", nargs="+", help=f"configs to compare (default: {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--objectives", nargs="+", choices=list(RECIPES), help="objectives (default: all)")
    parser.add_argument("--seeds", type=int, help="seeds per config and objective (default: 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, …")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    quick = QUICK if args.quick else {}
    configs = args.configs or quick.get("configs") or DEFAULT_CONFIGS
    objectives = args.objectives or quick.get("objectives") or list(RECIPES)
    seeds = list(range(args.first_seed, args.first_seed + (args.seeds or quick.get("seeds") or 3)))
    specs = [parse_spec(c) for c in dict.fromkeys(configs)]
    recipes = [RECIPES[o] for o in dict.fromkeys(objectives)]

    results: dict[tuple[str, str], list[dict]] = {}
    started = time.perf_counter()
    for recipe in recipes:
        for spec in specs:
            for seed in seeds:
                t0 = time.perf_counter()
                res = run_one(spec, recipe, seed)
                results.setdefault((spec.label, recipe.name), []).append(res)
                log.info("%-8s %-22s seed %d: regret %.3f reported %.3f (%.0f s)", recipe.name, spec.label, seed,
                         res["final"], res["reported"], time.perf_counter() - t0)
    report(specs, recipes, seeds, results, time.perf_counter() - started)


def report(specs, recipes, seeds, results, elapsed) -> None:
    emit(f"simple regret = true optimum − best true score so far (score range {SCORE_RANGE:g}; lower is better), "
         f"mean over seeds {seeds[0]}–{seeds[-1]}")
    emit(f"report = regret of the trial with the best observed score; default = {describe_default()}; "
         f"s/sug = median seconds per GP suggestion")
    header = f"{'objective':<8} {'config':<20} " + " ".join(f"{'@' + str(n):>6}" for n in CHECKPOINTS)
    header += f" {'±se':>5} {'report':>6} {'s/sug':>5}"
    emit(header)
    for recipe in recipes:
        for spec in specs:
            rs = results[(spec.label, recipe.name)]
            cells = []
            for n in CHECKPOINTS:
                key = f"best@{n}" if n < recipe.budget else "final"
                cells.append(f"{statistics.mean(r[key] for r in rs):6.3f}" if n <= recipe.budget else f"{'-':>6}")
            finals = [r["final"] for r in rs]
            se = statistics.stdev(finals) / math.sqrt(len(finals)) if len(finals) > 1 else 0.0
            secs = [s for r in rs for s in r["seconds"]]
            sug = f"{statistics.median(secs):5.2f}" if secs else f"{'-':>5}"
            emit(f"{recipe.name:<8} {spec.label:<20} {' '.join(cells)} {se:5.3f} "
                 f"{statistics.mean(r['reported'] for r in rs):6.3f} {sug}")
    emit(f"(budget: {', '.join(f'{r.name} {r.budget}' for r in recipes)} trials; the last column that "
         f"applies is the final regret)")
    emit("")
    summary = summarise(specs, recipes, results)
    summary.append(f"elapsed_s={elapsed:.0f}")
    emit(" ".join(summary))


def _geo(values) -> float:
    values = [max(v, 1e-6) for v in values]
    return math.exp(statistics.mean(math.log(v) for v in values))


def summarise(specs, recipes, results) -> list[str]:
    """Geometric means over objectives of mean-final-regret ratios, wins per (objective, seed), timing."""

    def mean(label, recipe, key="final"):
        return statistics.mean(r[key] for r in results[(label, recipe.name)])

    def ratio(label, base, key="final"):
        return _geo([mean(label, r, key) / mean(base, r, key) for r in recipes])

    labels = {s.label for s in specs}
    out = []
    for spec in specs:
        if "random" in labels and spec.label != "random":
            out.append(f"{spec.short}/random={ratio(spec.label, 'random'):.3f}")
    for base in ("default", "legacy"):
        if base not in labels:
            continue
        for spec in specs:
            if spec.kind in ("bo", "legacy") and spec.label != base:
                pairs = [(a["final"], b["final"]) for r in recipes
                         for a, b in zip(results[(spec.label, r.name)], results[(base, r.name)])]
                wins = sum(a < b for a, b in pairs)
                out.append(f"{spec.short}/{base}={ratio(spec.label, base):.3f}")
                out.append(f"{spec.short}_beats_{base}={wins}/{len(pairs)}")
    noisy = [r for r in recipes if r.noise]
    for spec in specs:
        if noisy and "random" in labels and spec.label != "random":
            value = _geo([mean(spec.label, r, "reported") / mean("random", r, "reported") for r in noisy])
            out.append(f"{spec.short}_reported_noisy/random={value:.3f}")
    for spec in specs:
        secs = [s for r in recipes for res in results[(spec.label, r.name)] for s in res["seconds"]]
        if secs:
            out.append(f"{spec.short}_s_per_suggestion={statistics.median(secs):.2f}")
    return out


if __name__ == "__main__":
    main()
