"""combine.py: per-image scores → per-payload means → the weighted objective."""

from __future__ import annotations

import math

import pytest

from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.scoring import COMBINE_MODES, objective, payload_scores


def test_payload_score_is_the_mean_of_its_images() -> None:
    assert payload_scores({"a": [1.0, 2.0, 6.0], "b": [5.0]}) == {"a": 3.0, "b": 5.0}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_image_score_fails_the_trial_naming_payload_and_image(bad: float) -> None:
    with pytest.raises(ScorerError, match=r"Image 1 of payload 'portrait'"):
        payload_scores({"landscape": [5.0], "portrait": [5.0, bad, 6.0]})


def test_a_payload_without_images_is_an_error_not_a_zero() -> None:
    with pytest.raises(ScorerError, match="no image scores"):
        payload_scores({"a": []})


def test_arithmetic_objective_is_the_score_weight_weighted_mean() -> None:
    value = objective({"a": 4.0, "b": 8.0}, {"a": 3.0, "b": 1.0}, "arithmetic")
    assert value == pytest.approx((3 * 4 + 1 * 8) / 4)


def test_arithmetic_is_the_default_mode() -> None:
    assert objective({"a": 4.0, "b": 8.0}, {"a": 1.0, "b": 1.0}) == pytest.approx(6.0)


def test_geometric_objective_is_the_weighted_geometric_mean() -> None:
    value = objective({"a": 2.0, "b": 8.0}, {"a": 1.0, "b": 2.0}, "geometric")
    assert value == pytest.approx((2.0 * 8.0**2) ** (1 / 3))


def test_quadratic_objective_is_the_weighted_root_mean_square() -> None:
    value = objective({"a": 3.0, "b": 6.0}, {"a": 2.0, "b": 1.0}, "quadratic")
    assert value == pytest.approx(math.sqrt((2 * 9 + 36) / 3))


def test_the_three_means_order_as_they_should_on_unequal_scores() -> None:
    scores, weights = {"a": 2.0, "b": 7.0}, {"a": 1.0, "b": 1.0}
    geometric, arithmetic, quadratic = (objective(scores, weights, m) for m in ("geometric", "arithmetic", "quadratic"))
    assert geometric < arithmetic < quadratic


def test_a_payload_with_score_weight_zero_does_not_count() -> None:
    for mode in COMBINE_MODES:
        assert objective({"a": 5.0, "b": 1.0}, {"a": 1.0, "b": 0.0}, mode) == pytest.approx(5.0)


def test_geometric_mean_refuses_a_negative_score_and_takes_a_zero_as_the_worst() -> None:
    with pytest.raises(ScorerError, match="geometric mean needs scores ≥ 0"):
        objective({"a": 5.0, "b": -0.5}, {"a": 1.0, "b": 1.0}, "geometric")
    # a manual rating of 0 is a score, the lowest there is, not a failed trial
    assert objective({"a": 5.0, "b": 0.0}, {"a": 1.0, "b": 1.0}, "geometric") == 0.0
    assert objective({"a": 5.0, "b": 0.0}, {"a": 1.0, "b": 0.0}, "geometric") == pytest.approx(5.0)


def test_quadratic_mean_refuses_a_negative_score() -> None:
    with pytest.raises(ScorerError, match="quadratic mean needs scores ≥ 0"):
        objective({"a": 5.0, "b": -1.0}, {"a": 1.0, "b": 1.0}, "quadratic")


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_a_non_finite_payload_score_is_never_averaged_in(mode: str) -> None:
    with pytest.raises(ScorerError, match="'b' scored nan"):
        objective({"a": 5.0, "b": math.nan}, {"a": 1.0, "b": 1.0}, mode)


def test_unknown_combine_mode_is_a_config_error_listing_the_modes() -> None:
    with pytest.raises(ConfigError, match="arithmetic, geometric, quadratic"):
        objective({"a": 5.0}, {"a": 1.0}, "harmonic")


def test_negative_score_weight_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="score_weight -1.0"):
        objective({"a": 5.0}, {"a": -1.0})


def test_all_weights_zero_is_a_config_error_not_a_division_by_zero() -> None:
    with pytest.raises(ConfigError, match="nothing to optimise"):
        objective({"a": 5.0, "b": 6.0}, {"a": 0.0, "b": 0.0})


def test_no_payloads_is_an_error() -> None:
    with pytest.raises(ScorerError, match="no payload scores to combine"):
        objective({}, {})


def test_a_payload_without_a_weight_is_a_bug_of_the_caller() -> None:
    with pytest.raises(ValueError, match="payload\\(s\\): b"):
        objective({"a": 5.0, "b": 6.0}, {"a": 1.0})
