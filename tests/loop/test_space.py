import pytest

from bayes_merger.config import OptimiserConfig
from bayes_merger.errors import ConfigError
from bayes_merger.space import build_space, canonical_name

SD = ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
XL = ("BASE",) + tuple(f"IN{i:02d}" for i in range(9)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(9))


def test_every_block_is_a_parameter_by_default():
    space = build_space(OptimiserConfig(), SD, uses_beta=False)
    assert [p.name for p in space.parameters] == list(SD)
    assert all((p.lower, p.upper) == (0.0, 1.0) for p in space.parameters)


def test_beta_methods_get_a_second_set_of_parameters():
    space = build_space(OptimiserConfig(), XL, uses_beta=True)
    assert len(space.parameters) == 40
    assert space.parameters[-1].name == "OUT08_beta"


def test_original_tool_names_map_to_blocks():
    assert canonical_name("base_alpha", SD, True) == "BASE"
    assert canonical_name("block_0_alpha", SD, True) == "IN00"
    assert canonical_name("block_12_alpha", SD, True) == "M00"
    assert canonical_name("block_24_beta", SD, True) == "OUT11_beta"
    assert canonical_name("block_9_alpha", XL, False) == "M00"
    assert canonical_name("in03", SD, False) == "IN03"


def test_an_original_tool_name_that_means_another_block_on_sdxl_than_on_sd1_is_said(caplog):
    # the old tool knew SD1 only: a guide's block_12_alpha (M00 there) freezes OUT02 on SDXL
    caplog.set_level("WARNING", logger="bayes_merger")
    build_space(OptimiserConfig(frozen={"block_12_alpha": 0.5, "block_3_alpha": 0.2}), XL, uses_beta=False)
    assert [r.getMessage() for r in caplog.records] == [
        "block_12_alpha is OUT02 on this architecture (its blocks numbered in order: block_0…block_8 IN00…IN08, "
        "block_9 M00, block_10…block_18 OUT00…OUT08), where on SD1 it is M00; write OUT02 to be plain."]
    caplog.clear()
    build_space(OptimiserConfig(frozen={"block_12_alpha": 0.5}), SD, uses_beta=False)
    assert caplog.records == []


def test_unknown_parameter_names_the_closest():
    with pytest.raises(ConfigError, match="Did you mean .*IN01"):
        canonical_name("IN1", SD, False)
    with pytest.raises(ConfigError, match="does not exist"):
        canonical_name("block_19_alpha", XL, False)


def test_beta_name_for_alpha_only_method_is_refused():
    with pytest.raises(ConfigError, match="takes only α"):
        build_space(OptimiserConfig(frozen={"IN00_beta": 0.5}), SD, uses_beta=False)


def test_frozen_weights_are_held_and_not_optimised():
    space = build_space(OptimiserConfig(frozen={"base_alpha": 0.25, "OUT11": 1.0}), SD, uses_beta=False)
    names = [p.name for p in space.parameters]
    assert "BASE" not in names and "OUT11" not in names and len(names) == 24
    weights = space.to_block_weights({p.name: 0.5 for p in space.parameters})
    assert weights.alpha[0] == 0.25 and weights.alpha[-1] == 1.0 and weights.alpha[1] == 0.5


def test_group_moves_together_with_its_custom_range():
    cfg = OptimiserConfig(groups=[["IN00", "IN01", "block_2_alpha"]], custom_ranges={"IN01": [0.2, 0.4]})
    space = build_space(cfg, SD, uses_beta=False)
    group = next(p for p in space.parameters if p.name == "IN00-IN01-IN02")
    assert (group.lower, group.upper) == (0.2, 0.4)
    weights = space.to_block_weights({p.name: (0.3 if p is group else 0.9) for p in space.parameters})
    assert weights.alpha[1:4] == (0.3, 0.3, 0.3)


def test_a_frozen_member_fixes_its_whole_group():
    cfg = OptimiserConfig(groups=[["IN00", "IN01"]], frozen={"IN01": 0.7})
    space = build_space(cfg, SD, uses_beta=False)
    assert "IN00-IN01" not in [p.name for p in space.parameters]
    weights = space.to_block_weights({p.name: 0.1 for p in space.parameters})
    assert weights.alpha[1] == weights.alpha[2] == 0.7


@pytest.mark.parametrize(
    "cfg, message",
    [
        (OptimiserConfig(custom_ranges={"IN00": [0.8, 0.2]}), "lower < upper"),
        (OptimiserConfig(custom_ranges={"IN00": [0.1]}), r"\[lower, upper\]"),
        (OptimiserConfig(lower=1.0, upper=1.0), "lower < upper"),
        (OptimiserConfig(groups=[["IN00", "IN01"]], custom_ranges={"IN00": [0, 0.5], "IN01": [0, 0.6]}), "different custom ranges"),
        (OptimiserConfig(groups=[["IN00", "IN01"]], frozen={"IN00": 0.1, "IN01": 0.2}), "frozen at different values"),
        (OptimiserConfig(groups=[["IN00", "IN01"], ["IN01", "IN02"]]), "two groups"),
        (OptimiserConfig(groups=[["IN00"]]), "at least two"),
        (OptimiserConfig(frozen={name: 0.5 for name in SD}), "nothing left"),
        (OptimiserConfig(frozen={"IN00": 0.1}, custom_ranges={"IN00": [0.2, 0.8]}), "both frozen and given a custom range"),
        (OptimiserConfig(groups=[["IN00", "IN01"]], frozen={"IN00": 0.1}, custom_ranges={"IN01": [0.2, 0.8]}),
         "Group IN00-IN01 is frozen \\(through IN00\\) and IN01 is given a custom range"),
        (OptimiserConfig(frozen={"IN00": 0.1, "in00": 0.9}), "optimiser.frozen names IN00 twice"),
        (OptimiserConfig(custom_ranges={"IN00": [0, 0.5], "block_0_alpha": [0, 0.6]}),
         "optimiser.custom_ranges names IN00 twice"),
        (OptimiserConfig(custom_ranges={"IN00": ["a", 1]}), r"\[lower, upper\], two numbers"),
    ],
)
def test_conflicting_space_settings_are_errors_not_warnings(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_space(cfg, SD, uses_beta=False)


def test_params_round_trip_through_block_weights():
    cfg = OptimiserConfig(groups=[["OUT00", "OUT01"]], frozen={"BASE": 0.0})
    space = build_space(cfg, SD, uses_beta=True)
    params = {p.name: round(0.01 * i, 2) for i, p in enumerate(space.parameters)}
    weights = space.to_block_weights(params)
    assert space.to_params(weights) == params
    assert space.contains(weights)
