"""The .safetensors format: its header read and checked, tensors read into memory of their own, files streamed out.

The checks are those of safetensors' own loader, so a truncated or damaged file is refused when its
header is read. Reading copies each tensor straight from the file into a tensor of its own; writing
streams tensor by tensor from the tensors' memory into a temporary file renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bayes_merger.errors import CheckpointError
from bayes_merger.files import atomic_path, open_new

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}
_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in _ST_DTYPES}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's shape and dtype, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype


_MAX_HEADER = 100_000_000  # safetensors' own limit: a larger "header" is a file that is not safetensors


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies in a .safetensors file."""

    stored: str
    info: TensorInfo
    start: int  # absolute file offset of the tensor's bytes
    size: int


def read_header(path: Path) -> list[Entry]:
    """Parse and check a .safetensors header: every tensor's place in the file, nothing else read.

    The checks are those of safetensors' own loader (offsets tile the data exactly, sizes match
    shapes and dtypes), so a truncated or damaged file is refused here rather than half-read later.
    """

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: {reason}).")

    file_size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{file_size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > file_size:
            raise bad(f"header length {length} does not fit a {file_size}-byte file")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    data_start = 8 + length
    entries = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _TORCH_DTYPES[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has an unreadable or unsupported description {meta!r}") from None
        size = math.prod(shape) * _ITEMSIZE[dtype]
        if min(shape, default=0) < 0 or end - begin != size:
            raise bad(f"tensor {name!r} takes {end - begin} bytes, its shape and dtype need {size}")
        entries.append(Entry(name, TensorInfo(shape, dtype), data_start + begin, size))
    entries.sort(key=lambda e: e.start)
    position = data_start
    for entry in entries:
        if entry.start != position:
            raise bad(f"tensor {entry.stored!r} does not start where the previous one ends")
        position += entry.size
    if position != file_size:
        raise bad(f"the tensors need {position} bytes, the file has {file_size}")
    return entries


def read_tensors(
    path: Path, entries: Iterable[Entry], convert: Callable[[torch.Tensor, Entry], torch.Tensor], device: str
) -> dict[str, torch.Tensor]:
    """Read tensors straight from the file into tensors of their own (one copy, no memory map).

    safetensors' own loader hands out tensors backed by a memory map of the file: each page is
    faulted in on first use (measured here 8x slower than reading the same bytes) and stays the
    file's, not ours. Reading into owned tensors makes "loaded once, resident" true.
    """
    out: dict[str, torch.Tensor] = {}
    with path.open("rb", buffering=0) as f:
        for entry in entries:
            t = torch.empty(entry.info.shape, dtype=entry.info.dtype)
            if entry.size:
                f.seek(entry.start)
                view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                done = 0
                while done < entry.size:
                    n = f.readinto(view[done:])
                    if not n:
                        raise CheckpointError(f"{path} is not a readable safetensors file (truncated while reading).")
                    done += n
            if device != "cpu":
                t = t.to(device)
            out[entry.stored] = convert(t, entry)
    return out


def _raw_bytes(t: torch.Tensor):
    """The tensor's bytes as a buffer, without a copy for contiguous CPU tensors."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy()


def safetensors_header(entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
                       metadata: Mapping[str, str] | None = None) -> tuple[bytes, list[int]]:
    """The JSON header of a .safetensors file of ``entries`` (name, dtype, shape, in file order), padded so
    that the data starts 8-byte aligned as safetensors' own writer does, and each entry's size in bytes."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    sizes = []
    for name, dtype, shape in entries:
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"Cannot save tensor {name}: dtype {dtype} has no safetensors equivalent.")
        numel = 1
        for d in shape:
            numel *= int(d)
        size = numel * _ITEMSIZE[dtype]
        header[name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, offset + size],
        }
        offset += size
        sizes.append(size)
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8), sizes


def write_safetensors(
    path: Path | str,
    entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
    tensor_of: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    durable: bool = False,
) -> Path:
    """Write a .safetensors file tensor by tensor, atomically (temporary file, then rename).

    ``entries`` lists (name, dtype, shape) in file order; ``tensor_of(name)`` is called once per
    entry, in that order, and must return a tensor of that dtype and shape on any device. Only one
    tensor is held at a time beyond what the caller holds, and a contiguous CPU tensor is written
    from its own memory, so writing costs about what a plain write of the same bytes costs.

    ``durable`` syncs the file before the rename (and the folder after it), so a power loss leaves the
    old file or the whole new one, never an empty one: for a merge that is kept (best.safetensors). A
    trial's merge is not: it is thrown away after its render, and a sync would make each trial wait
    for the disk (seconds for a checkpoint-sized file).
    """
    path = Path(path)
    blob, sizes = safetensors_header(entries, metadata)
    try:
        # the temporary file is hidden and does not end in .safetensors: a WebUI scanning the folder
        # never lists a half-written file. open_new: never written through a link planted at its name
        with atomic_path(path, durable=durable) as tmp, open_new(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for (name, dtype, shape), size in zip(entries, sizes):
                t = tensor_of(name)
                if t.dtype != dtype or tuple(t.shape) != tuple(int(d) for d in shape):
                    raise ValueError(f"tensor {name} is {t.dtype} {tuple(t.shape)}, announced {dtype} {tuple(shape)}")
                written = f.write(_raw_bytes(t))
                if written != size:
                    raise OSError(f"short write of tensor {name}: {written} of {size} bytes")
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except OSError as err:
        raise CheckpointError(f"Cannot write {path}: {err}.") from None
    return path
