"""Head weights: pinned download, sha256, cache, .pth → safetensors, layouts, the golden values."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bayes_merger.errors import ScorerError
from bayes_merger.scoring import weights
from bayes_merger.scoring.aesthetic import pinned_head_module
from bayes_merger.scoring.heads import AestheticHead
from bayes_merger.scoring.weights import (
    CHAD_HEAD,
    LAION_HEAD,
    converted_from,
    default_cache_dir,
    file_sha256,
    load_head_file,
    pinned_head,
)

GOLDEN_EMBEDDING = torch.ones(1, 768) / math.sqrt(768)
LAION_GOLDEN = 4.883285
CHAD_GOLDEN = 4.235349


def _golden(path: Path) -> float:
    head = AestheticHead.from_state_dict(load_head_file(path))
    with torch.inference_mode():
        return float(head(GOLDEN_EMBEDDING)[0])


def _served(source: weights.HeadSource, server_url: str) -> weights.HeadSource:
    return dataclasses.replace(source, url=server_url)


def test_laion_head_downloads_checks_converts_and_reproduces_the_golden_value(
    laion_pth: Path, tmp_path: Path, file_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    cache = tmp_path / "cache"
    with file_server(laion_pth.parent) as server:
        cached = pinned_head(_served(LAION_HEAD, server.url(LAION_HEAD.filename)), cache)
        assert server.requests == 1
    assert cached == cache / "sac+logos+ava1-l14-linearMSE.safetensors"
    assert converted_from(cached) == LAION_HEAD.sha256
    # Only the converted file and its record are kept: no pickle, no partial download left in the cache.
    assert sorted(p.name for p in cache.iterdir()) == [cached.name, cached.name + ".sha256"]
    assert (cache / (cached.name + ".sha256")).read_text().split()[0] == file_sha256(cached)
    head = AestheticHead.from_state_dict(load_head_file(cached))
    assert head.layout == "laion-mlp"
    assert sum(p.numel() for p in head.parameters()) == 927_969
    assert _golden(cached) == pytest.approx(LAION_GOLDEN, abs=1e-4)


def test_chad_head_reproduces_its_golden_value_through_the_same_loader(
    chad_pth: Path, tmp_path: Path, file_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with file_server(chad_pth.parent) as server:
        cached = pinned_head(_served(CHAD_HEAD, server.url(CHAD_HEAD.filename)), tmp_path)
    assert _golden(cached) == pytest.approx(CHAD_GOLDEN, abs=1e-4)


def test_the_pth_and_its_safetensors_conversion_give_the_same_head(laion_pth: Path, tmp_path: Path) -> None:
    shutil.copy(laion_pth, tmp_path / LAION_HEAD.filename)
    cached = pinned_head(LAION_HEAD, tmp_path)
    original, converted = load_head_file(laion_pth), load_head_file(cached)
    assert original.keys() == converted.keys()
    assert all(torch.equal(original[k], converted[k]) for k in original)


def test_a_cached_head_is_used_without_any_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _random_pinned_source(tmp_path)
    weights._store(source, tmp_path / "src" / source.filename, tmp_path / source.cached_name, source.sha256)
    (tmp_path / (source.cached_name + ".sha256")).unlink()  # as an earlier bayes-merger cached it: no record
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_download(url: str, dest: Path) -> None:
        raise AssertionError("downloaded although the head is cached")

    assert pinned_head(source, tmp_path, download=no_download) == tmp_path / source.cached_name
    # cached with no record of its own bytes (an earlier bayes-merger): recorded now, checked from now on
    record = tmp_path / (source.cached_name + ".sha256")
    assert record.read_text().split()[0] == file_sha256(tmp_path / source.cached_name)


def test_a_pth_put_in_the_cache_by_hand_is_checked_and_converted_offline(tmp_path: Path) -> None:
    source = _random_pinned_source(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(tmp_path / "src" / source.filename, cache / source.filename)
    cached = pinned_head(source, cache)  # HF_HUB_OFFLINE=1 here: no download is possible
    assert converted_from(cached) == source.sha256


def test_a_download_with_the_wrong_sha256_is_refused_and_not_kept(
    tmp_path: Path, file_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"weight": torch.ones(1, 768)}, served / LAION_HEAD.filename)  # a different file
    cache = tmp_path / "cache"
    with file_server(served) as server:
        with pytest.raises(ScorerError, match=f"must have sha256 {LAION_HEAD.sha256}.*not used"):
            pinned_head(_served(LAION_HEAD, server.url(LAION_HEAD.filename)), cache)
    assert list(cache.iterdir()) == []


def test_a_pth_put_in_the_cache_with_the_wrong_sha256_is_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.ones(1, 768)}, tmp_path / CHAD_HEAD.filename)
    with pytest.raises(ScorerError, match="sha256"):
        pinned_head(CHAD_HEAD, tmp_path)
    assert not (tmp_path / CHAD_HEAD.cached_name).exists()


def test_missing_head_offline_says_what_to_download_and_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ScorerError) as error:
        pinned_head(LAION_HEAD, tmp_path / "cache")
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message
    assert LAION_HEAD.url in message
    assert LAION_HEAD.sha256 in message
    assert str(tmp_path / "cache" / "sac+logos+ava1-l14-linearMSE.pth") in message
    assert "scorer.head" in message


def test_missing_head_without_network_says_what_to_download(
    tmp_path: Path, closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ScorerError, match="download failed") as error:
        pinned_head(_served(CHAD_HEAD, closed_port_url), tmp_path)
    assert str(tmp_path / "chadscorer.pth") in str(error.value)
    assert not any(tmp_path.iterdir())  # the partial file is gone


def test_a_cached_file_from_another_source_is_fetched_again(tmp_path: Path) -> None:
    source = _random_pinned_source(tmp_path)
    save_file({"weight": torch.ones(1, 768)}, str(tmp_path / source.cached_name))  # not ours
    shutil.copy(tmp_path / "src" / source.filename, tmp_path / source.filename)
    cached = pinned_head(source, tmp_path)
    assert converted_from(cached) == source.sha256


CHANGED = "has changed since bayes-merger cached it .*so it was not used: delete it to fetch it again"


def _flip_last_byte(path: Path) -> None:
    """Change one byte of the tensor data: the file still loads, its metadata is still ours."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_cached_head_whose_bytes_changed_after_caching_is_refused(tmp_path: Path) -> None:
    source = _random_pinned_source(tmp_path)
    shutil.copy(tmp_path / "src" / source.filename, tmp_path / source.filename)
    cached = pinned_head(source, tmp_path)  # checked against the pin, converted, its own sha256 recorded
    assert pinned_head(source, tmp_path) == cached
    _flip_last_byte(cached)
    assert converted_from(cached) == source.sha256  # the metadata alone cannot tell
    with pytest.raises(ScorerError, match=CHANGED) as error:
        pinned_head(source, tmp_path)
    assert str(cached) in str(error.value)


