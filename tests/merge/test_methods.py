"""The merge formulas against sd-meh 0.9.5 (the original tool's engine), and the registry's rules.

Deliberate differences from sd-meh, each tested below:
- euclidean_add_difference returns c (not NaN) where a, b and c are identical;
- tensor_sum accepts 0-d tensors (one row) where sd-meh raises IndexError, and cuts a band begun before row 0
  (β < 0) there, where sd-meh's slice took it from the end or not at all;
- weighted_subtraction nudges β wherever α·β = 1, not only at α = β = 1 (no division by zero);
- distribution_crossover orders tied values of c with a stable sort (deterministic);
- the non-linear methods compute in fp32 for fp16 inputs (sd-meh mostly uses the input dtype).
"""

from __future__ import annotations

import pytest
import torch

from bayes_merger.errors import ConfigError, MergeError
from bayes_merger.merge import methods
from bayes_merger.merge.methods import (
    METHODS,
    MergeMethod,
    build_registry,
    clip_to_inputs,
    get_method,
    merge_method,
)

# name -> (needs_beta, needs_c), written out from the reference table rather than read back.
EXPECTED_NEEDS = {
    "weighted_sum": (False, False),
    "add_difference": (False, True),
    "sum_twice": (True, True),
    "triple_sum": (True, True),
    "weighted_subtraction": (True, False),
    "tensor_sum": (True, False),
    "euclidean_add_difference": (False, True),
    "multiply_difference": (True, True),
    "similarity_add_difference": (True, True),
    "top_k_tensor_sum": (True, False),
    "distribution_crossover": (True, True),
    "ties_add_difference": (True, True),
}
NAMES = list(EXPECTED_NEEDS)
NONLINEAR = [
    "euclidean_add_difference",
    "multiply_difference",
    "similarity_add_difference",
    "top_k_tensor_sum",
    "distribution_crossover",
    "ties_add_difference",
]
# 0-d (logit_scale), 1-element, 1-D (biases, norms), 2-D (linear), 4-D conv and 1x1 conv shapes
SHAPES = [(), (1,), (7,), (5, 6), (4, 3, 3, 3), (8, 4, 1, 1)]
# the edges 0 and 1 in every combination, interior values, and α + β > 1 (tensor_sum's wrapped band)
WEIGHTS = [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.3, 0.6), (0.75, 0.45), (0.5, 0.5)]


def random_inputs(shape, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator).to(dtype) for _ in range(3))


def merge(name: str, a, b, c, alpha: float, beta: float, out=None) -> torch.Tensor:
    method = get_method(name)
    c = c if method.needs_c else None
    return method.fn(a, b, c, alpha, beta if method.needs_beta else 0.0, out)


def oracle(name: str, a, b, c, alpha: float, beta: float) -> torch.Tensor:
    # sd-meh 0.9.5, the test oracle, is in the [test] extra: missing, these tests fail rather than skip
    from sd_meh import merge_methods as sd_meh
    # Every sd-meh method takes keywords and swallows the ones it does not use in **kwargs.
    return getattr(sd_meh, name)(a=a, b=b, c=c, alpha=alpha, beta=beta)


@pytest.mark.parametrize("alpha,beta", WEIGHTS)
@pytest.mark.parametrize("name", NAMES)
def test_every_method_agrees_with_sd_meh_in_fp32(name: str, alpha: float, beta: float) -> None:
    for index, shape in enumerate(SHAPES):
        if name == "tensor_sum" and shape == ():
            continue  # sd-meh raises IndexError on 0-d tensors; see the test of our rule below
        a, b, c = random_inputs(shape, seed=index)
        got = merge(name, a, b, c, alpha, beta)
        expected = oracle(name, a, b, c, alpha, beta)
        assert got.dtype == torch.float32 and got.shape == a.shape
        torch.testing.assert_close(
            got, expected.float(), rtol=1e-5, atol=1e-5, msg=f"{name} {shape}"
        )


@pytest.mark.parametrize(
    "name",
    [n for n in NAMES if n != "distribution_crossover"],  # differs on ties by design, tested below
)
def test_every_method_agrees_with_sd_meh_on_tied_and_zero_values(name: str) -> None:
    # Values on a 0.5 grid: many equal magnitudes (top-k bands, TIES trimming), many exact zeros
    # (similarity's 0/0, TIES' unsigned deltas, pow(0, 0)).
    generator = torch.Generator().manual_seed(7)
    a, b, c = (torch.randint(-3, 4, (6, 5, 3), generator=generator) / 2.0 for _ in range(3))
    for alpha, beta in WEIGHTS:
        got = merge(name, a, b, c, alpha, beta)
        torch.testing.assert_close(
            got, oracle(name, a, b, c, alpha, beta).float(), rtol=1e-5, atol=1e-5, msg=f"{alpha},{beta}"
        )


