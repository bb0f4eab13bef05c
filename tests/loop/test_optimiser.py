import pytest

from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import ConfigError
from bayes_merger.optimiser import Optimiser
from bayes_merger.space import build_space

BLOCKS = ("BASE", "IN00", "IN01", "M00", "OUT00", "OUT01")


def _space(cfg):
    return build_space(cfg, BLOCKS, uses_beta=False)


def _objective(params):
    return -sum((v - 0.3) ** 2 for v in params.values())


def test_initial_points_are_a_latin_hypercube_within_bounds():
    cfg = OptimiserConfig(init_points=8, n_iters=0, custom_ranges={"IN00": [0.2, 0.4]})
    optimiser = Optimiser(_space(cfg), cfg, seed=1)
    points = [optimiser.suggest(t) for t in range(8)]
    for name in ("BASE", "M00"):
        strata = sorted(int(p[name] * 8) for p in points)
        assert strata == list(range(8)), "one point per stratum in every dimension"
    assert all(0.2 <= p["IN00"] <= 0.4 for p in points)


def test_same_seed_same_suggestions_and_other_seed_differs():
    cfg = OptimiserConfig(init_points=3, n_iters=2)
    runs = []
    for seed in (5, 5, 6):
        optimiser = Optimiser(_space(cfg), cfg, seed=seed)
        suggestions = []
        for trial in range(5):
            params = optimiser.suggest(trial)
            optimiser.register(params, _objective(params))
            suggestions.append(params)
        runs.append(suggestions)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_suggestion_depends_only_on_seed_trial_and_history():
    cfg = OptimiserConfig(init_points=3, n_iters=3)
    first = Optimiser(_space(cfg), cfg, seed=9)
    history = []
    for trial in range(4):
        params = first.suggest(trial)
        history.append((params, _objective(params)))
        first.register(*history[-1])
    # a fresh optimiser that replays the history (a resumed run) suggests the same next point
    resumed = Optimiser(_space(cfg), cfg, seed=9)
    for params, score in history:
        resumed.register(params, score)
    assert resumed.suggest(4) == first.suggest(4)


def test_gp_suggestions_stay_in_bounds_and_improve_on_a_bowl():
    cfg = OptimiserConfig(init_points=6, n_iters=14, acquisition="ei", xi=0.0)
    optimiser = Optimiser(_space(cfg), cfg, seed=3)
    scores = []
    for trial in range(optimiser.budget):
        params = optimiser.suggest(trial)
        assert all(0.0 <= v <= 1.0 for v in params.values())
        scores.append(_objective(params))
        optimiser.register(params, scores[-1])
    assert max(scores[6:]) > max(scores[:6])


def test_with_no_successful_trial_it_keeps_exploring():
    cfg = OptimiserConfig(init_points=2, n_iters=3)
    optimiser = Optimiser(_space(cfg), cfg, seed=1)
    a, b = optimiser.suggest(2), optimiser.suggest(3)
    assert a != b and all(0 <= v <= 1 for v in a.values())
    assert optimiser.phase(1) == "init" and optimiser.phase(2) == "optimise"


@pytest.mark.parametrize("field, value", [("acquisition", "foo"), ("init_points", 0), ("n_iters", -1), ("kappa", -1.0)])
def test_bad_optimiser_settings_are_refused(field, value):
    cfg = OptimiserConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        Optimiser(_space(OptimiserConfig()), cfg, seed=1)
