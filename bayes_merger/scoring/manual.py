"""Manual scoring: the user rates each image 0–10 at the terminal; ratings are saved as they are typed.

Each rating is written to a JSON file (``scorer.manual_ratings``) the moment it is entered, keyed by
payload, index, seed and a hash of the image's pixels; an interrupted session therefore loses
nothing, and on the next run the images already rated are not asked again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import RatingsEnded, ScorerError
from bayes_merger.files import atomic_write_text
from bayes_merger.scoring.base import ImageContext, SharedModels, Weights

log = logging.getLogger(__name__)

MIN_RATING = 0.0
MAX_RATING = 10.0
DEFAULT_RATINGS_FILE = "manual-ratings.json"
_FORMAT = "bayes-merger manual ratings"


@dataclass(frozen=True)
class RatingKey:
    """What identifies one rated image: where it comes from and what it looks like."""

    payload: str
    index: int
    seed: int
    image_sha256: str


def image_sha256(image: Image.Image) -> str:
    """A hash of the pixels (not of a file encoding), so a re-saved image keeps its rating."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class RatingsFile:
    """The ratings so far, kept in a JSON file rewritten atomically (and fsync'd) after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: list[dict[str, Any]] = []
        self._by_key: dict[RatingKey, float] = {}
        if path.exists():
            self._read()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: RatingKey) -> float | None:
        return self._by_key.get(key)

    def add(self, key: RatingKey, rating: float, path: Path | None) -> None:
        self._records.append(
            {
                "payload": key.payload,
                "index": key.index,
                "seed": key.seed,
                "image_sha256": key.image_sha256,
                "rating": rating,
                "path": str(path) if path is not None else None,
                "rated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        self._by_key[key] = rating
        self._write()

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            records = data["ratings"]
            for record in records:
                key = RatingKey(
                    str(record["payload"]), int(record["index"]), int(record["seed"]), str(record["image_sha256"])
                )
                self._by_key[key] = float(record["rating"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ScorerError(
                f"The manual ratings file {self.path} cannot be read ({exc}); fix it or move it away."
            ) from exc
        self._records = list(records)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": _FORMAT, "version": 1, "ratings": self._records}, indent=1)
        atomic_write_text(self.path, text + "\n", fsync=True)


def has_display() -> bool:
    """False on a Linux/BSD machine with neither X11 nor Wayland (e.g. over SSH)."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def show_in_viewer(image: Image.Image, title: str) -> None:
    """Open the image in the system viewer (PIL picks xdg-open/display/eog, Preview, Photos …)."""
    try:
        image.show(title=title)
    except Exception as exc:  # a missing viewer must not stop the rating: the path is printed anyway
        log.warning("Could not open an image viewer (%s); open the file shown in the prompt instead", exc)


class ManualScorer:
    """Asks the user for a 0–10 rating of each image not rated before, through ``ask`` (``input``)."""

    name = "manual"

    def __init__(
        self,
        ratings_path: Path,
        *,
        viewer: bool = True,
        ask: Callable[[str], str] = input,
        show: Callable[[Image.Image, str], None] = show_in_viewer,
        display: Callable[[], bool] = has_display,
    ) -> None:
        self.ratings = RatingsFile(ratings_path)
        self.viewer = viewer
        self._ask = ask
        self._show = show
        self._display = display
        log.info("Manual ratings are saved to %s (%d so far)", ratings_path.resolve(), len(self.ratings))

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]:
        if contexts is None:
            contexts = [ImageContext(payload="", index=i, seed=-1) for i in range(len(images))]
        if len(contexts) != len(images):
            raise ValueError(f"{len(images)} images but {len(contexts)} contexts")
        keys = [RatingKey(c.payload, c.index, c.seed, image_sha256(im)) for im, c in zip(images, contexts)]
        to_rate = sum(1 for key in keys if self.ratings.get(key) is None)
        scores: list[float] = []
        asked = 0
        for image, context, key in zip(images, contexts, keys):
            rating = self.ratings.get(key)
            if rating is None:
                asked += 1
                path = self._present(image, context, key)
                label = f"payload {context.payload!r} image {context.index} (seed {context.seed})"
                rating = self._read_rating(f"[{asked}/{to_rate}] {label}: {path}\n")
                self.ratings.add(key, rating, context.path)
            scores.append(rating)
        return scores

    def _present(self, image: Image.Image, context: ImageContext, key: RatingKey) -> Path:
        """Show the image if there is a screen; return a file the user can open either way."""
        path = context.path
        if path is None:
            # The loop did not save it: keep a copy beside the ratings so a headless user can open it.
            path = self.ratings.path.parent / "manual-images" / f"{key.image_sha256[:16]}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
        if self.viewer and self._display():
            self._show(image, f"{context.payload} #{context.index}")
        return path

    def _read_rating(self, header: str) -> float:
        prompt = f"{header}Rate it {MIN_RATING:g}-{MAX_RATING:g} (Ctrl-C stops; ratings so far are kept): "
        while True:
            try:
                text = self._ask(prompt)
            except EOFError as exc:
                raise RatingsEnded(
                    f"Manual scoring stopped: no more input (it needs a terminal to type in); {len(self.ratings)} "
                    f"ratings are saved in {self.ratings.path} and a resumed run will not ask for them again"
                ) from exc
            rating = parse_rating(text)
            if rating is not None:
                return rating
            prompt = (
                f"{text.strip()!r} is not a number from {MIN_RATING:g} to {MAX_RATING:g}. "
                f"Rate it {MIN_RATING:g}-{MAX_RATING:g}: "
            )


def parse_rating(text: str) -> float | None:
    """The rating typed, or None if it is not a number from 0 to 10 (a decimal comma is accepted)."""
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    if not math.isfinite(value) or not MIN_RATING <= value <= MAX_RATING:
        return None
    return value


def manual_weights(config: ScorerConfig) -> list[Weights]:
    return []  # the user's ratings are read as they come


def build_manual(config: ScorerConfig, shared: SharedModels) -> ManualScorer:
    path = Path(config.manual_ratings or DEFAULT_RATINGS_FILE).expanduser()
    return ManualScorer(path, viewer=config.manual_viewer)