def test_an_unpinned_published_safetensors_changed_in_the_cache_is_refused_until_deleted(tmp_path: Path) -> None:
    # like PickScore: no pin, kept as it is, trusted on first use and recorded
    source = weights.HeadSource("st", "random safetensors model", "http://127.0.0.1:9/none", None, "model.safetensors")
    cached = tmp_path / source.filename
    save_file({"weight": torch.ones(1, 768)}, str(cached))
    assert pinned_head(source, tmp_path) == cached
    _flip_last_byte(cached)
    with pytest.raises(ScorerError, match=CHANGED):
        pinned_head(source, tmp_path)
    cached.unlink()  # what the message says to do
    with pytest.raises(ScorerError, match="HF_HUB_OFFLINE"):
        pinned_head(source, tmp_path)
    save_file({"weight": torch.zeros(1, 768)}, str(cached))  # a good copy put there by hand
    assert pinned_head(source, tmp_path) == cached
    assert converted_from(cached) == file_sha256(cached)


def test_a_large_cached_file_is_hashed_again_only_when_its_size_or_mtime_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _random_pinned_source(tmp_path)
    shutil.copy(tmp_path / "src" / source.filename, tmp_path / source.filename)
    cached = pinned_head(source, tmp_path)
    monkeypatch.setattr(weights, "REHASH_LIMIT", 0)  # every file counts as large (GBs, like PickScore)
    real_sha256 = weights.file_sha256
    monkeypatch.setattr(weights, "file_sha256", lambda path: pytest.fail(f"{path} was hashed again"))
    assert pinned_head(source, tmp_path) == cached  # untouched: no hashing
    monkeypatch.setattr(weights, "file_sha256", real_sha256)
    stat = cached.stat()
    _flip_last_byte(cached)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ScorerError, match=CHANGED):
        pinned_head(source, tmp_path)


_STALLED_FETCH = """
import sys, time
from pathlib import Path
from bayes_merger.scoring import weights

def stalled(url, dest):  # a fetch that never finishes; no network is touched
    dest.write_bytes(b"x" * 100_000)
    print(dest, flush=True)
    time.sleep(600)

source = weights.HeadSource("random", "random test head", "http://127.0.0.1:9/none", sys.argv[2], sys.argv[3])
weights.pinned_head(source, Path(sys.argv[1]), download=stalled)
"""


