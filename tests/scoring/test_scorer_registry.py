"""build_scorer: names, ensembles, config shapes, and checks made before any model loads."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.scoring import SCORERS, Scorer, build_scorer
from bayes_merger.scoring import clip as clip_module
from bayes_merger.scoring.ensemble import EnsembleScorer
from bayes_merger.scoring.registry import named_scorer, weights_to_fetch
from bayes_merger.scoring.weights import CHAD_HEAD, LAION_HEAD
from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head


class _Constant:
    def __init__(self, name: str, values: list[float]) -> None:
        self.name, self.values = name, values

    def score(self, images, contexts=None) -> list[float]:
        return self.values[: len(images)]


def test_the_registry_lists_every_scorer_by_name() -> None:
    assert set(SCORERS) == {"laion", "chad", "aesthetic_head", "aesthetic_v25", "pickscore", "hpsv2", "manual"}


def test_an_unknown_scorer_name_is_a_config_error_suggesting_the_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'laion'"):
        build_scorer(ScorerConfig(name="lion"))


def test_an_unknown_combine_mode_fails_before_anything_loads() -> None:
    with pytest.raises(ConfigError, match="scorer.combine"):
        build_scorer(ScorerConfig(name="laion", combine="median", clip="nobody/nothing"))


def test_missing_laion_head_offline_fails_before_the_clip_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clip_module.ClipEmbedder, "load", lambda *a, **k: pytest.fail("CLIP loaded first"))
    with pytest.raises(ScorerError, match="save it as .*sac\\+logos\\+ava1-l14-linearMSE.pth"):
        build_scorer(ScorerConfig(name="laion", cache_dir=str(tmp_path)))


def test_aesthetic_head_without_a_head_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs scorer.head"):
        build_scorer(ScorerConfig(name="aesthetic_head"))


def test_aesthetic_head_scores_with_a_user_head_on_tiny_clip(tiny_clip_dir: Path, tmp_path: Path, images) -> None:
    head = tmp_path / "mine.pth"
    torch.save({"weight": torch.full((1, 768), 0.01), "bias": torch.tensor([5.0])}, head)
    scorer = build_scorer(ScorerConfig(name="aesthetic_head", clip=str(tiny_clip_dir), head=str(head), device="cpu"))
    assert isinstance(scorer, Scorer)
    scores = scorer.score(images)
    assert len(scores) == 5 and all(4.0 < s < 6.0 for s in scores)


def test_a_hydra_dictconfig_is_accepted(tmp_path: Path) -> None:
    config = OmegaConf.structured(ScorerConfig(name="manual", manual_ratings=str(tmp_path / "r.json")))
    assert build_scorer(config).name == "manual"


def test_ensemble_is_the_weighted_mean_of_its_members() -> None:
    ensemble = EnsembleScorer([(_Constant("a", [2.0, 4.0]), 3.0), (_Constant("b", [6.0, 8.0]), 1.0)])
    assert ensemble.score([None, None]) == pytest.approx([(3 * 2 + 6) / 4, (3 * 4 + 8) / 4])
    assert ensemble.name == "ensemble(a=3, b=1)"


def test_a_nan_from_one_member_is_not_hidden_by_the_ensemble() -> None:
    ensemble = EnsembleScorer([(_Constant("a", [5.0]), 1.0), (_Constant("b", [float("nan")]), 1.0)])
    assert math.isnan(ensemble.score([None])[0])  # for combine.py to refuse


@pytest.mark.parametrize(
    ("ensemble", "message"),
    [
        ({}, "scorer.ensemble is empty"),
        ({"laion": 1.0, "imagereward": 1.0}, "'imagereward' is not a scorer"),
        ({"laion": 0.0}, "must be a number > 0"),
        ({"ensemble": 1.0}, "cannot contain another ensemble"),
    ],
)
def test_a_bad_ensemble_is_a_config_error(ensemble: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_scorer(ScorerConfig(name="ensemble", ensemble=ensemble))


def test_an_ensemble_without_name_ensemble_is_a_config_error_not_ignored() -> None:
    with pytest.raises(ConfigError, match="set scorer.name: ensemble"):
        build_scorer(ScorerConfig(name="laion", ensemble={"laion": 1.0, "chad": 1.0}))


def test_laion_and_chad_ensemble_shares_one_clip_run_once_per_batch(
    laion_pth: Path, chad_pth: Path, tiny_clip_dir: Path, tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(laion_pth, cache / LAION_HEAD.filename)
    shutil.copy(chad_pth, cache / CHAD_HEAD.filename)
    common = dict(clip=str(tiny_clip_dir), cache_dir=str(cache), device="cpu", batch_size=4)
    images = make_images(3, seed=3)
    laion = build_scorer(ScorerConfig(name="laion", **common)).score(images)
    chad = build_scorer(ScorerConfig(name="chad", **common)).score(images)

    loads: list[str] = []
    real_load = clip_module.ClipEmbedder.load.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(args[0])
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(clip_module.ClipEmbedder, "load", classmethod(counting_load))
    ensemble = build_scorer(ScorerConfig(name="ensemble", ensemble={"laion": 2.0, "chad": 1.0}, **common))
    forwards: list[int] = []
    ensemble.members[0][0].embedder.model.register_forward_pre_hook(lambda m, a, k: forwards.append(1), with_kwargs=True)

    scores = ensemble.score(images)
    assert len(loads) == 1 and len(forwards) == 1
    assert scores == pytest.approx([(2 * l + c) / 3 for l, c in zip(laion, chad)], abs=1e-6)


def test_in_an_ensemble_scorer_head_goes_to_aesthetic_head_and_laion_keeps_its_own(
    laion_pth: Path, tiny_clip_dir: Path, tmp_path: Path, images
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(laion_pth, cache / LAION_HEAD.filename)
    mine = tmp_path / "mine.safetensors"
    save_file({"weight": torch.zeros(1, 768), "bias": torch.tensor([1.0])}, str(mine))
    common = dict(clip=str(tiny_clip_dir), cache_dir=str(cache), device="cpu")
    laion = build_scorer(ScorerConfig(name="laion", **common)).score(images)
    ensemble = build_scorer(
        ScorerConfig(name="ensemble", ensemble={"laion": 1.0, "aesthetic_head": 1.0}, head=str(mine), **common)
    )
    assert ensemble.score(images) == pytest.approx([(s + 1.0) / 2 for s in laion], abs=1e-6)


def test_a_scorer_named_for_finalists_or_a_rescore_does_not_take_the_runs_head_file() -> None:
    # the run's laion with a local copy of its head: chad must download its own, not be refused for the
    # laion file's sha256; the head-file scorer takes any head file, an ensemble gives it to that member only
    run = ScorerConfig(name="laion", head="/models/laion-head.pth")
    assert named_scorer(run, "chad").head is None and named_scorer(run, "aesthetic_v25").head is None
    assert named_scorer(run, "laion").head == "/models/laion-head.pth"
    assert named_scorer(run, "aesthetic_head").head == "/models/laion-head.pth"


def test_the_offline_demo_scorer_needs_neither_network_nor_shared_data(
    tmp_path: Path, make_images
) -> None:
    clip_dir = make_tiny_clip(tmp_path / "clip")
    head = make_tiny_head(tmp_path / "head.safetensors")
    config = ScorerConfig(name="aesthetic_head", clip=str(clip_dir), head=str(head), device="cpu")
    scores = build_scorer(config).score(make_images(4, size=(128, 128)))
    assert all(0.0 < s < 10.0 for s in scores) and len(set(scores)) == 4


def test_default_config_works_offline_once_clip_and_head_are_cached(
    laion_pth: Path, tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Hugging Face cache holding "openai/clip-vit-large-patch14" (the tiny model under that name),
    # laid out as `hf download` leaves it; transformers reads constants.HF_HUB_CACHE when it loads.
    import huggingface_hub.constants

    revision = "0" * 40
    repo = tmp_path / "hf" / "models--openai--clip-vit-large-patch14"
    make_tiny_clip(repo / "snapshots" / revision, full_model=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    (tmp_path / "heads").mkdir()
    shutil.copy(laion_pth, tmp_path / "heads" / LAION_HEAD.filename)

    config = ScorerConfig(cache_dir=str(tmp_path / "heads"), device="cpu")
    assert weights_to_fetch(config) == []  # what the check finds here is what the build loads
    scorer = build_scorer(config)  # HF_HUB_OFFLINE=1
    assert scorer.name == "laion"
    assert all(math.isfinite(s) for s in scorer.score(make_images(2)))


def test_the_named_ensembles_are_those_the_config_groups_compose():
    from bayes_merger.scoring.registry import PRESETS

    for name, members in PRESETS.items():
        group = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "scorer" / f"{name}.yaml")
        assert group.name == "ensemble" and dict(group.ensemble) == dict(members)


def _empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


def _sentence(error: pytest.ExceptionInfo) -> str:
    return str(error.value).rsplit(" (", 1)[0]  # the load's own detail in brackets (the hub's exception) aside


@pytest.mark.parametrize("name, settings", [
    ("laion", {}), ("chad", {}), ("aesthetic_v25", {}), ("pickscore", {}), ("hpsv2", {}),
    ("aesthetic_head", {"clip": "openai/clip-vit-large-patch14"}),  # the head is here, CLIP is not
    ("aesthetic_v25", {"siglip": "google/siglip-so400m-patch14-384"}),  # the same for SigLIP
    ("laion", {"head": "missing.pth"}),
])
def test_weights_to_fetch_refuses_offline_what_the_build_refuses_with_its_sentence(
    name: str, settings: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downloads off, nothing cached: the check finds, without loading anything, the weight the build stops at."""
    _empty_hub_cache(tmp_path, monkeypatch)
    head = str(make_tiny_head(tmp_path / "head.safetensors")) if "clip" in settings or "siglip" in settings else None
    settings = {"head": head, **settings}
    if settings["head"] == "missing.pth":
        settings["head"] = str(tmp_path / "missing.pth")
    config = ScorerConfig(name=name, cache_dir=str(tmp_path / "heads"), device="cpu", **settings)
    with pytest.raises(ScorerError) as checked:
        weights_to_fetch(config)
    with pytest.raises(ScorerError) as built:
        build_scorer(config)
    assert _sentence(checked) == _sentence(built)


