import math

import numpy as np
import pytest

import bayes_merger.optimiser as optimiser_module
from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import ConfigError
from bayes_merger.merge.arch import SD_BLOCKS
from bayes_merger.optimiser import BY_POSTERIOR_MEAN, BY_SCORE, TRUST_INITIAL, Optimiser, trust_length, trust_region
from bayes_merger.optimiser.acquisition import LogExpectedImprovement, UpperConfidenceBound, log_h
from bayes_merger.optimiser.gp import FittedGP
from bayes_merger.space import build_space

BLOCKS = ("BASE", "IN00", "IN01", "M00", "OUT00", "OUT01")


def _space(cfg, blocks=BLOCKS):
    return build_space(cfg, blocks, uses_beta=False)


def _objective(params):
    return -sum((v - 0.3) ** 2 for v in params.values())


def test_trial_0_is_the_centre_then_a_latin_hypercube_within_bounds():
    cfg = OptimiserConfig(init_points=8, n_iters=0, custom_ranges={"IN00": [0.2, 0.4]})
    optimiser = Optimiser(_space(cfg), cfg, seed=1)
    points = [optimiser.suggest(t) for t in range(8)]
    assert points[0] == {"BASE": 0.5, "IN00": pytest.approx(0.3), "IN01": 0.5, "M00": 0.5, "OUT00": 0.5, "OUT01": 0.5}
    assert optimiser.phase(0) == "start" and optimiser.phase(1) == "init" and optimiser.phase(8) == "optimise"
    for name in ("BASE", "M00"):
        strata = sorted(int(p[name] * 7) for p in points[1:])
        assert strata == list(range(7)), "one point per stratum in every dimension"
    assert all(0.2 <= p["IN00"] <= 0.4 for p in points)


def test_start_recipe_by_name_or_mbw_string():
    named = OptimiserConfig(start={"IN00": 0.1, "block_3_alpha": 0.9})
    assert Optimiser(_space(named), named, seed=1).suggest(0) == {
        "BASE": 0.5, "IN00": 0.1, "IN01": 0.5, "M00": 0.5, "OUT00": 0.9, "OUT01": 0.5}
    mbw = OptimiserConfig(start="0.1, 0.2,0.3 0.4,0.5,0.6")
    assert list(Optimiser(_space(mbw), mbw, seed=1).suggest(0).values()) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


@pytest.mark.parametrize("start, message", [
    ("0.1,0.2", "has 2 numbers; this architecture and method take 6"),
    ("0.1,0.2,x,0.4,0.5,0.6", "must be numbers separated by commas"),
    ({"IN00": 1.5}, r"outside its range \[0, 1\]"),
    ({"IN99": 0.5}, "Unknown parameter 'IN99'"),
    (0.5, "optimiser.start must be an MBW string of numbers, a list of numbers or a mapping"),
    (True, "optimiser.start must be an MBW string of numbers, a list of numbers or a mapping"),
])
def test_bad_start_is_refused_in_one_sentence(start, message):
    cfg = OptimiserConfig(start=start)
    with pytest.raises(ConfigError, match=message):
        Optimiser(_space(cfg), cfg, seed=1)


def test_start_must_agree_with_frozen_weights():
    cfg = OptimiserConfig(start={"BASE": 0.2}, frozen={"BASE": 0.0})
    with pytest.raises(ConfigError, match="frozen at 0"):
        Optimiser(_space(cfg), cfg, seed=1)


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
    cfg = OptimiserConfig(init_points=3, n_iters=5)
    first = Optimiser(_space(cfg), cfg, seed=9)
    history = []
    for trial in range(6):
        params = first.suggest(trial)
        history.append((params, _objective(params)))
        first.register(*history[-1])
    # a fresh optimiser that replays the history (a resumed run) suggests the same next point
    resumed = Optimiser(_space(cfg), cfg, seed=9)
    for params, score in history:
        resumed.register(params, score)
    assert resumed.suggest(6) == first.suggest(6)


def test_gp_suggestions_stay_in_bounds_and_improve_on_a_bowl_away_from_the_centre():
    cfg = OptimiserConfig(init_points=6, n_iters=14, custom_ranges={"OUT01": [0.1, 0.6]})
    optimiser = Optimiser(_space(cfg), cfg, seed=3)
    scores = []
    for trial in range(optimiser.budget):
        params = optimiser.suggest(trial)
        assert all(0.0 <= v <= 1.0 for v in params.values()) and 0.1 <= params["OUT01"] <= 0.6
        scores.append(_objective(params))
        optimiser.register(params, scores[-1])
    assert max(scores[6:]) > max(scores[:6])
    assert max(scores) > -0.03, "close to the optimum (0.3 everywhere; the centre scores -0.2)"


