"""Aesthetic heads: small linear models from a CLIP image embedding to one score, built from their keys.

Two layouts are recognised from the state dict's keys, and nothing else is guessed at:

- the LAION MLP (``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``, each with
  ``.weight`` and ``.bias``): five linear layers with dropouts between them and, as trained, **no
  activations** (the ReLUs were commented out in the original code), so dropouts are left out here;
- the aesthetic predictor v2.5 MLP (``scoring_head.0/2/4/6/8``): the same five linear layers, again
  with dropouts and no activations between them, on a 1152-d SigLIP embedding;
- a single linear layer: one ``weight`` of shape (1, D), optionally with its ``bias`` (1,), under
  any one prefix (``weight``, ``linear.weight``, ``fc.weight`` …).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import skip_init

from bayes_merger.errors import ScorerError

#: The indices of the linear layers in the LAION MLP's nn.Sequential (dropouts sit between them).
LAION_LAYER_INDICES: tuple[int, ...] = (0, 2, 4, 6, 7)

#: Recognised MLP layouts: key prefix → (indices of the linear layers, layout name).
_MLP_LAYOUTS: dict[str, tuple[tuple[int, ...], str]] = {
    "layers": (LAION_LAYER_INDICES, "laion-mlp"),
    "scoring_head": ((0, 2, 4, 6, 8), "v2.5-mlp"),
}

_LAYER_KEY = re.compile(r"^(layers|scoring_head)\.(\d+)\.(weight|bias)$")


class AestheticHead(nn.Module):
    """A stack of linear layers applied one after the other (no activations), ending in one output."""

    def __init__(self, linears: list[nn.Linear], layout: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(linears)
        self.requires_grad_(False)
        #: "laion-mlp" or "linear": what was recognised from the keys
        self.layout = layout

    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = embeddings
        for layer in self.layers:
            x = layer(x)
        return x.squeeze(-1)

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor], source: str = "") -> AestheticHead:
        """Build the head whose layout the keys show, or raise ScorerError naming the keys found."""
        where = f" in {source}" if source else ""
        matches = [_LAYER_KEY.match(k) for k in tensors]
        prefixes = {m.group(1) for m in matches if m}
        if tensors and all(matches) and len(prefixes) == 1:
            prefix = prefixes.pop()
            expected, layout = _MLP_LAYOUTS[prefix]
            indices = sorted({int(m.group(2)) for m in matches if m})
            if tuple(indices) == expected:
                pairs = [(tensors.get(f"{prefix}.{i}.weight"), tensors.get(f"{prefix}.{i}.bias")) for i in indices]
                return cls(_chain(pairs, source), layout=layout)
        weights = [k for k in tensors if k == "weight" or k.endswith(".weight")]
        if len(weights) == 1:
            prefix = weights[0][: -len("weight")]
            bias_key = prefix + "bias"
            if set(tensors) <= {weights[0], bias_key}:
                weight = tensors[weights[0]]
                if weight.ndim == 2 and weight.shape[0] == 1:
                    return cls(_chain([(weight, tensors.get(bias_key))], source), layout="linear")
        found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(tensors.items())[:12])
        more = f" and {len(tensors) - 12} more" if len(tensors) > 12 else ""
        raise ScorerError(
            f"The head{where} is neither the LAION MLP (layers.0/2/4/6/7 .weight/.bias), the v2.5 MLP "
            f"(scoring_head.0/2/4/6/8), nor a single "
            f"linear layer to one output; keys found: {found or 'none'}{more}."
        )


def _chain(pairs: list[tuple[torch.Tensor | None, torch.Tensor | None]], source: str) -> list[nn.Linear]:
    """nn.Linear layers from (weight, bias) pairs, checking that each feeds the next and ends in 1."""
    where = f" in {source}" if source else ""
    linears: list[nn.Linear] = []
    for number, (weight, bias) in enumerate(pairs):
        if weight is None or weight.ndim != 2:
            raise ScorerError(f"Layer {number} of the head{where} has no 2-D weight matrix.")
        out_dim, in_dim = weight.shape
        if linears and in_dim != linears[-1].out_features:
            raise ScorerError(
                f"Layer {number} of the head{where} takes {in_dim} inputs but the layer before gives "
                f"{linears[-1].out_features}."
            )
        if bias is not None and tuple(bias.shape) != (out_dim,):
            raise ScorerError(f"Layer {number} of the head{where} has a bias of shape {tuple(bias.shape)}.")
        # skip_init: no random initialisation, so building a head leaves torch's global RNG alone
        linear = skip_init(nn.Linear, in_dim, out_dim, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.float())
            if bias is not None:
                linear.bias.copy_(bias.float())
        linears.append(linear)
    if linears[-1].out_features != 1:
        raise ScorerError(f"The head{where} ends in {linears[-1].out_features} outputs, not one score.")
    return linears
