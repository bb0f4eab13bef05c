"""Scorer head weights: pinned download sources, the cache, sha256 checks, and .pth → safetensors.

A published head is fetched once, checked against its pinned sha256 (a mismatch is refused and the
file deleted), converted to ``.safetensors`` with the source hash in its metadata, and kept in the
cache dir. Later runs read only the safetensors file, so no pickle is ever opened twice, and the
``.pth`` itself is only ever read with torch's ``weights_only`` loader.

A published ``.safetensors`` file (PickScore) is kept as it is.

Every cached file has a ``<file>.sha256`` file beside it: the sha256 of the cached file's own bytes
(for PickScore, the published file's), its size and its mtime. A cached file of at most
``REHASH_LIMIT`` bytes (the heads: a few MB) is hashed again on every load; a larger one (the
PickScore and HPS v2.1 models, GBs) only when its size or mtime is no longer the recorded one. A
cached file whose bytes are not the recorded ones is refused (delete it to fetch it again). A file
cached by a bayes-merger that recorded no such digest gets it recorded on its first load.

A fetch or conversion writes to a hidden ``.<name>.<pid>.tmp`` file beside the cache (the name of
``files.atomic_path``'s temporary files): one whose process is gone (a fetch killed halfway, GBs for
PickScore) is removed before the next fetch (``files.remove_dead_temp_files``); one being written
by a live process is left alone.

Every published file is in one table below (``HeadSource`` constants). A pin of ``None`` is a
digest bayes-merger could not learn when the source was added: the first fetch is accepted, its
sha256 printed in a warning (compare it with the one on the file's page) and recorded in the cache,
and the cached file is checked against that record from then on, as above. Replace ``None`` by that
digest.

Cache dir: ``scorer.cache_dir`` if set, else ``$XDG_CACHE_HOME/bayes-merger`` (``~/.cache/bayes-merger``).
With ``HF_HUB_OFFLINE=1`` nothing is downloaded: a head that is not cached is an error saying where
to put the file. The CLIP and SigLIP backbones are not cached here: they come through the Hugging
Face cache, whose files bayes-merger does not hash.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bayes_merger.errors import ScorerError
from bayes_merger.scoring.base import Weights
from bayes_merger.files import (atomic_path, atomic_write_text, file_sha256, load_torch_weights, open_new,
                                remove_dead_temp_files, temp_path)

log = logging.getLogger(__name__)

#: A cached file up to this size is hashed again on every load; a larger one when its size or mtime changed.
REHASH_LIMIT = 64 << 20

#: Metadata key in our converted files: the sha256 of the .pth they were converted from.
SOURCE_SHA256_KEY = "source_sha256"

_TRUTHY = {"1", "ON", "YES", "TRUE"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: why a missing file was not fetched, in the sentences that say so
OFFLINE = "downloads are off (HF_HUB_OFFLINE is set)"


@dataclass(frozen=True)
class HeadSource:
    """A published head file: where it is, what it must hash to, and what it is called."""

    name: str
    description: str
    url: str
    sha256: str | None  # None: not pinned yet (see the module docstring)
    filename: str
    licence: str = ""

    @property
    def cached_name(self) -> str:
        """The converted file's name in the cache dir."""
        return Path(self.filename).stem + ".safetensors"

    @property
    def is_safetensors(self) -> bool:
        """Published as safetensors: cached as it is, with no conversion."""
        return self.filename.endswith(".safetensors")


LAION_HEAD = HeadSource(
    name="laion",
    description="LAION improved aesthetic predictor head",
    url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac+logos+ava1-l14-linearMSE.pth",
    sha256="21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
    filename="sac+logos+ava1-l14-linearMSE.pth",
    licence="Apache-2.0",
)

