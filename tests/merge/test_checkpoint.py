"""Loading (safetensors, weights-only pickles, key aliases, bad files) and the streaming safetensors writer."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bayes_merger.errors import CheckpointError, ConfigError
from bayes_merger.merge.checkpoint import (
    canonical_key,
    checkpoint_sha256,
    load_state_dict,
    read_tensor_info,
    save_state_dict,
)
from bayes_merger.merge.safetensors_file import write_safetensors
from bayes_merger.testing.models import make_checkpoint, make_state_dict

DATA = Path(__file__).resolve().parents[1] / "data" / "architectures"  # real key names and shapes (no weights)


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd1.safetensors", seed=1, ema=True)


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, t in expected.items():
        assert got[key].dtype == t.dtype, key
        assert torch.equal(got[key], t), key


# ------------------------------------------------------------------------------------------ aliases


def test_every_alias_of_the_real_key_lists_normalises_to_its_key():
    found = 0
    for name in ("sd1-ldm.json", "sdxl-sgm.json"):
        for component in json.loads((DATA / name).read_text())["components"].values():
            for key, meta in component.items():
                assert canonical_key(key) == key
                for alias in meta.get("aliases", []):
                    assert canonical_key(alias) == key
                    found += 1
    assert found == 197 + 686  # the CLIP-L keys without text_model, the EMA keys without diffusion_model


def test_old_clip_and_ema_names_normalise_without_the_data_files():
    assert (
        canonical_key("cond_stage_model.transformer.encoder.layers.3.mlp.fc1.bias")
        == "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.bias"
    )
    assert canonical_key("model_ema.output_blocks91norm3weight") == "model_ema.diffusion_modeloutput_blocks91norm3weight"
    assert canonical_key("model_ema.decay") == "model_ema.decay"
    assert canonical_key("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias").startswith("conditioner.")


def test_checkpoint_with_old_key_names_loads_under_the_current_names(tmp_path):
    old = make_checkpoint(tmp_path / "old.safetensors", seed=3, ema=True, legacy_keys=True)
    with safe_open(old, "pt") as f:
        assert "cond_stage_model.transformer.final_layer_norm.weight" in f.keys()
    _assert_same(load_state_dict(old), make_state_dict(seed=3, ema=True))


def test_when_a_file_holds_a_key_under_both_names_the_current_name_wins(tmp_path):
    new = "cond_stage_model.transformer.text_model.final_layer_norm.bias"
    old = "cond_stage_model.transformer.final_layer_norm.bias"
    for order in ((old, new), (new, old)):
        tensors = {name: torch.full((2,), 1.0 if name == new else 2.0) for name in order}
        save_file(tensors, tmp_path / "both.safetensors")
        loaded = load_state_dict(tmp_path / "both.safetensors")
        assert list(loaded) == [new] and torch.equal(loaded[new], torch.ones(2))


# ------------------------------------------------------------------------------------------ loading


def test_safetensors_load_returns_every_tensor_with_its_dtype(tiny_sd1):
    loaded = load_state_dict(tiny_sd1)
    _assert_same(loaded, make_state_dict(seed=1, ema=True))
    assert loaded["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert loaded["betas"].dtype == torch.float32
    assert loaded["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_header_info_matches_the_tensors_without_reading_them(tiny_sd1):
    info = read_tensor_info(tiny_sd1)
    loaded = load_state_dict(tiny_sd1)
    assert {k: (v.shape, v.dtype) for k, v in info.items()} == {k: (tuple(t.shape), t.dtype) for k, t in loaded.items()}


def test_load_can_restrict_keys_and_convert_floats_only(tiny_sd1):
    keys = {"model.diffusion_model.out.2.weight", "cond_stage_model.transformer.text_model.embeddings.position_ids"}
    loaded = load_state_dict(tiny_sd1, keys=keys, dtypes={k: torch.float32 for k in keys})
    assert loaded.keys() == keys
    assert loaded["model.diffusion_model.out.2.weight"].dtype == torch.float32
    assert loaded["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped_in_state_dict", "bare"])
def test_ckpt_loads_through_the_weights_only_loader(tmp_path, wrap):
    path = make_checkpoint(tmp_path / "m.ckpt", seed=5, wrap=wrap)
    _assert_same(load_state_dict(path), make_state_dict(seed=5))


def test_legacy_non_zip_pickle_loads(tmp_path):
    state = make_state_dict(seed=6)
    torch.save({"state_dict": state, "global_step": 10}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(tmp_path / "old.ckpt"), state)


class _Payload:
    """An object whose unpickling would create a file: proof that nothing in a pickle is executed."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_needs_more_than_tensors_is_refused_and_never_executed(tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "executed"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": payload}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil\.ckpt contains Python objects .* convert it to \.safetensors"):
        load_state_dict(tmp_path / "evil.ckpt")
    assert not payload.marker.exists()


# ---------------------------------------------------------------------------------------- bad files


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"Checkpoint .*nope\.safetensors does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"dir\.safetensors is a directory"):
        read_tensor_info(tmp_path / "dir.safetensors")


def test_truncated_safetensors_is_reported_as_truncated_or_corrupt(tiny_sd1, tmp_path):
    data = tiny_sd1.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is not a readable safetensors file \(truncated or corrupt"):
        load_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"head\.safetensors .*truncated or corrupt"):
        read_tensor_info(tmp_path / "head.safetensors")


def test_a_header_whose_offsets_do_not_tile_the_data_is_refused(tmp_path):
    save_file({"a": torch.ones(4), "b": torch.ones(2)}, tmp_path / "ok.safetensors")
    data = bytearray((tmp_path / "ok.safetensors").read_bytes())
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    header["b"]["data_offsets"] = [header["b"]["data_offsets"][0], header["b"]["data_offsets"][1] + 4]
    text = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is not a readable safetensors file .*tensor 'b' takes 12 bytes"):
        read_tensor_info(tmp_path / "bad.safetensors")