def test_beats_random_search_on_a_26_weight_landscape():
    # every block matters, graded 20× from the most to the least important: the landscape on which the
    # first version was no better than random search
    rng = np.random.default_rng(0)
    weights = np.geomspace(1.0, 0.05, 26)[rng.permutation(26)]
    centre = rng.uniform(0.15, 0.85, 26)

    def score(x):
        return -float((weights * (np.asarray(x) - centre) ** 2).sum())

    cfg = OptimiserConfig(init_points=10, n_iters=20)
    space = _space(cfg, SD_BLOCKS)
    optimiser = Optimiser(space, cfg, seed=0)
    best = -math.inf
    for trial in range(optimiser.budget):
        params = optimiser.suggest(trial)
        value = score([params[p.name] for p in space.parameters])
        best = max(best, value)
        optimiser.register(params, value)
    random_best = max(score(x) for x in np.random.default_rng(1).random((30, 26)))
    centre_score = score(np.full(26, 0.5))
    assert best - centre_score > 0.5 * (0 - centre_score), "more than half the way from the centre to the optimum"
    assert best > random_best


def test_importance_ranks_the_weights_that_matter():
    cfg = OptimiserConfig(init_points=10, n_iters=10, groups=[["OUT00", "OUT01"]], frozen={"BASE": 0.5})
    optimiser = Optimiser(_space(cfg), cfg, seed=2)
    for trial in range(optimiser.budget):
        params = optimiser.suggest(trial)
        optimiser.register(params, -4 * (params["IN01"] - 0.3) ** 2 - 0.05 * (params["M00"] - 0.5) ** 2)
    importance = optimiser.importance()
    assert set(importance) == set(BLOCKS) - {"BASE"}  # frozen: not measured, so no figure (not a 0)
    assert importance["IN01"] == 1.0
    assert importance["OUT00"] == importance["OUT01"] < 0.5
    assert importance["IN00"] < 0.5


def test_best_by_posterior_mean_is_not_fooled_by_one_lucky_render():
    cfg = OptimiserConfig(init_points=2, n_iters=0)
    optimiser = Optimiser(_space(cfg), cfg, seed=0)
    rng = np.random.default_rng(4)
    names = list(BLOCKS)
    observed = []
    # a smooth landscape peaking at 0.3 everywhere, scored with noise
    for _ in range(30):
        x = rng.uniform(0, 1, 6)
        observed.append((dict(zip(names, x)), -float(((x - 0.3) ** 2).sum()) + rng.normal(0, 0.02)))
    good = dict(zip(names, np.full(6, 0.32)))
    observed.append((good, -0.0024 + 0.01))
    # a far, bad merge that rendered one lucky image
    lucky = dict(zip(names, np.full(6, 0.95)))
    observed.append((lucky, 0.05))
    assert max(range(len(observed)), key=lambda i: observed[i][1]) == len(observed) - 1
    assert optimiser.best(observed) == len(observed) - 2


def test_with_fewer_than_three_scores_the_best_is_the_best_score_and_chosen_by_says_so():
    cfg = OptimiserConfig(init_points=2, n_iters=0)
    optimiser = Optimiser(_space(cfg), cfg, seed=0)
    points = [(dict.fromkeys(BLOCKS, x), score) for x, score in ((0.2, 1.0), (0.8, 3.0), (0.5, 2.0))]
    assert optimiser.best(points[:2]) == 1 and optimiser.chosen_by(points[:2]) == BY_SCORE
    assert optimiser.chosen_by(points) == BY_POSTERIOR_MEAN
    optimiser.observe(points[:1])
    assert optimiser.best() == 0 and optimiser.chosen_by() == BY_SCORE


