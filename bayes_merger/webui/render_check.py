"""Proof that each trial's merge reaches the renderer: different merges must not keep giving the same pictures.

A WebUI can report the new merge and keep rendering the old model (a stuck model cache, an extension
that swallows the switch, a fork that loads lazily and fails quietly). Its images then stay
pixel-identical from trial to trial for the same payload and seed, whatever the weights: the scores
are noise. Merges whose weights really differ (by ``MIN_WEIGHT_CHANGE`` somewhere) give different
pixels, so ``REPEATS_TO_STOP`` repeats in a row are proof. Near-identical weights can round to the
same fp16 file, so such a pair proves nothing either way; a flat landscape (same scores, different
pictures) is no repeat at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from bayes_merger.errors import WebUIError

# a trial whose pictures repeat the previous trial's this many times in a row stops the run
REPEATS_TO_STOP = 2
# weights that differ by less than this everywhere may give the same file, hence the same pictures
MIN_WEIGHT_CHANGE = 0.02


class MergeNotRendered(WebUIError):
    """The WebUI keeps rendering one model whatever merge it is given; ``trials`` gave the same pictures."""

    def __init__(self, message: str, trials: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.trials = tuple(trials)


@dataclass(frozen=True)
class _Seen:
    trial: int
    weights: tuple[float, ...]
    pictures: dict[tuple[str, int, int], bytes]  # (payload, index, seed) → digest of the pixels


class RenderCheck:
    """Fed every successful trial's weights and images; raises MergeNotRendered on proof."""

    def __init__(self, repeats: int = REPEATS_TO_STOP, min_change: float = MIN_WEIGHT_CHANGE) -> None:
        self.repeats = repeats
        self.min_change = min_change
        self._last: _Seen | None = None
        self._streak: list[int] = []

    def check(self, trial: int, weights: Sequence[float], images: Iterable[tuple[str, int, int, Any]]) -> None:
        """``images``: (payload, index, seed, PIL image) of one trial, in any order."""
        seen = _Seen(trial, tuple(float(w) for w in weights),
                     {(payload, index, seed): _digest(image) for payload, index, seed, image in images})
        last, self._last = self._last, seen
        if last is None or seen.pictures.keys() != last.pictures.keys() or len(seen.weights) != len(last.weights):
            self._streak = [trial]
            return
        if seen.pictures != last.pictures:
            self._streak = [trial]
            return
        if max(abs(a - b) for a, b in zip(seen.weights, last.weights)) < self.min_change:
            return  # the same file, most likely: no proof either way
        self._streak = (self._streak or [last.trial]) + [trial]
        if len(self._streak) > self.repeats:
            trials = ", ".join(str(t) for t in self._streak[:-1]) + f" and {self._streak[-1]}"
            raise MergeNotRendered(
                f"The merge does not reach the renderer: trials {trials} merged different weights but the WebUI "
                "returned pixel-identical images for the same prompts and seeds, so it keeps rendering one model; "
                "check that no extension, model-cache setting or override_settings pins the checkpoint and look "
                "for load errors in the WebUI's console, then restart the WebUI", self._streak
            )


def _digest(image: Any) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode} {image.size}".encode())
    digest.update(image.tobytes())
    return digest.digest()