def test_loaded_tensors_are_owned_not_backed_by_the_file(tmp_path):
    path = make_checkpoint(tmp_path / "m.safetensors", seed=4)
    loaded = load_state_dict(path)
    before = loaded["model.diffusion_model.out.2.weight"].clone()
    data_start = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    with path.open("r+b") as f:  # overwrite every tensor's bytes in place
        f.seek(data_start)
        f.write(bytes(path.stat().st_size - data_start))
    assert not load_state_dict(path)["model.diffusion_model.out.2.weight"].any()
    assert torch.equal(loaded["model.diffusion_model.out.2.weight"], before)


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 4


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("photo.safetensors", JPEG, r"photo\.safetensors is not a readable safetensors file"),
        ("photo.ckpt", JPEG, r"photo\.ckpt is not a checkpoint"),
        ("notes.pt", b"hello, I am text\n", r"notes\.pt is not a checkpoint"),
        ("photo.jpg", JPEG, r"photo\.jpg is not a checkpoint \(expected a \.safetensors"),
        ("empty.safetensors", b"", r"empty\.safetensors is not a readable safetensors file"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(tmp_path / name)


def test_corrupt_torch_zip_is_reported(tmp_path):
    path = make_checkpoint(tmp_path / "m.ckpt", seed=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.ckpt is not a readable checkpoint \(truncated or corrupt"):
        load_state_dict(path)


def test_pickle_without_tensors_is_not_a_checkpoint(tmp_path):
    torch.save({"epoch": 3, "note": "hi"}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match=r"opt\.pt is not a checkpoint: it holds no tensors"):
        load_state_dict(tmp_path / "opt.pt")


# ------------------------------------------------------------------------------------------- saving


def test_saved_file_reads_back_with_safetensors_own_loader(tmp_path):
    tensors = {
        "model.diffusion_model.a": torch.randn(3, 4, dtype=torch.float16),
        "b.bf16": torch.randn(5, dtype=torch.bfloat16),
        "c.scalar": torch.tensor(2.5),
        "d.empty": torch.zeros(0, dtype=torch.int64),
        "e.ids": torch.arange(77).reshape(1, 77),
        "f.transposed": torch.randn(4, 6).t(),  # not contiguous
        "g.bool": torch.tensor([True, False, True]),
        "h.int32": torch.tensor(7, dtype=torch.int32),
    }
    path = save_state_dict(tensors, tmp_path / "out.safetensors", {"note": "hello"})
    _assert_same(load_file(path), tensors)
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"note": "hello"}
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert (8 + header_length) % 8 == 0  # data 8-byte aligned, as safetensors writes it


def test_saved_tensors_equal_safetensors_save_file(tmp_path):
    tensors = make_state_dict(seed=2)
    ours = save_state_dict(tensors, tmp_path / "ours.safetensors")
    save_file(tensors, tmp_path / "theirs.safetensors")
    _assert_same(load_file(ours), load_file(tmp_path / "theirs.safetensors"))
    assert ours.stat().st_size == pytest.approx((tmp_path / "theirs.safetensors").stat().st_size, abs=8 * 1024)


@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_save_precision_converts_float_tensors_only(tmp_path, name, dtype):
    tensors = make_state_dict(seed=2, dtype=torch.float32)
    loaded = load_file(save_state_dict(tensors, tmp_path / "p.safetensors", dtype=name))
    assert loaded["model.diffusion_model.out.2.weight"].dtype == dtype
    assert loaded["betas"].dtype == dtype
    ids = loaded["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77).reshape(1, 77))
    assert torch.equal(loaded["first_stage_model.quant_conv.weight"], tensors["first_stage_model.quant_conv.weight"].to(dtype))


def test_unknown_save_precision_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="Unknown precision 'fp8'"):
        save_state_dict({"a": torch.ones(1)}, tmp_path / "x.safetensors", dtype="fp8")


def test_prune_keeps_only_unet_vae_and_text_encoder_keys(tmp_path):
    tensors = make_state_dict(seed=2, ema=True)
    tensors["conditioner.embedders.0.x"] = torch.ones(1)
    tensors["lora.extra"] = torch.ones(1)
    markers = {"v_pred": torch.zeros(0, dtype=torch.int64), "ztsnr": torch.zeros(0, dtype=torch.int64),
               "edm_vpred.sigma_max": torch.tensor(80.0), "edm_mean": torch.zeros(1, 4, 1, 1)}
    tensors.update(markers)
    loaded = load_file(save_state_dict(tensors, tmp_path / "p.safetensors", prune=True))
    assert not any(k.startswith("model_ema") for k in loaded)
    assert "betas" not in loaded and "lora.extra" not in loaded
    assert "conditioner.embedders.0.x" in loaded
    kept = {k for k in tensors if k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))}
    # the markers ComfyUI and Forge read a v-prediction (or EDM) model's kind from
    assert set(loaded) == kept | set(markers)


def test_a_failed_save_leaves_no_file_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_dict({"old": torch.ones(2)}, path)

    def broken(name: str) -> torch.Tensor:
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        write_safetensors(path, [("new", torch.float32, (2,))], broken)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert set(load_file(path)) == {"old"}


def test_a_tensor_that_differs_from_its_announced_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="announced"):
        write_safetensors(tmp_path / "m.safetensors", [("x", torch.float32, (3,))], lambda _: torch.ones(2))
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_sha256_is_the_sha256_of_the_whole_file(tiny_sd1):
    assert checkpoint_sha256(tiny_sd1) == hashlib.sha256(tiny_sd1.read_bytes()).hexdigest()
