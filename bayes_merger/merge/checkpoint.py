"""Reading and writing checkpoints: safetensors first, pickles only through torch's weights-only loader.

Reading a .safetensors file reads its header first (enough to detect the architecture), then only
the tensors asked for (the format itself is ``safetensors_file``). Reading normalises the older key
names some checkpoints carry to the names every other module uses (see ``canonical_key``). Saving
chooses the keys (prune) and the precision, and writes .safetensors only.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import torch

from bayes_merger.errors import CheckpointError, ConfigError
from bayes_merger.files import file_sha256
from bayes_merger.files import load_torch_weights
from bayes_merger.merge.safetensors_file import TensorInfo, read_header, read_tensors, write_safetensors

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# what prune keeps: UNet, VAE, SD1/SD2 text encoder, SDXL text encoders (EMA, scheduler and extras go)
PRUNE_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
# and the markers from which ComfyUI and Forge tell a model's prediction type (SDXL's ``v_pred``,
# ``ztsnr``, ``edm_vpred.*``; ``edm_mean``/``edm_std`` of EDM models): without them a v-prediction merge
# loads as an eps model and renders noise, which the optimiser would then score
PREDICTION_MARKERS = ("v_pred", "ztsnr", "edm_mean", "edm_std")
PREDICTION_MARKER_PREFIXES = ("edm_vpred.",)

# Older names of the same tensors (the aliases of the architecture key lists), as systematic rules:
# - CLIP-L text encoders saved by older transformers versions lack the ``text_model.`` level;
# - EMA copies named without the ``diffusion_model`` prefix (EMA keys have their dots removed).
_CLIP_OLD = "cond_stage_model.transformer."
_CLIP_NEW = "cond_stage_model.transformer.text_model."
_CLIP_OLD_SUBTREES = ("embeddings.", "encoder.", "final_layer_norm.")
_EMA = "model_ema."
_EMA_UNET = "model_ema.diffusion_model"
_EMA_OWN = ("model_ema.decay", "model_ema.num_updates")

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "32": torch.float32,
}


def canonical_key(key: str) -> str:
    """The current name of a tensor that may carry an older alias."""
    if key.startswith(_CLIP_OLD) and key[len(_CLIP_OLD) :].startswith(_CLIP_OLD_SUBTREES):
        return _CLIP_NEW + key[len(_CLIP_OLD) :]
    if key.startswith(_EMA) and not key.startswith(_EMA_UNET) and key not in _EMA_OWN:
        return _EMA_UNET + key[len(_EMA) :]
    return key


def parse_dtype(name: str | None, setting: str | None = None) -> torch.dtype | None:
    """"fp16" / "bf16" / "fp32" (and their common spellings) as a torch dtype; None stays None. ``setting``, the
    key it was given as, is named in the ConfigError of an unknown one."""
    if name is None:
        return None
    try:
        return _DTYPE_NAMES[str(name).lower()]
    except KeyError:
        where = f"{setting} is {name!r}, which is not a precision" if setting else f"Unknown precision {name!r}"
        raise ConfigError(f"{where}; use fp16, bf16 or fp32.") from None


def is_kept_by_prune(key: str) -> bool:
    return key.startswith(PRUNE_PREFIXES) or is_prediction_marker(key)


def is_prediction_marker(key: str) -> bool:
    return key in PREDICTION_MARKERS or key.startswith(PREDICTION_MARKER_PREFIXES)


# ----------------------------------------------------------------------------------------- reading


def _checked_file(path: Path | str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a directory, not a checkpoint file.")
    return path


def _format_of(path: Path) -> str:
    """"safetensors" or "pickle", from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "pickle"  # torch's zip format, or a legacy pickle (PROTO opcode first)
    if suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is not a checkpoint: it is neither a torch zip archive nor a pickle.")
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte header length, then the JSON header
    raise CheckpointError(
        f"{path} is not a checkpoint (expected a .safetensors, .ckpt or .pt file, found {suffix or 'no suffix'})."
    )


def _torch_load(path: Path, lazy: bool) -> dict[str, torch.Tensor]:
    """A pickle checkpoint, on the CPU, through torch's weights-only unpickler: nothing in it is executed.

    ``lazy`` maps a zip-format file instead of reading it (for a look at names and shapes); the
    tensors are then backed by the file, so tensors to keep are loaded without it.
    """
    try:
        obj = load_torch_weights(path, mmap=lazy)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path} contains Python objects{what} that the safe loader will not execute; convert it to "
                ".safetensors with a tool you trust, or use a .safetensors release of the model."
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({text.splitlines()[0]}).") from None
    except Exception as err:  # zip/pickle/EOF errors of every kind: the file is damaged or not a checkpoint
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {first}).") from None

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a state dict.")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        log.debug("%s: ignoring %d entries that are not tensors", path, len(obj) - len(tensors))
    if not tensors:
        raise CheckpointError(f"{path} is not a checkpoint: it holds no tensors.")
    return tensors


