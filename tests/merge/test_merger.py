"""The Merger: checks before work, the per-key plan, in-place merges into reused buffers, the saved recipe."""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import logging
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import bayes_merger
from bayes_merger.config import MergeConfig
from bayes_merger.errors import CheckpointError, ConfigError, MergeError
from bayes_merger.merge import merger as merger_module
from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS, architecture
from bayes_merger.devices import resolve_device
from bayes_merger.merge.merger import Merger, inspect_inputs, warn_of_lost_precision
from bayes_merger.merge.methods import MergeMethod
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.testing.models import make_checkpoint, make_state_dict

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "a": make_checkpoint(folder / "a.safetensors", seed=1, ema=True),
        "b": make_checkpoint(folder / "b.safetensors", seed=2, ema=True),
        "c": make_checkpoint(folder / "c.safetensors", seed=3),
        "a32": make_checkpoint(folder / "a32.safetensors", seed=1, dtype=torch.float32),
        "b32": make_checkpoint(folder / "b32.safetensors", seed=2, dtype=torch.float32),
        "a_bf16": make_checkpoint(folder / "a_bf16.safetensors", seed=1, dtype=torch.bfloat16),
        "xl_a": make_checkpoint(folder / "xl_a.safetensors", "sdxl", seed=4),
        "xl_b": make_checkpoint(folder / "xl_b.safetensors", "sdxl", seed=5),
        "inpaint": make_checkpoint(folder / "inpaint.safetensors", seed=6, variant="inpainting"),
        "pix2pix": make_checkpoint(folder / "pix2pix.safetensors", seed=7, variant="pix2pix"),
        "sd2": make_checkpoint(folder / "sd2.safetensors", "sd2", seed=8),
    }


