"""images/: each rendered image as a PNG carrying its prompt, seed and weights, named with its score."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

from PIL.PngImagePlugin import PngInfo

from bayes_merger.files import storage_errors
from bayes_merger.run_folder.paths import IMAGES_DIR
from bayes_merger.run_folder.trials import ImageRecord


def _slug(name: str) -> str:
    """``name`` as a file-name part, one of its own for each payload name: a name that does not fit as it
    is (other characters, over 40 of them) gets a digest of it, so ``猫`` and ``犬``, ``close up`` and
    ``close_up`` do not write each other's images."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]
    if slug == name:
        return slug
    return f"{slug.strip('_') or 'payload'}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def save_image(run_dir: Path, image: Any, *, trial: int, payload: str, index: int, prompt: str, seed: int,
               weights: str, beta: str | None = None) -> Path:
    """Write a trial's image as ``images/tNNNN-<payload>-NN.png`` with its prompt, seed and weights (α, and β for
    a method that has them) as PNG text; a StorageError when it cannot be stored."""
    path = Path(run_dir) / IMAGES_DIR / f"t{trial:04d}-{_slug(payload)}-{index:02d}.png"
    info = PngInfo()
    info.add_text("prompt", prompt)
    info.add_text("seed", str(seed))
    info.add_text("weights", weights)
    if beta is not None:
        info.add_text("beta", beta)
    with storage_errors(path):
        path.parent.mkdir(exist_ok=True)
        try:
            image.save(path, pnginfo=info)
        except OSError:
            # a cut-off PNG would stay in the folder (and the report) until the trial is redone
            path.unlink(missing_ok=True)
            raise
    return path


def remove_trial_images(run_dir: Path, trial: int) -> int:
    """Delete the images of trial ``trial`` that an earlier attempt left (killed mid-render, or scored and
    then not logged: a full disk, a second Ctrl-C), before it is rendered again; how many. No trial
    record names them, and they would stand in images/ beside this attempt's as if of its weights."""
    left = sorted((Path(run_dir) / IMAGES_DIR).glob(f"t{trial:04d}-*.png"))
    for path in left:
        with storage_errors(path):
            path.unlink(missing_ok=True)
    return len(left)


def write_image_file(run_dir: Path, relative: str, data: bytes) -> Path:
    """Write an image another machine rendered and named (a cluster host's) at ``relative`` in the run
    folder; a StorageError when it cannot be stored."""
    path = Path(run_dir) / relative
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_bytes(data)
        except OSError:
            path.unlink(missing_ok=True)  # as save_image: no cut-off PNG left behind
            raise
    return path


def record_images(run_dir: Path, contexts: Sequence[Any], scores: Sequence[float]) -> list[ImageRecord]:
    """The trial log's records of scored images; a saved image gets its score into its name, so a
    folder of images sorts by it (``contexts``: payload, index, seed and path of each image)."""
    records = []
    for context, value in zip(contexts, scores):
        relative = None
        if context.path is not None:
            final = context.path.with_name(f"{context.path.stem}-{value:.3f}.png")
            with storage_errors(final):
                context.path.replace(final)
            relative = final.relative_to(run_dir).as_posix()
        records.append(ImageRecord(payload=context.payload, index=context.index, seed=context.seed,
                                   score=float(value), path=relative))
    return records
