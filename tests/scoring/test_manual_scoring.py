"""Manual scoring: ratings typed on stdin, saved as typed, resumed after an interruption."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import ScorerError
from bayes_merger.scoring import ImageContext, build_scorer
from bayes_merger.scoring.manual import ManualScorer, parse_rating


def _contexts(images: list[Image.Image], folder: Path, payload: str = "portrait") -> list[ImageContext]:
    contexts = []
    for index, image in enumerate(images):
        path = folder / f"{payload}-{index}.png"
        image.save(path)
        contexts.append(ImageContext(payload=payload, index=index, seed=100 + index, path=path))
    return contexts


def _headless(path: Path, shown: list | None = None) -> ManualScorer:
    shown = [] if shown is None else shown
    return ManualScorer(path, display=lambda: False, show=lambda image, title: shown.append(title))


def test_ratings_typed_on_stdin_become_the_scores_and_are_saved(
    tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(2)
    monkeypatch.setattr("sys.stdin", io.StringIO("7\n8.5\n"))
    scorer = build_scorer(ScorerConfig(name="manual", manual_ratings=str(tmp_path / "ratings.json")))
    assert scorer.name == "manual"
    assert scorer.score(images, _contexts(images, tmp_path)) == [7.0, 8.5]
    saved = json.loads((tmp_path / "ratings.json").read_text())["ratings"]
    assert [(r["payload"], r["index"], r["seed"], r["rating"]) for r in saved] == [
        ("portrait", 0, 100, 7.0),
        ("portrait", 1, 101, 8.5),
    ]


def test_invalid_input_is_asked_again(tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    images = make_images(1)
    monkeypatch.setattr("sys.stdin", io.StringIO("great\n11\n-1\nnan\n\n6,5\n"))
    scorer = _headless(tmp_path / "ratings.json")
    assert scorer.score(images, _contexts(images, tmp_path)) == [6.5]
    out = capsys.readouterr().out
    assert out.count("is not a number from 0 to 10") == 5


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("10", 10.0), (" 7.25 ", 7.25), ("3,5", 3.5), ("10.01", None), ("inf", None)])
def test_a_rating_is_a_number_from_0_to_10(text: str, value: float | None) -> None:
    assert parse_rating(text) == value


def test_an_interrupted_session_keeps_its_ratings_and_resumes_without_asking_again(
    tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    images = make_images(3)
    contexts = _contexts(images, tmp_path)
    ratings = tmp_path / "ratings.json"

    monkeypatch.setattr("sys.stdin", io.StringIO("4\n"))  # the user stops after one rating
    with pytest.raises(ScorerError, match=r"1 ratings are saved in .*ratings\.json"):
        _headless(ratings).score(images, contexts)
    assert len(json.loads(ratings.read_text())["ratings"]) == 1
    capsys.readouterr()

    monkeypatch.setattr("sys.stdin", io.StringIO("5\n6\n"))
    assert _headless(ratings).score(images, contexts) == [4.0, 5.0, 6.0]
    prompts = capsys.readouterr().out
    assert "image 0 " not in prompts and prompts.count("Rate it") == 2  # only the two unrated images


def test_a_new_image_with_the_same_payload_index_and_seed_is_asked_again(
    tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_images(2)
    context = [ImageContext("portrait", 0, 100, None)]
    monkeypatch.setattr("sys.stdin", io.StringIO("3\n9\n"))
    scorer = _headless(tmp_path / "ratings.json")
    assert scorer.score([first], context) == [3.0]
    assert scorer.score([second], context) == [9.0]  # another trial's image: a new rating
    assert scorer.score([first], context) == [3.0]  # the first one again: not asked


def test_headless_prints_the_image_path_and_opens_no_viewer(
    tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    images = make_images(1)
    contexts = _contexts(images, tmp_path)
    shown: list[str] = []
    monkeypatch.setattr("sys.stdin", io.StringIO("5\n"))
    _headless(tmp_path / "ratings.json", shown).score(images, contexts)
    assert shown == []
    assert str(contexts[0].path) in capsys.readouterr().out


def test_an_unsaved_image_is_written_beside_the_ratings_so_it_can_be_opened(
    tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    images = make_images(1)
    monkeypatch.setattr("sys.stdin", io.StringIO("5\n"))
    _headless(tmp_path / "ratings.json").score(images, [ImageContext("p", 0, 1, None)])
    written = list((tmp_path / "manual-images").glob("*.png"))
    assert len(written) == 1 and str(written[0]) in capsys.readouterr().out
    assert Image.open(written[0]).tobytes() == images[0].tobytes()


def test_with_a_display_each_image_is_opened_in_the_viewer(
    tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(2)
    shown: list[str] = []
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n2\n"))
    scorer = ManualScorer(tmp_path / "r.json", display=lambda: True, show=lambda image, title: shown.append(title))
    scorer.score(images, _contexts(images, tmp_path))
    assert shown == ["portrait #0", "portrait #1"]


def test_a_corrupt_ratings_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "ratings.json").write_text("{not json")
    with pytest.raises(ScorerError, match="ratings.json cannot be read"):
        ManualScorer(tmp_path / "ratings.json")