def test_trust_region_grows_on_improvements_and_shrinks_on_failures():
    assert trust_length([1, 2, 3], init_points=3) == TRUST_INITIAL
    assert trust_length([1, 2, 3, 4, 5], init_points=3) == 2 * TRUST_INITIAL
    assert trust_length([1, 2, 3, 0, 0, 0], init_points=3) == TRUST_INITIAL / 2
    # with 3 trials in flight, the 3 after an improvement were suggested without knowing of it
    assert trust_length([1, 2, 3, 4, 0, 0, 0], init_points=3, lag=3) == TRUST_INITIAL
    assert trust_length([1, 2, 3, 4, 0, 0, 0, 0, 0, 0], init_points=3, lag=3) == TRUST_INITIAL / 2
    assert trust_length([1, 2, 3, 4, 0, 0, 0], init_points=3) == TRUST_INITIAL / 2
    # the window is counted in trials, not scores: trials 4 and 7 failed, so 5 and 6 are the rest of
    # the window after trial 3's improvement, and 8–10 (which knew of it) are three misses
    scores, trials = [1, 2, 3, 4, 0, 0, 0, 0, 0], [0, 1, 2, 3, 5, 6, 8, 9, 10]
    assert trust_length(scores, init_points=3, lag=3, trials=trials) == TRUST_INITIAL / 2
    assert trust_length(scores, init_points=3, lag=3) == TRUST_INITIAL, "counted in scores, 8 would be excused"
    # an initial trial that failed leaves the first suggested trial out of the initial design
    assert trust_length([1, 2, 3, 4], init_points=3, trials=[0, 1, 3, 4]) == 2 * TRUST_INITIAL
    lower, upper = trust_region(np.array([0.1, 0.5]), np.array([1.0, 100.0]), 0.4)
    # the smooth weight gets a wider side, but at most 2× its share; the box stays in the unit cube
    assert lower[0] == 0.0 and upper[0] == pytest.approx(0.2)
    assert upper[1] - lower[1] == pytest.approx(0.8)


def test_gp_posterior_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.random((25, 4))
    model = FittedGP(x, -((x - 0.4) ** 2).sum(1) + 0.01 * rng.normal(size=25))
    points = rng.random((3, 4))
    posterior = model.predict(points, gradient=True)
    plain = model.predict(points)
    np.testing.assert_allclose(posterior.mean, plain.mean, rtol=1e-10)
    np.testing.assert_allclose(posterior.std, plain.std, rtol=1e-8)
    acquisition = LogExpectedImprovement()
    acquisition.incumbent = float(model.predict(x).mean.max())
    _, grad = acquisition.value(posterior)
    for d in range(4):
        step = np.zeros(4)
        step[d] = 1e-6
        up, down = model.predict(points + step), model.predict(points - step)
        np.testing.assert_allclose((up.mean - down.mean) / 2e-6, posterior.mean_grad[:, d], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose((up.std - down.std) / 2e-6, posterior.std_grad[:, d], rtol=1e-4, atol=1e-7)
        numeric = (acquisition.value(up)[0] - acquisition.value(down)[0]) / 2e-6
        np.testing.assert_allclose(numeric, grad[:, d], rtol=1e-4, atol=1e-6)


def test_log_expected_improvement_is_exact_where_ei_is_representable_and_finite_beyond():
    from scipy.stats import norm

    z = np.array([-30.0, -5.0, -1.0, 0.0, 2.0])
    direct = np.log(norm.pdf(z) + z * norm.cdf(z))
    np.testing.assert_allclose(log_h(z[1:]), direct[1:], rtol=1e-9)
    assert np.isfinite(log_h(np.array([-1e5])))[0] and log_h(np.array([-40.0]))[0] < log_h(np.array([-30.0]))[0]


@pytest.mark.parametrize("acquisition", ["ei", "ucb", "poi"])
def test_suggestions_do_not_depend_on_the_unit_of_the_scores(acquisition):
    # a scorer whose scores are a millionth of another's, otherwise alike, must be optimised alike:
    # the upper confidence bound, in score units, was not polished at all at that scale
    cfg = OptimiserConfig(init_points=6, n_iters=6, acquisition=acquisition)
    runs = []
    for unit in (1.0, 1e-6):
        optimiser = Optimiser(_space(cfg), cfg, seed=3)
        points = []
        for trial in range(optimiser.budget):
            params = optimiser.suggest(trial)
            optimiser.register(params, unit * _objective(params))
            points.append(list(params.values()))
        runs.append(np.array(points))
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-3)


def test_with_no_successful_trial_it_keeps_exploring():
    cfg = OptimiserConfig(init_points=2, n_iters=3)
    optimiser = Optimiser(_space(cfg), cfg, seed=1)
    a, b = optimiser.suggest(2), optimiser.suggest(3)
    assert a != b and all(0 <= v <= 1 for v in a.values())


@pytest.mark.parametrize("field, value", [("acquisition", "foo"), ("init_points", 0), ("n_iters", -1), ("kappa", -1.0),
                                          ("kappa", float("nan")), ("xi", float("nan")), ("xi", float("inf"))])