@functools.lru_cache(maxsize=None)
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A model's tensors as safetensors' own loader reads them (cached: the files never change)."""
    return load_file(path)


def _config(**changes) -> MergeConfig:
    return MergeConfig(device="cpu", **changes)


def _per_block_weights(blocks=SD_BLOCKS) -> BlockWeights:
    return BlockWeights(blocks, tuple((i + 1) / (len(blocks) + 1) for i in range(len(blocks))))


# ---------------------------------------------------------------------------------- the merge itself


def test_each_key_is_merged_with_its_own_blocks_alpha(models):
    merger = Merger(models["a"], models["b"], None, _config())
    weights = _per_block_weights()
    alpha = weights.as_dict()["alpha"]
    out = merger.merge(weights)
    a, b = _tensors(models["a"]), _tensors(models["b"])
    arch = architecture("sd1")
    checked = 0
    for key, t in out.items():
        block = arch.block_of(key)
        if block is None or key.startswith("model_ema"):
            continue
        expected = (a[key].float() * (1 - alpha[block]) + b[key].float() * alpha[block]).half()
        torch.testing.assert_close(t, expected, atol=2e-3, rtol=0, msg=key)
        checked += 1
    assert checked == len([k for k in a if k.startswith(("model.", "first_stage", "cond_stage"))]) - 1  # all but position_ids
    assert out["model.diffusion_model.time_embed.0.weight"].dtype == torch.float16


def test_not_merged_keys_are_model_a_values_with_their_own_dtype(models):
    out = Merger(models["a"], models["b"], None, _config(prune=False)).merge(BlockWeights.uniform(SD_BLOCKS, 1.0))
    a = _tensors(models["a"])
    for key in (POSITION_IDS, "betas", "alphas_cumprod"):
        assert out[key].dtype == a[key].dtype
        assert torch.equal(out[key], a[key])
    assert out[POSITION_IDS].dtype == torch.int64
    # with α = 1 everywhere every merged key is B's: that the keys above are A's shows they were not merged
    assert torch.equal(out["model.diffusion_model.out.2.weight"], _tensors(models["b"])["model.diffusion_model.out.2.weight"])


def test_what_pruning_drops_is_not_even_loaded_and_ema_merges_with_base_otherwise(models):
    weights = BlockWeights(SD_BLOCKS, (0.25,) + (0.0,) * 25)
    ema = "model_ema.diffusion_modelout2weight"
    a, b = _tensors(models["a"]), _tensors(models["b"])
    pruned = Merger(models["a"], models["b"], None, _config(prune=True)).merge(weights)
    assert ema not in pruned and "betas" not in pruned
    assert set(pruned) == {k for k in a if k.startswith(("model.", "first_stage_model.", "cond_stage_model."))}
    kept = Merger(models["a"], models["b"], None, _config(prune=False)).merge(weights)
    torch.testing.assert_close(kept[ema], torch.lerp(a[ema], b[ema], 0.25))


def test_a_key_missing_from_b_or_c_keeps_a_value(models, tmp_path):
    b = dict(_tensors(models["b"]))
    del b["model.diffusion_model.out.2.weight"]
    save_file(b, tmp_path / "b.safetensors")
    c = dict(_tensors(models["c"]))
    del c["first_stage_model.quant_conv.weight"]
    save_file(c, tmp_path / "c.safetensors")
    out = Merger(models["a"], tmp_path / "b.safetensors", tmp_path / "c.safetensors", _config(method="add_difference")).merge(
        BlockWeights.uniform(SD_BLOCKS, 1.0)
    )
    a = _tensors(models["a"])
    assert torch.equal(out["model.diffusion_model.out.2.weight"], a["model.diffusion_model.out.2.weight"])
    assert torch.equal(out["first_stage_model.quant_conv.weight"], a["first_stage_model.quant_conv.weight"])
    assert not torch.equal(out["model.diffusion_model.out.0.weight"], a["model.diffusion_model.out.0.weight"])


def test_keys_model_a_lacks_are_copied_from_b_as_supermerger_and_sd_meh_do(models, tmp_path, caplog):
    # a model A saved without its VAE: the merges must not come out without one
    a = {k: v for k, v in _tensors(models["a32"]).items() if not k.startswith("first_stage_model.")}
    save_file(a, tmp_path / "a.safetensors")
    merger = Merger(tmp_path / "a.safetensors", models["b"], None, _config(dtype="fp16"))
    out = merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.5))
    b = _tensors(models["b"])
    vae = [k for k in b if k.startswith("first_stage_model.")]
    assert vae and all(torch.equal(out[k], b[k]) for k in vae)
    assert all(out[k].dtype == b[k].dtype for k in vae)
    assert f"{len(vae)} keys of model B are not in model A (first: first_stage_model." in caplog.text
    merger.save(tmp_path / "merged.safetensors")
    assert set(vae) <= set(load_file(tmp_path / "merged.safetensors"))


def test_every_merge_writes_into_the_same_output_tensors(models):
    merger = Merger(models["a"], models["b"], None, _config())
    first = merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.2))
    pointers = {k: t.data_ptr() for k, t in first.items()}
    snapshot = first["model.diffusion_model.middle_block.0.in_layers.2.weight"].clone()
    for alpha in (0.4, 0.6, 0.8):
        again = merger.merge(BlockWeights.uniform(SD_BLOCKS, alpha))
    assert again is first
    assert {k: t.data_ptr() for k, t in again.items()} == pointers
    assert not torch.equal(again["model.diffusion_model.middle_block.0.in_layers.2.weight"], snapshot)
    with pytest.raises(TypeError):
        again["betas"] = torch.zeros(1)  # read-only view


def test_repeated_merges_give_identical_results(models):
    merger = Merger(models["a"], models["b"], None, _config())
    weights = _per_block_weights()
    first = {k: t.clone() for k, t in merger.merge(weights).items()}
    merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.9))
    second = merger.merge(weights)
    assert all(torch.equal(second[k], t) for k, t in first.items())


@pytest.mark.parametrize("method", ["add_difference", "top_k_tensor_sum", "distribution_crossover"])
def test_precomputing_within_any_budget_gives_the_same_bits(models, method):
    weights = BlockWeights(SD_BLOCKS, _per_block_weights().alpha, tuple(0.3 for _ in SD_BLOCKS))
    merges = []
    for budget in (0, 20_000, None):  # off, a few keys, as much as the machine allows
        merger = Merger(models["a"], models["b"], models["c"], _config(method=method), precompute_bytes=budget)
        merges.append({k: t.clone() for k, t in merger.merge(weights).items()})
    assert all(torch.equal(merges[0][k], t) for merge in merges[1:] for k, t in merge.items())


def _loaded_tensors(monkeypatch) -> dict[str, list[weakref.ref]]:
    """By file name, a weak reference to each tensor the Merger loads from it: which of them it still holds."""
    loaded: dict[str, list[weakref.ref]] = {}
    load = merger_module.load_state_dict

    def spy(path, *args, **kwargs):
        tensors = load(path, *args, **kwargs)
        loaded[Path(path).name] = [weakref.ref(t) for t in tensors.values()]
        return tensors

    monkeypatch.setattr(merger_module, "load_state_dict", spy)
    return loaded


@pytest.mark.parametrize("clip", [False, True])
def test_a_precomputing_merger_lets_go_of_the_inputs_no_trial_reads(models, monkeypatch, clip):
    # add_difference keeps A and B − C: B's and C's merged tensors are then dead weight (SDXL: 14 GB)
    loaded = _loaded_tensors(monkeypatch)
    merger = Merger(models["a"], models["b"], models["c"], _config(method="add_difference", weights_clip=clip))
    merged = {k: t.clone() for k, t in merger.merge(_per_block_weights()).items()}
    gc.collect()
    alive = {name: sum(ref() is not None for ref in refs) for name, refs in loaded.items()}
    if clip:  # every trial clips to A and B: they stay
        assert alive[models["b"].name] == len(loaded[models["b"].name])
    else:
        assert alive[models["b"].name] == 0 and alive[models["c"].name] == 0
    unprepared = Merger(models["a"], models["b"], models["c"], _config(method="add_difference", weights_clip=clip),
                        precompute_bytes=0)
    assert all(torch.equal(unprepared.merge(_per_block_weights())[k], t) for k, t in merged.items())


def test_the_gpu_memory_the_inputs_held_goes_back_once_the_load_let_go_of_them(models, monkeypatch):
    """On CUDA what the load and the precompute free (B and C beside A and B − C) stays with torch's caching
    allocator, taken from the GPU the WebUI shares for the whole run, until it is handed back."""
    from bayes_merger import devices

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    devices.release_cached_memory(torch.device("cpu"))
    devices.release_cached_memory(torch.device("cuda"))
    assert emptied == [1]  # on CUDA only
    loaded = _loaded_tensors(monkeypatch)
    released = []

    def release(device):
        gc.collect()  # what is still held now stays held
        released.append(sum(ref() is not None for name in (models["b"].name, models["c"].name) for ref in loaded[name]))

    monkeypatch.setattr(merger_module, "release_cached_memory", release)
    Merger(models["a"], models["b"], models["c"], _config(method="add_difference"))
    assert released == [0]  # once, with none of B's or C's tensors left


def test_method_checks_run_when_the_plan_is_built_not_in_every_merge(models, monkeypatch):
    calls = []
    real = MergeMethod.check
    monkeypatch.setattr(MergeMethod, "check", lambda self, *args: calls.append(1) or real(self, *args))
    merger = Merger(models["a"], models["b"], None, _config())
    planned = len(calls)
    assert planned > 0
    for alpha in (0.2, 0.7):
        merger.merge(BlockWeights.uniform(SD_BLOCKS, alpha))
    assert len(calls) == planned


def test_two_copies_of_one_model_are_refused_whatever_their_files_and_precisions(models, tmp_path):
    # merged at any weights they give one model: every trial would render the same pictures
    with pytest.raises(ConfigError, match=r"^model_a \(a\.safetensors\) and model_b \(a32\.safetensors\) hold the "
                                          r"same weights, so every weighted_sum merge is the same model "
                                          r"whatever the block weights"):
        Merger(models["a"], models["a32"], None, _config())
    c_again = tmp_path / "c-again.safetensors"
    c_again.write_bytes(models["c"].read_bytes())
    with pytest.raises(ConfigError, match=r"model_b \(c\.safetensors\) and model_c \(c-again\.safetensors\) hold "
                                          r"the same weights, so every add_difference merge"):
        Merger(models["a"], models["c"], c_again, _config(method="add_difference"))


def test_a_model_beside_its_copy_is_refused_only_where_the_method_makes_the_weights_moot(models):
    # a + α·(a − c) moves with α; clipped to [min(a, a), max(a, a)] it is a whatever α
    Merger(models["a"], models["a32"], models["c"], _config(method="add_difference"))
    with pytest.raises(ConfigError, match="model_a .* and model_b .* hold the same weights, so every add_difference"):
        Merger(models["a"], models["a32"], models["c"], _config(method="add_difference", weights_clip=True))
    # (1 − β)·a + β·c moves with β
    Merger(models["a"], models["a32"], models["c"], _config(method="sum_twice"))


def test_models_sharing_their_text_encoder_and_vae_are_told_apart_by_their_first_unet_key(models, tmp_path, monkeypatch):
    a, b = _tensors(models["a"]), _tensors(models["b"])
    shared = {k: (a[k] if k in a and not k.startswith("model.diffusion_model.") else v) for k, v in b.items()}
    path = tmp_path / "b-with-a-text-encoder.safetensors"
    save_file(shared, str(path))
    merged = []
    real = merger_module.get_method

    def counting(name):
        method = real(name)
        return dataclasses.replace(method, formula=lambda a, *rest: merged.append(a.shape) or method.formula(a, *rest))

    monkeypatch.setattr(merger_module, "get_method", counting)
    Merger(models["a"], path, None, _config())
    assert len(merged) == 2  # one key, at two weights


def test_add_difference_uses_model_c(models):
    out = Merger(models["a"], models["b"], models["c"], _config(method="add_difference")).merge(
        BlockWeights.uniform(SD_BLOCKS, 0.5)
    )
    a, b, c = (_tensors(models[m]) for m in "abc")
    key = "model.diffusion_model.output_blocks.3.0.skip_connection.weight"
    torch.testing.assert_close(out[key], (a[key].float() + 0.5 * (b[key].float() - c[key].float())).half(), atol=2e-3, rtol=0)


def test_methods_with_beta_get_each_blocks_beta(models):
    merger = Merger(models["a"], models["b"], models["c"], _config(method="sum_twice"))
    alpha = tuple([0.5] * 26)
    beta = tuple([0.0] * 14 + [1.0] * 12)  # OUT blocks entirely C
    out = merger.merge(BlockWeights(SD_BLOCKS, alpha, beta))
    c = _tensors(models["c"])
    assert torch.equal(out["model.diffusion_model.output_blocks.4.0.in_layers.2.weight"], c["model.diffusion_model.output_blocks.4.0.in_layers.2.weight"])
    assert not torch.equal(out["model.diffusion_model.input_blocks.4.0.in_layers.2.weight"], c["model.diffusion_model.input_blocks.4.0.in_layers.2.weight"])


def test_weights_clip_keeps_every_value_between_a_and_b(models):
    merger = Merger(models["a"], models["b"], None, _config(weights_clip=True))
    out = merger.merge(BlockWeights.uniform(SD_BLOCKS, 1.5))  # extrapolates past B without the clip
    a, b = _tensors(models["a"]), _tensors(models["b"])
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert torch.all(out[key] <= torch.maximum(a[key], b[key]))
    assert torch.all(out[key] >= torch.minimum(a[key], b[key]))
    assert torch.equal(out[key], b[key])


def test_sdxl_merges_with_20_blocks_and_label_emb_in_in00(models):
    merger = Merger(models["xl_a"], models["xl_b"], None, _config())
    assert merger.architecture.blocks == SDXL_BLOCKS
    weights = BlockWeights(SDXL_BLOCKS, (0.0, 1.0) + (0.0,) * 18)  # only IN00 from B
    out = merger.merge(weights)
    b = _tensors(models["xl_b"])
    a = _tensors(models["xl_a"])
    assert torch.equal(out["model.diffusion_model.label_emb.0.0.weight"], b["model.diffusion_model.label_emb.0.0.weight"])
    assert torch.equal(out["model.diffusion_model.time_embed.2.bias"], b["model.diffusion_model.time_embed.2.bias"])
    assert torch.equal(out["model.diffusion_model.out.2.weight"], a["model.diffusion_model.out.2.weight"])
    assert torch.equal(out["conditioner.embedders.1.model.ln_final.weight"], a["conditioner.embedders.1.model.ln_final.weight"])


def test_sd2_models_merge(models, tmp_path):
    other = make_checkpoint(tmp_path / "sd2b.safetensors", "sd2", seed=9)
    merger = Merger(models["sd2"], other, None, _config())
    assert merger.architecture.label == "SD2"
    out = merger.merge(BlockWeights.uniform(SD_BLOCKS, 1.0))
    assert torch.equal(out["cond_stage_model.model.text_projection"], load_file(other)["cond_stage_model.model.text_projection"])


def test_inpainting_model_a_merges_only_the_first_four_input_channels(models):
    merger = Merger(models["inpaint"], models["b"], None, _config())
    assert merger.architecture.label == "SD1 inpainting"
    out = merger.merge(BlockWeights.uniform(SD_BLOCKS, 1.0))
    a, b = _tensors(models["inpaint"]), _tensors(models["b"])
    assert out[INPUT_CONV].shape[1] == 9
    assert torch.equal(out[INPUT_CONV][:, :4], b[INPUT_CONV])
    assert torch.equal(out[INPUT_CONV][:, 4:], a[INPUT_CONV][:, 4:])
    merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.0))
    assert torch.equal(out[INPUT_CONV], a[INPUT_CONV])


def test_inpainting_model_as_b_is_refused_naming_model_a(models):
    with pytest.raises(CheckpointError, match=r"Model B \(.*inpaint\.safetensors\) is an SD1 inpainting model .* only be merged as model A"):
        Merger(models["a"], models["inpaint"], None, _config())


def test_inpainting_and_pix2pix_are_different_architectures(models):
    with pytest.raises(CheckpointError, match=r"pix2pix\.safetensors\) is an SD1 pix2pix model and model A .* is SD1 inpainting"):
        Merger(models["inpaint"], models["pix2pix"], None, _config())


def test_mixed_precision_inputs_merge_in_model_a_precision(models):
    out = Merger(models["a"], models["b32"], None, _config()).merge(BlockWeights.uniform(SD_BLOCKS, 0.5))
    assert out["model.diffusion_model.out.2.weight"].dtype == torch.float16
    out32 = Merger(models["a32"], models["b"], None, _config()).merge(BlockWeights.uniform(SD_BLOCKS, 0.5))
    assert out32["model.diffusion_model.out.2.weight"].dtype == torch.float32


def test_a_bf16_model_saved_as_fp16_is_merged_in_fp16s_precision(models, tmp_path):
    # held in bf16, B's fp16 values were rounded to bf16 and the merge rounded again: errors of ~2^-9
    merger = Merger(models["a_bf16"], models["b"], None, _config(dtype="fp16"))
    merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.3))
    saved = load_file(merger.save(tmp_path / "merged.safetensors"))
    a, b = _tensors(models["a_bf16"]), _tensors(models["b"])
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    exact = a[key].double() * 0.7 + b[key].double() * 0.3
    assert saved[key].dtype == torch.float16
    relative = ((saved[key].double() - exact).abs() / exact.abs().clamp_min(1e-3)).max().item()
    assert relative <= 2.0**-10, relative  # fp16's own rounding of the exact merge, twice at most
    # saved as bf16 it stays in bf16, as before
    kept = Merger(models["a_bf16"], models["b"], None, _config(dtype="bf16")).merge(BlockWeights.uniform(SD_BLOCKS, 0.3))
    assert kept[key].dtype == torch.bfloat16


def test_an_fp8_model_a_is_merged_in_the_precision_it_is_saved_in(models, tmp_path):
    # torch has no lerp or add in fp8: held as it is, the first merge failed with a NotImplementedError
    a = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in _tensors(models["a32"]).items()}
    save_file(a, tmp_path / "a8.safetensors")
    out = Merger(tmp_path / "a8.safetensors", models["b"], None, _config()).merge(BlockWeights.uniform(SD_BLOCKS, 0.5))
    key = "model.diffusion_model.out.2.weight"
    assert out[key].dtype == torch.float16
    expected = (a[key].float() + _tensors(models["b"])[key].float()) / 2
    assert torch.allclose(out[key].float(), expected, atol=1e-3)


def test_a_merge_saved_in_more_precision_than_model_a_while_b_has_it_is_said_to_hold_model_as(models, caplog):
    # made in A's fp16, an fp32 file of an fp32 B holds fp16's precision in twice the bytes, unsaid
    caplog.set_level(logging.WARNING, logger="bayes_merger")

    def warned(a, b, load_dtype=None, **saved) -> list[str]:
        caplog.clear()
        config = _config(load_dtype=load_dtype)
        warn_of_lost_precision(inspect_inputs(models[a], models[b], None, config), load_dtype, saved)
        return [r.getMessage() for r in caplog.records]

    said = warned("a", "b32", **{"merge.dtype": "fp16", "best_precision": "fp32"})
    assert len(said) == 1 and "made in fp16" in said[0] and "model B is fp32" in said[0], said
    assert "best_precision" in said[0] and "merge.dtype" not in said[0] and "merge.load_dtype=fp32" in said[0]
    assert "merge.dtype" in warned("a", "b32", **{"merge.dtype": "fp32", "best_precision": "16"})[0]
    assert warned("a", "b32", **{"merge.dtype": "fp16", "best_precision": "16"}) == []  # nothing saved finer
    assert warned("a", "b", **{"merge.dtype": "fp32", "best_precision": "fp32"}) == []  # B has no more to keep
    assert warned("a", "b32", "fp32", **{"merge.dtype": "fp32", "best_precision": "fp32"}) == []  # made in fp32
    assert warned("a32", "b", **{"merge.dtype": "fp32", "best_precision": "fp32"}) == []


def test_load_dtype_sets_the_precision_models_are_held_in(models):
    merger = Merger(models["a32"], models["b"], None, _config(load_dtype="fp16"))
    out = merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.5))
    assert out["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert out[POSITION_IDS].dtype == torch.int64


# ------------------------------------------------------------------------------ checks before work


def test_different_architectures_are_refused_before_any_tensor_is_read(models, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("tensors were loaded before the architectures were compared")

    monkeypatch.setattr(merger_module, "load_state_dict", no_loading)
    with pytest.raises(CheckpointError, match=r"different architectures .*a\.safetensors\) is SD1, model B \(.*xl_b\.safetensors\) is SDXL"):
        Merger(models["a"], models["xl_b"], None, _config())
    with pytest.raises(CheckpointError, match=r"is SD1, model C \(.*sd2\.safetensors\) is SD2"):
        Merger(models["a"], models["b"], models["sd2"], _config(method="add_difference"))


def test_unknown_method_is_refused_with_the_closest_name(models):
    with pytest.raises(ConfigError, match="Unknown merge method 'weighted_summ'; did you mean 'weighted_sum'"):
        Merger(models["a"], models["b"], None, _config(method="weighted_summ"))


def test_method_needing_model_c_without_one_is_refused(models):
    with pytest.raises(ConfigError, match="'add_difference' needs model C"):
        Merger(models["a"], models["b"], None, _config(method="add_difference"))


def test_missing_model_file_is_named(models, tmp_path):
    with pytest.raises(CheckpointError, match=r"Checkpoint .*gone\.safetensors does not exist"):
        Merger(models["a"], tmp_path / "gone.safetensors", None, _config())


def test_a_state_dict_without_stable_diffusion_keys_is_not_a_checkpoint(models, tmp_path):
    save_file({"lora_unet_down.weight": torch.ones(2, 2)}, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match=r"lora\.safetensors: not a Stable Diffusion checkpoint"):
        Merger(models["a"], tmp_path / "lora.safetensors", None, _config())


def test_weights_for_another_layout_are_refused(models):
    merger = Merger(models["a"], models["b"], None, _config())
    with pytest.raises(MergeError, match=r"SDXL layout \(20 blocks\), but the models are SD1 \(26 blocks\)"):
        merger.merge(BlockWeights.uniform(SDXL_BLOCKS, 0.5))


def test_method_needing_beta_without_beta_is_refused(models):
    merger = Merger(models["a"], models["b"], None, _config(method="weighted_subtraction"))
    with pytest.raises(MergeError, match="'weighted_subtraction' needs beta weights"):
        merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.5))


def test_unknown_device_is_a_config_error():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="Unknown merge device 'gpu0'"):
        resolve_device("gpu0", "merge device")


def test_a_gpu_index_past_the_machines_gpus_is_a_config_error(monkeypatch):
    # it was a raw torch RuntimeError when the models loaded, after the models' sha256
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1", "merge device") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"Merge device 'cuda:2' asked for, but torch sees 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2", "merge device")


def test_unknown_save_precision_is_refused_before_loading_naming_its_setting(models):
    with pytest.raises(ConfigError, match=r"^merge.dtype is 'fp12', which is not a precision; use fp16, bf16 or fp32.$"):
        Merger(models["a"], models["b"], None, _config(dtype="fp12"))
    with pytest.raises(ConfigError, match=r"^merge.load_dtype is 'fp64', which is not a precision"):
        Merger(models["a"], models["b"], None, _config(load_dtype="fp64"))


# --------------------------------------------------------------------------------------------- save


def test_save_writes_the_last_merge_with_its_recipe(models, tmp_path):
    merger = Merger(models["a"], models["b"], None, _config())
    weights = _per_block_weights()
    out = merger.merge(weights)
    path = merger.save(tmp_path / "merged.safetensors", metadata={"trial": "3"})
    saved = load_file(path)
    assert torch.equal(saved["model.diffusion_model.out.2.weight"], out["model.diffusion_model.out.2.weight"])
    assert not any(k.startswith("model_ema") for k in saved) and "betas" not in saved  # pruned by default
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["merge_method"] == "weighted_sum"
    assert meta["model_a"] == "a.safetensors" and meta["model_b"] == "b.safetensors"
    assert meta["model_a_sha256"] == hashlib.sha256(models["a"].read_bytes()).hexdigest()
    assert BlockWeights.from_strings(SD_BLOCKS, meta["alpha"]) == weights
    assert "beta" not in meta
    assert meta["bayes_merger_version"] == bayes_merger.__version__
    assert meta["trial"] == "3" and meta["architecture"] == "SD1"


def _vpred_sdxl(path: Path, seed: int) -> Path:
    tensors = make_state_dict("sdxl", seed=seed)
    tensors["v_pred"] = torch.zeros(0, dtype=torch.int64)
    tensors["ztsnr"] = torch.zeros(0, dtype=torch.int64)
    save_file(tensors, path)
    return path


def test_a_pruned_merge_of_v_prediction_models_keeps_their_markers(tmp_path, caplog):
    a, b = _vpred_sdxl(tmp_path / "a.safetensors", 21), _vpred_sdxl(tmp_path / "b.safetensors", 22)
    merger = Merger(a, b, None, _config(prune=True))
    merger.merge(BlockWeights.uniform(SDXL_BLOCKS, 0.5))
    saved = load_file(merger.save(tmp_path / "m.safetensors"))
    # renderers tell v-prediction from these keys alone: without them the merge renders as an eps model
    assert "v_pred" in saved and "ztsnr" in saved
    assert "prediction-type markers" not in caplog.text


def test_merging_a_v_prediction_model_into_an_eps_model_warns_that_a_decides(models, tmp_path, caplog):
    b = _vpred_sdxl(tmp_path / "b.safetensors", 23)
    with caplog.at_level("WARNING"):
        merger = Merger(models["xl_a"], b, None, _config())
    assert "Model B" in caplog.text and "v_pred, ztsnr" in caplog.text and "model A's kind of model" in caplog.text
    merger.merge(BlockWeights.uniform(SDXL_BLOCKS, 0.5))
    assert "v_pred" not in load_file(merger.save(tmp_path / "m.safetensors"))  # A's (none), as the warning says


def test_save_precision_and_prune_can_be_chosen_per_save(models, tmp_path):
    merger = Merger(models["a"], models["b"], None, _config(prune=False))
    merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.5))
    saved = load_file(merger.save(tmp_path / "m.safetensors", dtype="fp32", prune=False))
    assert saved["model.diffusion_model.out.2.weight"].dtype == torch.float32
    assert saved[POSITION_IDS].dtype == torch.int64
    assert "model_ema.decay" in saved and "betas" in saved


def test_recipe_records_beta_and_model_c_when_the_method_uses_them(models):
    merger = Merger(models["a"], models["b"], models["c"], _config(method="triple_sum"))
    merger.merge(BlockWeights.uniform(SD_BLOCKS, 0.3, 0.2))
    recipe = merger.recipe()
    assert recipe["model_c"] == "c.safetensors" and len(recipe["model_c_sha256"]) == 64
    assert recipe["beta"] == ",".join(["0.2"] * 26)


def test_model_hashes_are_computed_once(models, tmp_path, monkeypatch):
    calls = []
    real = merger_module.checkpoint_sha256
    monkeypatch.setattr(merger_module, "checkpoint_sha256", lambda p: calls.append(p) or real(p))
    merger = Merger(models["a"], models["b"], None, _config())
    assert calls == []  # lazily: not at load
    for alpha in (0.1, 0.2):
        merger.merge(BlockWeights.uniform(SD_BLOCKS, alpha))
        merger.save(tmp_path / f"m{alpha}.safetensors")
    assert len(calls) == 2


def test_saving_before_any_merge_is_refused(models, tmp_path):
    merger = Merger(models["a"], models["b"], None, _config())
    with pytest.raises(MergeError, match="merge\\(\\) has not been called"):
        merger.save(tmp_path / "m.safetensors")


def test_a_ckpt_model_merges_like_its_safetensors_twin(models, tmp_path):
    ckpt = tmp_path / "b.ckpt"
    torch.save({"state_dict": _tensors(models["b"])}, ckpt)
    weights = _per_block_weights()
    from_ckpt = Merger(models["a"], ckpt, None, _config()).merge(weights)
    from_st = Merger(models["a"], models["b"], None, _config()).merge(weights)
    assert all(torch.equal(from_ckpt[k], t) for k, t in from_st.items())


def test_factory_state_dict_is_what_the_factory_file_holds(tmp_path):
    path = make_checkpoint(tmp_path / "x.safetensors", "sdxl", seed=11)
    loaded = load_file(path)
    expected = make_state_dict("sdxl", seed=11)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], t) for k, t in expected.items())
