"""Images per second per scorer on this CPU, against a bare forward pass of the same model.

    .venv/bin/python benchmarks/bench_scorers.py [--images 16] [--width 256] [--layers 4]

No real weights are downloaded: each scorer runs on a random model of its real class and key
layout (ViT-H/14-shaped CLIP for pickscore and hpsv2, SigLIP for aesthetic_v25) at
the given width and depth, at the real input size (224, or 384 for SigLIP), loaded through the
scorer's real loader. "bare" is the model's forward pass alone on already-preprocessed tensors, in
the same batches; "overhead" = bare images/s ÷ scorer images/s (1.00: the scorer adds nothing).
The last line is name=value pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
from bayes_merger.testing.tiny_scorers import (  # noqa: E402
    make_tiny_siglip,
    make_tiny_tokenizer,
    tiny_clip_h,
    tiny_v25_head,
    to_open_clip,
)


def _timed(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


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
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(args.images)]
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
        base = ScorerConfig(cache_dir=str(tmp_path), tokenizer=str(tokenizer), siglip=str(siglip), device="cpu",
                            batch_size=args.batch)

        for name in ("pickscore", "hpsv2", "aesthetic_v25"):
            scorer = build_scorer(dataclasses.replace(base, name=name))
            scored = _timed(lambda: scorer.score(images, contexts), args.repeats)
            if name == "aesthetic_v25":
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
            raw = _timed(bare, args.repeats)
            results[name] = (len(images) / scored, len(images) / raw)

    print(f"{'scorer':<14} {'images/s':>9} {'bare/s':>9} {'overhead':>9}   (width {args.width}, {args.layers} layers, "
          f"{args.images} images of 512x512, batch {args.batch}, {torch.get_num_threads()} threads)")
    for name, (scored, raw) in results.items():
        print(f"{name:<14} {scored:>9.2f} {raw:>9.2f} {raw / scored:>9.2f}")
    pairs = [f"{name}_ips={s:.2f} {name}_overhead={r / s:.2f}" for name, (s, r) in results.items()]
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