def test_ties_keeps_at_a_beta_outside_0_to_1_what_its_nearest_edge_keeps() -> None:
    # optimiser.custom_ranges may take β past [0, 1]; torch.kthvalue raised on it, a RuntimeError that
    # stopped the run rather than failing one trial
    a, b, c = random_inputs((6, 5), seed=3)
    for beyond, edge in ((-0.5, 0.0), (1.5, 1.0)):
        torch.testing.assert_close(merge("ties_add_difference", a, b, c, 0.7, beyond),
                                   merge("ties_add_difference", a, b, c, 0.7, edge), rtol=0, atol=0)


@pytest.mark.parametrize(
    "dtype,unit_roundoff", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)], ids=["fp16", "bf16"]
)
def test_weighted_sum_in_half_precision_is_within_one_rounding_of_fp32(dtype, unit_roundoff) -> None:
    a, b, c = random_inputs((64, 33), seed=1, dtype=dtype)
    for alpha in (0.0, 0.1, 0.5, 0.77, 1.0):
        got = merge("weighted_sum", a, b, c, alpha, 0.0)
        assert got.dtype == dtype
        reference = torch.lerp(a.float(), b.float(), alpha)
        # lerp computes in fp32 and rounds once; the tiny absolute term covers subnormals
        bound = unit_roundoff * reference.abs() + 1e-6
        assert ((got.float() - reference).abs() <= bound).all(), alpha


@pytest.mark.parametrize(
    "dtype,unit_roundoff", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)], ids=["fp16", "bf16"]
)
def test_add_difference_in_half_precision_is_within_three_roundings_of_fp32(dtype, unit_roundoff) -> None:
    a, b, c = random_inputs((64, 33), seed=2, dtype=dtype)
    for alpha in (0.0, 0.1, 0.5, 0.77, 1.0):
        got = merge("add_difference", a, b, c, alpha, 0.0)
        assert got.dtype == dtype
        difference = b.float() - c.float()
        reference = a.float() + alpha * difference
        # b − c is rounded once, α is rounded to the dtype by torch.add (an error the size of rounding
        # α·(b − c)), then a + α·(b − c) is rounded once more
        bound = unit_roundoff * (reference.abs() + 2 * alpha * difference.abs()) + 1e-6
        assert ((got.float() - reference).abs() <= bound).all(), alpha


@pytest.mark.parametrize("name", NONLINEAR)
def test_nonlinear_methods_compute_half_precision_inputs_in_fp32(name: str) -> None:
    a, b, c = random_inputs((6, 4, 3, 3), seed=3, dtype=torch.float16)
    for alpha, beta in WEIGHTS:
        got = merge(name, a, b, c, alpha, beta)
        assert got.dtype == torch.float16
        in_fp32 = merge(name, a.float(), b.float(), c.float(), alpha, beta).half()
        assert torch.equal(got, in_fp32), (alpha, beta)


@pytest.mark.parametrize("name", NAMES)
def test_result_is_written_into_out_and_out_is_returned(name: str) -> None:
    for dtype in (torch.float32, torch.float16):
        a, b, c = random_inputs((5, 4, 3), seed=4, dtype=dtype)
        out = torch.full_like(a, float("nan"))
        returned = merge(name, a, b, c, 0.3, 0.6, out=out)
        assert returned is out
        assert torch.equal(out, merge(name, a, b, c, 0.3, 0.6))


@pytest.mark.parametrize("name", NAMES)
def test_result_without_out_is_a_new_tensor_and_inputs_are_untouched(name: str) -> None:
    # fp32 is the risky case: tensor.float() returns the tensor itself, not a copy.
    a, b, c = random_inputs((5, 4, 3), seed=5)
    originals = [t.clone() for t in (a, b, c)]
    for alpha, beta in WEIGHTS:
        result = merge(name, a, b, c, alpha, beta)
        for tensor, original in zip((a, b, c), originals):
            assert result.data_ptr() != tensor.data_ptr()
            assert torch.equal(tensor, original)


@pytest.mark.parametrize("name", NAMES)
def test_integer_tensors_are_refused_not_turned_into_floats(name: str) -> None:
    positions = torch.arange(77).unsqueeze(0)
    with pytest.raises(MergeError, match="only floating-point tensors are merged"):
        merge(name, positions, positions.clone(), positions.clone(), 0.5, 0.5)
    # an integer tensor from B alone is refused too, and A is left as it was
    a = torch.zeros(1, 77)
    with pytest.raises(MergeError, match="model B"):
        merge(name, a, positions, torch.zeros(1, 77), 0.5, 0.5)
    assert torch.equal(a, torch.zeros(1, 77))