def _cached(hub: Path, repo_id: str, *files: str) -> None:
    """``files`` of ``repo_id`` as the Hugging Face cache holds them at ``main`` (a download cut halfway holds some)."""
    snapshot = hub / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        (snapshot / name).write_text("{}")
    (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)


@pytest.mark.parametrize("name, setting, repo", [
    ("aesthetic_head", "clip", "openai/clip-vit-large-patch14"),
    ("aesthetic_v25", "siglip", "google/siglip-so400m-patch14-384"),
])
def test_a_model_whose_download_was_cut_halfway_is_missing_to_the_check_as_to_the_build(
    name: str, setting: str, repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its config cached, its weights not: the check found it (it looked for the config alone) and the
    build stopped after the WebUI had answered."""
    _empty_hub_cache(tmp_path, monkeypatch)
    _cached(tmp_path / "hf", repo, "config.json", "preprocessor_config.json")
    config = ScorerConfig(name=name, head=str(make_tiny_head(tmp_path / "head.safetensors")),
                          cache_dir=str(tmp_path / "heads"), device="cpu", **{setting: repo})
    with pytest.raises(ScorerError) as checked:
        weights_to_fetch(config)
    assert str(checked.value).endswith("(no model.safetensors cached)")
    with pytest.raises(ScorerError) as built:
        build_scorer(config)
    assert _sentence(checked) == _sentence(built)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert weights_to_fetch(config) == [f"{'CLIP' if setting == 'clip' else 'the SigLIP model'} {repo}"]
    _cached(tmp_path / "hf", repo, "model.safetensors")
    assert weights_to_fetch(config) == []


def test_a_tokenizer_is_here_with_its_vocabulary_and_its_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _empty_hub_cache(tmp_path, monkeypatch)
    tokenizer = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    config = ScorerConfig(name="pickscore", cache_dir=str(tmp_path / "heads"))
    _cached(tmp_path / "hf", tokenizer, "vocab.json")
    assert f"the CLIP tokenizer {tokenizer}" in weights_to_fetch(config)
    _cached(tmp_path / "hf", tokenizer, "merges.txt")
    assert f"the CLIP tokenizer {tokenizer}" not in weights_to_fetch(config)


def test_weights_to_fetch_names_each_missing_weight_once_when_downloads_are_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _empty_hub_cache(tmp_path, monkeypatch)
    config = ScorerConfig(name="preference", cache_dir=str(tmp_path / "heads"))
    assert weights_to_fetch(named_scorer(config, "preference")) == [
        "the PickScore v1 model (CLIP ViT-H/14 fine-tuned on Pick-a-Pic)",
        "the CLIP tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K",  # PickScore's and HPS v2.1's, named once
        "the HPS v2.1 model (open_clip ViT-H/14 fine-tuned on HPD v2)",
        "the aesthetic predictor v2.5 head (on SigLIP so400m)",
        "the SigLIP model google/siglip-so400m-patch14-384",
    ]
    assert weights_to_fetch(ScorerConfig(name="manual")) == []
