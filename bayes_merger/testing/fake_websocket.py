"""The server side of a websocket (RFC 6455), enough for the fake ComfyUI: handshake, frames, close.

Written on the standard library rather than taken from a websocket server package: the fake's HTTP
side is the stdlib server of ``fake_http`` (threads, real sockets, the connection tracking its
``stop()`` uses to drop every client as a killed process would), and a websocket there is only an
upgraded connection of that server. A library server (``websockets``) would bring its own event
loop and listener, a second server to start, stop and fault-inject. What the fake needs is small:
the 101 handshake, unmasked server frames (text, binary, close, pong) and masked client frames.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from typing import Any, BinaryIO

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode()).digest()).decode()


def is_upgrade(headers: Any) -> bool:
    return "websocket" in str(headers.get("Upgrade", "")).lower() and bool(headers.get("Sec-WebSocket-Key"))


class ServerWebSocket:
    """One accepted websocket: ``send_text``/``send_binary`` from any thread, ``receive`` in the
    handler's thread; ``closed`` once either side closed or the socket failed."""

    def __init__(self, connection: socket.socket, rfile: BinaryIO, wfile: BinaryIO) -> None:
        self._connection = connection
        self._rfile = rfile
        self._wfile = wfile
        self._send_lock = threading.Lock()
        self.closed = False

    @classmethod
    def accept(cls, handler: Any) -> "ServerWebSocket":
        """Answer the upgrade request of a ``BaseHTTPRequestHandler`` with 101 and take over its socket."""
        key = handler.headers["Sec-WebSocket-Key"]
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept_key(key))
        handler.end_headers()
        handler.wfile.flush()
        return cls(handler.connection, handler.rfile, handler.wfile)

    def send_text(self, text: str) -> bool:
        return self._send(TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> bool:
        return self._send(BINARY, data)

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            self._send(CLOSE, struct.pack("!H", code))
        self.closed = True

    def drop(self) -> None:
        """End the connection without a close frame, as a crashed server or a broken network does."""
        self.closed = True
        try:
            self._connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def receive(self) -> tuple[int, bytes] | None:
        """The next data frame from the client (opcode, payload); None once the connection is closed.
        Pings are answered; a close is answered and ends the connection. ``socket.timeout`` passes through."""
        while not self.closed:
            header = self._read(2)
            if header is None:
                self.closed = True
                return None
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            masked = bool(header[1] & 0x80)
            if length == 126:
                length = struct.unpack("!H", self._read_exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read_exact(8))[0]
            mask = self._read_exact(4) if masked else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read_exact(length)))
            if opcode == CLOSE:
                self.close()
                return None
            if opcode == PING:
                self._send(PONG, payload)
                continue
            if opcode in (TEXT, BINARY):
                return opcode, payload
        return None

    def _read(self, count: int) -> bytes | None:
        try:
            data = self._rfile.read(count)
        except (ConnectionError, ValueError, OSError) as exc:
            if isinstance(exc, socket.timeout):
                raise
            return None
        return data if data and len(data) == count else None

    def _read_exact(self, count: int) -> bytes:
        if count == 0:
            return b""
        data = self._read(count)
        if data is None:
            self.closed = True
            raise ConnectionError("websocket closed in the middle of a frame")
        return data

    def _send(self, opcode: int, payload: bytes) -> bool:
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
        with self._send_lock:
            if self.closed:
                return False
            try:
                self._wfile.write(header + payload)
                self._wfile.flush()
            except (OSError, ValueError):
                self.closed = True
                return False
        return True
