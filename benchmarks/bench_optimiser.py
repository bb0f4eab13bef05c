"""Optimiser quality benchmark: the regret of bayes-merger's optimiser against the references a user
would pick instead, side by side on the same synthetic landscapes (benchmarks/landscapes.py).

    python benchmarks/bench_optimiser.py --quick             # under 5 minutes on 2 cores
    python benchmarks/bench_optimiser.py --jobs 2 --results r.jsonl   # every landscape, 10 seeds, 80 trials
    python benchmarks/bench_optimiser.py --methods default bo:acquisition=ucb cmaes --landscapes graded26

Every run drives the real ``bayes_merger.optimiser.Optimiser`` over a ``build_space`` of the real
block names, trial by trial as the trial loop does (suggest → score → register). Each seed draws its own
landscape (optimum, importances) and is also every method's seed; the noise of trial t is the same for
every method (common random numbers). One run of the largest budget gives the regret at each smaller
budget (the best of its first n trials), as a user stopping early would have it.

Regret = 7 − the true score of the best trial (the landscape's optimum scores 7, its far corner 4).
"best" is the trial with the best true score among the first n (an oracle's pick: under noise no method
could tell it); "reported" is the trial the method would hand the user after n trials: for
bayes-merger the best of the first n by its posterior mean, for the others the best observed score
(they differ only under noise).

Every method's first trial is the centre (the even merge), as bayes-merger's is: a user of any of them
has that merge already (each gets it as trial 0; CMA-ES's mean starts there too). ``--seed-start`` runs
seeds no default was chosen on (the defaults were chosen on seeds 0–39).

Methods: random (uniform), lhs (one Latin hypercube of each budget), centre (the even merge alone, one
trial), bayes_opt (bayes_opt 3's stock BayesianOptimization: its GP, UCB κ=2.576 and L-BFGS-polished
acquisition, the centre and 9 random initial points), tpe (Optuna's multivariate TPE), cmaes (Optuna's CMA-ES, from
the centre), default (bayes-merger's defaults) and bo:key=value,… (bayes-merger with OptimiserConfig
fields changed: acquisition, kappa, xi, init_points; pending=k: each trial is suggested while the k
trials before it are still running, as with pipelining or k+1 WebUIs; failures=ignore: the optimiser is
told nothing of failed trials, as before it learnt from them; endgame=off: with trials in flight, the last
tenth of the run suggested as far behind as the rest, as before the run's endgame; lastguess=off: the
run's last trial chosen by the acquisition, as before it was the model's best guess).

On the landscapes where trials fail (broken26, flaky26) a failed trial counts as the landscape's worst
score, and a table says how many trials failed and how many runs would have stopped on failures in a
row (``default_stopped`` in the last line).

The table prints the median and quartiles over seeds of each regret, and the median seconds per suggestion
with 100 observations; a second table, each landscape's ratio to the best reference and which reference that
is. The last line is name=value pairs: for each budget, the worst over landscapes of default's median regret
/ random's (``default/random@40``) and / the best reference's (``default/best_ref@40``, each reference
compared on the seeds it ran, and the one our ratio is largest against taken; ``best_ref_reported@40``: the
same with the trial each method would report instead of the oracle's pick), whether default ever did worse
than the centre merge, and for each ``bo:…,pending=k`` the cost of the trials in flight: the geometric mean
over landscapes of its median reported regret over the same configuration's with nothing in flight
(``bo_pending3/default@40``); for each other ``bo:…`` run beside default (a setting changed, nothing in flight),
the same ratio over default's (``bo_init_points6/default@20``). With none of the references run and several budgets, what the last trials are
worth to each of ours: the geometric mean over landscapes of its median reported regret after n trials over
that after the largest budget (``default@77/@80``; each budget is a run of its own). With the timing and
bayes_opt run, each of ours' seconds per suggestion over stock bayes_opt's (``default/bayes_opt_s_per_suggestion``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import statistics
import sys
import time
from typing import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# one BLAS thread per process: the GP's matrices are tiny and --jobs runs processes side by side
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.stats import qmc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from landscapes import LANDSCAPES, SCORE_RANGE, SCORE_TOP, TUNED, Objective  # noqa: E402

from bayes_merger.config import OptimiserConfig  # noqa: E402
from bayes_merger.optimiser import NUMERIC_LIBRARIES, Optimiser  # noqa: E402
from bayes_merger.schedule import Schedule  # noqa: E402
from bayes_merger.space import build_space  # noqa: E402

log = logging.getLogger("bench_optimiser")

REFERENCES = ("random", "lhs", "centre", "bayes_opt", "tpe", "cmaes")
INIT_POINTS = 10
# regrets below this count as this in the ratios: two methods that found the optimum tie, not divide by 0
REGRET_FLOOR = 1e-3


def optimiser_config(method: str, budget: int) -> OptimiserConfig:
    """OptimiserConfig for ``default`` or ``bo:key=value,…`` with ``budget`` trials."""
    fields: dict = {}
    for item in settings_of(method):
        key, _, value = item.partition("=")
        if key in ("pending", "failures", "endgame", "lastguess"):
            continue
        if key not in ("acquisition", "kappa", "xi", "init_points"):
            raise SystemExit(f"unknown key '{key}' in '{method}' (acquisition, kappa, xi, init_points, pending, "
                             "failures, endgame, lastguess)")
        fields[key] = value if key == "acquisition" else (int(value) if key == "init_points" else float(value))
    init = min(fields.pop("init_points", OptimiserConfig().init_points), budget)
    return OptimiserConfig(init_points=init, n_iters=budget - init, **fields)


Reported = Callable[[int], int]  # n → the index of the trial a method would report after its first n trials


def best_observed(ys: list[float | None]) -> Reported:
    """The trial with the best observed score among the first n (a failed trial has none)."""
    return lambda n: max((i for i in range(n) if ys[i] is not None), key=lambda i: ys[i], default=0)


def points_of(method: str, objective: Objective, budget: int, seed: int
              ) -> tuple[list[np.ndarray], list[float], Reported, list[float]]:
    """Run one method: (points, observed scores, the reported trial after n trials, seconds per suggestion)."""
    d = objective.dim
    xs: list[np.ndarray] = []
    ys: list[float] = []
    seconds: list[float] = []
    if method in ("random", "lhs", "centre"):
        centre = np.full(d, 0.5)
        if method == "random":
            xs = [centre, *np.random.default_rng([seed, 0xAB]).random((budget - 1, d))]
        elif method == "lhs":
            xs = [centre, *qmc.LatinHypercube(d=d, rng=np.random.default_rng([seed, 0xCD])).random(budget - 1)]
        else:
            xs = [centre]
        ys = [objective.observe(x, t) for t, x in enumerate(xs)]
        return xs, ys, best_observed(ys), seconds
    if method in ("tpe", "cmaes"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = (optuna.samplers.TPESampler(multivariate=True, seed=seed) if method == "tpe"
                   else optuna.samplers.CmaEsSampler(seed=seed))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        dists = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(d)}
        # the centre as trial 0, as every method's: CMA-ES's mean starts there, but its first trial is its
        # independent sampler's (n_startup_trials=1), a random point, unless one is queued
        study.enqueue_trial({f"x{i}": 0.5 for i in range(d)})
        for t in range(budget):
            start = time.perf_counter()
            trial = study.ask(dists)
            seconds.append(time.perf_counter() - start)
            x = np.array([trial.params[f"x{i}"] for i in range(d)])
            xs.append(x)
            ys.append(objective.observe(x, t))
            if ys[-1] is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, ys[-1])
        return xs, ys, best_observed(ys), seconds
    if method == "bayes_opt":
        from bayes_opt import BayesianOptimization

        names = [f"x{i:02d}" for i in range(d)]
        bo = BayesianOptimization(f=None, pbounds={n: (0.0, 1.0) for n in names}, random_state=seed, verbose=0,
                                  allow_duplicate_points=True)
        initial = [np.full(d, 0.5), *bo.space.random_sample(INIT_POINTS - 1, random_state=np.random.RandomState(seed))]
        for t in range(budget):
            start = time.perf_counter()
            params = bo.space.array_to_params(initial[t]) if t < len(initial) else bo.suggest()
            if t >= INIT_POINTS:
                seconds.append(time.perf_counter() - start)
            x = np.array([params[n] for n in names])
            xs.append(x)
            ys.append(objective.observe(x, t))
            if ys[-1] is not None:  # bayes_opt has no failed trials: a failure is not registered
                bo.register(params=params, target=ys[-1])
        return xs, ys, best_observed(ys), seconds
    cfg = optimiser_config(method, budget)
    space = build_space(cfg, objective.landscape.blocks, objective.landscape.uses_beta)
    names = [p.name for p in space.parameters]
    optimiser = (Optimiser if switched_on(method, "lastguess") else WithoutLastGuess)(space, cfg, seed=seed)
    # with k trials pending (pipelined or several WebUIs), trial t is suggested knowing what the run's
    # own schedule lets it know: the scores of trials 0 … t−k−1 and the parameters of t−k … t−1
    schedule = (Schedule if switched_on(method, "endgame") else WithoutEndgame)(budget, in_flight=pending_of(method) + 1)
    learn = failures_of(method) == "learn"
    suggested: list[dict[str, float]] = []
    for t in range(budget):
        known = schedule.known_before(t)
        scored = [j for j in known if ys[j] is not None]
        optimiser.observe([(suggested[j], ys[j]) for j in scored], scored,
                          failed=[suggested[j] for j in known if learn and ys[j] is None])
        start = time.perf_counter()
        params = optimiser.suggest(t, pending=[suggested[j] for j in schedule.pending_before(t)])
        if t >= cfg.init_points:
            seconds.append(time.perf_counter() - start)
        suggested.append(params)
        x = np.array([params[n] for n in names])
        xs.append(x)
        ys.append(objective.observe(x, t))

    def reported(n: int) -> int:
        # after n trials it would report the best of the first n by its posterior mean, as a run of n trials does
        scored = [j for j in range(n) if ys[j] is not None]
        best = optimiser.best([(suggested[j], ys[j]) for j in scored])
        return scored[best] if best is not None else 0

    return xs, ys, reported, seconds


def settings_of(method: str) -> list[str]:
    """The ``key=value`` items of ``bo:key=value,…`` (none for any other method)."""
    return [item for item in method[3:].split(",") if item] if method.startswith("bo:") else []


def pending_of(method: str) -> int:
    """k of ``bo:…,pending=k``: how many trials are still running when one is suggested (default 0)."""
    for item in settings_of(method):
        key, _, value = item.partition("=")
        if key == "pending":
            return int(value)
    return 0


def failures_of(method: str) -> str:
    """``bo:…,failures=ignore``: the optimiser is told nothing of failed trials, as before it learnt from
    them (default ``learn``: a failed trial is believed at its predicted score, as a running one is)."""
    for item in settings_of(method):
        key, _, value = item.partition("=")
        if key == "failures":
            if value not in ("learn", "ignore"):
                raise SystemExit(f"failures must be learn or ignore, got '{value}' in '{method}'")
            return value
    return "learn"


def switched_on(method: str, rule: str) -> bool:
    """Whether a rule of the defaults is on in ``method`` (default on); ``bo:…,endgame=off``: every trial
    suggested ``pending`` scores behind, the last tenth too (``schedule.Schedule``'s endgame: at most one
    behind over the last tenth and none for the last trial); ``bo:…,lastguess=off``: the run's last trial
    is the acquisition's choice, as every other (``Optimiser.guesses``: the highest posterior mean)."""
    for item in settings_of(method):
        key, _, value = item.partition("=")
        if key == rule:
            if value not in ("on", "off"):
                raise SystemExit(f"{rule} must be on or off, got '{value}' in '{method}'")
            return value == "on"
    return True


