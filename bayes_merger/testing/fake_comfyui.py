"""A fake ComfyUI 0.3.64: its HTTP API and its ``/ws`` websocket on real sockets, real checkpoint
files, one prompt executed at a time, the one-prompt node cache, fake pictures.

It speaks Part A of ``shared/reference/comfyui-api.md``: the endpoints (also under ``/api``), the
400 bodies of a refused prompt, history, ``/view``, ``/free``, the websocket's event order and its
routing by ``clientId``. The nodes and what they compute are ``fake_comfyui_nodes``; the HTTP side
and its fault injection (failing requests, and requests dropped before or after they are carried out:
``drop_next``, ``drop_after_next``) is ``fake_http``; the websocket frames are
``fake_websocket``. Faults of its own: execution errors sent over the websocket
(``fail_execution``), websockets dropped now or at a given event (``drop_websockets``,
``drop_websocket_at``), execution held (``hold_execution``; an ``/interrupt`` of the held prompt
still stops it, as ComfyUI's stops a running one within a second), and ``restart`` (history, queue
counter and cache lost, as a real restart loses them). ``wait_until_running`` and ``wait_until_idle``
let a test wait for the queue instead of polling it. Not faults: ``delay_node`` gives node classes a
running time (a benchmark's load, re-patch and render costs), slept or, ``virtual``, only added to
``clock`` (so a test of a timing decision reads the same on a slow machine); ``previews`` makes
samplers send preview frames.

Run it in the foreground as "the ComfyUI" of a demo::

    python -m bayes_merger.testing.fake_comfyui --checkpoint-dir DIR --port 8188
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bayes_merger.testing.fake_comfyui_nodes import Executor, catalogue, object_info, prompt_error, validate
from bayes_merger.testing.fake_comfyui_execution import PromptExecution, PromptItem
from bayes_merger.testing.fake_http import FakeHTTPServer, RecordedRequest, _Response
from bayes_merger.testing.fake_serve import serve_until_stopped
from bayes_merger.testing.fake_websocket import ServerWebSocket, is_upgrade

logger = logging.getLogger(__name__)

VERSION = "0.3.64"
MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders"]


class FakeComfyUI(PromptExecution, FakeHTTPServer):
    """A fake ComfyUI on 127.0.0.1 whose ``checkpoint_dir`` is its models/checkpoints folder."""

    def __init__(self, checkpoint_dir: Path, output_dir: Path | None = None, port: int = 0, *,
                 host: str = "127.0.0.1", max_image_size: int = 64) -> None:
        super().__init__(port=port, host=host)
        self.checkpoint_dir = Path(checkpoint_dir)
        self._own_output = None if output_dir else tempfile.TemporaryDirectory(prefix="fake-comfyui-output-")
        self.output_dir = Path(output_dir) if output_dir else Path(self._own_output.name)  # type: ignore[union-attr]
        # ComfyUI's temp folder, where PreviewImage writes (served by /view?type=temp)
        self._own_temp = tempfile.TemporaryDirectory(prefix="fake-comfyui-temp-")
        self.temp_dir = Path(self._own_temp.name)
        self._classes = catalogue(self.checkpoints)
        self._executor = Executor(self._checkpoint_path, self._save_image, max_image_size)
        self._local = threading.local()
        self._sockets: dict[str, ServerWebSocket] = {}  # one a client id, as ComfyUI's ``sockets[sid]``
        self._filed = 0  # websockets filed so far (end_websockets_late)
        self._late_websocket_ends = False
        self._number = 0
        self._history: dict[str, dict[str, Any]] = {}
        self._queue: queue.Queue[PromptItem | None] = queue.Queue()
        self._pending: list[PromptItem] = []
        self._running: PromptItem | None = None
        self._cache: dict[str, tuple[Any, Any]] = {}  # node signature → (outputs, ui), last prompt only
        self._generation = 0
        self._interrupt = threading.Event()
        # the queue, the gate or an interrupt changed: wakes a held prompt and a test's wait_until_*
        self._changed = threading.Condition(self._lock)
        self._execution_gate = _Gate(self._changed)
        self._execution_gate.set()
        self._execution_faults: list[dict[str, Any]] = []
        self._ws_drops: list[list[Any]] = []  # [event type, remaining]
        self._ws_filing_delay = 0.0  # file_websockets_late
        self._image_counter = 0
        self.frees: list[dict[str, Any]] = []
        self._free_flags: dict[str, bool] = {}  # those of /free not yet applied (a prompt was running)
        self.executed: list[list[str]] = []  # node ids run (not cached) per prompt, in order
        self.previews = False  # True: samplers send a preview image (JPEG frame) per step, as --preview-method does
        self._node_delays: dict[str, tuple[float, bool]] = {}  # class prefix → (seconds, virtual)
        self._virtual_s = 0.0  # what virtual delays have added to clock()

    # ----------------------------------------------------------------------------- lifecycle

    def _on_start(self) -> None:
        self._generation += 1
        self._queue = queue.Queue()
        threading.Thread(target=self._worker, args=(self._generation, self._queue), daemon=True,
                         name=f"fake-comfyui-worker-{self._generation}").start()

    def _on_stop(self) -> None:
        with self._changed:
            self._generation += 1
            self._queue.put(None)
            self._history.clear()
            self._pending.clear()
            self._running = None
            self._number = 0
            self._cache.clear()
            self._free_flags.clear()
            self._sockets.clear()
            self._changed.notify_all()

    def _log_started(self) -> None:
        logger.info("fake ComfyUI serving %s, checkpoints in %s", self.url, self.checkpoint_dir)

    def restart(self) -> None:
        """Stop (every connection dropped, the prompt in flight lost) and start again on the same port."""
        self.stop()
        self.start()

    def __del__(self) -> None:
        if self._own_output is not None:
            self._own_output.cleanup()
        self._own_temp.cleanup()

    # ------------------------------------------------------------------------------ inspection

    def checkpoints(self) -> list[str]:
        """The checkpoint names as ComfyUI lists them: relative paths with "/", sorted, read on each call."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p.relative_to(self.checkpoint_dir).as_posix() for p in self.checkpoint_dir.rglob("*")
                      if p.is_file() and p.suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"))

    @property
    def load_count(self) -> int:
        """How many checkpoint files the loaders have read since the fake was created."""
        return self._executor.loads

    @property
    def loaded(self) -> list[str]:
        return list(self._executor.loaded)

    @property
    def history(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self._history))

    # ----------------------------------------------------------------------- fault injection

    def fail_execution(self, node_type: str, message: str = "injected failure\n",
                       exception_type: str = "RuntimeError", count: int = 1) -> None:
        """The next ``count`` prompts fail at their first node of class ``node_type`` (execution_error)."""
        with self._lock:
            self._execution_faults.append({"node_type": node_type, "message": message,
                                           "exception_type": exception_type, "remaining": count})

    def without_node(self, node_class: str) -> None:
        """Drop a node class, as ``--disable-all-custom-nodes`` drops SaveImageWebsocket (ComfyUI ships it
        as an example in custom_nodes/): /object_info no longer lists it and prompts using it are refused."""
        with self._lock:
            self._classes.pop(node_class, None)

    def drop_websockets(self) -> None:
        """Drop every open websocket now, without a close frame."""
        with self._lock:
            sockets = list(self._sockets.values())
        for ws in sockets:
            ws.drop()

    def drop_websocket_at(self, event: str, count: int = 1) -> None:
        """Drop the prompt's websocket instead of sending its next ``count`` events of type ``event``."""
        with self._lock:
            self._ws_drops.append([event, count])

    def progress_of_another_prompt(self, every: float) -> threading.Event:
        """Another tool's prompt, posted without a client_id, rendering on: its ``progress`` sent to every
        socket each ``every`` seconds, as ComfyUI sends it, until the returned event is set."""
        done = threading.Event()

        def chatter() -> None:
            step = 0
            while not done.wait(every) and not self._stop_event.is_set():
                step += 1
                with self._lock:
                    sockets = list(self._sockets.values())
                for ws in sockets:
                    try:
                        ws.send_text(json.dumps({"type": "progress", "data": {
                            "value": step % 20 + 1, "max": 20, "prompt_id": "another-tools-prompt", "node": "3"}}))
                    except OSError:
                        pass  # a socket dropping now: its client reopens another

        threading.Thread(target=chatter, name="fake-comfyui-chatter", daemon=True).start()
        return done

    def end_websockets_late(self) -> None:
        """A server that notices a closed websocket late: its handler ends only after the next websocket has
        been filed, and then forgets its client id as ComfyUI's does (``finally: sockets.pop(sid)``),
        whichever socket is filed under that id by then."""
        self._late_websocket_ends = True

    def file_websockets_late(self, seconds: float) -> None:
        """A busy server: each new websocket is filed under its client id (from then on it gets that client's
        events, and its first ``status``) ``seconds`` after the handshake's 101."""
        self._ws_filing_delay = seconds

    def hold_execution(self) -> threading.Event:
        """Queued prompts wait (after execution_start) until the returned event is set, or an interrupt
        stops the one held (then execution_interrupted at its first node)."""
        self._execution_gate.clear()
        return self._execution_gate

    def wait_until_running(self, timeout: float = 30.0) -> str:
        """Block until a prompt is running (taken off the queue); its id."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._running is not None, timeout):
                raise TimeoutError(f"no prompt was running within {timeout} s")
            assert self._running is not None
            return self._running.prompt_id

    def wait_until_idle(self, timeout: float = 30.0) -> None:
        """Block until no prompt is running or pending (the last one's history is written)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._running is None and not self._pending, timeout):
                raise TimeoutError(f"the queue was still busy after {timeout} s")

    def delay_node(self, class_type: str, seconds: float, *, virtual: bool = False) -> None:
        """Nodes whose class starts with ``class_type`` take ``seconds`` longer each time they run (not when
        cached): "CheckpointLoaderSimple" a checkpoint load, "ModelMerge" the merge and re-patch of a
        ratio change, "KSampler" the render (the costs of ``comfyui-api.md``'s timings, scaled as wanted).
        ``virtual``: the node does not sleep; the seconds are added to ``clock()`` instead."""
        with self._lock:
            self._node_delays[class_type] = (max(float(seconds), 0.0), virtual)

    def spend_node_time(self, class_type: str) -> None:
        """One run of a ``class_type`` node: sleeps its delays, adds its virtual ones to ``clock()``."""
        with self._lock:
            matching = [delay for prefix, delay in self._node_delays.items() if class_type.startswith(prefix)]
            self._virtual_s += sum(seconds for seconds, virtual in matching if virtual)
        slept = sum(seconds for seconds, virtual in matching if not virtual)
        if slept:
            time.sleep(slept)  # the node's running time as set (delay_node), not a synchronisation

    def clock(self) -> float:
        """``time.perf_counter()`` plus the virtual delays the nodes have run so far."""
        with self._lock:
            return time.perf_counter() + self._virtual_s

    def clear_faults(self) -> None:
        super().clear_faults()
        with self._lock:
            self._execution_faults.clear()
            self._ws_drops.clear()
        self._execution_gate.set()

    # ------------------------------------------------------------------------------ HTTP side

    def _exception(self, message: str, error: str = "RuntimeError") -> _Response:
        return _Response(500, raw=b"500 Internal Server Error\n\nServer got itself in trouble",
                         headers={"Content-Type": "text/plain; charset=utf-8"})

    def _http_exception(self, status: int, detail: str) -> _Response:
        return _Response(status, raw=f"{status}: {detail}".encode(), headers={"Content-Type": "text/plain; charset=utf-8"})

    def _handle(self, handler: Any, method: str) -> None:
        parts = urlsplit(handler.path)
        path = parts.path[4:] if parts.path.startswith("/api/") else parts.path
        self._local.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if method == "GET" and path == "/ws" and is_upgrade(handler.headers):
            self._serve_websocket(handler, self._local.query.get("clientId") or uuid.uuid4().hex)
            handler.close_connection = True
            return
        super()._handle(handler, method)

    def _route(self, method: str, path: str, raw: bytes) -> Any:
        path = path[4:] if path.startswith("/api/") else path
        query = getattr(self._local, "query", {})
        if method == "GET":
            if path == "/system_stats":
                return _Response(200, self._system_stats())
            if path == "/object_info":
                return _Response(200, {name: object_info(c) for name, c in self._classes.items()})
            if path.startswith("/object_info/"):
                node = self._classes.get(path[len("/object_info/"):])
                return _Response(200, {node.name: object_info(node)} if node else {})
            if path == "/models":
                return _Response(200, MODEL_FOLDERS)
            if path.startswith("/models/"):
                folder = path[len("/models/"):]
                if folder not in MODEL_FOLDERS:
                    return _Response(404, raw=b"")
                return _Response(200, self.checkpoints() if folder == "checkpoints" else [])
            if path == "/prompt":
                with self._lock:
                    remaining = len(self._pending) + (self._running is not None)
                return _Response(200, {"exec_info": {"queue_remaining": remaining}})
            if path == "/queue":
                with self._lock:
                    running = [self._running.as_list()] if self._running else []
                    pending = [i.as_list() for i in sorted(self._pending, key=lambda i: i.number)]
                return _Response(200, {"queue_running": running, "queue_pending": pending})
            if path == "/history":
                with self._lock:
                    items = list(self._history.items())
                if "max_items" in query:
                    items = items[-int(query["max_items"]):]
                return _Response(200, dict(items))
            if path.startswith("/history/"):
                with self._lock:
                    entry = self._history.get(path[len("/history/"):])
                return _Response(200, {path[len("/history/"):]: entry} if entry else {})
            if path == "/view":
                return self._view(query)
            if path == "/features":
                return _Response(200, {"supports_preview_metadata": True, "max_upload_size": 104857600})
            if path == "/embeddings":
                return _Response(200, [])
        if method == "POST":
            if path == "/prompt":
                return self._post_prompt(raw)
            if path == "/queue":
                body = _json(raw) or {}
                with self._changed:
                    if body.get("clear"):
                        self._pending.clear()
                    for prompt_id in body.get("delete") or []:
                        self._pending = [i for i in self._pending if i.prompt_id != prompt_id]
                    self._changed.notify_all()
                return _Response(200, raw=b"")
            if path == "/interrupt":
                body = _json(raw) or {}
                with self._changed:
                    running = self._running
                    # without an id it stops whatever runs (the UI's Cancel); another prompt's id does nothing
                    if running is not None and body.get("prompt_id") in (None, running.prompt_id):
                        self._interrupt.set()
                        self._changed.notify_all()
                return _Response(200, raw=b"")
            if path == "/free":
                body = _json(raw) or {}
                with self._changed:
                    self.frees.append(body)
                    # ComfyUI's worker takes these flags between prompts: at once when idle, else once the
                    # running prompt has ended (and written its node cache)
                    self._free_flags.update({k: True for k in ("unload_models", "free_memory") if body.get(k)})
                    if self._running is None:
                        self._apply_free()
                return _Response(200, raw=b"")
        return self._http_exception(404, "Not Found") if method == "GET" else self._http_exception(405, "Method Not Allowed")

    def _apply_free(self) -> None:
        """The /free flags, as ComfyUI's worker applies them (called with the lock held)."""
        if self._free_flags.get("free_memory"):
            self._cache.clear()
        self._free_flags.clear()

    def _system_stats(self) -> dict[str, Any]:
        return {"system": {"os": "posix", "ram_total": 25276510208, "ram_free": 23744233472,
                           "comfyui_version": VERSION, "required_frontend_version": "1.27.10",
                           "python_version": "3.11.7", "pytorch_version": "2.13.0+cpu", "embedded_python": False,
                           "argv": ["main.py", "--cpu"]},
                "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 25276510208,
                             "vram_free": 23744233472}]}

    def _view(self, query: dict[str, str]) -> _Response:
        name, subfolder = query.get("filename", ""), query.get("subfolder", "")
        if not name or ".." in Path(name).parts or ".." in Path(subfolder).parts or name.startswith("/"):
            return _Response(400, raw=b"")
        folder = {"output": self.output_dir, "temp": self.temp_dir}.get(query.get("type", "output"))
        if folder is None:
            return _Response(404, raw=b"")
        path = folder / subfolder / name
        if not path.is_file():
            return _Response(404, raw=b"")
        kind = "image/png" if path.suffix == ".png" else "application/octet-stream"
        return _Response(200, raw=path.read_bytes(), headers={"Content-Type": kind})

    def _post_prompt(self, raw: bytes) -> _Response:
        try:
            body = json.loads(raw or b"")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._exception("not JSON")
        with self._lock:
            self._number += 1
            number = self._number - 1
        if not isinstance(body, dict) or "prompt" not in body:
            return _Response(400, prompt_error("no_prompt", "No prompt provided", "No prompt provided"))
        prompt = body["prompt"]
        if not isinstance(prompt, dict) or not prompt:
            return _Response(400, prompt_error("prompt_no_outputs", "Prompt has no outputs"))
        outputs, node_errors, refusal = validate(prompt, self._classes)
        if refusal is not None:
            return _Response(400, refusal)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        if body.get("front"):
            number = -number
        extra = dict(body.get("extra_data") or {})
        if body.get("client_id"):
            extra["client_id"] = body["client_id"]
        item = PromptItem(number, prompt_id, prompt, extra, outputs)
        with self._changed:
            self._pending.append(item)
            work = self._queue
            self._changed.notify_all()
        # the status first, as ComfyUI's queue sends it on put: the worker could otherwise send execution_start
        # before it, which the real server never does
        self._broadcast_status()
        work.put(item)
        return _Response(200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    # ----------------------------------------------------------------------------- websocket

    def _sockets_of(self, client_id: str | None) -> list[ServerWebSocket]:
        """Where a prompt's events go: its client's socket; every socket for a prompt without a client_id."""
        if not client_id:
            return list(self._sockets.values())
        return [self._sockets[client_id]] if client_id in self._sockets else []

    def _serve_websocket(self, handler: Any, client_id: str) -> None:
        ws = ServerWebSocket.accept(handler)
        # a websocket stays open however long its client is silent, as aiohttp's does; the idle timeout
        # of HTTP connections would end it (a timed-out socket file cannot be read again); stop() and
        # drops shut the connection down, which ends the read
        handler.connection.settimeout(None)
        time.sleep(self._ws_filing_delay)  # a fault: a busy server between the handshake and filing the socket
        with self._records_changed:
            self._records.append(RecordedRequest("GET", "/ws", {"clientId": client_id}, 101))
            self._records_changed.notify_all()
        with self._changed:
            self._sockets[client_id] = ws  # ComfyUI's: a socket of a client id already filed is forgotten
            self._filed += 1
            self._changed.notify_all()
            remaining = len(self._pending) + (self._running is not None)
        ws.send_text(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}},
                                                            "sid": client_id}}))
        try:
            while not ws.closed and not self._stop_event.is_set():
                try:
                    frame = ws.receive()
                except socket.timeout:
                    continue
                if frame is None:
                    break
                message = _json(frame[1]) if frame[0] == 1 else None
                if isinstance(message, dict) and message.get("type") == "feature_flags":
                    ws.send_text(json.dumps({"type": "feature_flags", "data": {
                        "supports_preview_metadata": True, "max_upload_size": 104857600}}))
        except ConnectionError:
            pass
        finally:
            with self._changed:
                if self._late_websocket_ends:
                    filed = self._filed
                    self._changed.wait_for(lambda: self._filed > filed or self._stop_event.is_set(), timeout=10)
                self._sockets.pop(client_id, None)  # ComfyUI's: whichever socket is filed under the id now

    def _send(self, client_id: str | None, event: str, data: dict[str, Any]) -> None:
        """An execution event: only to the prompt's client; of a prompt posted without a client_id,
        ``progress`` to every socket and no other (measured: shared/reference/comfyui-api.md)."""
        if not client_id and event != "progress":
            return
        with self._lock:
            sockets = self._sockets_of(client_id)
            drop = next((d for d in self._ws_drops if d[0] == event and d[1] > 0), None) if sockets else None
            if drop is not None:
                drop[1] -= 1
                self._ws_drops = [d for d in self._ws_drops if d[1] > 0]
        for ws in sockets:
            if drop is not None:
                ws.drop()
            else:
                ws.send_text(json.dumps({"type": event, "data": data}))

    def _broadcast_status(self) -> None:
        with self._lock:
            remaining = len(self._pending) + (self._running is not None)
            sockets = list(self._sockets.values())
        for ws in sockets:
            ws.send_text(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}))


class _Gate(threading.Event):
    """``hold_execution``'s event: setting it also wakes the held prompt, which waits on ``changed``."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self._changed = changed

    def set(self) -> None:
        super().set()
        with self._changed:
            self._changed.notify_all()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bayes_merger.testing.fake_comfyui",
                                     description="A fake ComfyUI API for tests and demos; runs until SIGTERM or Ctrl-C.")
    parser.add_argument("--checkpoint-dir", type=Path, required=True, help="its models/checkpoints folder")
    parser.add_argument("--output-dir", type=Path, default=None, help="where SaveImage writes (default: a temporary folder)")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    serve_until_stopped(args.checkpoint_dir,
                        lambda: FakeComfyUI(args.checkpoint_dir, args.output_dir, port=args.port, host=args.host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
