"""A tiny random CLIP vision tower (with a 768-d projection, like ViT-L/14) and head, for tests and the demo.

Saved with ``save_pretrained`` next to its ``preprocessor_config.json``, the CLIP loads through the
same code as ``openai/clip-vit-large-patch14``, and because its embeddings are 768-d the real LAION
and Chad heads run on top of it. Its scores mean nothing; they are finite and deterministic.
Nothing here needs the network or ../shared/data: the offline demo scores with
``scorer: {name: aesthetic_head, clip: <make_tiny_clip dir>, head: <make_tiny_head file>}``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from bayes_merger.scoring.clip import quiet_transformers


def _tower(width: int, mlp_width: int, layers: int, **more: object) -> dict[str, object]:
    """A tiny transformer tower's settings: two attention heads, projected to 768 like ViT-L/14."""
    return dict(
        hidden_size=width,
        intermediate_size=mlp_width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        projection_dim=768,
        **more,
    )


def make_tiny_clip(dir: Path, *, full_model: bool = False, seed: int = 0, width: int = 64, layers: int = 2) -> Path:
    """Build the tiny CLIP in ``dir`` (created if needed, ~0.8 MB) and return ``dir``.

    ``full_model`` saves a whole ``CLIPModel`` (a text tower too), laid out like the Hugging Face
    ``openai/clip-*`` repositories, from which only the vision tower is loaded. ``width`` and ``layers``
    size the vision tower (benchmarks/bench_scorers.py times a wider one).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5: no torchvision needed
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    vision = CLIPVisionConfig(**_tower(width, 4 * width, layers), image_size=224, patch_size=14, hidden_act="quick_gelu")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    # A private RNG state: the same seed gives the same weights, and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if full_model:
            text = _tower(32, 64, 1, vocab_size=100, max_position_embeddings=16)
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=768))
        else:
            model = CLIPVisionModelWithProjection(vision)
    with quiet_transformers():
        model.save_pretrained(dir)
        Processor().save_pretrained(dir)
    return dir


def make_tiny_head(path: Path, *, seed: int = 0) -> Path:
    """A random single-linear aesthetic head (768 → 1) saved as safetensors at ``path``.

    On L2-normalised embeddings it scores around 5 (± about 2), the range of the real heads.
    """
    generator = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"weight": 2.0 * torch.randn(1, 768, generator=generator), "bias": torch.tensor([5.0])},
        str(path),
    )
    return path
