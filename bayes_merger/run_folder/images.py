"""images/: each rendered image as a PNG carrying its prompt, seed and weights, named with its score."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from PIL.PngImagePlugin import PngInfo

from bayes_merger.run_folder.paths import IMAGES_DIR
from bayes_merger.run_folder.trials import ImageRecord


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "payload"


def save_image(run_dir: Path, image: Any, *, trial: int, payload: str, index: int, prompt: str, seed: int,
               weights: str) -> Path:
    """Write a trial's image as ``images/tNNNN-<payload>-NN.png`` with its prompt, seed and weights as PNG text."""
    path = Path(run_dir) / IMAGES_DIR / f"t{trial:04d}-{_slug(payload)}-{index:02d}.png"
    path.parent.mkdir(exist_ok=True)
    info = PngInfo()
    info.add_text("prompt", prompt)
    info.add_text("seed", str(seed))
    info.add_text("weights", weights)
    image.save(path, pnginfo=info)
    return path


def record_images(run_dir: Path, contexts: Sequence[Any], scores: Sequence[float]) -> list[ImageRecord]:
    """The trial log's records of scored images; a saved image gets its score into its name, so a
    folder of images sorts by it (``contexts``: payload, index, seed and path of each image)."""
    records = []
    for context, value in zip(contexts, scores):
        relative = None
        if context.path is not None:
            final = context.path.with_name(f"{context.path.stem}-{value:.3f}.png")
            context.path.replace(final)
            relative = final.relative_to(run_dir).as_posix()
        records.append(ImageRecord(payload=context.payload, index=context.index, seed=context.seed,
                                   score=float(value), path=relative))
    return records
