"""ComfyUI's ``/ws`` websocket as a client reads it: JSON events for one client id, one at a time.

``websocket-client`` (synchronous, no event loop) is enough: the client reads events only while it
waits for its own prompt. A binary frame (an image of ``SaveImageWebsocket``, or a sampler's preview)
comes back as an ``image_frame`` event holding the image bytes and, in the metadata format, its node
and prompt; the client tells the images it asked for from previews by the node (see ``client``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import websocket

from bayes_merger.errors import WebUIConnectionError

logger = logging.getLogger(__name__)

# a socket silent this long may have been closed by a proxy (nginx's proxy_read_timeout is 60 s by default,
# Cloudflare's limit 100 s) without a word to our side: reopened before the next prompt (a CPU merge between
# two trials takes longer), rather than found dead after its POST, which costs the prompt a second run
IDLE_REOPEN = 30.0


class EventStream:
    """One websocket at a time, each under a client id of its own (``client_id``: the open one's); ``next``
    returns the next JSON event, or None on a timeout.

    A socket opened again gets a new id: ComfyUI keeps one socket a client id, and the handler of a
    socket it notices closed only after the client has reopened one under the same id forgets the new
    one (``finally: sockets.pop(sid)``), whose events then go nowhere for the rest of the run.
    """

    def __init__(self, base: str, name: str, connect_timeout: float, auth: tuple[str, str] | None = None) -> None:
        scheme, rest = base.split("://", 1)
        self.url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"
        self._name = name
        self._opened = 0  # sockets opened so far: the open one's client id is numbered by it
        self._connect_timeout = connect_timeout
        self._header = []
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._header.append(f"Authorization: Basic {token}")
        self._ws: websocket.WebSocket | None = None
        self._heard = 0.0  # when the open socket last brought a frame (time.monotonic)

    @property
    def client_id(self) -> str:
        """The client id of the socket opened last (a prompt posted under it gets that socket's events)."""
        return f"{self._name}-{self._opened}"

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.connected

    def connect(self) -> None:
        """Open the socket if it is not open, and wait for ComfyUI's first ``status`` message; WebUIConnectionError
        when it cannot be opened.

        ComfyUI sends that message once it has filed the socket under our client id, and only then are the
        events of our prompts sent to it: a prompt posted between the handshake and that moment (a busy
        server) would run with its events sent to no one, and its images taken for lost.
        """
        if self.connected and time.monotonic() - self._heard < IDLE_REOPEN:
            return
        self.close()
        self._opened += 1
        try:
            self._ws = websocket.create_connection(f"{self.url}?clientId={quote(self.client_id)}",
                                                   timeout=self._connect_timeout, header=self._header,
                                                   enable_multithread=True)
        except (websocket.WebSocketException, OSError) as exc:
            raise WebUIConnectionError(
                f"Could not open ComfyUI's websocket {self.url} ({_words(exc)}); is it running?"
            ) from exc
        self._heard = time.monotonic()
        deadline = time.monotonic() + self._connect_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next(remaining)
            if message is None or message.get("type") == "status":
                break  # a server that sends no status within the connect timeout is not waited for longer
        logger.debug("ComfyUI websocket open for client %s", self.client_id)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON event within ``timeout`` s, None if none came; WebUIConnectionError when the
        socket closed or failed (the caller reconnects and asks /history what became of its prompt)."""
        if self._ws is None:
            self.connect()
        assert self._ws is not None
        try:
            self._ws.settimeout(max(timeout, 0.01))
            while True:
                frame = self._ws.recv()
                self._heard = time.monotonic()
                if not frame:  # a close frame (or an empty message)
                    if not self._ws.connected:
                        raise websocket.WebSocketConnectionClosedException("closed by the server")
                    continue
                if isinstance(frame, bytes):
                    image = image_frame(frame)
                    if image is not None:
                        return image
                    continue
                try:
                    message = json.loads(frame)
                except json.JSONDecodeError:
                    continue
                if isinstance(message, dict):
                    return message
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketException, OSError) as exc:
            self.close()
            raise WebUIConnectionError(f"ComfyUI's websocket closed ({_words(exc)}).") from exc

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except (websocket.WebSocketException, OSError):
                pass


def image_frame(frame: bytes) -> dict[str, Any] | None:
    """A binary frame as an event: ``{"type": "image_frame", "data": {"image", "node", "prompt_id"}}``.

    Measured formats: ``uint32 BE 1`` (an image), ``uint32 BE`` 1 (JPEG) or 2 (PNG), the bytes; and,
    once a client announced ``supports_preview_metadata``, ``uint32 BE 4``, ``uint32 BE`` length, the
    metadata JSON (``node_id``, ``prompt_id``, …), the bytes. Anything else is not an image: None.
    """
    if len(frame) < 8:
        return None
    kind = int.from_bytes(frame[:4], "big")
    if kind == 1:
        return {"type": "image_frame", "data": {"image": frame[8:], "node": None, "prompt_id": None}}
    if kind == 4:
        length = int.from_bytes(frame[4:8], "big")
        try:
            meta = json.loads(frame[8:8 + length])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        meta = meta if isinstance(meta, dict) else {}
        return {"type": "image_frame", "data": {"image": frame[8 + length:], "node": meta.get("node_id"),
                                                "prompt_id": meta.get("prompt_id")}}
    return None


def _words(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, ConnectionRefusedError) or "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__