def _stored_names(names: Iterable[str], path: Path) -> dict[str, str]:
    """canonical name → stored name; where a file holds both an alias and its canonical name, the canonical wins."""
    chosen: dict[str, str] = {}
    for stored in names:
        canonical = canonical_key(stored)
        if canonical in chosen and stored != canonical:
            log.debug("%s: %s duplicates %s; keeping %s", path, stored, canonical, canonical)
            continue
        chosen[canonical] = stored
    return chosen


def read_tensor_info(path: Path | str) -> dict[str, TensorInfo]:
    """Every tensor's canonical name, shape and dtype, reading only the header where the format allows."""
    path = _checked_file(path)
    if _format_of(path) == "safetensors":
        entries = {e.stored: e for e in read_header(path)}
        return {c: entries[s].info for c, s in _stored_names(entries, path).items()}
    tensors = _torch_load(path, lazy=True)
    names = _stored_names(tensors, path)
    return {c: TensorInfo(tuple(tensors[s].shape), tensors[s].dtype) for c, s in names.items()}


def load_state_dict(
    path: Path | str,
    device: str | torch.device = "cpu",
    *,
    keys: Collection[str] | None = None,
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under their canonical names, on ``device``.

    ``keys`` restricts loading to those canonical names (the rest is never read from a
    .safetensors file); ``dtypes`` gives per-key target dtypes for floating-point tensors (integer
    tensors keep theirs), applied one tensor at a time so no second full copy is ever held.
    """
    path = _checked_file(path)
    device = str(device)

    def convert(t: torch.Tensor, canonical: str) -> torch.Tensor:
        if dtypes is not None and t.is_floating_point():
            target = dtypes.get(canonical)
            if target is not None and target != t.dtype:
                t = t.to(target)
        return t

    out: dict[str, torch.Tensor] = {}
    if _format_of(path) == "safetensors":
        entries = {e.stored: e for e in read_header(path)}
        wanted = {s: c for c, s in _stored_names(entries, path).items() if keys is None or c in keys}
        # in file order: one forward pass over the file
        tensors = read_tensors(
            path, [e for e in entries.values() if e.stored in wanted], lambda t, e: convert(t, wanted[e.stored]), device
        )
        out = {wanted[stored]: t for stored, t in tensors.items()}
    else:
        tensors = _torch_load(path, lazy=False)
        for canonical, stored in _stored_names(tensors, path).items():
            if keys is None or canonical in keys:
                out[canonical] = convert(tensors.pop(stored).to(device), canonical)
    if not out and keys is None:
        raise CheckpointError(f"{path} is not a checkpoint: it holds no tensors.")
    return out


def checkpoint_sha256(path: Path | str) -> str:
    """The hex sha256 of a whole checkpoint file (what A1111 and Civitai show, the first 10 characters as
    "AutoV2"); a file gone or unreadable since the run began is a CheckpointError naming it."""
    return file_sha256(_checked_file(path))


# ------------------------------------------------------------------------------------------ saving


def save_state_dict(
    tensors: Mapping[str, torch.Tensor],
    path: Path | str,
    metadata: Mapping[str, str] | None = None,
    dtype: str | None = None,
    prune: bool = False,
    *,
    durable: bool = False,
) -> Path:
    """Save tensors as .safetensors, atomically.

    ``dtype`` ("fp16", "bf16", "fp32" or None to keep each tensor's) converts floating-point
    tensors only — integer tensors such as ``position_ids`` keep theirs. ``prune`` keeps only the
    UNet, VAE and text-encoder keys. ``durable`` syncs the file to the disk before it replaces the
    old one: for a merge that is kept (best.safetensors), not for a trial's throwaway merge.
    """
    target = parse_dtype(dtype)
    names = [k for k in tensors if not prune or is_kept_by_prune(k)]

    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return target if target is not None and t.is_floating_point() else t.dtype

    entries = [(k, out_dtype(tensors[k]), tuple(tensors[k].shape)) for k in names]

    def tensor_of(name: str) -> torch.Tensor:
        t = tensors[name]
        wanted = out_dtype(t)
        # convert on the tensor's own device (a GPU converts faster than it transfers)
        return t if t.dtype == wanted else t.to(wanted)

    return write_safetensors(path, entries, tensor_of, metadata, durable=durable)