CHAD_HEAD = HeadSource(
    name="chad",
    description="SD-Chad aesthetic head",
    url="https://github.com/grexzen/SD-Chad/raw/main/chadscorer.pth",
    sha256="ba265592f419d88ad66216257d54c57eae08ae2fde0b8be167bbe7ddc09206bd",
    filename="chadscorer.pth",
    licence="Apache-2.0",
)

# --- Pins not verified: these digests could not be learnt offline when the sources were added.
# The first fetch prints the file's sha256; check it against the file's page and put it here.
PICKSCORE = HeadSource(
    name="pickscore",
    description="PickScore v1 model (CLIP ViT-H/14 fine-tuned on Pick-a-Pic)",
    url="https://huggingface.co/yuvalkirstain/PickScore_v1/resolve/main/model.safetensors",
    sha256=None,  # UNVERIFIED
    filename="PickScore_v1.safetensors",
    licence="MIT (the PickScore repository, yuvalkirstain/PickScore)",
)

HPS_V21 = HeadSource(
    name="hpsv2",
    description="HPS v2.1 model (open_clip ViT-H/14 fine-tuned on HPD v2)",
    url="https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt",
    sha256=None,  # UNVERIFIED
    filename="HPS_v2.1_compressed.pt",
    licence="Apache-2.0 (tgxs002/HPSv2)",
)

AESTHETIC_V25 = HeadSource(
    name="aesthetic_v25",
    description="aesthetic predictor v2.5 head (on SigLIP so400m)",
    url="https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/aesthetic_predictor_v2_5.pth",
    sha256=None,  # UNVERIFIED
    filename="aesthetic_predictor_v2_5.pth",
    licence="AGPL-3.0 (discus0434/aesthetic-predictor-v2-5): you download it; bayes-merger ships no copy",
)

