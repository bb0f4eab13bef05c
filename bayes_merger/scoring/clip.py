"""The CLIP image backbone: images → L2-normalised projected embeddings, batched, on one device.

Preprocessing is OpenAI's CLIP pipeline, the one the aesthetic heads were trained with: shortest
side resized to 224 (bicubic, the long side truncated like torchvision's ``Resize``), centre crop
224 (offsets rounded like torchvision's ``CenterCrop``), RGB, scaled to [0, 1], normalised. It is done
here with PIL and numpy rather than by ``CLIPImageProcessor`` because transformers' processors floor
the crop offset (one pixel off OpenAI for some sizes) and, with torchvision installed, resize with
torch kernels instead of PIL's; the processor's saved settings (size, crop, mean, std) are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from bayes_merger.devices import resolve_device
from bayes_merger.errors import ConfigError, ScorerError
from bayes_merger.scoring.base import Weights
from bayes_merger.scoring.weights import OFFLINE, downloads_disabled

log = logging.getLogger(__name__)

T = TypeVar("T")

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def normalised(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """An RGB image as the float32 array (3, height, width) a vision tower takes: scaled to 0–1, then
    normalised per channel."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@dataclass(frozen=True)
class Preprocessing:
    """OpenAI's CLIP image transform with its settings: resize shortest side, centre crop, normalise."""

    size: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image as a float32 array (3, crop_height, crop_width)."""
        image = image.convert("RGB")
        width, height = image.size
        # torchvision Resize(int): the short side becomes `size`, the long side int(size·long/short)
        if width <= height:
            new_w, new_h = self.size, int(self.size * height / width)
        else:
            new_w, new_h = int(self.size * width / height), self.size
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=Image.Resampling(self.resample))
        # torchvision CenterCrop: offsets int(round(Δ / 2)) (Python rounds halves to even)
        left = int(round((new_w - self.crop_width) / 2.0))
        top = int(round((new_h - self.crop_height) / 2.0))
        image = image.crop((left, top, left + self.crop_width, top + self.crop_height))
        return normalised(image, self.mean, self.std)

    @classmethod
    def from_processor(cls, processor: object) -> Preprocessing:
        """The settings of a saved ``CLIPImageProcessor`` (its preprocessor_config.json)."""
        size = getattr(processor, "size", None) or {}
        crop = getattr(processor, "crop_size", None) or {}
        shortest = size.get("shortest_edge") or size.get("height") or 224
        return cls(
            size=int(shortest),
            crop_height=int(crop.get("height") or shortest),
            crop_width=int(crop.get("width") or shortest),
            mean=tuple(float(v) for v in getattr(processor, "image_mean", OPENAI_CLIP_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in getattr(processor, "image_std", OPENAI_CLIP_STD)),  # type: ignore[arg-type]
            resample=int(getattr(processor, "resample", Image.Resampling.BICUBIC)),
        )


class ClipEmbedder:
    """A CLIP vision tower with its projection, loaded once, embedding images in batches."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        device: torch.device,
        batch_size: int = 8,
        source: str = "",
    ) -> None:
        check_batch_size(batch_size)
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.device = device
        self.batch_size = batch_size
        self.source = source
        self.dtype = next(model.parameters()).dtype
        # The last call's embeddings by image content, so scorers sharing this backbone in an
        # ensemble (laion + chad) run it once per batch of images, not once per scorer.
        self._memo: tuple[tuple[str, ...], torch.Tensor] | None = None

    @property
    def dim(self) -> int:
        """The size of the projected embedding (768 for ViT-L/14)."""
        return int(self.model.config.projection_dim)

    @classmethod
    def load(cls, clip: str = DEFAULT_CLIP, device: str = "auto", batch_size: int = 8) -> ClipEmbedder:
        """Load ``clip`` (a Hugging Face id or a local folder): fp16 on a GPU, fp32 on the CPU.

        A cached model is loaded without asking the network (``cache_first``); with HF_HUB_OFFLINE set
        nothing is downloaded, and a model that is not there is a ScorerError that says how to fetch it.
        """
        from transformers import CLIPVisionModelWithProjection

        check_batch_size(batch_size)  # config errors before the slow load
        torch_device = resolve_device(device, "scorer device")
        local = _looks_local(clip)
        source = str(Path(clip).expanduser()) if local else clip
        if local and not Path(source).is_dir():
            raise ScorerError(clip_weights(clip).missing)
        try:
            model, info = cache_first(CLIPVisionModelWithProjection, source, output_loading_info=True)
        except (OSError, ValueError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScorerError(_clip_missing_message(clip, local, downloads_disabled(), detail)) from exc
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ScorerError(
                f"scorer.clip {clip!r} has no weights for {', '.join(missing[:5])}: it must be a CLIP "
                f"model with its image projection, such as {DEFAULT_CLIP}."
            )
        preprocessing = _load_preprocessing(source, model)
        dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
        model = model.to(device=torch_device, dtype=dtype)
        log.info("CLIP %s loaded on %s (%s)", clip, torch_device, str(dtype).removeprefix("torch."))
        return cls(model, preprocessing, torch_device, batch_size, source=clip)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The preprocessed batch, float32 on the CPU: (n, 3, crop_height, crop_width)."""
        return torch.from_numpy(np.stack([self.preprocessing(image) for image in images]))

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised projected embeddings, float32 on the CPU: (n, dim)."""
        if not images:
            return torch.empty(0, self.dim)
        key = tuple(_fingerprint(image) for image in images)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        chunks = []
        with torch.inference_mode():
            for batch in batches(images, self.batch_size):
                pixels = self.pixel_values(batch)
                pixels = pixels.to(device=self.device, dtype=self.dtype)
                embeds = self.model(pixel_values=pixels).image_embeds.float()
                chunks.append(torch.nn.functional.normalize(embeds, dim=-1).cpu())
        embeddings = torch.cat(chunks)
        self._memo = (key, embeddings)
        return embeddings


def check_batch_size(batch_size: int) -> None:
    """scorer.batch_size, for every scorer that batches its images."""
    if batch_size < 1:
        raise ConfigError(f"scorer.batch_size is {batch_size}; it must be at least 1.")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of ``size`` (the last one shorter): what a scorer's model takes at once."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fingerprint(image: Image.Image) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _looks_local(clip: str) -> bool:
    """A folder path rather than a Hugging Face id ("owner/name")."""
    return (
        Path(clip).expanduser().exists()
        or os.path.isabs(clip)
        or clip.startswith(("./", "../", "~", ".\\", "..\\"))
        or "\\" in clip
        or clip.count("/") > 1
    )


def _load_preprocessing(source: str, model: torch.nn.Module) -> Preprocessing:
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5: no torchvision needed
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    try:
        processor = cache_first(Processor, source)
    except (OSError, ValueError):
        size = int(getattr(model.config, "image_size", 224))
        log.warning("%s has no preprocessor_config.json; using OpenAI's CLIP preprocessing at %d px", source, size)
        return Preprocessing(size=size, crop_height=size, crop_width=size)
    return Preprocessing.from_processor(processor)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars for one load, then restore them.

    Loading the vision tower from the full CLIP checkpoint lists every text-tower key as
    "unexpected", which is expected; missing keys are checked by the caller instead.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def cache_first(loader: Any, source: str, usable: Callable[[Any], bool] = lambda loaded: True,
                **kwargs: Any) -> Any:
    """``loader.from_pretrained(source, **kwargs)``, quietly: from a local folder or the Hugging Face
    cache first, from the network only when that fails (or loads nothing ``usable``) and downloads are
    on. A cached model so loads at once without a network: asked with downloads allowed, the hub checks
    each file online first and retries for tens of seconds where there is no network, minutes where
    packets are dropped, for every model the run loads."""
    with quiet_transformers():
        if downloads_disabled():
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        try:
            loaded = loader.from_pretrained(source, local_files_only=True, **kwargs)
            if usable(loaded):
                return loaded
        except (OSError, ValueError):
            pass  # not cached, or only in part: fetched below
        return loader.from_pretrained(source, local_files_only=False, **kwargs)


def from_pretrained(loader: Any, source: str, name: str, what: str, setting: str, files: str, holding: str,
                    usable: Callable[[Any], bool] = lambda loaded: True) -> Any:
    """``cache_first(loader, source)``; a ScorerError saying how to fetch ``name``'s ``files``, or what
    a local folder must hold, if it fails or what it loads is not ``usable``."""
    offline = downloads_disabled()
    try:
        loaded = cache_first(loader, source, usable)
        if usable(loaded):
            return loaded
        detail: object = "what loaded is empty"
    except (OSError, ValueError) as exc:
        detail = exc
    why = OFFLINE if offline else "it could not be downloaded"
    raise ScorerError(_hub_missing_message(name, what, setting, files, holding, why, detail)
                      ) from (detail if isinstance(detail, Exception) else None)


def _hub_missing_message(name: str, what: str, setting: str, files: str, holding: str, why: str, detail: object) -> str:
    return (f"The {what} {name!r} ({setting}) is not in the Hugging Face cache and {why}. Fetch it once with "
            f"network: `hf download {name} {files}`, or set {setting} to a local folder holding {holding}. ({detail})")


#: What a model's ``from_pretrained`` reads from the cache: its config, and its weights in one of the
#: layouts transformers loads (a name, or a tuple of names any one of which will do).
MODEL_FILES: tuple[str | tuple[str, ...], ...] = (
    "config.json", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"))


def hub_weights(name: str, what: str, setting: str, files: str, holding: str,
                needs: Sequence[str | tuple[str, ...]]) -> Weights:
    """What ``from_pretrained`` loads: a local folder, or ``name`` from the Hugging Face cache, where it
    ``needs`` those files (a download cut halfway holds some)."""
    return _folder_or_hub_weights(name, f"the {what} {name}", setting, needs,
                                  lambda detail: _hub_missing_message(name, what, setting, files, holding, OFFLINE, detail))


def clip_weights(clip: str) -> Weights:
    """What ``ClipEmbedder.load`` loads (its missing sentence names the cache, as the load's does)."""
    return _folder_or_hub_weights(clip, f"CLIP {clip}", "scorer.clip", MODEL_FILES,
                                  lambda detail: _clip_missing_message(clip, False, True, detail))


def _folder_or_hub_weights(name: str, label: str, setting: str, needs: Sequence[str | tuple[str, ...]],
                           missing: Callable[[str], str]) -> Weights:
    if _looks_local(name):
        return _local_folder_weights(setting, name, needs)
    absent = next((files for files in needs if not _in_hub_cache(name, files)), None)
    if absent is None:
        return Weights(label, True, True, "")
    first = absent if isinstance(absent, str) else absent[0]  # the one `hf download` is told to fetch
    return Weights(label, False, True, missing(f"no {first} cached"))


def _local_folder_weights(setting: str, value: str, needs: Sequence[str | tuple[str, ...]]) -> Weights:
    """A folder the user names (``scorer.clip``, ``scorer.siglip``, ``scorer.tokenizer``): never fetched; here when
    it holds what the load ``needs`` (an existing folder without them failed only at the start, its run folder
    written)."""
    folder = Path(value).expanduser()
    if not folder.is_dir():
        return Weights(f"{setting} {value}", False, False, f"{setting} is {value!r}, but that folder does not exist.")
    absent = next((files for files in needs
                   if not any((folder / name).is_file() for name in ((files,) if isinstance(files, str) else files))),
                  None)
    if absent is not None:
        named = absent if isinstance(absent, str) else " or ".join(absent)
        return Weights(f"{setting} {value}", False, False,
                       f"{setting} is {value!r}, but that folder holds no {named}: give the folder a model was saved "
                       "to (save_pretrained), or its Hugging Face name.")
    return Weights(f"{setting} {value}", True, False, "")


def _in_hub_cache(repo: str, files: str | tuple[str, ...]) -> bool:
    """Whether the Hugging Face cache holds ``files`` (one of them, for a tuple) of ``repo`` at its main
    revision, as a load with downloads off finds it. True when unsure (a name the hub would refuse): the
    load then says what is wrong."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, filename), str)
                   for filename in ((files,) if isinstance(files, str) else files))
    except Exception:  # HFValidationError and the like: a name, not an answer about the cache
        return True


def _clip_missing_message(clip: str, local: bool, offline: bool, detail: str) -> str:
    if local:
        return (
            f"scorer.clip folder {clip!r} does not hold a CLIP model ({detail}); it needs config.json, "
            "model.safetensors (or pytorch_model.bin) and preprocessor_config.json."
        )
    from huggingface_hub import constants

    why = OFFLINE if offline else "it could not be downloaded"
    return (
        f"CLIP model {clip!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. "
        f"Fetch it once with network: `hf download {clip} config.json preprocessor_config.json "
        f"model.safetensors` (older huggingface_hub: `huggingface-cli download` with the same "
        "arguments), which fills that cache (HF_HOME or HF_HUB_CACHE move it); or set scorer.clip to "
        f"a local folder holding those files. ({detail})"
    )
