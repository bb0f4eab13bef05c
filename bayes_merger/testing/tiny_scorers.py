"""Tiny random models of the preference scorers' real architectures, for tests and benchmarks.

The real classes (transformers' ``CLIPModel``, ``SiglipVisionModel``, ``CLIPTokenizer``) with their real
key layouts at tiny sizes: a CLIP with ViT-H/14's 16 heads and patch 14 but 64-wide towers, a
byte-level CLIP BPE vocabulary without merges, a SigLIP vision tower, a v2.5-layout head. The
HPS v2.1 file is written in open_clip's (OpenAI) layout by ``to_open_clip``, an inverse of the
loader's renaming written independently of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's byte → printable character table (the BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_tiny_tokenizer(folder: Path) -> Path:
    """A CLIPTokenizer with every byte (and byte + ``</w>``) as a token and no merges: 514 tokens."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (raw / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt")).save_pretrained(str(folder))
    return folder


def tiny_clip_h(seed: int = 0, width: int = 64, layers: int = 2, image_size: int = 56) -> torch.nn.Module:
    """A random ``CLIPModel`` shaped like ViT-H/14 (16 heads, patch 14, exact GELU, 77 tokens), but tiny."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         layer_norm_eps=1e-5, eos_token_id=513, bos_token_id=512, projection_dim=32),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=16, patch_size=14, image_size=image_size, hidden_act="gelu",
                           layer_norm_eps=1e-5, projection_dim=32),
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # LayerNorms away from their identity initialisation, so a mix-up shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def to_open_clip(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors in open_clip's layout (as HPS v2.1 publishes them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        for tower, prefix in (("vision_model.", "visual."), ("text_model.", "")):
            if key.startswith(tower + "encoder.layers."):
                number, part = key[len(tower + "encoder.layers."):].split(".", 1)
                base = f"{prefix}transformer.resblocks.{number}."
                if part.startswith("self_attn.q_proj."):
                    kind = part.rsplit(".", 1)[1]
                    stem = f"{tower}encoder.layers.{number}.self_attn."
                    state = model.state_dict()
                    out[f"{base}attn.in_proj_{kind}"] = torch.cat(
                        [state[f"{stem}{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
                    )
                elif part.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                    pass
                else:
                    mapping = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
                               "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
                    old = next(o for o in mapping if part.startswith(o))
                    out[base + mapping[old] + part[len(old):]] = value
                break
        else:
            plain = {
                "vision_model.embeddings.class_embedding": "visual.class_embedding",
                "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
                "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
                "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
                "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
                "vision_model.post_layernorm.weight": "visual.ln_post.weight",
                "vision_model.post_layernorm.bias": "visual.ln_post.bias",
                "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                "text_model.embeddings.position_embedding.weight": "positional_embedding",
                "text_model.final_layer_norm.weight": "ln_final.weight",
                "text_model.final_layer_norm.bias": "ln_final.bias",
                "logit_scale": "logit_scale",
            }
            if key in plain:
                out[plain[key]] = value
            elif key == "visual_projection.weight":
                out["visual.proj"] = value.t().contiguous()
            elif key == "text_projection.weight":
                out["text_projection"] = value.t().contiguous()
            else:
                raise KeyError(f"no open_clip name for {key}")
    return {k: v.clone().contiguous() for k, v in out.items()}


def make_tiny_siglip(folder: Path, seed: int = 0, width: int = 64, image_size: int = 56) -> Path:
    """A random ``SiglipVisionModel`` (with its attention-pooling head) and its processor, saved."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                num_attention_heads=4, image_size=image_size, patch_size=14)
    SiglipVisionModel(config).save_pretrained(str(folder))
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    return Path(folder)


def tiny_v25_head(width: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the aesthetic predictor v2.5 head's layout (``scoring_head.0/2/4/6/8``)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [width, 1024, 128, 64, 16, 1]
    tensors = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 8), zip(sizes, sizes[1:])):
        tensors[f"scoring_head.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
        tensors[f"scoring_head.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
    return tensors
