"""What every scorer is: the Scorer protocol, the per-image context, models shared between scorers, and
the weights a scorer loads when it is built (``Weights``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Protocol, Sequence, TypeVar, runtime_checkable

from PIL import Image

T = TypeVar("T")


@dataclass(frozen=True)
class ImageContext:
    """Where one image comes from: its payload, its place in the payload's batch, its seed, its file,
    and the prompt it was rendered from.

    ``path`` is where the trial loop saved the image (the manual scorer shows it), or None when
    images are not saved. ``prompt`` is the payload's prompt as sent to the WebUI (wildcards already
    drawn); prompt-conditioned scorers (``pickscore``, ``hpsv2``) score the image against it.
    """

    payload: str
    index: int
    seed: int
    path: Path | None = None
    prompt: str = ""


@runtime_checkable
class Scorer(Protocol):
    """Scores images: one float per image, higher is better, in the order given.

    ``contexts``, when given, has one entry per image; scorers that only look at pixels ignore it.
    """

    name: str

    def score(
        self, images: Sequence[Image.Image], contexts: Sequence[ImageContext] | None = None
    ) -> list[float]: ...


class SharedModels:
    """Models loaded once per ``build_scorer`` call and shared by the scorers that need the same one.

    An ensemble of ``laion`` and ``chad`` needs one CLIP backbone, not two: each factory asks for
    its backbone by a key (model id, device) and the first one loads it.
    """

    def __init__(self) -> None:
        self._models: dict[Hashable, object] = {}

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        if key not in self._models:
            self._models[key] = load()
        return self._models[key]  # type: ignore[return-value]


@dataclass(frozen=True)
class Weights:
    """A file or model a scorer loads when it is built, and whether it is here before anything loads:
    ``bayes-merger --check`` and a run's start say what is missing before the WebUI is asked anything."""

    name: str  # as the user knows it: "CLIP openai/clip-vit-large-patch14", "the LAION … head"
    here: bool  # in its folder or cache (a copy whose bytes are wrong is said when it loads)
    downloadable: bool  # fetched at the start when missing, unless downloads are off (HF_HUB_OFFLINE)
    missing: str  # the sentence when it is missing and cannot be fetched