@pytest.mark.parametrize("name", [n for n, (_, needs_c) in EXPECTED_NEEDS.items() if needs_c])
def test_methods_that_need_model_c_say_so_when_it_is_missing(name: str) -> None:
    a, b, _ = random_inputs((3,), seed=6)
    with pytest.raises(MergeError, match=f"'{name}' needs model C"):
        METHODS[name].fn(a, b, None, 0.5, 0.5, None)


def test_mismatched_shapes_are_refused_naming_both() -> None:
    with pytest.raises(MergeError, match=r"model B's tensor has shape \(4,\), model A's has \(3,\)"):
        get_method("weighted_sum").fn(torch.zeros(3), torch.zeros(4), None, 0.5, 0.0, None)


def test_a_model_in_another_precision_is_merged_in_model_a_precision() -> None:
    a, b, c = random_inputs((4, 5), seed=8)
    result = merge("add_difference", a.half(), b, c, 0.5, 0.0)
    assert result.dtype == torch.float16
    torch.testing.assert_close(result, (a + 0.5 * (b - c)).half(), rtol=2e-3, atol=2e-3)


def test_weighted_sum_at_the_edges_copies_a_or_b_exactly() -> None:
    a, b, _ = random_inputs((9, 2), seed=9, dtype=torch.float16)
    at_zero = merge("weighted_sum", a, b, None, 0.0, 0.0)
    at_one = merge("weighted_sum", a, b, None, 1.0, 0.0)
    assert torch.equal(at_zero, a) and at_zero.data_ptr() != a.data_ptr()
    assert torch.equal(at_one, b) and at_one.data_ptr() != b.data_ptr()


def test_registry_holds_exactly_the_twelve_reference_methods() -> None:
    assert list(METHODS) == NAMES
    for name, method in METHODS.items():
        assert method.name == name and callable(method.fn) and method.description


@pytest.mark.parametrize("name", NAMES)
def test_registry_knows_which_methods_need_beta_and_model_c(name: str) -> None:
    method = get_method(name)
    assert (method.needs_beta, method.needs_c) == EXPECTED_NEEDS[name]


def test_registry_cannot_be_changed_after_import() -> None:
    with pytest.raises(TypeError):
        METHODS["mine"] = METHODS["weighted_sum"]  # type: ignore[index]


@pytest.mark.parametrize(
    "typo,closest",
    [
        ("weigted_sum", "weighted_sum"),
        ("add_diff", "add_difference"),
        ("TIES_add_difference", "ties_add_difference"),
    ],
)
def test_unknown_method_suggests_the_closest_name(typo: str, closest: str) -> None:
    with pytest.raises(ConfigError, match=f"Unknown merge method '{typo}'; did you mean '{closest}'"):
        get_method(typo)


def test_unknown_method_without_a_close_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        get_method("xyzzy")
    message = str(error.value)
    assert "did you mean" not in message
    assert all(name in message for name in NAMES)


def test_two_methods_with_one_name_are_refused() -> None:
    method = MergeMethod("twice", methods.weighted_sum, False, False, "the same name twice")
    with pytest.raises(ValueError, match="'twice' is registered twice"):
        build_registry([method, method])


def test_the_decorator_names_a_method_by_its_function_and_keeps_its_declaration() -> None:
    @merge_method(needs_beta=True, description="A, always")
    def keep_a(a, b, c, alpha, beta, out):
        return out.copy_(a)

    assert isinstance(keep_a, MergeMethod)
    assert (keep_a.name, keep_a.needs_beta, keep_a.needs_c, keep_a.description) == ("keep_a", True, False, "A, always")
    assert keep_a.prepare is None and keep_a.finish is None
    a, b, _ = random_inputs((3,), seed=15)
    assert torch.equal(keep_a.fn(a, b, None, 0.5, 0.5), a)


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].prepare is not None])
def test_precomputed_work_gives_the_same_bits_as_the_one_shot_formula(name: str) -> None:
    method = METHODS[name]
    for dtype in (torch.float32, torch.float16):
        for index, shape in enumerate(SHAPES):
            a, b, c = random_inputs(shape, seed=20 + index, dtype=dtype)
            c = c if method.needs_c else None
            kept = method.prepare(a, b, c, None)
            for alpha, beta in WEIGHTS:
                once = method.formula(a, b, c, alpha, beta, torch.empty_like(a))
                again = method.finish(kept, alpha, beta, torch.empty_like(a))
                assert torch.equal(once, again), (dtype, shape, alpha, beta)