class WithoutLastGuess(Optimiser):
    """The optimiser without its last guess (``lastguess=off``), to measure what the guess is worth."""

    def guesses(self, trial: int) -> bool:
        return False


class WithoutEndgame(Schedule):
    """The run's schedule without its endgame (``endgame=off``), to measure what the endgame is worth."""

    def lag_at(self, index: int) -> int:
        return self.lag


def without_pending(method: str) -> str:
    """The method ``bo:…,pending=k`` is measured against: the same configuration, nothing in flight (the
    endgame changes nothing then)."""
    return _without(method, lambda item: item.startswith(("pending=", "endgame=")))


def with_rules_on(method: str) -> str:
    """``bo:…,endgame=off`` or ``…,lastguess=off`` without the rules it switches off: the method it is measured
    against."""
    return _without(method, lambda item: item.endswith("=off"))


def _without(method: str, dropped: Callable[[str], bool]) -> str:
    items = settings_of(method)
    kept = [item for item in items if not dropped(item)]
    if len(kept) == len(items):
        return method
    return "bo:" + ",".join(kept) if kept else "default"


@functools.cache  # once per process, not once per run
def code_version() -> str:
    """What decides a run's regrets: the optimiser, its defaults, the schedule, the search space, the landscapes, this script
    (how it drives each method) and the libraries' versions, as a short digest kept in each --results row."""
    digest = hashlib.sha256()
    sources = [*sorted((REPO / "bayes_merger" / "optimiser").glob("*.py")), REPO / "bayes_merger" / "schedule.py",
               REPO / "bayes_merger" / "space.py", REPO / "bayes_merger" / "config.py",  # the optimiser's defaults
               REPO / "benchmarks" / "landscapes.py", Path(__file__).resolve()]
    for path in sources:
        digest.update(path.read_bytes())
    for package in (*NUMERIC_LIBRARIES, "optuna", "bayesian-optimization"):
        try:
            digest.update(f"{package}={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    return digest.hexdigest()[:12]


def run_one(task: tuple[str, str, int, tuple[int, ...]]) -> dict:
    method, name, seed, budgets = task
    objective = Objective(LANDSCAPES[name], seed)
    started = time.perf_counter()
    result: dict = {"method": method, "landscape": name, "seed": seed, "code": code_version()}
    # a Latin hypercube is only one for its own budget, trials in flight end a run with fewer of them
    # (schedule.Schedule) and the optimiser's last trial is its best guess (Optimiser.guesses): a run of n
    # trials is not the first n of a longer one
    budget_bound = method not in REFERENCES and (pending_of(method) > 0 or switched_on(method, "lastguess"))
    if method == "lhs" or budget_bound:
        for n in budgets:
            xs, ys, reported, _ = points_of(method, objective, n, seed)
            true = true_scores(objective, xs, ys)
            result[f"best@{n}"] = SCORE_TOP - float(true.max())
            result[f"reported@{n}"] = SCORE_TOP - float(true[reported(n)])
        result["seconds"] = []
    else:
        budget = 1 if method == "centre" else max(budgets)
        xs, ys, reported, seconds = points_of(method, objective, budget, seed)
        true = true_scores(objective, xs, ys)
        for n in budgets:
            result[f"best@{n}"] = SCORE_TOP - float(true[:n].max())
            result[f"reported@{n}"] = SCORE_TOP - float(true[reported(min(n, budget))])
        result["seconds"] = seconds
    result["failures"] = sum(y is None for y in ys)
    result["stopped"] = stops(objective, xs, ys)
    result["elapsed"] = time.perf_counter() - started
    return result


def stops(objective: Objective, xs: list[np.ndarray], ys: list[float | None], in_a_row: int = 3) -> bool:
    """Whether a run would have stopped (resumable) on run.max_consecutive_failures = 3 failed trials in
    a row, as run.TrialLoop counts them: a broken merge does not count once a trial has been scored."""
    count, scored = 0, False
    for t, (x, y) in enumerate(zip(xs, ys)):
        if y is not None:
            count, scored = 0, True
        elif not (scored and objective.failure(x, t) == "broken"):
            count += 1
            if count >= in_a_row:
                return True
    return False


def true_scores(objective: Objective, xs: list[np.ndarray], ys: list[float | None]) -> np.ndarray:
    """Each trial's true score; a failed trial gave the user nothing: the landscape's worst score."""
    return np.array([objective.true(x) if y is not None else SCORE_TOP - SCORE_RANGE for x, y in zip(xs, ys)])


def time_at_100(method: str, seed: int = 0) -> float | None:
    """Median seconds per suggestion once 100 scored trials are registered (graded26)."""
    if method in ("random", "lhs", "centre"):
        return None
    objective = Objective(LANDSCAPES["graded26"], seed)
    rng = np.random.default_rng([seed, 0x100])
    points = rng.random((100, objective.dim))  # the last two are registered one by one, timed
    scores = [objective.observe(x, t) for t, x in enumerate(points)]
    times = []
    if method in ("tpe", "cmaes"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = (optuna.samplers.TPESampler(multivariate=True, seed=seed) if method == "tpe"
                   else optuna.samplers.CmaEsSampler(seed=seed))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        dists = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(objective.dim)}
        for x, y in zip(points, scores):
            study.add_trial(optuna.trial.create_trial(params={f"x{i}": float(v) for i, v in enumerate(x)},
                                                      distributions=dists, value=y))
        for _ in range(3):
            start = time.perf_counter()
            study.tell(study.ask(dists), 0.0)
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    if method == "bayes_opt":
        from bayes_opt import BayesianOptimization

        names = [f"x{i:02d}" for i in range(objective.dim)]
        bo = BayesianOptimization(f=None, pbounds={n: (0.0, 1.0) for n in names}, random_state=seed, verbose=0,
                                  allow_duplicate_points=True)
        for x, y in zip(points, scores):
            bo.register(params=dict(zip(names, x)), target=y)
        start = time.perf_counter()
        bo.suggest()
        return time.perf_counter() - start
    cfg = optimiser_config(method, 200)
    space = build_space(cfg, objective.landscape.blocks, False)
    optimiser = Optimiser(space, cfg, seed=seed)
    for x, y in zip(points[:98], scores[:98]):
        optimiser.register({p.name: float(v) for p, v in zip(space.parameters, x)}, y)
    for trial, (x, y) in enumerate(zip(points[98:], scores[98:]), start=98):
        # a new score before each suggestion, as in a run: every suggestion fits the GP anew
        optimiser.register({p.name: float(v) for p, v in zip(space.parameters, x)}, y)
        start = time.perf_counter()
        optimiser.suggest(trial + 2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


QUICK = {"methods": ["random", "centre", "cmaes", "tpe", "default"], "landscapes": ["few26", "graded26", "noisy5"],
         "seeds": 4, "budgets": (20, 40)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"methods {' '.join(QUICK['methods'])}; landscapes {' '.join(QUICK['landscapes'])}; "
                             f"{QUICK['seeds']} seeds; budgets 20, 40 (under 5 minutes with --jobs 2)")
    parser.add_argument("--methods", nargs="+", help="default: every reference and default")
    parser.add_argument("--landscapes", nargs="+", choices=list(LANDSCAPES),
                        help=f"default: the {len(TUNED)} the defaults were chosen on; "
                             f"{' '.join(n for n in LANDSCAPES if n not in TUNED)} are held out (no default was "
                             "chosen on them)")
    parser.add_argument("--seeds", type=int, help="seeds per landscape (default 10)")
    parser.add_argument("--seed-start", type=int, default=0,
                        help="the first seed (default 0; the defaults were chosen on seeds 0–39: 1000 runs unseen ones)")
    parser.add_argument("--budgets", type=int, nargs="+", help="default 20 40 80")
    parser.add_argument("--bayes-opt-seeds", type=int,
                        help="seeds for bayes_opt, whose 10-start L-BFGS acquisition search takes about 1 s a "
                             "suggestion at 100 points, more early in a run (default: as --seeds)")
    parser.add_argument("--bayes-opt-budget", type=int,
                        help="largest budget for bayes_opt; larger budgets print '-' (default: the largest)")
    parser.add_argument("--results", type=Path,
                        help="a JSON-lines file: each finished run is appended to it, and runs already in it are "
                             "not run again (a long benchmark can be stopped and continued); runs made by other "
                             "code are used with a warning")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes side by side")
    parser.add_argument("--no-timing", action="store_true", help="skip the seconds-per-suggestion column")
    args = parser.parse_args()
    if args.bayes_opt_seeds is not None and args.bayes_opt_seeds < 1:
        parser.error("--bayes-opt-seeds must be 1 or more: leave bayes_opt out of --methods to run it on none")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    quick = QUICK if args.quick else {}
    methods = list(dict.fromkeys(args.methods or quick.get("methods") or [*REFERENCES, "default"]))
    names = list(dict.fromkeys(args.landscapes or quick.get("landscapes") or TUNED))
    seeds = range(args.seed_start, args.seed_start + (args.seeds or quick.get("seeds") or 10))
    budgets = tuple(sorted(args.budgets or quick.get("budgets") or (20, 40, 80)))
    slow_budgets = tuple(b for b in budgets if b <= (args.bayes_opt_budget or budgets[-1])) or budgets[:1]
    tasks = [(m, n, s, slow_budgets if m == "bayes_opt" else budgets) for n in names for s in seeds for m in methods
             if m != "bayes_opt" or s < args.seed_start + (len(seeds) if args.bayes_opt_seeds is None
                                                           else args.bayes_opt_seeds)]
    # bayes_opt last: with --results, the fast methods' runs are saved first
    tasks.sort(key=lambda t: t[0] == "bayes_opt")
    started = time.perf_counter()
    results: list[dict] = []
    if args.results and args.results.exists():
        wanted = {(m, n, s): b for m, n, s, b in tasks}
        for line in args.results.read_text().splitlines():
            res = json.loads(line)
            key = (res["method"], res["landscape"], res["seed"])
            if key in wanted and all(f"best@{b}" in res for b in wanted[key]):
                results.append(res)
        done = {(r["method"], r["landscape"], r["seed"]) for r in results}
        tasks = [t for t in tasks if t[:3] not in done]
        log.info("%d runs read from %s, %d to run", len(results), args.results, len(tasks))
        mine = code_version()
        other = sum(r.get("code") != mine for r in results)
        if other:
            log.warning("%d of the runs read from %s were made by other code (the optimiser, the landscapes, this "
                        "script or a library changed since): the table mixes them in; give another --results file "
                        "to measure this code alone", other, args.results)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for res in pool.map(run_one, tasks):
            results.append(res)
            if args.results:
                with args.results.open("a") as handle:
                    handle.write(json.dumps(res) + "\n")
            last = max(int(k.split("@")[1]) for k in res if k.startswith("best@"))
            log.info("%-9s %-14s seed %d: regret@%d %.3f (%.0f s)", res["landscape"], res["method"], res["seed"],
                     last, res[f"best@{last}"], res["elapsed"])
        timing = {} if args.no_timing else dict(zip(methods, pool.map(time_at_100, methods)))
    report(methods, names, budgets, results, timing, time.perf_counter() - started)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def summary_name(method: str) -> str:
    """``method`` as a name in the name=value line: no ':', ',' or '='."""
    return method.replace(":", "_").replace(",", "_").replace("=", "")


def report(methods, names, budgets, results, timing, elapsed) -> None:
    def cell(values):
        if not values:
            return "-"
        q1, q2, q3 = _quartiles(values)
        return f"{q2:6.3f} [{q1:5.3f}–{q3:5.3f}]"

    by = {(r["method"], r["landscape"]): [] for r in results}
    for r in results:
        by[(r["method"], r["landscape"])].append(r)
    print("regret = 7 − true score of the best trial so far (score range 3; lower is better): median [quartiles] over seeds")
    print("reported = regret of the trial the method would report at the end of its largest budget; "
          "s/sug = median s per suggestion at 100 observations")
    header = f"{'landscape':<9} {'method':<16}" + "".join(f" {'@' + str(n):>21}" for n in budgets)
    print(header + f" {'reported@' + str(budgets[-1]):>21} {'s/sug':>6}")
    for name in names:
        for method in methods:
            rs = by[(method, name)]
            line = f"{name:<9} {method:<16}"
            line += "".join(f" {cell([r[f'best@{n}'] for r in rs if f'best@{n}' in r]):>21}" for n in budgets)
            last = max(n for n in budgets if f"best@{n}" in rs[0])
            # a method stopped below the largest budget (bayes_opt) reports at its own last budget, and says so
            reported = cell([r[f'reported@{last}'] for r in rs]) + ("" if last == budgets[-1] else f" @{last}")
            line += f" {reported:>21}"
            t = timing.get(method)
            print(line + (f" {t:6.2f}" if t is not None else f" {'-':>6}"))
        print()
    failing = [name for name in names if LANDSCAPES[name].fails]
    if failing:
        print("failed trials: median count; runs that would have stopped on 3 failures in a row "
              "(run.max_consecutive_failures; broken merges not counted once a trial has been scored)")
        for name in failing:
            for method in methods:
                rs = by[(method, name)]
                print(f"{name:<9} {method:<16} {statistics.median(r.get('failures', 0) for r in rs):6.1f} "
                      f"{sum(bool(r.get('stopped')) for r in rs):3d} of {len(rs)}")
        print()

    def reported_ratio(ours: str, n: int, theirs: str, m: int, over: Sequence[str] = names) -> float:
        # over the landscapes, the geometric mean of one median reported regret (after n trials) over another's
        return statistics.geometric_mean(
            _ratio(statistics.median(r[f"reported@{n}"] for r in by[(ours, name)]),
                   statistics.median(r[f"reported@{m}"] for r in by[(theirs, name)])) for name in over)

    def compared(ours: str, theirs: str, label: str) -> list[str]:
        """``label@n``: ours' reported regret over theirs at n trials (``reported_ratio``), then over the tuned and
        the held-out landscapes apart where both ran, and the runs (a landscape and a seed both ran) where ours
        reported a lower regret and a higher one."""
        groups = {"tuned": [name for name in names if name in TUNED],
                  "held_out": [name for name in names if name not in TUNED]}
        found = []
        for n in budgets:
            found.append(f"{label}@{n}={reported_ratio(ours, n, theirs, n):.3f}")
            if all(groups.values()):
                found += [f"{label}@{n}_{group}={reported_ratio(ours, n, theirs, n, members):.3f}"
                          for group, members in groups.items()]
            pairs = [(a[f"reported@{n}"], b[f"reported@{n}"]) for name in names for a in by[(ours, name)]
                     for b in by[(theirs, name)] if a["seed"] == b["seed"]]
            found += [f"{label}@{n}_better={sum(x < y for x, y in pairs)}/{len(pairs)}",
                      f"{label}@{n}_worse={sum(x > y for x, y in pairs)}/{len(pairs)}"]
        return found

    summary = []
    refs = [m for m in methods if m in REFERENCES and m not in ("random", "centre")]
    # each of ours against the best reference, once, for the table below and the last line
    versus = {(method, name, f"{kind}@{n}"): against_best_reference(
                  by[(method, name)], {ref: by.get((ref, name), []) for ref in refs}, f"{kind}@{n}")
              for method in methods if method not in REFERENCES for name in names
              for n in budgets for kind in ("best", "reported")} if refs else {}
    if refs:
        print("median regret over the best reference's, on the seeds both ran (the reference against which the "
              "ratio is largest; a reference run on fewer seeds or budgets is compared on those only)")
        for method in [m for m in methods if m not in REFERENCES]:
            for name in names:
                cells = []
                for n in budgets:
                    found = versus[(method, name, f"best@{n}")]
                    cells.append(f"@{n} {found[0]:.2f} ({found[1]})" if found else f"@{n} -")
                print(f"{name:<9} {method:<16} " + "  ".join(cells))
        print()
    for method in [m for m in methods if m not in REFERENCES]:
        key = summary_name(method)
        for n in budgets:
            med = {name: statistics.median(r[f"best@{n}"] for r in by[(method, name)]) for name in names}
            if "random" in methods:
                worst = max(_ratio(med[name], statistics.median(r[f"best@{n}"] for r in by[("random", name)]))
                            for name in names)
                summary.append(f"{key}/random@{n}={worst:.3f}")
            for kind, label in (("best", "best_ref"), ("reported", "best_ref_reported")):
                # best: the oracle's pick among the trials tried; reported: the trial each would hand the user
                against = [versus.get((method, name, f"{kind}@{n}")) for name in names]
                if all(found is not None for found in against):
                    summary.append(f"{key}/{label}@{n}={max(ratio for ratio, _ in against):.3f}")
        if "centre" in methods:
            worse = sum(statistics.median(r[f"best@{budgets[-1]}"] for r in by[(method, name)])
                        > statistics.median(r[f"best@{budgets[-1]}"] for r in by[("centre", name)]) for name in names)
            summary.append(f"{key}_worse_than_centre={worse}/{len(names)}")
        sequential = without_pending(method)
        if sequential != method and sequential in methods:
            # the cost of trials in flight: regret over the same optimiser's without them, at equal trials
            summary += compared(method, sequential, f"{key}/{summary_name(sequential)}")
        all_on = with_rules_on(method)
        if all_on != method and all_on in methods:
            # what the rules switched off (endgame=off, lastguess=off) are worth: the regret with them over without
            summary += compared(all_on, method, f"{summary_name(all_on)}/{key}")
        if method.startswith("bo:") and sequential == method == all_on and "default" in methods:
            # a setting other than the default's (init_points, xi, …): its regret over the default's, at equal trials
            summary += compared(method, "default", f"{key}/default")
        if len(budgets) > 1 and not any(m in REFERENCES for m in methods):
            summary += [f"{key}@{n}/@{budgets[-1]}={reported_ratio(method, n, method, budgets[-1]):.3f}"
                        for n in budgets[:-1]]
        if failing:
            stopped = sum(bool(r.get("stopped")) for name in failing for r in by[(method, name)])
            summary.append(f"{key}_stopped={stopped}/{sum(len(by[(method, name)]) for name in failing)}")
        if timing.get(method) is not None:
            summary.append(f"{key}_s_per_suggestion={timing[method]:.2f}")
            if timing.get("bayes_opt"):  # the stock library's time, measured beside it: a ratio, not seconds
                summary.append(f"{key}/bayes_opt_s_per_suggestion={timing[method] / timing['bayes_opt']:.3f}")
    summary.append(f"elapsed_s={elapsed:.0f}")
    print(" ".join(summary))


def against_best_reference(ours: list[dict], references: dict[str, list[dict]], key: str) -> tuple[float, str] | None:
    """Our median ``key`` (a regret) over each reference's, each on the seeds that reference ran, and the reference
    of the largest ratio: the best reference, compared seed for seed (bayes_opt runs fewer seeds and budgets; a
    median over other seeds than ours would compare luck of the draw). None where no reference has ``key``."""
    ratios = []
    for ref, runs in references.items():
        seeds = {r["seed"] for r in runs if key in r}
        if seeds:
            theirs = statistics.median(r[key] for r in runs if key in r)
            mine = statistics.median(r[key] for r in ours if r["seed"] in seeds)
            ratios.append((_ratio(mine, theirs), ref))
    return max(ratios) if ratios else None


def _ratio(ours: float, theirs: float) -> float:
    """ours / theirs, each regret taken as at least ``REGRET_FLOOR``: two methods at the optimum tie (1.0)."""
    return max(ours, REGRET_FLOOR) / max(theirs, REGRET_FLOOR)


if __name__ == "__main__":
    main()
