"""BlockWeights and the supermerger weight string."""

from __future__ import annotations

import pytest

from bayes_merger.errors import MergeError
from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS, architecture
from bayes_merger.merge.weights import BlockWeights

SUPERMERGER_STRING = "0,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.25,1,1,1,1,1,1,1,1,1,1,1,0.125"


def test_supermerger_string_reads_base_first_and_writes_back_unchanged():
    weights = BlockWeights.from_strings(SD_BLOCKS, SUPERMERGER_STRING)
    assert weights.as_dict()["alpha"]["BASE"] == 0.0
    assert weights.as_dict()["alpha"]["M00"] == 0.25
    assert weights.as_dict()["alpha"]["OUT11"] == 0.125
    assert weights.alpha_string() == SUPERMERGER_STRING
    assert weights.beta is None and weights.beta_string() is None


def test_string_with_spaces_and_a_trailing_comma_is_accepted():
    text = " , ".join(["0.3"] * 20) + ","
    weights = BlockWeights.from_strings(architecture("sdxl"), text, text)
    assert weights.alpha == (0.3,) * 20 and weights.beta == (0.3,) * 20


def test_values_round_trip_exactly_through_the_string():
    values = tuple(i / 7 for i in range(26))
    weights = BlockWeights(SD_BLOCKS, values, values[::-1])
    again = BlockWeights.from_strings(SD_BLOCKS, weights.alpha_string(), weights.beta_string())
    assert again == weights


def test_wrong_count_names_expected_count_and_architecture():
    with pytest.raises(MergeError, match=r"25 values; SD1/SD2 needs 26"):
        BlockWeights.from_strings(SD_BLOCKS, ",".join(["0.5"] * 25))
    with pytest.raises(MergeError, match=r"26 values; SDXL needs 20"):
        BlockWeights.from_strings(SDXL_BLOCKS, SUPERMERGER_STRING)
    with pytest.raises(MergeError, match=r"beta weights .* 3 values; SDXL inpainting needs 20"):
        BlockWeights.from_strings(architecture("sdxl", "inpainting"), ",".join(["1"] * 20), "1,1,1")


def test_wrong_length_tuple_is_refused_with_the_expected_count():
    with pytest.raises(MergeError, match=r"3 alpha weights given; SD1/SD2 needs 26"):
        BlockWeights(SD_BLOCKS, (0.1, 0.2, 0.3))
    with pytest.raises(MergeError, match=r"19 beta weights given; SDXL needs 20"):
        BlockWeights(SDXL_BLOCKS, (0.1,) * 20, (0.1,) * 19)


def test_a_value_that_is_not_a_number_is_named():
    text = ",".join(["0.5"] * 13 + ["half"] + ["0.5"] * 12)
    with pytest.raises(MergeError, match=r"alpha weight for M00 is 'half'"):
        BlockWeights.from_strings(SD_BLOCKS, text)


def test_non_finite_weights_are_refused():
    with pytest.raises(MergeError, match="IN00 is nan"):
        BlockWeights(SDXL_BLOCKS, (0.0, float("nan")) + (0.0,) * 18)


def test_dict_form_round_trips_and_checks_block_names():
    weights = BlockWeights(SDXL_BLOCKS, tuple(range(20)), tuple(range(20, 40)))
    assert BlockWeights.from_dict(weights.as_dict(), SDXL_BLOCKS) == weights
    data = weights.as_dict()
    del data["alpha"]["OUT08"]
    data["alpha"]["OUT11"] = 1.0
    with pytest.raises(MergeError, match="missing: OUT08; unknown: OUT11"):
        BlockWeights.from_dict(data, SDXL_BLOCKS)


def test_uniform_weights_fill_every_block():
    weights = BlockWeights.uniform(architecture("sd1"), 0.4, 0.6)
    assert weights.blocks == SD_BLOCKS
    assert set(weights.alpha) == {0.4} and set(weights.beta) == {0.6}


def test_weights_are_immutable_and_hashable():
    weights = BlockWeights.uniform(SD_BLOCKS, 0.5)
    with pytest.raises(AttributeError):
        weights.alpha = (0.0,) * 26  # type: ignore[misc]
    assert hash(weights) == hash(BlockWeights.from_strings(SD_BLOCKS, weights.alpha_string()))
