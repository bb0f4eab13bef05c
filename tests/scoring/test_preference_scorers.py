"""PickScore, HPS v2.1 and aesthetic v2.5 through their real loaders, on tiny random models of their
real classes and key layouts; the common scale of ensembles."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ScorerError
from bayes_merger.files import file_sha256
from bayes_merger.scoring import ImageContext, build_scorer, weights
from bayes_merger.scoring.ensemble import EnsembleScorer
from bayes_merger.scoring.heads import AestheticHead
from bayes_merger.scoring.preference import PadToSquare, open_clip_to_transformers
from bayes_merger.scoring.prompt_text import plain_prompt
from bayes_merger.scoring.scales import scale_of
from bayes_merger.testing.tiny_scorers import (
    make_tiny_siglip,
    make_tiny_tokenizer,
    tiny_clip_h,
    tiny_v25_head,
    to_open_clip,
)

PROMPTS = ["a red cat on a sofa", "a castle at dusk, oil painting", "portrait of an old man"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def clip_h() -> torch.nn.Module:
    return tiny_clip_h(seed=3)


def _images(n: int = 3, size: tuple[int, int] = (64, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _contexts(prompts: list[str]) -> list[ImageContext]:
    return [ImageContext(payload="p", index=i, seed=i, prompt=prompt) for i, prompt in enumerate(prompts)]


def _pinned(monkeypatch: pytest.MonkeyPatch, attribute: str, path: Path, digest: str | None) -> None:
    source = dataclasses.replace(getattr(weights, attribute), sha256=digest)
    monkeypatch.setattr(weights, attribute, source)
    assert path.name == source.filename


def _reference(model: torch.nn.Module, tokenizer_dir: Path, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Cosine of the projected embeddings, computed with CLIPModel's own feature methods."""
    from transformers import CLIPTokenizer

    tokens = CLIPTokenizer.from_pretrained(str(tokenizer_dir))(prompts, padding="max_length", max_length=77,
                                                               truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    return torch.nn.functional.cosine_similarity(image, text, dim=-1)


def test_pickscore_is_logit_scale_times_the_cosine_of_image_and_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_h: torch.nn.Module, tokenizer_dir: Path
) -> None:
    path = tmp_path / weights.PICKSCORE.filename
    save_file({k: v.contiguous() for k, v in clip_h.state_dict().items()}, str(path))
    _pinned(monkeypatch, "PICKSCORE", path, file_sha256(path))
    config = ScorerConfig(name="pickscore", cache_dir=str(tmp_path), tokenizer=str(tokenizer_dir), device="cpu")
    scorer = build_scorer(config)
    images = _images()
    scores = scorer.score(images, _contexts(PROMPTS))
    pixels = torch.from_numpy(np.stack([scorer.preprocessing(image) for image in images]))
    expected = clip_h.logit_scale.exp() * _reference(clip_h, tokenizer_dir, pixels, PROMPTS)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)


def test_hpsv2_reads_the_open_clip_file_and_scores_the_plain_cosine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_h: torch.nn.Module, tokenizer_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / weights.HPS_V21.filename
    torch.save({"epoch": 1, "state_dict": to_open_clip(clip_h)}, path)
    digest = file_sha256(path)
    _pinned(monkeypatch, "HPS_V21", path, None)  # not pinned: trusted once, digest printed and recorded
    config = ScorerConfig(name="hpsv2", cache_dir=str(tmp_path), tokenizer=str(tokenizer_dir), device="cpu")
    with caplog.at_level(logging.WARNING):
        scorer = build_scorer(config)
    assert digest in caplog.text and "no pinned sha256" in caplog.text
    assert weights.converted_from(tmp_path / weights.HPS_V21.cached_name) == digest
    images = _images(size=(80, 48))
    scores = scorer.score(images, _contexts(PROMPTS))
    pixels = torch.from_numpy(np.stack([PadToSquare(56)(image) for image in images]))
    assert scores == pytest.approx(_reference(clip_h, tokenizer_dir, pixels, PROMPTS).tolist(), abs=1e-4)

    path.unlink()  # offline, from the cache alone
    assert build_scorer(config).score(images, _contexts(PROMPTS)) == pytest.approx(scores, abs=1e-6)