#: Downloads a URL to a local file; may raise requests/OS errors (turned into ScorerError).
Downloader = Callable[[str, Path], None]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bayes-merger``, or ``~/.cache/bayes-merger`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "bayes-merger"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def downloads_disabled() -> bool:
    """True when HF_HUB_OFFLINE asks for no network (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUTHY


def http_download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest``; a truncated file is caught by the sha256 check that follows."""
    import requests  # imported here: only a first-time download needs it

    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        with open_new(dest) as handle:
            for chunk in response.iter_content(chunk_size=1 << 20):
                handle.write(chunk)


def pinned_head(source: HeadSource, cache_dir: Path, download: Downloader | None = None) -> Path:
    """The cached safetensors file of a published head, fetching and converting it if needed.

    Looks, in order, for the converted file in ``cache_dir`` (its bytes checked against the sha256
    recorded when it was cached: ``check_cached``), for the original ``.pth`` put there by hand
    (checked, then converted), and finally downloads it (unless HF_HUB_OFFLINE is set).
    """
    cached = cache_dir / source.cached_name
    if cached.is_file():
        recorded = converted_from(cached)
        if recorded is not None and (recorded == source.sha256 or source.sha256 is None):
            check_cached(cached)
            return cached
        if source.is_safetensors:  # put there by hand (cached_name == filename): check it once
            _store(source, cached, cached, _verified_digest(cached, source))
            return cached
        log.warning("%s does not come from the pinned %s; fetching it again", cached, source.filename)
    else:  # a record left without its file would refuse the next copy put there by hand
        _digest_file(cached).unlink(missing_ok=True)

    placed = cache_dir / source.filename
    if placed.is_file():
        _store(source, placed, cached, _verified_digest(placed, source))
        return cached

    if downloads_disabled():
        raise ScorerError(_missing_message(source, cache_dir, OFFLINE))

    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(cache_dir)  # a fetch killed halfway left its file: GBs, for PickScore
    with _temp_beside(cache_dir / source.filename) as tmp:
        log.info("Downloading the %s from %s", source.description, source.url)
        try:
            (download or http_download)(source.url, tmp)
        except Exception as exc:  # requests, OS and HTTP errors alike mean: not downloaded
            raise ScorerError(_missing_message(source, cache_dir, f"the download failed ({exc})")) from exc
        _store(source, tmp, cached, _verified_digest(tmp, source))
    return cached


def head_weights(source: HeadSource, cache_dir: str | os.PathLike[str] | None) -> Weights:
    """A published head as ``pinned_head`` finds it: converted in the cache dir or put there by hand, else
    fetched."""
    cache = resolve_cache_dir(cache_dir)
    here = (cache / source.cached_name).is_file() or (cache / source.filename).is_file()
    return Weights(f"the {source.description}", here, True, _missing_message(source, cache, OFFLINE))


def local_file_weights(setting: str, value: str) -> Weights:
    """A head file the user names (``scorer.head``): never fetched, and read here (a head is a few MB), so that one
    that is not a head's is said by ``--check`` and before a run's start, not once its run folder is written."""
    path = Path(value).expanduser()
    if not path.is_file():
        return Weights(f"{setting} {value}", False, False, f"{setting} is {value!r}, but that file does not exist.")
    try:
        load_head_file(path)
    except ScorerError as error:
        return Weights(f"{setting} {value}", False, False, f"{setting}: {error}")
    return Weights(f"{setting} {value}", True, False, "")


def check_cached(path: Path) -> None:
    """Refuse a cached file whose bytes are not those recorded in ``<path>.sha256`` when it was cached.

    A file of at most ``REHASH_LIMIT`` bytes is hashed every time; a larger one only when its size or
    mtime differs from the recorded ones (hashing GBs on every load would cost more than the check is
    worth: any write to the file changes its mtime). A file with no record (cached by an earlier
    bayes-merger) gets one now.
    """
    record = _read_record(path)
    stat = path.stat()
    stamp = (stat.st_size, stat.st_mtime_ns)
    if record is None:
        _write_record(path, path, file_sha256(path), quiet=True)
        log.info("Recorded the sha256 of %s: it is checked against it from now on", path)
        return
    if stat.st_size > REHASH_LIMIT and record.stamp == stamp:
        return
    actual = file_sha256(path)
    if actual != record.sha256:
        raise ScorerError(
            f"{path} has changed since bayes-merger cached it (sha256 {actual}, recorded {record.sha256}), "
            "so it was not used: delete it to fetch it again."
        )
    if record.stamp != stamp:  # the same bytes, copied or touched: no need to hash a large file again
        _write_record(path, path, actual, quiet=True)


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """``files.temp_path(path)`` to download into, removed after the block: ``_store`` moves or converts what it
    holds into the cache, so unlike ``files.atomic_path`` nothing is renamed to ``path``. One a killed process
    left is known by its pid."""
    tmp = temp_path(path)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _verified_digest(path: Path, source: HeadSource) -> str:
    """The file's sha256 once it is known to be the source's: checked against the pin, or, with no
    pin yet, printed for the user to compare (the first fetch is trusted, and recorded)."""
    if source.sha256 is not None:
        check_sha256(path, source.sha256, what=source.description, url=source.url)
        return source.sha256
    digest = file_sha256(path)
    log.warning(
        "bayes-merger has no pinned sha256 for the %s yet: %s has sha256 %s. Compare it with the one shown "
        "for %s; it is recorded, and the cached file is checked against that record from now on.",
        source.description, path.name, digest, source.url,
    )
    return digest


def _store(source: HeadSource, path: Path, cached: Path, digest: str) -> None:
    """Put a checked file into the cache, its record beside it: safetensors as it is, a .pth converted.

    The record is written before the file is moved into place, so a cached file is never without one.
    """
    if source.is_safetensors:
        _write_record(cached, path, digest)
        if path != cached:
            os.replace(path, cached)
    else:
        with atomic_path(cached) as part:
            _save_converted(path, part, source_sha256=digest, source_url=source.url)
            _write_record(cached, part, file_sha256(part))
    log.info("Cached the %s as %s", source.description, cached)


class _Record(NamedTuple):
    """What ``<file>.sha256`` says: the file's sha256, and its (size, mtime_ns) then (None if not written)."""

    sha256: str
    stamp: tuple[int, int] | None


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> _Record | None:
    try:
        fields = _digest_file(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    if not fields or not _SHA256.fullmatch(fields[0].lower()):
        return None
    stamped = len(fields) >= 3 and fields[1].isdigit() and fields[2].isdigit()
    return _Record(fields[0].lower(), (int(fields[1]), int(fields[2])) if stamped else None)


def _write_record(cached: Path, written: Path, digest: str, *, quiet: bool = False) -> None:
    """Record ``digest`` and ``written``'s size and mtime (kept by the rename into ``cached``) beside ``cached``.

    ``quiet``: a cache that cannot be written (read-only, shared) only means the file is hashed again next time.
    """
    stat = written.stat()
    try:
        atomic_write_text(_digest_file(cached), f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")
    except OSError as exc:
        if not quiet:
            raise
        log.debug("Could not record the sha256 of %s (%s)", cached, exc)


def check_sha256(path: Path, expected: str, *, what: str, url: str = "") -> None:
    actual = file_sha256(path)
    if actual != expected:
        where = f" from {url}" if url else ""
        raise ScorerError(
            f"{path} has sha256 {actual}, but the {what}{where} must have sha256 {expected}; "
            "the file was not used (delete it and download it again)."
        )


def load_head_file(path: Path) -> dict[str, torch.Tensor]:
    """A head's tensors from a ``.safetensors`` file, or from a ``.pth`` through ``weights_only``.

    Tensors come back on the CPU (the LAION file was saved from ``cuda:0``). A ``.pth`` holding
    ``{"state_dict": {...}}`` is unwrapped.
    """
    if not path.is_file():
        raise ScorerError(f"Head file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ScorerError(f"{path} is not a readable safetensors file ({_first_line(exc)}).") from exc
    try:
        loaded = load_torch_weights(path)
    except Exception as exc:
        raise ScorerError(
            f"{path} could not be read as a plain PyTorch state dict with weights_only=True ({_first_line(exc)}); "
            "files that need arbitrary pickled code are refused."
        ) from exc
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ScorerError(f"{path} does not hold a state dict of tensors (found {type(loaded).__name__}).")
    return {str(k): v for k, v in loaded.items()}


def _first_line(error: Exception) -> str:
    """An exception's first sentence: torch's weights_only refusal runs to a dozen lines of advice."""
    lines = str(error).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__


def _save_converted(source: Path, dest: Path, *, source_sha256: str, source_url: str) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in load_head_file(source).items()}
    metadata = {SOURCE_SHA256_KEY: source_sha256, "source_url": source_url, "format": "pt"}
    save_file(tensors, str(dest), metadata=metadata)


def converted_from(path: Path) -> str | None:
    """The source sha256 recorded for a cached file: in the metadata of one of our converted
    safetensors files, else the sha256 in the ``.sha256`` file beside it (a published safetensors
    file is cached as it is, so its own sha256 is its source's); None when there is neither."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(SOURCE_SHA256_KEY)
    except Exception:  # unreadable or foreign: its record, if any, decides (and check_cached refuses it)
        recorded = None
    if recorded:
        return recorded
    record = _read_record(path)
    return record.sha256 if record else None


def _missing_message(source: HeadSource, cache_dir: Path, why: str) -> str:
    digest = f"sha256 {source.sha256}" if source.sha256 else "its sha256 is printed when it is first used"
    # scorer.head names one head: the scorer's own, not an ensemble member's, which read the cache
    head = (" (or, for this scorer alone, not in an ensemble, set scorer.head to a local copy of that file)"
            if source.name in ("laion", "chad") else "")
    return (
        f"The {source.description} is not cached and {why}. Download {source.url} "
        f"({digest}) and save it as {cache_dir / source.filename}{head}."
    )