def test_bad_optimiser_settings_are_refused(field, value):
    cfg = OptimiserConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        Optimiser(_space(OptimiserConfig()), cfg, seed=1)


def test_a_pending_trial_is_believed_at_its_predicted_score_and_steers_the_next_one_away():
    rng = np.random.default_rng(1)
    x = rng.random((20, 3))
    model = FittedGP(x, -((x - 0.4) ** 2).sum(1))
    running = np.array([[0.45, 0.4, 0.35]])
    believed = model.believing(running)
    before, after = model.predict(running), believed.predict(running)
    assert after.mean == pytest.approx(before.mean, abs=1e-3)
    assert after.std[0] < 0.5 * before.std[0]
    np.testing.assert_allclose(believed.length_scale, model.length_scale)

    cfg = OptimiserConfig(init_points=5, n_iters=5)
    optimiser = Optimiser(_space(cfg), cfg, seed=4)
    for trial in range(6):
        params = optimiser.suggest(trial)
        optimiser.register(params, _objective(params))
    alone = optimiser.suggest(6)
    beside = optimiser.suggest(6, pending=[alone])
    assert beside != alone and all(0 <= v <= 1 for v in beside.values())
    assert optimiser.suggest(6, pending=[alone]) == beside, "deterministic with the same pending trials"


def test_a_running_trial_predicted_above_the_best_is_the_bar_a_suggestion_must_clear(monkeypatch):
    cfg = OptimiserConfig(init_points=5, n_iters=5)
    optimiser = Optimiser(_space(cfg), cfg, seed=4)
    for trial in range(6):
        params = optimiser.suggest(trial)
        optimiser.register(params, _objective(params))
    model = optimiser.model()
    best = float(model.predict(model.x).mean.max())
    bars = []
    maximise = LogExpectedImprovement.maximise

    def spy(self, *args, **kwargs):
        bars.append(self.incumbent)
        return maximise(self, *args, **kwargs)

    monkeypatch.setattr(LogExpectedImprovement, "maximise", spy)
    optimiser.suggest(6)
    # a running trial a short step up the posterior mean from the best point
    top = model.x[int(np.argmax(model.predict(model.x).mean))]
    uphill = model.predict(top[None], gradient=True).mean_grad[0]
    uphill[((top <= 0) & (uphill < 0)) | ((top >= 1) & (uphill > 0))] = 0.0  # along the box
    promising = optimiser._to_params(top + 0.02 * uphill / np.abs(uphill).max())
    predicted = float(model.predict(optimiser._to_unit(promising)).mean[0])
    assert predicted > best
    far = {name: 1.0 - value for name, value in promising.items()}
    assert float(model.predict(optimiser._to_unit(far)).mean[0]) < best
    optimiser.suggest(6, pending=[promising])
    optimiser.suggest(6, pending=[far])
    assert bars[0] == pytest.approx(best)
    assert bars[1] == pytest.approx(predicted), "improvement is counted over the running trial's prediction"
    assert bars[2] == pytest.approx(best), "a running trial predicted worse leaves the bar where it was"


def test_with_trials_running_the_misses_suggested_before_an_improvement_was_known_leave_the_region(monkeypatch):
    cfg = OptimiserConfig(init_points=3, n_iters=10)
    optimiser = Optimiser(_space(cfg), cfg, seed=2)
    points = [optimiser.suggest(t) for t in range(3)] + [optimiser._random(t) for t in range(3, 7)]
    # trial 3 improves on the initial design; trials 4–6 fall short of it
    optimiser.observe(list(zip(points, [0.1, 0.2, 0.3, 0.9, 0.0, 0.0, 0.0])))
    sides = []
    region = optimiser_module.trust_region

    def spy(centre, length_scale, side):
        sides.append(side)
        return region(centre, length_scale, side)

    monkeypatch.setattr(optimiser_module, "trust_region", spy)
    optimiser.suggest(7)
    running = [optimiser._random(t) for t in range(7, 10)]
    optimiser.suggest(10, pending=running)
    assert sides[0] == TRUST_INITIAL / 2, "three misses in a row halve the region"
    assert sides[1] == TRUST_INITIAL, "with three trials in flight, trials 4–6 were suggested before trial 3's score"


