"""A fake AUTOMATIC1111 WebUI: the real HTTP API over real sockets, real checkpoint files, fake images.

It speaks the contract of ``shared/reference/a1111-api.md`` (field names, status codes, the three
error body shapes, ``--api-auth``) in three flavours: ``a1111`` (also reForge), ``forge`` (lazy
model load at the next generation, ``message`` in error bodies, plain ``{"detail"}`` for an
HTTPException, pydantic-v2 422s) and ``sdnext`` (``{"updated": [...]}``, keeps the old model on an
unknown name). ``refresh-checkpoints`` scans its folder; selecting a checkpoint really loads the
file; txt2img renders a small deterministic picture whose colours and pattern are smooth functions
of the loaded tensors, mixed with noise seeded by prompt and seed, so different merges give
different images. Faults can be injected for tests: failing, dropped, delayed or held requests, a
server that is still starting, loads that silently fail, a stop and a restart on the same port.

Run it in the foreground as "the WebUI" of a test or a demo::

    python -m bayes_merger.testing.fake_webui --checkpoint-dir DIR --port 7861 [--mode forge] [--api-auth u:p]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from bayes_merger.testing.fake_txt2img import (
    TYPE_ERRORS, encode, grid, model_features, read_tensors, render, validate,
)

logger = logging.getLogger(__name__)

MODES = ("a1111", "forge", "sdnext")
VERSIONS = {"a1111": "v1.10.1", "forge": "f2.0.1v1.10.1-previous-669-gdfdcbab6", "sdnext": "v2024-10-30"}
SAMPLERS = ("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC")
SCHEDULERS = ("automatic", "uniform", "karras", "exponential")

_DEFAULT_OPTIONS = {
    "sd_model_checkpoint": "", "samples_format": "png", "return_grid": True, "grid_only_if_multiple": True,
    "sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0, "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server answered: ``status`` is None when the connection was dropped."""

    method: str
    path: str
    body: Any
    status: int | None


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


@dataclass
class _Fault:
    kind: str  # "status", "drop" or "startup"
    remaining: int
    path: str | None = None
    method: str | None = None
    status: int = 503
    message: str = ""
    body: bytes | None = None


@dataclass
class _Response:
    status: int
    payload: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


_DROP = object()


