"""Images per second per scorer on this CPU, against a bare forward pass of the same model.

    .venv/bin/python benchmarks/bench_scorers.py [--images 16] [--width 256] [--layers 4]

No real weights are downloaded: each scorer runs on a random model of its real class and key
layout (ViT-H/14-shaped CLIP for pickscore and hpsv2, SigLIP for aesthetic_v25, a ViT-L/14-shaped
CLIP vision tower and a head of the LAION MLP's layout for laion, the default scorer: chad is the
same computation with other weights) at the given width and depth, at the real input size (224, or
384 for SigLIP), loaded through the scorer's real loader (laion's as ``aesthetic_head``: its pinned
head file cannot be random). "bare" is the model's forward pass alone on already-preprocessed
tensors, in the same batches: the least any scoring code could spend, whoever wrote it. The two are
timed in turns (scorer, bare, scorer, …), so a machine that slows down slows both; "overhead" = bare
images/s ÷ scorer images/s (1.00: the scorer adds nothing). The last line is name=value pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayes_merger.config import ScorerConfig  # noqa: E402
from bayes_merger.files import file_sha256  # noqa: E402
from bayes_merger.scoring import ImageContext, build_scorer, weights  # noqa: E402
from bayes_merger.testing.tiny_clip import make_tiny_clip  # noqa: E402
from bayes_merger.testing.tiny_scorers import (  # noqa: E402
    make_tiny_siglip,
    make_tiny_tokenizer,
    tiny_clip_h,
    tiny_v25_head,
    to_open_clip,
)


def _timed_in_turns(scored, bare, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Median seconds of ``scored`` and of ``bare``, each run ``repeats`` times, in turns after a warm-up."""
    times: tuple[list[float], list[float]] = ([], [])
    scored()
    bare()
    for _ in range(repeats):
        for fn, kept in zip((scored, bare), times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _laion_layout_head(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the LAION aesthetic MLP's layout (768 → 1024 → 128 → 64 → 16 → 1)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
             "layers.7": (1, 16)}
    head = {}
    for layer, (out, inp) in sizes.items():
        head[f"{layer}.weight"] = torch.randn(out, inp, generator=generator) / inp**0.5
        head[f"{layer}.bias"] = torch.zeros(out)
    return head


def _pin(name: str, path: Path) -> None:
    setattr(weights, name, dataclasses.replace(getattr(weights, name), sha256=file_sha256(path)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.repeats < 1 or args.images < 1 or args.batch < 1:
        parser.error("--repeats, --images and --batch must be at least 1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    # new images for every call, as every trial's are: a scorer that remembers the last images it embedded (one
    # CLIP run shared by an ensemble) must not be timed on a repeat
    image_sets = [[Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(args.images)]
                  for _ in range(args.repeats + 1)]
    images = image_sets[0]
    contexts = [ImageContext("p", i, i, prompt="a portrait of an old man, oil painting, dramatic light")
                for i in range(args.images)]
    results: dict[str, tuple[float, float]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tokenizer = make_tiny_tokenizer(tmp_path / "tokenizer")
        clip_h = tiny_clip_h(seed=0, width=args.width, layers=args.layers, image_size=224)
        save_file({k: v.contiguous() for k, v in clip_h.state_dict().items()}, str(tmp_path / weights.PICKSCORE.filename))
        _pin("PICKSCORE", tmp_path / weights.PICKSCORE.filename)
        torch.save({"state_dict": to_open_clip(clip_h)}, tmp_path / weights.HPS_V21.filename)
        _pin("HPS_V21", tmp_path / weights.HPS_V21.filename)
        siglip = make_tiny_siglip(tmp_path / "siglip", width=args.width, image_size=384)
        torch.save(tiny_v25_head(width=args.width), tmp_path / weights.AESTHETIC_V25.filename)
        _pin("AESTHETIC_V25", tmp_path / weights.AESTHETIC_V25.filename)
        clip_l = make_tiny_clip(tmp_path / "clip-l", width=args.width, layers=args.layers)
        laion_head = tmp_path / "laion-layout-head.safetensors"
        save_file(_laion_layout_head(), str(laion_head))
        base = ScorerConfig(cache_dir=str(tmp_path), tokenizer=str(tokenizer), siglip=str(siglip), device="cpu",
                            batch_size=args.batch, clip=str(clip_l))

        for name in ("laion", "pickscore", "hpsv2", "aesthetic_v25"):
            scorer = build_scorer(dataclasses.replace(base, name="aesthetic_head", head=str(laion_head))
                                  if name == "laion" else dataclasses.replace(base, name=name))
            if name == "laion":
                pixels = scorer.embedder.pixel_values(images)

                def bare() -> None:
                    for s in range(0, len(images), args.batch):
                        scorer.embedder.model(pixel_values=pixels[s : s + args.batch])
            elif name == "aesthetic_v25":
                pixels = torch.from_numpy(np.stack([scorer.preprocessing(i) for i in images]))

                def bare() -> None:
                    for s in range(0, len(images), args.batch):
                        scorer.model(pixel_values=pixels[s : s + args.batch])
            else:
                pixels = torch.from_numpy(np.stack([scorer.preprocessing(i) for i in images]))
                tokens = scorer.tokenizer([c.prompt for c in contexts], padding="max_length", max_length=77,
                                          truncation=True, return_tensors="pt")

                def bare() -> None:
                    for s in range(0, len(images), args.batch):
                        scorer.model.vision_model(pixel_values=pixels[s : s + args.batch])
                        scorer.model.text_model(input_ids=tokens["input_ids"][s : s + args.batch])
            calls = itertools.cycle(image_sets)
            scored, raw = _timed_in_turns(lambda: scorer.score(next(calls), contexts), bare, args.repeats)
            results[name] = (len(images) / scored, len(images) / raw)

    print(f"{'scorer':<14} {'images/s':>9} {'bare/s':>9} {'overhead':>9}   (width {args.width}, {args.layers} layers, "
          f"{args.images} images of 512x512, batch {args.batch}, {torch.get_num_threads()} threads)")
    for name, (scored, raw) in results.items():
        print(f"{name:<14} {scored:>9.2f} {raw:>9.2f} {raw / scored:>9.2f}")
    pairs = [f"{name}_ips={s:.2f} {name}_overhead={r / s:.2f}" for name, (s, r) in results.items()]
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
