"""Which torch device a ``device`` setting (``merge.device``, ``scorer.device``) names, how much memory it has free,
and what running out of it means for a run."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from bayes_merger.errors import ConfigError, LocalOutOfMemory


def resolve_device(name: str, what: str = "device") -> torch.device:
    """``"auto"`` is the first CUDA device when torch sees one, else the CPU; other names are taken as they are.

    ``what`` names the setting in the error (``"merge device"``, ``"scorer device"``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"Unknown {what} {name!r}: it is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what.capitalize()} {name!r} asked for, but torch sees no CUDA device; use auto or cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what.capitalize()} {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                          f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")  # a raw error at the load
    return device


@contextmanager
def out_of_memory_stops(what: str, advice: str) -> Iterator[None]:
    """torch's out-of-memory error (CUDA's) as a LocalOutOfMemory, which stops the run resumably: a RuntimeError,
    it ended the run with a traceback, and every trial after it would run out too."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        raise LocalOutOfMemory(f"{what} ran out of GPU memory ({first}); the WebUI on that GPU holds the rest: "
                               f"{advice}") from error


def release_cached_memory(device: torch.device) -> None:
    """Hand the memory torch's CUDA caching allocator holds but no tensor uses back to the driver: after the
    models load, what loading and precomputing let go of (B and C beside A and B − C) would otherwise stay
    taken from the GPU the WebUI shares, for the whole run. Nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def available_bytes(device: torch.device) -> int:
    """Memory the device can still give: CUDA's free memory, or the system's MemAvailable (0 if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