def test_open_clip_keys_map_back_to_every_clipmodel_tensor(clip_h: torch.nn.Module) -> None:
    converted = open_clip_to_transformers(to_open_clip(clip_h))
    state = {k: v for k, v in clip_h.state_dict().items() if not k.endswith("position_ids")}
    assert converted.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)


def test_prompt_scorers_batch_like_one_by_one_and_depend_on_the_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_h: torch.nn.Module, tokenizer_dir: Path
) -> None:
    path = tmp_path / weights.PICKSCORE.filename
    save_file({k: v.contiguous() for k, v in clip_h.state_dict().items()}, str(path))
    _pinned(monkeypatch, "PICKSCORE", path, file_sha256(path))
    config = ScorerConfig(name="pickscore", cache_dir=str(tmp_path), tokenizer=str(tokenizer_dir), device="cpu",
                          batch_size=2)
    scorer = build_scorer(config)
    images, contexts = _images(), _contexts(PROMPTS)
    together = scorer.score(images, contexts)
    alone = [scorer.score([image], [context])[0] for image, context in zip(images, contexts)]
    assert together == pytest.approx(alone, abs=1e-4)
    other = scorer.score(images, _contexts(["a blue dog"] * 3))
    assert all(abs(a - b) > 1e-6 for a, b in zip(together, other))
    with pytest.raises(ScorerError, match="against its prompt"):
        scorer.score(images, None)
    # an image without its prompt (a re-scored PNG whose text was stripped) is not scored against ""
    with pytest.raises(ScorerError, match="but payload 'p' image 1 has none"):
        scorer.score(images, _contexts(["a red cat", "", "a tree"]))
    # the WebUI's markup is not text the image depicts: weights, LoRA tags and BREAK do not reach the tokenizer
    marked = ["(a red cat:1.3) on a [sofa] <lora:detail:0.8>", "a castle at dusk BREAK oil painting",
              "portrait of an ((old man))"]
    assert scorer.score(images, _contexts(marked)) == pytest.approx(
        scorer.score(images, _contexts(["a red cat on a sofa", "a castle at dusk, oil painting",
                                        "portrait of an old man"])), abs=1e-6)
    with pytest.raises(ScorerError, match="image 0 has none"):
        scorer.score(images[:1], _contexts(["<lora:detail:0.8>"]))


@pytest.mark.parametrize("prompt, plain", [
    ("(masterpiece:1.2), [blurry], \\(1girl\\) <lora:detail:0.8> BREAK red hair",
     "masterpiece, blurry, (1girl), red hair"),
    ("a ((red)) cat, (sofa:0.8), <hypernet:h:1>", "a red cat, sofa"),
    ("a [cat:dog:10] on [grass::0.3] under [stars:0.5]", "a dog on under stars"),
    ("time: 10:30 at (night:1.1)", "time: 10:30 at night"),
    ("[a|b] c", "a|b c"),
])
def test_plain_prompt_drops_a1111_markup_as_a1111_parses_it(prompt: str, plain: str) -> None:
    assert plain_prompt(prompt) == plain


def test_a_missing_model_file_offline_names_the_file_and_where_to_put_it(tmp_path: Path, tokenizer_dir: Path) -> None:
    config = ScorerConfig(name="hpsv2", cache_dir=str(tmp_path), tokenizer=str(tokenizer_dir), device="cpu")
    with pytest.raises(ScorerError) as error:
        build_scorer(config)
    message = str(error.value)
    assert weights.HPS_V21.url in message and str(tmp_path / "HPS_v2.1_compressed.pt") in message


def test_a_pinned_file_with_another_digest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_h: torch.nn.Module, tokenizer_dir: Path
) -> None:
    path = tmp_path / weights.PICKSCORE.filename
    save_file({k: v.contiguous() for k, v in clip_h.state_dict().items()}, str(path))
    _pinned(monkeypatch, "PICKSCORE", path, "0" * 64)
    config = ScorerConfig(name="pickscore", cache_dir=str(tmp_path), tokenizer=str(tokenizer_dir), device="cpu")
    with pytest.raises(ScorerError, match="must have sha256 0000"):
        build_scorer(config)