def _start_stalled_fetch(source: weights.HeadSource, cache: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process fetching ``source`` into ``cache``, stopped halfway; returns it and its temporary file."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    process = subprocess.Popen(
        [sys.executable, "-c", _STALLED_FETCH, str(cache), source.sha256, source.filename],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = process.stdout.readline().strip()
    if not line:
        process.kill()
        pytest.fail(f"the stalled fetch did not start: {process.communicate()[1]}")
    part = Path(line)
    assert part.parent == cache and part.name == f".{source.filename}.{process.pid}.tmp"
    return process, part


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "still-downloading"])
def test_a_download_left_by_a_killed_process_is_removed_by_the_next_and_a_live_ones_is_not(
    tmp_path: Path, file_server, monkeypatch: pytest.MonkeyPatch, killed: bool
) -> None:
    source = _random_pinned_source(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    process, part = _start_stalled_fetch(source, cache)
    try:
        if killed:
            os.kill(process.pid, signal.SIGKILL)  # killed mid-download: no finally, no clean-up of its own
            process.communicate()
            assert part.is_file()
        monkeypatch.delenv("HF_HUB_OFFLINE")
        with file_server(tmp_path / "src") as server:
            cached = pinned_head(_served(source, server.url(source.filename)), cache)
        assert converted_from(cached) == source.sha256
        if killed:
            assert sorted(p.name for p in cache.iterdir()) == [cached.name, cached.name + ".sha256"]
        else:
            assert part.is_file() and part.stat().st_size == 100_000  # still there, as its writer left it
            assert process.poll() is None
    finally:
        process.kill()
        process.communicate()


def test_a_local_head_for_laion_must_be_the_published_file(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.ones(1, 768)}, other)
    with pytest.raises(ScorerError, match="use scorer.name: aesthetic_head"):
        pinned_head_module(LAION_HEAD, str(other), cache_dir=str(tmp_path / "cache"))


def test_a_local_copy_of_the_laion_head_is_accepted_as_scorer_head(laion_pth: Path, tmp_path: Path) -> None:
    head = pinned_head_module(LAION_HEAD, str(laion_pth), cache_dir=str(tmp_path / "cache"))
    with torch.inference_mode():
        assert float(head(GOLDEN_EMBEDDING)[0]) == pytest.approx(LAION_GOLDEN, abs=1e-4)


def test_a_single_linear_layer_head_computes_w_dot_e_plus_b(tmp_path: Path) -> None:
    weight, bias = torch.randn(1, 768, generator=torch.Generator().manual_seed(1)), torch.tensor([0.25])
    save_file({"linear.weight": weight, "linear.bias": bias}, str(tmp_path / "linear.safetensors"))
    head = AestheticHead.from_state_dict(load_head_file(tmp_path / "linear.safetensors"))
    embedding = torch.randn(3, 768, generator=torch.Generator().manual_seed(2))
    assert head.layout == "linear"
    with torch.inference_mode():
        assert torch.allclose(head(embedding), embedding @ weight[0] + 0.25, atol=1e-5)


def test_a_head_with_an_unknown_layout_is_refused_naming_its_keys() -> None:
    tensors = {"fc1.weight": torch.zeros(16, 768), "fc2.weight": torch.zeros(1, 16)}
    with pytest.raises(ScorerError, match=r"keys found: fc1\.weight \(16, 768\), fc2\.weight \(1, 16\)"):
        AestheticHead.from_state_dict(tensors)


def test_a_laion_layout_whose_layers_do_not_chain_is_refused() -> None:
    shapes = {0: (1024, 768), 2: (128, 1024), 4: (64, 100), 6: (16, 64), 7: (1, 16)}
    tensors = {f"layers.{i}.weight": torch.zeros(s) for i, s in shapes.items()}
    with pytest.raises(ScorerError, match="takes 100 inputs"):
        AestheticHead.from_state_dict(tensors)


def test_a_pth_that_needs_arbitrary_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1, 768), "payload": _Unsafe()}, path)
    with pytest.raises(ScorerError, match="weights_only=True"):
        load_head_file(path)


def test_default_cache_dir_honours_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "bayes-merger"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "bayes-merger"


class _Unsafe:
    pass


def _random_pinned_source(tmp_path: Path) -> weights.HeadSource:
    """A LAION-layout head with random weights, saved as tmp_path/src/random-head.pth, pinned to its hash."""
    generator = torch.Generator().manual_seed(0)
    shapes = {0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    tensors = {}
    for i, (out_dim, in_dim) in shapes.items():
        tensors[f"layers.{i}.weight"] = torch.randn(out_dim, in_dim, generator=generator) / in_dim**0.5
        tensors[f"layers.{i}.bias"] = torch.zeros(out_dim)
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "random-head.pth"
    torch.save(tensors, path)
    return weights.HeadSource("random", "random test head", "http://127.0.0.1:9/none", file_sha256(path), path.name)
