"""The CLIP backbone: real loading code on a tiny local CLIP (offline), preprocessing, batching."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.scoring import build_scorer
from bayes_merger.devices import resolve_device
from bayes_merger.scoring.clip import ClipEmbedder
from bayes_merger.testing.tiny_clip import make_tiny_clip

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _by_hand(image: Image.Image, resized: tuple[int, int], left: int, top: int) -> np.ndarray:
    """OpenAI's pipeline with the resize size and crop offsets worked out in the test itself."""
    out = image.convert("RGB").resize(resized, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
    return ((np.asarray(out, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def _fed_to_model(embedder: ClipEmbedder, images: list[Image.Image]) -> torch.Tensor:
    """The pixel_values the vision tower actually receives when the embedder runs."""
    seen: list[torch.Tensor] = []
    hook = embedder.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].clone()), with_kwargs=True
    )
    try:
        embedder.embed(images)
    finally:
        hook.remove()
    return torch.cat(seen)


@pytest.fixture
def embedder(tiny_clip_dir: Path) -> ClipEmbedder:
    return ClipEmbedder.load(str(tiny_clip_dir), device="cpu", batch_size=4)


@pytest.mark.parametrize(
    ("size", "resized", "left", "top"),
    [
        ((512, 512), (224, 224), 0, 0),  # square
        ((300, 200), (336, 224), 56, 0),  # landscape
        ((200, 299), (224, 334), 0, 55),  # portrait: 224·299/200 = 334.88 → 334 (truncated)
        # 224·641/480 = 299.1 → 299; (299 − 224)/2 = 37.5 → 38 (OpenAI/torchvision round, not floor)
        ((641, 480), (299, 224), 38, 0),
    ],
)
def test_preprocessing_matches_openai_clip_on_square_and_non_square_images(
    embedder: ClipEmbedder, make_images, size, resized, left, top
) -> None:
    image = make_images(1, size=size, seed=sum(size))[0]
    fed = _fed_to_model(embedder, [image])
    assert fed.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(fed[0].numpy(), _by_hand(image, resized, left, top), atol=1e-5)


def test_preprocessing_agrees_with_transformers_clip_image_processor(
    embedder: ClipEmbedder, tiny_clip_dir: Path, make_images
) -> None:
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    processor = Processor.from_pretrained(str(tiny_clip_dir))
    images = make_images(2, size=(300, 200)) + [make_images(1, size=(512, 512))[0].convert("RGBA")]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(embedder.pixel_values(images), expected, atol=1e-5)


def test_tiny_clip_loads_through_the_real_loader_offline(embedder: ClipEmbedder, images) -> None:
    embeddings = embedder.embed(images)
    assert embedder.dim == 768
    assert embeddings.shape == (5, 768)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(5), atol=1e-5)  # L2-normalised


def test_a_full_clip_model_folder_loads_only_its_vision_tower(tmp_path: Path, images) -> None:
    folder = make_tiny_clip(tmp_path / "full", full_model=True)
    embedder = ClipEmbedder.load(str(folder), device="cpu")
    assert type(embedder.model).__name__ == "CLIPVisionModelWithProjection"
    assert torch.isfinite(embedder.embed(images)).all()


def test_batches_give_the_same_embeddings_as_one_by_one(tiny_clip_dir: Path, images) -> None:
    one_by_one = ClipEmbedder.load(str(tiny_clip_dir), device="cpu", batch_size=1).embed(images)
    batched = ClipEmbedder.load(str(tiny_clip_dir), device="cpu", batch_size=3).embed(images)
    assert torch.allclose(one_by_one, batched, atol=1e-5)


def test_images_are_run_in_batches_of_batch_size(embedder: ClipEmbedder, make_images) -> None:
    calls: list[int] = []
    hook = embedder.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    embedder.embed(make_images(10))
    hook.remove()
    assert calls == [4, 4, 2]


def test_laion_on_tiny_clip_scores_images_end_to_end(laion_pth: Path, tiny_clip_dir: Path, make_images) -> None:
    config = ScorerConfig(name="laion", clip=str(tiny_clip_dir), head=str(laion_pth), device="cpu", batch_size=2)
    images = make_images(4, size=(160, 120), seed=7)
    first = build_scorer(config).score(images)
    again = build_scorer(config).score(images)  # a second model: nothing cached between them
    one_by_one = build_scorer(dataclasses.replace(config, batch_size=1)).score(images)
    assert len(first) == 4 and all(math.isfinite(s) for s in first)
    assert first == again  # deterministic
    assert len(set(first)) == 4  # different images, different scores
    assert one_by_one == pytest.approx(first, abs=1e-5)