def test_the_best_point_on_a_bound_is_not_suggested_again():
    # one free weight, the score rising to its upper bound: L-BFGS-B lands on 1.0 every time, and with
    # fixed seeds rendering the same merge again teaches nothing
    cfg = OptimiserConfig(init_points=4, n_iters=12, frozen={b: 0.5 for b in BLOCKS if b != "BASE"})
    optimiser = Optimiser(_space(cfg), cfg, seed=3)
    observed, suggested = [], []
    for trial in range(16):
        optimiser.observe(observed)
        params = optimiser.suggest(trial)
        suggested.append(params["BASE"])
        observed.append((params, params["BASE"] + 0.01 * math.sin(40 * params["BASE"])))
    assert len(set(suggested)) == len(suggested), sorted(suggested)
    assert max(suggested) > 0.99, "the bound itself is still found"


def test_suggestions_do_not_depend_on_how_many_threads_blas_may_use():
    # past ~120 scores the GP's sums come out in other last bits with several BLAS threads, and the
    # search grows such bits into other weights: a resume on another machine must suggest the same
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    cfg = OptimiserConfig(init_points=10, n_iters=140)
    space = build_space(cfg, SD_BLOCKS, uses_beta=False)
    names = [p.name for p in space.parameters]
    observed = []
    for _ in range(130):
        x = rng.random(len(names))
        observed.append((dict(zip(names, map(float, x))), 6 - float(((x - 0.4) ** 2).sum()) + 0.02 * rng.normal()))
    suggestions = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            optimiser = Optimiser(space, cfg, seed=5)
            optimiser.observe(observed)
            suggestions.append(optimiser.suggest(130))
    assert suggestions[0] == suggestions[1]


def test_suggestions_stay_inside_custom_ranges_to_the_last_bit():
    cfg = OptimiserConfig(init_points=3, n_iters=3, custom_ranges={"IN00": [-0.58, 0.17]})
    optimiser = Optimiser(_space(cfg), cfg, seed=1)
    # the range's upper end as the unit cube's 1 maps it: lower + 1 × (upper − lower) rounds past 0.17
    assert optimiser._to_params(np.ones(len(optimiser.space.parameters)))["IN00"] <= 0.17
    assert optimiser._to_params(np.zeros(len(optimiser.space.parameters)))["IN00"] >= -0.58


def _scored_optimiser(trials=8):
    cfg = OptimiserConfig(init_points=5, n_iters=10)
    optimiser = Optimiser(_space(cfg), cfg, seed=4)
    for trial in range(trials):
        params = optimiser.suggest(trial)
        optimiser.register(params, _objective(params))
    return optimiser


def _distance(a, b):
    return max(abs(a[k] - b[k]) for k in a)


class _NeverGuessing(Optimiser):
    def guesses(self, trial):
        return False


def _both_after(trials=14):
    """The optimiser of ``_scored_optimiser`` (15 trials) and one that never guesses, told the same scores."""
    optimiser = _scored_optimiser(trials)
    other = _NeverGuessing(optimiser.space, optimiser.config, seed=optimiser.seed)
    other.observe(optimiser._observed)
    return optimiser, other


def test_the_last_trial_is_the_model_s_best_guess_the_others_the_acquisition_s_choice():
    optimiser, other = _both_after()
    assert optimiser.suggest(13) == other.suggest(13)
    guess, explored = optimiser.suggest(14), other.suggest(14)
    model = optimiser.model()
    mean = lambda params: float(model.predict(optimiser._to_unit(params)).mean[0])  # noqa: E731
    assert mean(guess) > mean(explored) and mean(guess) > float(model.predict(model.x).mean.max())


def test_a_best_guess_that_repeats_a_scored_merge_gives_way_to_the_acquisition_s_choice(monkeypatch):
    optimiser, other = _both_after()
    scored = optimiser.model().x[0]
    monkeypatch.setattr(UpperConfidenceBound, "maximise", lambda self, *args, **kwargs: scored.copy())
    assert optimiser.suggest(14) == other.suggest(14)


def test_a_failed_trial_is_not_suggested_again_as_it_was():
    # told nothing, the optimiser suggests the failed weights again: a broken merge (NaN) fails again
    # and again until the run stops on failures in a row
    optimiser = _scored_optimiser()
    observed = list(optimiser._observed)
    alone = optimiser.suggest(8)
    assert _distance(optimiser.suggest(9), alone) < 0.05
    optimiser.observe(observed, failed=[alone])  # trial 8 failed
    beside = optimiser.suggest(9)
    assert _distance(beside, alone) > 0.05
    assert optimiser.suggest(9) == beside, "deterministic with the same failed trials"