def test_precomputing_never_changes_the_inputs_or_what_was_precomputed() -> None:
    a, b, c = random_inputs((6, 5), seed=16)
    originals = [t.clone() for t in (a, b, c)]
    for name in (n for n in NAMES if METHODS[n].prepare is not None):
        method = METHODS[name]
        kept = method.prepare(a, b, c if method.needs_c else None, None)
        snapshot = [t.clone() if isinstance(t, torch.Tensor) else t for t in kept]
        for alpha, beta in WEIGHTS:
            method.finish(kept, alpha, beta, torch.empty_like(a))
        for now, before in zip(kept, snapshot):
            assert not isinstance(now, torch.Tensor) or torch.equal(now, before), name
    assert all(torch.equal(t, o) for t, o in zip((a, b, c), originals))


def test_clip_to_inputs_clamps_in_place_between_a_and_b() -> None:
    a = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])
    b = torch.tensor([1.0, 0.0, -3.0, 2.0, 0.5])
    out = torch.tensor([2.0, -1.0, -2.0, 5.0, 0.5])
    pointer = out.data_ptr()
    returned = clip_to_inputs(out, a, b)
    assert returned.data_ptr() == pointer
    assert torch.equal(out, torch.tensor([1.0, 0.0, -2.0, 2.0, 0.5]))


def test_clip_to_inputs_keeps_a_merge_that_lies_between_its_inputs() -> None:
    a, b, _ = random_inputs((6, 6), seed=10, dtype=torch.float16)
    merged = merge("weighted_sum", a, b, None, 0.4, 0.0)
    assert torch.equal(clip_to_inputs(merged.clone(), a, b), merged)


# Deliberate differences from sd-meh ------------------------------------------------------------


def test_euclidean_add_difference_of_three_identical_tensors_is_that_tensor_not_nan() -> None:
    a, _, _ = random_inputs((4, 4), seed=11)
    assert oracle("euclidean_add_difference", a, a, a, 0.5, 0.0).isnan().all()  # sd-meh's 0/0
    for alpha in (0.0, 0.5, 1.0):
        assert torch.equal(merge("euclidean_add_difference", a, a.clone(), a.clone(), alpha, 0.0), a)


def test_tensor_sum_takes_a_0d_tensor_as_one_row() -> None:
    a, b = torch.tensor(1.0), torch.tensor(2.0)
    with pytest.raises(IndexError):
        oracle("tensor_sum", a, b, None, 0.5, 0.5)
    # one row: it comes from b only when the band [⌊β⌋, ⌊α+β⌋) covers row 0
    assert merge("tensor_sum", a, b, None, 0.5, 0.5).item() == 2.0
    assert merge("tensor_sum", a, b, None, 0.3, 0.5).item() == 1.0
    assert merge("tensor_sum", a, b, None, 0.5, 0.0).item() == 1.0


def test_tensor_sums_band_begun_before_the_first_row_is_cut_there_not_taken_from_the_end() -> None:
    # a custom range below 0: sd-meh's int() and slice made [-2, 2) an empty band (or one from the last rows)
    a, b = torch.zeros(8, 1), torch.ones(8, 1)
    assert oracle("tensor_sum", a, b, None, 0.5, -0.25).flatten().tolist() == [0.0] * 8
    assert merge("tensor_sum", a, b, None, 0.5, -0.25).flatten().tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert merge("tensor_sum", a, b, None, 0.5, -0.6).flatten().tolist() == [0.0] * 8  # wholly before row 0
    assert merge("tensor_sum", a, b, None, -0.25, 0.5).flatten().tolist() == [0.0] * 8  # no width, no band


def test_weighted_subtraction_never_divides_by_zero() -> None:
    a, b, _ = random_inputs((5,), seed=12)
    assert not oracle("weighted_subtraction", a, b, None, 2.0, 0.5).isfinite().all()
    assert merge("weighted_subtraction", a, b, None, 2.0, 0.5).isfinite().all()


def test_distribution_crossover_orders_tied_values_of_c_by_position() -> None:
    generator = torch.Generator().manual_seed(13)
    a, b = torch.randn(2, 40, generator=generator)
    tied = torch.randint(0, 4, (40,), generator=generator).float()
    # breaking c's ties by position gives the same order as a stable sort of the tied c
    by_position = tied + torch.arange(40) * 1e-4
    assert torch.equal(
        merge("distribution_crossover", a, b, tied, 0.4, 0.2),
        merge("distribution_crossover", a, b, by_position, 0.4, 0.2),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not tested")
@pytest.mark.parametrize("name", NAMES)
def test_every_method_gives_the_same_result_on_cuda_as_on_cpu(name: str) -> None:
    a, b, c = random_inputs((8, 4, 3, 3), seed=14)
    out = torch.empty_like(a, device="cuda")
    got = merge(name, a.cuda(), b.cuda(), c.cuda(), 0.3, 0.6, out=out)
    assert got is out
    torch.testing.assert_close(got.cpu(), merge(name, a, b, c, 0.3, 0.6), rtol=1e-5, atol=1e-5)