def test_pad_to_square_fits_the_long_side_and_pads_black_evenly() -> None:
    image = Image.new("RGB", (112, 56), (255, 255, 255))
    pixels = PadToSquare(56)(image)
    black = (0 - np.array(PadToSquare().mean)) / np.array(PadToSquare().std)
    white = (1 - np.array(PadToSquare().mean)) / np.array(PadToSquare().std)
    assert pixels.shape == (3, 56, 56)
    np.testing.assert_allclose(pixels[:, 0, 0], black, atol=1e-5)  # top rows: padding
    np.testing.assert_allclose(pixels[:, 28, 28], white, atol=1e-5)  # the image, in the middle rows
    np.testing.assert_allclose(pixels[:, 55, 0], black, atol=1e-5)


# ------------------------------------------------------------------------------ aesthetic v2.5


def test_v25_head_layout_is_recognised_and_computes_the_plain_linear_chain() -> None:
    tensors = tiny_v25_head(width=8, seed=1)
    head = AestheticHead.from_state_dict(tensors)
    assert head.layout == "v2.5-mlp"
    x = torch.nn.functional.normalize(torch.arange(1.0, 9.0), dim=0)
    expected = x
    for index in (0, 2, 4, 6, 8):
        expected = expected @ tensors[f"scoring_head.{index}.weight"].T + tensors[f"scoring_head.{index}.bias"]
    assert float(head(x[None])[0]) == pytest.approx(float(expected[0]), abs=1e-5)


def test_aesthetic_v25_scores_normalised_siglip_pooling_through_the_head_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import SiglipVisionModel

    siglip = make_tiny_siglip(tmp_path / "siglip")
    head_path = tmp_path / weights.AESTHETIC_V25.filename
    torch.save(tiny_v25_head(width=64), head_path)
    _pinned(monkeypatch, "AESTHETIC_V25", head_path, file_sha256(head_path))
    config = ScorerConfig(name="aesthetic_v25", cache_dir=str(tmp_path), siglip=str(siglip), device="cpu", batch_size=2)
    scorer = build_scorer(config)
    images = _images(3, size=(70, 90))
    scores = scorer.score(images)
    assert scores == pytest.approx([scorer.score([image])[0] for image in images], abs=1e-4)

    model = SiglipVisionModel.from_pretrained(str(siglip)).eval()
    pixels = torch.from_numpy(np.stack([np.asarray(image.resize((56, 56), Image.Resampling.BICUBIC), np.float32)
                                        .transpose(2, 0, 1) / 127.5 - 1.0 for image in images]))
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model(pixel_values=pixels).pooler_output, dim=-1)
        expected = AestheticHead.from_state_dict(tiny_v25_head(width=64))(pooled)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)


# ------------------------------------------------------------------------------ ensembles


class _Constant:
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def score(self, images, contexts=None):  # noqa: ANN001, ANN201
        return [self.value] * len(images)


def test_ensemble_members_are_put_on_the_common_scale_by_fixed_maps() -> None:
    assert scale_of("laion").to_common(6.2) == pytest.approx(6.2)
    assert scale_of("pickscore").to_common(22.0) == pytest.approx(6.5)
    assert scale_of("hpsv2").to_common(0.27) == pytest.approx(5.5)
    ensemble = EnsembleScorer([(_Constant("pickscore", 22.0), 1.0), (_Constant("hpsv2", 0.295), 1.0),
                               (_Constant("laion", 5.0), 2.0)])
    assert ensemble.score(_images(2)) == pytest.approx([(6.5 + 6.5 + 2 * 5.0) / 4] * 2)


def test_a_tokenizer_that_is_not_cached_is_one_sentence_offline(monkeypatch):
    from bayes_merger.scoring.preference import load_tokenizer

    # transformers itself answers such a name with an empty 2-token tokenizer that scores every prompt alike
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerError, match=r"The CLIP tokenizer 'bayes-merger-tests/absent' \(scorer.tokenizer\) "
                                          r"is not in the Hugging Face cache and downloads are off"):
        load_tokenizer("bayes-merger-tests/absent")


def test_a_tiny_tokenizer_folder_loads(tokenizer_dir):
    from bayes_merger.scoring.preference import load_tokenizer

    assert len(load_tokenizer(str(tokenizer_dir))) > 2

