"""Whether models A and B carry different VAEs, which decides whether the graph route renders the merge.

ComfyUI has no VAE-merge node, so the graph decodes with model A's VAE (``blocks``), while the torch
merge by file (and ``best.safetensors``) merges the VAE with the BASE weight. The two routes render
the same model only when the VAEs are equal or BASE stays 0. The VAE is ``first_stage_model.*`` in
SD1, SD2 and SDXL checkpoints alike (``merge.arch``).

The comparison reads only VAE tensors, one pair at a time, and stops at the first difference: a
.safetensors file is read tensor by tensor from its header's offsets; a pickle checkpoint cannot be,
so its VAE is loaded whole (still only the VAE is kept).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from bayes_merger.merge.checkpoint import SAFETENSORS_SUFFIXES, load_state_dict, read_tensor_info
from bayes_merger.merge.safetensors_file import TensorInfo, read_header, read_tensors

log = logging.getLogger(__name__)

VAE_PREFIX = "first_stage_model."


def vaes_differ(path_a: Path | str, path_b: Path | str) -> bool:
    """Whether the two checkpoints' VAEs differ in a tensor's name, shape or value (compared in the wider
    of the two dtypes, so an fp16 VAE equals its exact fp32 copy). CheckpointError for an unreadable file."""
    infos_a, infos_b = (_vae_infos(path) for path in (path_a, path_b))
    if infos_a.keys() != infos_b.keys():
        return True
    if any(infos_a[name].shape != infos_b[name].shape for name in infos_a):
        return True
    for name, (a, b) in zip(infos_a, zip(_vae_tensors(path_a, list(infos_a)), _vae_tensors(path_b, list(infos_a)))):
        common = torch.promote_types(a.dtype, b.dtype)
        if not torch.equal(a.to(common), b.to(common)):
            log.debug("The VAEs of %s and %s differ first at %s.", path_a, path_b, name)
            return True
    return False


def _vae_infos(path: Path | str) -> dict[str, TensorInfo]:
    return {name: info for name, info in read_tensor_info(path).items() if name.startswith(VAE_PREFIX)}


def _vae_tensors(path: Path | str, names: list[str]) -> Iterator[torch.Tensor]:
    """The VAE tensors ``names`` of one checkpoint, in that order, each read when it is asked for."""
    path = Path(path).expanduser()
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        # VAE keys have no older aliases (``checkpoint.canonical_key``): stored names are the canonical ones
        entries = {entry.stored: entry for entry in read_header(path)}
        return (read_tensors(path, [entries[name]], lambda t, _: t, "cpu")[name] for name in names)
    tensors = load_state_dict(path, keys=set(names))
    return (tensors.pop(name) for name in names)
