"""A fake AUTOMATIC1111 WebUI: the real HTTP API over real sockets, real checkpoint files, fake images.

It speaks the contract of ``shared/reference/a1111-api.md`` (field names, status codes, the three
error body shapes, ``--api-auth``) in three flavours: ``a1111`` (also reForge), ``forge`` (lazy
model load at the next generation, ``message`` in error bodies, plain ``{"detail"}`` for an
HTTPException, pydantic-v2 422s) and ``sdnext`` (``{"updated": [...]}``, keeps the old model on an
unknown name). This module holds the A1111 state: options, the checkpoints of its folder (selecting
one really loads the file; loads can be made to fail silently, or switches ignored while the new name
is reported) and txt2img, whose pictures
(``fake_txt2img``) are smooth functions of the loaded tensors, so different merges give different
images. The HTTP side, sockets, recorded requests and injected faults, is ``fake_http``.

Run it as "the WebUI" of a test or a demo: ``python -m bayes_merger.testing.fake_webui --checkpoint-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bayes_merger.files import file_sha256
from bayes_merger.testing.fake_http import FakeHTTPServer, _Response
from bayes_merger.testing.fake_serve import serve_until_stopped
from bayes_merger.testing.fake_txt2img import generate, model_features, read_tensors, validate, validation_detail

logger = logging.getLogger(__name__)

MODES = ("a1111", "forge", "sdnext")
VERSIONS = {"a1111": "v1.10.1", "forge": "f2.0.1v1.10.1-previous-669-gdfdcbab6", "sdnext": "v2024-10-30"}
# name → aliases, as A1111 v1.10's /samplers lists them (its API takes the name only: the aliases are
# for pasted infotexts)
SAMPLER_ALIASES = {"Euler": ["k_euler"], "Euler a": ["k_euler_a", "k_euler_ancestral"], "DPM++ 2M": ["k_dpmpp_2m"],
                   "DPM++ SDE": ["k_dpmpp_sde"], "DDIM": ["ddim"], "UniPC": ["unipc"]}
SAMPLERS = tuple(SAMPLER_ALIASES)
# name, label, aliases, as A1111 v1.10's /schedulers lists them
SCHEDULER_ENTRIES = (("automatic", "Automatic", []), ("uniform", "Uniform", []), ("karras", "Karras", []),
                     ("exponential", "Exponential", []), ("sgm_uniform", "SGM Uniform", ["SGMUniform"]))
SCHEDULERS = tuple(name for name, _, _ in SCHEDULER_ENTRIES)
# name, scale: A1111 v1.10's /upscalers without any model added (None, Lanczos and Nearest first, the
# others sorted by name, its realesrgan_enabled_models default), and its /latent-upscale-modes
UPSCALER_ENTRIES = (("None", 4), ("Lanczos", 4), ("Nearest", 4), ("DAT x2", 2), ("DAT x3", 3), ("DAT x4", 4),
                    ("ESRGAN_4x", 4), ("LDSR", 4), ("R-ESRGAN 4x+", 4), ("R-ESRGAN 4x+ Anime6B", 4),
                    ("ScuNET GAN", 4), ("ScuNET PSNR", 4), ("SwinIR 4x", 4))
UPSCALERS = tuple(name for name, _ in UPSCALER_ENTRIES)
LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                        "Latent (nearest)", "Latent (nearest-exact)")

# the titles of A1111 v1.10's own txt2img scripts (selectable, and always-on with a UI), lower-cased as its
# /scripts lists them; its API looks script_name and alwayson_scripts' keys up among them, case aside
SCRIPTS = ("prompt matrix", "prompts from file or textbox", "x/y/z plot", "extra options", "hypertile", "refiner",
           "sampler", "seed")

_DEFAULT_OPTIONS = {
    "sd_model_checkpoint": "", "samples_format": "png", "return_grid": True, "grid_only_if_multiple": True,
    "sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0, "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic",
}


@dataclass(frozen=True)
class _Checkpoint:
    name: str  # path relative to the checkpoint folder, with "/" and extension, as A1111 lists it
    path: Path
    stamp: tuple[int, int]  # (mtime_ns, size) when scanned: the key of the hash cache

    @property
    def model_name(self) -> str:
        return self.name.rsplit(".", 1)[0].replace("/", "_")

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass(frozen=True)
class _LoadedModel:
    checkpoint: _Checkpoint
    sha256: str
    features: np.ndarray  # five numbers in (0, 1) that drive the rendered picture


class FakeWebUI(FakeHTTPServer):
    """A fake A1111 API server on 127.0.0.1, for tests and the offline demo."""

    def __init__(self, checkpoint_dir: Path, mode: str = "a1111", auth: str | None = None, port: int = 0, *,
                 host: str = "127.0.0.1", max_image_size: int = 64) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        super().__init__(auth=auth, port=port, host=host)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.mode = mode
        self.max_image_size = max_image_size
        self._queue_lock = threading.Lock()  # generation and model loads run one at a time, as in A1111
        self._failing_loads = 0
        self._failing_loads_keep_option = False
        self._ignoring_switch = False
        self._stuck_features: np.ndarray | None = None  # what every picture shows while ignoring switches
        self._options: dict[str, Any] = dict(_DEFAULT_OPTIONS)
        self._checkpoints: list[_Checkpoint] = []
        self._hashes: dict[tuple[str, tuple[int, int]], str] = {}  # A1111's cache.json
        self._loaded: _LoadedModel | None = None
        self._pending: _Checkpoint | None = None  # Forge: selected, to load at the next generation
        self._load_count = 0
        self._render_seconds = 0.0
        self._styles: dict[str, str] = {}  # A1111's styles.csv: name → prompt
        # false: /scripts lists none, as A1111 with --nowebui until a first txt2img has set its scripts up
        self.lists_scripts = True
        self._interrupt = threading.Event()  # A1111's state.interrupted: set by /interrupt, cleared as a generation begins
        self._generations: list[str] = []  # how each generation ended: "done" or "interrupted"
        self._rendering = threading.Event()  # a generation is under way (render_for's wait)
        self._routes: dict[tuple[str, str], Callable[[Any], _Response]] = {
            ("GET", "/sdapi/v1/progress"): self._progress,
            ("GET", "/sdapi/v1/options"): self._get_options,
            ("POST", "/sdapi/v1/options"): self._set_options,
            ("GET", "/sdapi/v1/sd-models"): self._sd_models,
            ("POST", "/sdapi/v1/refresh-checkpoints"): self._refresh,
            ("POST", "/sdapi/v1/txt2img"): self._txt2img,
            ("POST", "/sdapi/v1/interrupt"): self._interrupt_generation,
            ("GET", "/sdapi/v1/samplers"): self._samplers,
            ("GET", "/sdapi/v1/upscalers"): self._upscalers,
            ("GET", "/sdapi/v1/scripts"): self._scripts,
        }
        if mode != "sdnext":
            self._routes[("GET", "/sdapi/v1/schedulers")] = self._schedulers
            # SD.Next is not known to serve it (nor how it treats hr_* fields): left out, so a client must
            # cope with its 404
            self._routes[("GET", "/sdapi/v1/latent-upscale-modes")] = self._latent_upscale_modes

    # ----------------------------------------------------------------------------- lifecycle

    def _on_start(self) -> None:
        self._scan()
        self._startup_load()

    def _on_stop(self) -> None:
        self._loaded = self._pending = None

    def _log_started(self) -> None:
        logger.info("fake WebUI (%s) serving %s, checkpoints in %s", self.mode, self.url, self.checkpoint_dir)

    def _route(self, method: str, path: str, raw: bytes) -> Any:
        route = self._routes.get((method, path))
        if route is None:
            if any(p == path for _, p in self._routes):
                return _Response(405, {"detail": "Method Not Allowed"})
            return _Response(404, {"detail": "Not Found"})
        return route(raw)

    def stop(self) -> None:
        self._interrupt.set()  # a killed process renders no more
        super().stop()

    def restart(self, forget_selection: bool = False) -> None:
        """Stop and start on the same port. Like A1111, it reloads the checkpoint selected before
        (its config.json), or the first one listed when that is gone or ``forget_selection``."""
        self.stop()
        if forget_selection:
            with self._lock:
                self._options["sd_model_checkpoint"] = ""
        self.start()

    # ---------------------------------------------------------------------------- A1111 state

    def fail_loads(self, count: int = 1, keep_option: bool = False) -> None:
        """Make the next ``count`` model loads fail silently: the old model stays, the answer is 200.
        The option goes back to the old model (A1111), or shows the new one if ``keep_option``."""
        with self._lock:
            self._failing_loads = count
            self._failing_loads_keep_option = keep_option

    def ignore_model_switch(self, ignore: bool = True) -> None:
        """Report every new selection (options, ``info.sd_model_name``) but keep rendering the model
        loaded now, as a stuck model cache or an extension that swallows the switch does."""
        with self._lock:
            self._ignoring_switch = ignore
            self._stuck_features = self._loaded.features if ignore and self._loaded else None

    def add_style(self, name: str, prompt: str) -> None:
        """Save a style, as A1111's styles.csv holds it: a payload's ``styles: [name]`` adds ``prompt`` to
        the prompt rendered (``{prompt}`` in it stands for the payload's)."""
        with self._lock:
            self._styles[name] = prompt

    def render_for(self, seconds: float) -> None:
        """Make each generation take ``seconds``, holding the generation queue as A1111 does, unless
        ``POST /sdapi/v1/interrupt`` ends it sooner (0: at once)."""
        with self._lock:
            self._render_seconds = seconds

    def wait_until_rendering(self, timeout: float = 30.0) -> None:
        """Block until a generation is under way (one ``render_for`` makes last)."""
        if not self._rendering.wait(timeout):
            raise TimeoutError(f"no generation under way within {timeout} s")

    @property
    def generations(self) -> list[str]:
        """How each generation ended, in order: "done", or "interrupted" by ``/sdapi/v1/interrupt``."""
        with self._lock:
            return list(self._generations)

    def clear_faults(self) -> None:
        super().clear_faults()
        with self._lock:
            self._failing_loads = 0
            self._failing_loads_keep_option = False
            self._ignoring_switch = False
            self._stuck_features = None

    @property
    def loaded_model(self) -> str | None:
        """The checkpoint (relative name) whose weights are in memory, or None."""
        with self._lock:
            return self._loaded.checkpoint.name if self._loaded else None

    @property
    def loaded_sha256(self) -> str | None:
        with self._lock:
            return self._loaded.sha256 if self._loaded else None

    @property
    def load_count(self) -> int:
        """How many checkpoint files the server has read since it was created."""
        with self._lock:
            return self._load_count

    @property
    def options(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._options)

    def set_option(self, key: str, value: Any) -> None:
        """Change a server option without a request, e.g. ``samples_format`` to ``"jpg"`` or ``"webp"``."""
        with self._lock:
            self._options[key] = value

    # error bodies: the three shapes of the API reference, in this mode's flavour

    def _exception(self, message: str, error: str = "RuntimeError") -> _Response:
        key = "message" if self.mode == "forge" else "errors"
        return _Response(500, {"error": error, "detail": "", "body": "", key: message})

    def _http_exception(self, status: int, detail: str) -> _Response:
        if self.mode == "forge":
            return _Response(status, {"detail": detail})
        return _Response(status, {"error": "HTTPException", "detail": detail, "body": "", "errors": detail})

    def _invalid(self, errors: list[tuple[list[Any], str, Any]]) -> _Response:
        return _Response(422, {"detail": validation_detail(errors, pydantic_v2=self.mode == "forge")})

    def _json_object(self, raw: bytes) -> dict[str, Any] | _Response:
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self._invalid([(["body"], "dict", body)])
        return body

    # --------------------------------------------------------------------------- endpoints

    def _progress(self, raw: bytes) -> _Response:
        # A1111's state.interrupted: set by /interrupt, kept after the generation ends, cleared by the next
        state = {"skipped": False, "interrupted": self._interrupt.is_set(), "job": "", "job_count": 0, "job_timestamp": "0",
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return _Response(200, {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                               "textinfo": None})

    def _get_options(self, raw: bytes) -> _Response:
        return _Response(200, self.options)

    def _set_options(self, raw: bytes) -> _Response:
        body = self._json_object(raw)
        if isinstance(body, _Response):
            return body
        updated = []
        for key, value in body.items():
            if key != "sd_model_checkpoint":
                with self._lock:
                    if key not in self._options and self.mode != "sdnext":
                        # A1111's Options.set looks the option up (data_labels[key]): the keys before it are set
                        return self._exception(repr(key), "KeyError")
                    updated.append({key: self._options.get(key) != value})
                    self._options[key] = value
                continue
            with self._queue_lock, self._lock:
                checkpoint = self._resolve(str(value))
                if checkpoint is None:
                    if self.mode == "sdnext":  # SD.Next keeps the old model and says nothing
                        logger.warning("fake WebUI: unknown checkpoint %r, keeping the old one", value)
                        updated.append({key: False})
                        continue
                    return self._exception(f"model {value!r} not found")
                updated.append({key: self._select(checkpoint, str(value))})
        return _Response(200, {"updated": updated} if self.mode == "sdnext" else None)

    def _sd_models(self, raw: bytes) -> _Response:
        with self._lock:
            listed = [
                {"title": self._title(c), "model_name": c.model_name, "hash": (self._sha(c) or "")[:10] or None,
                 "sha256": self._sha(c), "filename": str(c.path), "config": None}
                for c in self._checkpoints
            ]
        return _Response(200, listed)

    def _refresh(self, raw: bytes) -> _Response:
        with self._queue_lock, self._lock:
            self._scan()
        return _Response(200, None)

    def _samplers(self, raw: bytes) -> _Response:
        return _Response(200, [{"name": name, "aliases": aliases, "options": {}} for name, aliases in SAMPLER_ALIASES.items()])

    def _schedulers(self, raw: bytes) -> _Response:
        return _Response(200, [{"name": name, "label": label, "aliases": aliases or None, "default_rho": -1,
                                "need_inner_model": False} for name, label, aliases in SCHEDULER_ENTRIES])

    def _upscalers(self, raw: bytes) -> _Response:
        return _Response(200, [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": scale}
                               for name, scale in UPSCALER_ENTRIES])

    def _scripts(self, raw: bytes) -> _Response:
        listed = list(SCRIPTS) if self.lists_scripts else []
        return _Response(200, {"txt2img": listed, "img2img": listed})

    def _latent_upscale_modes(self, raw: bytes) -> _Response:
        return _Response(200, [{"name": name} for name in LATENT_UPSCALE_MODES])

    def _hires_refusal(self, values: dict[str, Any]) -> _Response | None:
        """A1111's answer to a hires fix it cannot run (processing.py), or None: its init looks
        hr_upscaler up among the latent modes, then the upscalers; its second pass creates hr_sampler_name
        by name (a UI word such as "Use same sampler" included). An unknown hr_scheduler renders silently."""
        upscaler = values["hr_upscaler"]
        if upscaler is not None and upscaler not in LATENT_UPSCALE_MODES and upscaler not in UPSCALERS:
            return self._exception(f"could not find upscaler named {upscaler}", "Exception")
        sampler = values["hr_sampler_name"]
        if sampler and sampler not in SAMPLERS:
            return self._exception(f"bad sampler name: {sampler}", "AssertionError")
        return None

    def _checkpoint_refusal(self, values: dict[str, Any]) -> _Response | None:
        """A1111's answer to a refiner or hires-pass checkpoint it does not list (sd_models.get_closet_checkpoint_match:
        one of its names, else the shortest title holding the name, else holding it without its [hash])."""
        names = []
        if values.get("refiner_checkpoint") not in (None, "", "None", "none"):
            names.append(str(values["refiner_checkpoint"]))
        if values["enable_hr"] and values.get("hr_checkpoint_name") not in (None, "", "Use same checkpoint"):
            names.append(str(values["hr_checkpoint_name"]))
        for name in names:
            titles = [self._title(c) for c in self._checkpoints]
            known = {*titles, *(c.model_name for c in self._checkpoints),
                     *(c.path.relative_to(self.checkpoint_dir).as_posix() for c in self._checkpoints)}
            bare = re.sub(r"\s\[[^]]+]\s*$", "", name)
            if name not in known and not any(name in t or bare in t for t in titles):
                return self._exception(f"Could not find checkpoint with name {name}", "Exception")
        return None

    def _interrupt_generation(self, raw: bytes) -> _Response:
        self._interrupt.set()
        return _Response(200, {})

    def _txt2img(self, raw: bytes) -> _Response:
        body = self._json_object(raw)
        if isinstance(body, _Response):
            return body
        values, errors = validate(body)
        if errors:
            return self._invalid(errors)
        if self.mode != "sdnext":  # api.script_name_to_index, before the queue lock
            always_on = values["alwayson_scripts"] if isinstance(values["alwayson_scripts"], dict) else {}
            for name in (values["script_name"], *always_on):
                if name and str(name).lower() not in SCRIPTS:
                    return self._http_exception(422, f"Script '{name}' not found")
        sampler = values["sampler_name"] or values["sampler_index"]
        if self.mode != "sdnext":  # A1111 splits a legacy "DPM++ 2M Karras" into sampler and scheduler
            suffixes = [option for name, label, aliases in SCHEDULER_ENTRIES for option in (label, name, *aliases)]
            sampler = next((sampler[: -len(option) - 1] for option in suffixes if sampler.endswith(" " + option)), sampler)
        if sampler not in SAMPLERS:  # by name only: A1111's all_samplers_map has no aliases
            if self.mode == "sdnext":
                return self._http_exception(404, "Sampler not found")
            sampler = "Euler"  # A1111 and Forge fall back silently
        with self._queue_lock:
            with self._lock:
                if self._pending is not None:  # Forge loads the selected model now
                    pending, self._pending = self._pending, None
                    if self._loaded is None or self._loaded.checkpoint.path != pending.path:
                        if self._load(pending) is None:  # unreadable; measured on a real Forge: a 500, the file renamed
                            pending.path.rename(pending.path.with_name(pending.path.name + ".corrupted"))
                            self._scan()
                            return self._exception("Failed to recognize model type!", "ValueError")
                model = self._loaded
                features = None if model is None else model.features
                if self._ignoring_switch and model is not None:
                    if self._stuck_features is None:
                        self._stuck_features = model.features
                    features = self._stuck_features
                overrides = values["override_settings"] or {}
                unknown = [key for key in overrides if key not in self._options]
                if unknown and self.mode != "sdnext":  # A1111's opts.set(k, …) looks each key up: KeyError
                    return self._exception(repr(unknown[0]), "KeyError")
                refusal = self._hires_refusal(values) if values["enable_hr"] and self.mode != "sdnext" else None
                refusal = refusal or (self._checkpoint_refusal(values) if self.mode != "sdnext" else None)
                if refusal is not None:
                    return refusal
                # the WebUI's own: process_images sets the overrides back before text2imgapi encodes the images
                image_format = str(self._options.get("samples_format", "png")).lower()
                if image_format not in ("png", "jpg", "jpeg", "webp") and self.mode != "sdnext":
                    return self._http_exception(500, "Invalid image format")  # api.encode_pil_to_base64
                return_grid = bool(self._options.get("return_grid", True))
                seconds = self._render_seconds
                styles = dict(self._styles)
                self._interrupt.clear()  # A1111's state.begin(): an interrupt sent while idle is forgotten
            if model is None:
                return self._exception("No checkpoints found. Place a checkpoint in the models folder.", "FileNotFoundError")
            # an interrupted generation still answers, with what it rendered so far: its first batch, not
            # finished, and no later batch (A1111 leaves its n_iter loop); /progress says so until the next one
            self._rendering.set()
            try:
                interrupted = self._interrupt.wait(seconds) if seconds else False
            finally:
                self._rendering.clear()
            with self._lock:
                self._generations.append("interrupted" if interrupted else "done")
            return _Response(200, generate(features, model.checkpoint.stem, model.sha256, values, sampler,
                                           image_format, return_grid, self.max_image_size, VERSIONS[self.mode],
                                           styles, batches=1 if interrupted else None))

    # ------------------------------------------------------------------------ model handling

    def _scan(self) -> None:
        found = []
        if self.checkpoint_dir.is_dir():
            for path in sorted(self.checkpoint_dir.rglob("*")):
                if path.suffix in (".safetensors", ".ckpt") and path.is_file():
                    stat = path.stat()
                    name = path.relative_to(self.checkpoint_dir).as_posix()
                    found.append(_Checkpoint(name, path, (stat.st_mtime_ns, stat.st_size)))
        self._checkpoints = found

    def _sha(self, checkpoint: _Checkpoint) -> str | None:
        return self._hashes.get((checkpoint.name, checkpoint.stamp))

    def _title(self, checkpoint: _Checkpoint) -> str:
        sha = self._sha(checkpoint)
        return f"{checkpoint.name} [{sha[:10]}]" if sha else checkpoint.name

    def _resolve(self, alias: str) -> _Checkpoint | None:
        """A1111's checkpoint aliases: title, name, model_name, file stem, short or full hash."""
        for checkpoint in self._checkpoints:
            sha = self._sha(checkpoint) or ""
            names = {self._title(checkpoint), checkpoint.name, checkpoint.model_name, checkpoint.stem}
            if alias in names or (sha and alias in (sha, sha[:10])):
                return checkpoint
        return None

    def _startup_load(self) -> None:
        remembered = str(self._options.get("sd_model_checkpoint") or "")
        checkpoint = self._resolve(remembered) if remembered else None
        if checkpoint is None and self._checkpoints:
            checkpoint = self._checkpoints[0]  # A1111's fallback: the first checkpoint found
        # Forge names the checkpoint it will load; A1111 and reForge (mode a1111) leave the option null
        # until one is selected, unless one was remembered (shared/reference/a1111-api.md)
        named = checkpoint is not None and (bool(remembered) or self.mode != "a1111")
        self._options["sd_model_checkpoint"] = self._title(checkpoint) if named else ""
        if checkpoint is not None:
            if self.mode == "forge":
                self._pending = checkpoint
            elif self._load(checkpoint) and named:
                self._options["sd_model_checkpoint"] = self._title(checkpoint)

    def _select(self, checkpoint: _Checkpoint, value: str) -> bool:
        """POST options with a known checkpoint; returns whether the selection changed."""
        previous = self._options.get("sd_model_checkpoint")
        if self.mode == "forge":  # records the choice; the load happens at the next generation
            self._pending = checkpoint
            self._options["sd_model_checkpoint"] = self._title(checkpoint)
            return previous != self._options["sd_model_checkpoint"]
        if self._loaded is not None and self._loaded.checkpoint.path == checkpoint.path:
            # A1111 does not reload a file name it has loaded, even when the file changed
            self._options["sd_model_checkpoint"] = value
        elif self._load(checkpoint):
            self._options["sd_model_checkpoint"] = self._title(checkpoint)
        elif self._failing_loads_keep_option:
            self._options["sd_model_checkpoint"] = self._title(checkpoint)
        return previous != self._options["sd_model_checkpoint"]

    def _load(self, checkpoint: _Checkpoint) -> bool | None:
        """Read the file, as A1111 does on a switch; a failure keeps the old model and is only logged.
        False: a failure injected by ``fail_loads``; None: the file could not be read."""
        if self._failing_loads > 0:
            self._failing_loads -= 1
            logger.warning("fake WebUI: failed to load %s (injected), keeping the old model", checkpoint.name)
            return False
        try:
            # hashed beside the read (both release the GIL): a full-size switch costs the fake about
            # what the set --switch of bench_trial allows, on two cores
            with ThreadPoolExecutor(1) as pool:
                hashing = pool.submit(file_sha256, checkpoint.path)
                features = model_features(read_tensors(checkpoint.path))
                sha = hashing.result()
        except Exception as exc:  # noqa: BLE001 - the real server logs any load error and carries on
            logger.warning("fake WebUI: failed to load %s (%s), keeping the old model", checkpoint.name, exc)
            return None
        self._hashes[(checkpoint.name, checkpoint.stamp)] = sha
        self._loaded = _LoadedModel(checkpoint, sha, features)
        self._load_count += 1
        logger.debug("fake WebUI: loaded %s", checkpoint.name)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bayes_merger.testing.fake_webui",
        description="A fake AUTOMATIC1111 WebUI API for tests and demos; runs until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--checkpoint-dir", type=Path, required=True, help="the folder it scans for checkpoints")
    parser.add_argument("--port", type=int, default=7861, help="0 picks a free port (default: 7861, as --nowebui)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", choices=MODES, default="a1111")
    parser.add_argument("--api-auth", default=None, help="user:password[,user2:password2] for HTTP Basic auth")
    parser.add_argument("--starting-requests", type=int, default=0,
                        help="answer the first N /sdapi requests with 404, as a WebUI still starting")
    parser.add_argument("--ignore-model-switch", action="store_true",
                        help="report each new model but keep rendering the first one (a stuck model cache)")
    parser.add_argument("--max-image-size", type=int, default=64, help="largest side of rendered images, in pixels")
    args = parser.parse_args(argv)

    def make() -> FakeWebUI:
        server = FakeWebUI(args.checkpoint_dir, mode=args.mode, auth=args.api_auth, port=args.port, host=args.host,
                           max_image_size=args.max_image_size)
        if args.starting_requests:
            server.starting_up(args.starting_requests)
        if args.ignore_model_switch:
            server.ignore_model_switch()
        return server

    serve_until_stopped(args.checkpoint_dir, make)
    logger.info("fake WebUI stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