def test_a_head_for_another_embedding_size_is_refused_before_scoring(tiny_clip_dir: Path, tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(1, 1024), "bias": torch.zeros(1)}, str(tmp_path / "vit-h.safetensors"))
    config = ScorerConfig(name="aesthetic_head", clip=str(tiny_clip_dir), head=str(tmp_path / "vit-h.safetensors"))
    with pytest.raises(ScorerError, match="takes 1024-d embeddings but CLIP .* gives 768-d"):
        build_scorer(config)


def test_missing_clip_offline_names_the_id_and_how_to_download_it() -> None:
    from huggingface_hub import constants

    with pytest.raises(ScorerError) as error:
        ClipEmbedder.load("bayes-merger-tests/no-such-clip", device="cpu")
    message = str(error.value)
    assert "'bayes-merger-tests/no-such-clip'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download bayes-merger-tests/no-such-clip" in message
    assert "huggingface-cli download" in message
    assert str(constants.HF_HUB_CACHE) in message


def test_a_clip_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="that folder does not exist"):
        ClipEmbedder.load(str(tmp_path / "nowhere"), device="cpu")


def test_a_folder_without_model_weights_says_which_files_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="needs config.json, model.safetensors"):
        ClipEmbedder.load(str(tmp_path), device="cpu")


def test_a_clip_without_its_image_projection_is_refused(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig.from_pretrained(str(tiny_clip_dir))
    CLIPVisionModel(config).save_pretrained(tmp_path)
    shutil.copy(tiny_clip_dir / "preprocessor_config.json", tmp_path)
    with pytest.raises(ScorerError, match="visual_projection.weight"):
        ClipEmbedder.load(str(tmp_path), device="cpu")


def test_device_auto_is_cpu_without_cuda_and_nonsense_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda", "scorer device")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu-please", "scorer device")


def test_batch_size_below_one_is_a_config_error_before_loading() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        ClipEmbedder.load("nobody/never-loaded", device="cpu", batch_size=0)


@pytest.mark.parametrize("scorer", ["pickscore", "aesthetic_v25"])
def test_every_batching_scorer_refuses_a_batch_size_below_one(scorer: str) -> None:
    from bayes_merger.scoring.aesthetic_v25 import SiglipAestheticScorer
    from bayes_merger.scoring.preference import PromptScorer

    with pytest.raises(ConfigError, match=r"scorer\.batch_size is 0; it must be at least 1"):
        if scorer == "pickscore":
            PromptScorer(scorer, None, None, None, torch.device("cpu"), batch_size=0)
        else:
            SiglipAestheticScorer(None, None, None, torch.device("cpu"), batch_size=0)


def _in_hub_cache(folder: Path, hub: Path, repo_id: str) -> None:
    """``folder``'s files as the Hugging Face cache holds a download of ``repo_id`` at ``main``."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_a_cached_clip_loads_without_asking_the_network(tiny_clip_dir: Path, tmp_path: Path, images,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Downloads on (no HF_HUB_OFFLINE), as for a user whose first run filled the cache: asking the
    # hub first costs tens of seconds of retries per file without a network.
    import socket

    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    _in_hub_cache(tiny_clip_dir, tmp_path / "hub", "bayes-merger-tests/tiny-clip")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked: list[object] = []

    def no_lookup(host: object, *args: object, **kwargs: object) -> None:
        asked.append(host)
        raise socket.gaierror("no network in tests")

    def no_connection(self: socket.socket, address: object) -> None:
        asked.append(address)
        raise ConnectionRefusedError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(socket.socket, "connect", no_connection)
    build_hf_headers()  # huggingface_hub looks its agent registry up once a process: not a model's file
    asked.clear()
    cached = ClipEmbedder.load("bayes-merger-tests/tiny-clip", device="cpu")
    assert asked == []
    local = ClipEmbedder.load(str(tiny_clip_dir), device="cpu")
    assert torch.equal(cached.embed(images), local.embed(images))