class _Server(ThreadingHTTPServer):
    # non-daemon handler threads, joined by server_close, so that stop() leaves nothing running
    daemon_threads = False
    block_on_close = True
    fake: FakeWebUI

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("fake WebUI: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn: exercises the client's connection reuse
    server_version = "FakeWebUI/1"
    timeout = 10  # idle keep-alive connections are closed, as servers do
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._untrack(self.connection)

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.fake._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.fake._handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake WebUI: " + format, *args)


class FakeWebUI:
    """A fake A1111 API server on 127.0.0.1, for tests and the offline demo."""

    def __init__(
        self,
        checkpoint_dir: Path,
        mode: str = "a1111",
        auth: str | None = None,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        max_image_size: int = 64,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.mode = mode
        self.host = host
        self.max_image_size = max_image_size
        self._port = port
        self._users = _parse_auth(auth)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # server state
        self._queue_lock = threading.Lock()  # generation and model loads run one at a time, as in A1111
        self._records: list[RecordedRequest] = []
        self._records_changed = threading.Condition()
        self._held = 0  # requests waiting on a hold() right now
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._holds: dict[tuple[str, str | None], threading.Event] = {}
        self._stop_event = threading.Event()
        self._failing_loads = 0
        self._failing_loads_keep_option = False
        self._options: dict[str, Any] = dict(_DEFAULT_OPTIONS)
        self._checkpoints: list[_Checkpoint] = []
        self._hashes: dict[tuple[str, tuple[int, int]], str] = {}  # A1111's cache.json
        self._loaded: _LoadedModel | None = None
        self._pending: _Checkpoint | None = None  # Forge: selected, to load at the next generation
        self._load_count = 0
        self._routes: dict[tuple[str, str], Callable[[Any], _Response]] = {
            ("GET", "/sdapi/v1/progress"): self._progress,
            ("GET", "/sdapi/v1/options"): self._get_options,
            ("POST", "/sdapi/v1/options"): self._set_options,
            ("GET", "/sdapi/v1/sd-models"): self._sd_models,
            ("POST", "/sdapi/v1/refresh-checkpoints"): self._refresh,
            ("POST", "/sdapi/v1/txt2img"): self._txt2img,
            ("GET", "/sdapi/v1/samplers"): self._samplers,
        }
        if mode != "sdnext":
            self._routes[("GET", "/sdapi/v1/schedulers")] = self._schedulers

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> FakeWebUI:
        """Listen (on the same port as before after a stop), scan the folder, load the model it remembers."""
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self._port), _Handler)
        httpd.fake = self
        self._port = httpd.server_address[1]
        with self._lock:
            self._stopping = False
            self._stop_event.clear()
            self._scan()
            self._startup_load()
        self._httpd = httpd
        # a short poll interval makes stop() quick (shutdown waits for the loop's next poll)
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.02,), name=f"fake-webui-{self._port}", daemon=True
        )
        self._thread.start()
        logger.info("fake WebUI (%s) serving %s, checkpoints in %s", self.mode, self.url, self.checkpoint_dir)
        return self

    def stop(self) -> None:
        """Stop as a killed process would: every open connection is closed, held requests end unanswered."""
        httpd = self._httpd
        if httpd is None:
            return
        with self._lock:
            self._stopping = True
            self._stop_event.set()
            for event in self._holds.values():
                event.set()
            self._holds.clear()
            connections = list(self._connections)
        httpd.shutdown()
        for conn in connections:
            _shutdown(conn)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None
        with self._lock:
            self._loaded = self._pending = None

    def restart(self, forget_selection: bool = False) -> None:
        """Stop and start on the same port. Like A1111, it reloads the checkpoint selected before
        (its config.json), or the first one listed when that is gone or ``forget_selection``."""
        self.stop()
        if forget_selection:
            with self._lock:
                self._options["sd_model_checkpoint"] = ""
        self.start()

    def __enter__(self) -> FakeWebUI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    # ---------------------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._records_changed:
            return list(self._records)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def wait_for_requests(self, path: str, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests to ``path`` have been answered or dropped (a held request
        counts once released)."""
        with self._records_changed:
            if not self._records_changed.wait_for(lambda: len(self.requests_to(path)) >= count, timeout):
                raise TimeoutError(f"fewer than {count} requests to {path} within {timeout} s")
        return self.requests_to(path)

    def wait_until_held(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until ``count`` requests are waiting on a ``hold()``."""
        with self._records_changed:
            if not self._records_changed.wait_for(lambda: self._held >= count, timeout):
                raise TimeoutError(f"fewer than {count} held requests within {timeout} s")

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

    # ------------------------------------------------------------------------ fault injection

    def fail_next(
        self, count: int = 1, status: int = 503, path: str | None = None, message: str = "injected failure",
        body: str | bytes | None = None, method: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (to ``path`` and with ``method`` only, if given) with
        ``status`` and this mode's error body (500: an exception; else an HTTPException), or ``body``
        as it is (e.g. a proxy's HTML page)."""
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._faults.append(_Fault("status", count, path, method, status, message, raw))

    def drop_next(self, count: int = 1, path: str | None = None, method: str | None = None) -> None:
        """Close the connection without an answer, after reading the request, ``count`` times."""
        with self._lock:
            self._faults.append(_Fault("drop", count, path, method))

    def starting_up(self, count: int) -> None:
        """Answer the next ``count`` /sdapi requests with 404 Not Found, as a WebUI still starting."""
        with self._lock:
            self._faults.insert(0, _Fault("startup", count))

    def delay(self, path: str, seconds: float) -> None:
        """Answer requests to ``path`` only after ``seconds`` (0 removes the delay)."""
        with self._lock:
            self._delays[path] = seconds

    def hold(self, path: str, method: str | None = None) -> threading.Event:
        """Keep requests to ``path`` (with ``method``, if given) waiting until the returned event is
        set or the server stops; a request released by a stop gets no answer."""
        with self._lock:
            return self._holds.setdefault((path, method), threading.Event())

    def fail_loads(self, count: int = 1, keep_option: bool = False) -> None:
        """Make the next ``count`` model loads fail silently: the old model stays, the answer is 200.
        The option goes back to the old model (A1111), or shows the new one if ``keep_option``."""
        with self._lock:
            self._failing_loads = count
            self._failing_loads_keep_option = keep_option

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            for event in self._holds.values():
                event.set()
            self._holds.clear()
            self._failing_loads = 0
            self._failing_loads_keep_option = False

    # ------------------------------------------------------------------------- HTTP plumbing

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            stopping = self._stopping
        if stopping:
            _shutdown(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _handle(self, handler: _Handler, method: str) -> None:
        path = urlsplit(handler.path).path
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        try:
            response = self._answer(method, path, raw, handler.headers.get("Authorization"))
        except Exception as exc:  # a bug of the fake: answer as the real server answers any exception
            logger.exception("fake WebUI: %s %s failed", method, path)
            response = self._exception(str(exc), type(exc).__name__)
        dropped = response is _DROP or self._stop_event.is_set()
        # recorded before the answer leaves, so a test that got its answer also sees the record
        with self._records_changed:
            self._records.append(RecordedRequest(method, path, _parse_body(raw), None if dropped else response.status))
            self._records_changed.notify_all()
        if dropped:
            handler.close_connection = True
            _shutdown(handler.connection)
        else:
            _send(handler, response)

    def _answer(self, method: str, path: str, raw: bytes, authorization: str | None) -> Any:
        fault = self._take_fault(path, method)
        if fault is not None:
            if fault.kind == "startup":
                return _Response(404, {"detail": "Not Found"})
            if fault.kind == "drop":
                return _DROP
            if fault.body is not None:
                return _Response(fault.status, raw=fault.body, headers={"Content-Type": "text/html"})
            if fault.status == 500:
                return self._exception(fault.message)
            return self._http_exception(fault.status, fault.message)
        with self._lock:
            seconds = self._delays.get(path, 0.0)
            hold = self._holds.get((path, method)) or self._holds.get((path, None))
        if seconds:
            self._stop_event.wait(seconds)
        if hold is not None:
            with self._records_changed:
                self._held += 1
                self._records_changed.notify_all()
            try:
                hold.wait()
            finally:
                with self._records_changed:
                    self._held -= 1
        if path.startswith("/sdapi/") and self._users:
            denied = _check_auth(authorization, self._users)
            if denied:
                return _Response(401, {"detail": denied}, headers={"WWW-Authenticate": "Basic"})
        route = self._routes.get((method, path))
        if route is None:
            if any(p == path for _, p in self._routes):
                return _Response(405, {"detail": "Method Not Allowed"})
            return _Response(404, {"detail": "Not Found"})
        return route(raw)

    def _take_fault(self, path: str, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == "startup" and not path.startswith("/sdapi/"):
                    continue
                if fault.remaining > 0 and fault.path in (None, path) and fault.method in (None, method):
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return fault
        return None

    # error bodies: the three shapes of the API reference, in this mode's flavour

    def _exception(self, message: str, error: str = "RuntimeError") -> _Response:
        key = "message" if self.mode == "forge" else "errors"
        return _Response(500, {"error": error, "detail": "", "body": "", key: message})

    def _http_exception(self, status: int, detail: str) -> _Response:
        if self.mode == "forge":
            return _Response(status, {"detail": detail})
        return _Response(status, {"error": "HTTPException", "detail": detail, "body": "", "errors": detail})

    def _invalid(self, errors: list[tuple[list[Any], str, Any]]) -> _Response:
        """422 for (location, kind, value) triples, worded as pydantic v1 (A1111) or v2 (Forge)."""
        detail = []
        for loc, kind, value in errors:
            v1, v2 = TYPE_ERRORS[kind]
            if self.mode == "forge":
                detail.append({"type": v2[1], "loc": loc, "msg": v2[0], "input": value})
            else:
                detail.append({"loc": loc, "msg": v1[0], "type": v1[1]})
        return _Response(422, {"detail": detail})

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
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
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
        return _Response(200, [{"name": name, "aliases": [], "options": {}} for name in SAMPLERS])

    def _schedulers(self, raw: bytes) -> _Response:
        return _Response(200, [{"name": name, "label": name.title(), "aliases": None, "default_rho": -1,
                                "need_inner_model": False} for name in SCHEDULERS])

    def _txt2img(self, raw: bytes) -> _Response:
        body = self._json_object(raw)
        if isinstance(body, _Response):
            return body
        values, errors = validate(body)
        if errors:
            return self._invalid(errors)
        sampler = values["sampler_name"] or values["sampler_index"]
        if sampler not in SAMPLERS:
            if self.mode == "sdnext":
                return self._http_exception(404, "Sampler not found")
            sampler = "Euler"  # A1111 and Forge fall back silently
        with self._queue_lock:
            with self._lock:
                if self._pending is not None:  # Forge loads the selected model now
                    pending, self._pending = self._pending, None
                    if self._loaded is None or self._loaded.checkpoint.path != pending.path:
                        self._load(pending)
                model = self._loaded
                image_format = str(self._options.get("samples_format", "png")).lower()
                return_grid = bool(self._options.get("return_grid", True))
            if model is None:
                return self._exception("No checkpoints found. Place a checkpoint in the models folder.", "FileNotFoundError")
            return _Response(200, self._generate(model, values, sampler, image_format, return_grid))

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
        self._options["sd_model_checkpoint"] = self._title(checkpoint) if checkpoint else ""
        if checkpoint is not None:
            if self.mode == "forge":
                self._pending = checkpoint
            elif self._load(checkpoint):
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

    def _load(self, checkpoint: _Checkpoint) -> bool:
        """Read the file, as A1111 does on a switch; a failure keeps the old model and is only logged."""
        if self._failing_loads > 0:
            self._failing_loads -= 1
            logger.warning("fake WebUI: failed to load %s (injected), keeping the old model", checkpoint.name)
            return False
        try:
            tensors = read_tensors(checkpoint.path)
            sha = _sha256(checkpoint.path)
        except Exception as exc:  # noqa: BLE001 - the real server logs any load error and carries on
            logger.warning("fake WebUI: failed to load %s (%s), keeping the old model", checkpoint.name, exc)
            return False
        self._hashes[(checkpoint.name, checkpoint.stamp)] = sha
        self._loaded = _LoadedModel(checkpoint, sha, model_features(tensors))
        self._load_count += 1
        logger.debug("fake WebUI: loaded %s", checkpoint.name)
        return True

    def _generate(self, model: _LoadedModel, values: dict[str, Any], sampler: str, image_format: str,
                  return_grid: bool) -> dict[str, Any]:
        count = max(values["batch_size"], 1) * max(values["n_iter"], 1)
        seed = values["seed"] if values["seed"] != -1 else random.randrange(4294967294)
        subseed = values["subseed"] if values["subseed"] != -1 else random.randrange(4294967294)
        # A1111: consecutive seeds, unless a variation seed is mixed in
        seeds = [seed + (i if values["subseed_strength"] == 0 else 0) for i in range(count)]
        prompt, negative = values["prompt"], values["negative_prompt"]
        images = [render(model.features, prompt, negative, s, values["width"], values["height"], self.max_image_size)
                  for s in seeds]
        index_of_first_image = 0
        if values["save_images"] and return_grid and count > 1:
            images.insert(0, grid(images))
            index_of_first_image = 1
        name = model.checkpoint.stem  # A1111's name_for_extra
        version = VERSIONS[self.mode]
        infotexts = [
            f"{prompt}\nNegative prompt: {negative}\nSteps: {values['steps']}, Sampler: {sampler}, "
            f"CFG scale: {values['cfg_scale']}, Seed: {s}, Size: {values['width']}x{values['height']}, "
            f"Model hash: {model.sha256[:10]}, Model: {name}, Version: {version}"
            for s in seeds
        ]
        info = {
            "prompt": prompt, "all_prompts": [prompt] * count, "negative_prompt": negative,
            "all_negative_prompts": [negative] * count, "seed": seed, "all_seeds": seeds, "subseed": subseed,
            "all_subseeds": [subseed + i for i in range(count)], "subseed_strength": values["subseed_strength"],
            "width": values["width"], "height": values["height"], "sampler_name": sampler,
            "cfg_scale": values["cfg_scale"], "steps": values["steps"], "batch_size": values["batch_size"],
            "restore_faces": bool(values["restore_faces"]), "face_restoration_model": None,
            "sd_model_name": name, "sd_model_hash": model.sha256[:10], "sd_vae_name": None, "sd_vae_hash": None,
            "seed_resize_from_w": values["seed_resize_from_w"], "seed_resize_from_h": values["seed_resize_from_h"],
            "denoising_strength": values["denoising_strength"], "extra_generation_params": {},
            "index_of_first_image": index_of_first_image, "infotexts": infotexts, "styles": values["styles"] or [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
            "is_using_inpainting_conditioning": False, "version": version,
        }
        encoded = [encode(image, image_format) for image in images] if values["send_images"] else []
        return {"images": encoded, "parameters": values, "info": json.dumps(info)}


# -------------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_auth(auth: str | None) -> set[tuple[str, str]]:
    users = set()
    for pair in (auth or "").split(","):
        user, sep, password = pair.strip().partition(":")
        if sep:
            users.add((user, password))
    return users


def _check_auth(header: str | None, users: set[tuple[str, str]]) -> str | None:
    """None when allowed, else the 401 detail of FastAPI's HTTPBasic as A1111 uses it."""
    if not header or not header.lower().startswith("basic "):
        return "Not authenticated"
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except ValueError:
        return "Invalid authentication credentials"
    return None if (user, password) in users else "Incorrect username or password"


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _send(handler: _Handler, response: _Response) -> None:
    if response.raw is not None:
        payload = response.raw
        content_type = response.headers.get("Content-Type", "application/octet-stream")
    else:
        payload = json.dumps(response.payload).encode()
        content_type = "application/json"
    try:
        handler.send_response(response.status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in response.headers.items():
            if key != "Content-Type":
                handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)
    except OSError:  # the client gave up (its read timeout) and closed the connection
        handler.close_connection = True


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


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
    parser.add_argument("--max-image-size", type=int, default=64, help="largest side of rendered images, in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = FakeWebUI(args.checkpoint_dir, mode=args.mode, auth=args.api_auth, port=args.port, host=args.host,
                       max_image_size=args.max_image_size)
    if args.starting_requests:
        server.starting_up(args.starting_requests)
    with server:
        while not stop.wait(3600):
            pass
    logger.info("fake WebUI stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
