"""The fake WebUI's HTTP side: a threaded server on real sockets, the record of the requests it
answered, and fault injection (failing requests, requests dropped before or after the server acted
on them, delayed or held requests, a server still starting, a stop as a killed process stops). What
the requests mean is the subclass's: ``FakeWebUI`` keeps the A1111 state (options, checkpoints, the
loaded model, txt2img) and answers through ``_route``.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now (the system's pick): for a server started in another
    process, or an address where nothing answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server answered: ``status`` is None when the connection was dropped."""

    method: str
    path: str
    body: Any
    status: int | None


@dataclass
class _Fault:
    kind: str  # "status", "drop", "drop_after" or "startup"
    remaining: int
    path: str | None = None
    method: str | None = None
    status: int = 503
    message: str = ""
    body: bytes | None = None
    error: str = "RuntimeError"  # the exception a 500's body names
    headers: dict[str, str] | None = None  # sent with the answer, e.g. a proxy's Retry-After


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
    fake: FakeHTTPServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("fake WebUI: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn: exercises the client's connection reuse
    server_version = "FakeWebUI/1"
    # idle keep-alive connections are closed after 5 s, as uvicorn (the server under A1111's gradio) does
    # by default: a client must not reuse one the server is closing
    timeout = 5
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


class FakeHTTPServer:
    """An HTTP server on ``host``:``port`` (0: a free one) with HTTP Basic users, records and faults.

    Subclasses answer in ``_route`` and give the error bodies of their flavour (``_exception``,
    ``_http_exception``); ``_on_start`` and ``_on_stop`` run under the state lock.
    """

    def __init__(self, auth: str | None = None, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self._port = port
        self._users = _parse_auth(auth)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # server state
        self._records: list[RecordedRequest] = []
        self._records_changed = threading.Condition()
        self._held = 0  # requests waiting on a hold() or a delay() right now
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._faults: list[_Fault] = []
        self._delays: dict[tuple[str, str | None], tuple[float, bool]] = {}
        self._holds: dict[tuple[str, str | None], threading.Event] = {}
        self._stop_event = threading.Event()
        # exceptions of the fake's own code while it answered ("METHOD path: Type: message"), each answered as the
        # real server answers any exception (500): a bug of the fake, which the fixtures that start fakes assert
        # never happened, so that a test accepting a 500 or a failed trial cannot pass on a broken fake
        self.internal_errors: list[str] = []

    # ------------------------------------------------------------------------- what subclasses give

    def _on_start(self) -> None:
        """Runs under the lock when the server starts listening."""

    def _on_stop(self) -> None:
        """Runs under the lock once the server has stopped."""

    def _log_started(self) -> None:
        logger.info("fake server serving %s", self.url)

    def _route(self, method: str, path: str, raw: bytes) -> Any:
        return _Response(404, {"detail": "Not Found"})

    def _exception(self, message: str, error: str = "RuntimeError") -> _Response:
        return _Response(500, {"error": error, "detail": "", "body": "", "errors": message})

    def _http_exception(self, status: int, detail: str) -> _Response:
        return _Response(status, {"detail": detail})

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> FakeHTTPServer:
        """Listen (on the same port as before after a stop), scan the folder, load the model it remembers."""
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self._port), _Handler)
        httpd.fake = self
        self._port = httpd.server_address[1]
        with self._lock:
            self._stopping = False
            self._stop_event.clear()
            self._on_start()
        self._httpd = httpd
        # a short poll interval makes stop() quick (shutdown waits for the loop's next poll)
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.02,), name=f"fake-webui-{self._port}", daemon=True
        )
        self._thread.start()
        self._log_started()
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
            self._on_stop()

    def check_sound(self) -> None:
        """An AssertionError if the fake's own code failed while it answered (``internal_errors``): a test that
        passed against it passed against a broken fake. The fixtures that start fakes call it at their end."""
        assert not self.internal_errors, (f"the fake {type(self).__name__} at {self.url} failed in its own code "
                                          f"(answered 500): {self.internal_errors}")

    def __enter__(self) -> FakeHTTPServer:
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

    def wait_for_requests(self, path: str, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        """Block until ``count`` requests to ``path`` have been answered or dropped (a held request
        counts once released)."""
        with self._records_changed:
            if not self._records_changed.wait_for(lambda: len(self.requests_to(path)) >= count, timeout):
                raise TimeoutError(f"fewer than {count} requests to {path} within {timeout} s")
        return self.requests_to(path)

    @property
    def held(self) -> int:
        """How many requests wait on a ``hold()`` or a ``delay()`` right now."""
        with self._records_changed:
            return self._held

    def wait_until_held(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until ``count`` requests are waiting on a ``hold()`` or a ``delay()``."""
        with self._records_changed:
            if not self._records_changed.wait_for(lambda: self._held >= count, timeout):
                raise TimeoutError(f"fewer than {count} held requests within {timeout} s")

    # ------------------------------------------------------------------------ fault injection

    def fail_next(
        self, count: int = 1, status: int = 503, path: str | None = None, message: str = "injected failure",
        body: str | bytes | None = None, method: str | None = None, error: str = "RuntimeError",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests (to ``path`` and with ``method`` only, if given) with
        ``status`` and this mode's error body (500: the exception ``error``, e.g. "NansException" for a
        model that rendered NaN; else an HTTPException), or ``body`` as it is (e.g. a proxy's HTML page),
        with ``headers`` too."""
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._faults.append(_Fault("status", count, path, method, status, message, raw, error, headers))

    def drop_next(self, count: int = 1, path: str | None = None, method: str | None = None) -> None:
        """Close the connection without an answer, after reading the request, ``count`` times."""
        with self._lock:
            self._faults.append(_Fault("drop", count, path, method))

    def drop_after_next(self, count: int = 1, path: str | None = None, method: str | None = None) -> None:
        """Carry out the request as usual, then close the connection without its answer, ``count`` times:
        an answer lost on the way back (a proxy's timeout, a network cut) although the server acted on it."""
        with self._lock:
            self._faults.append(_Fault("drop_after", count, path, method))

    def starting_up(self, count: int) -> None:
        """Answer the next ``count`` /sdapi requests with 404 Not Found, as a WebUI still starting."""
        with self._lock:
            self._faults.insert(0, _Fault("startup", count))

    def delay(self, path: str, seconds: float, method: str | None = None, *, in_all: bool = False) -> None:
        """Answer requests to ``path`` (with ``method``, if given) ``seconds`` later (0: no delay); with
        ``in_all``, ``seconds`` after the request came, the server's own work on it included."""
        with self._lock:
            self._delays[(path, method)] = (seconds, in_all)

    def hold(self, path: str, method: str | None = None) -> threading.Event:
        """Keep requests to ``path`` (with ``method``, if given) waiting until the returned event is
        set or the server stops; a request released by a stop gets no answer."""
        with self._lock:
            return self._holds.setdefault((path, method), threading.Event())

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """A request waiting on a hold or a delay, counted for ``wait_until_held``."""
        with self._records_changed:
            self._held += 1
            self._records_changed.notify_all()
        try:
            yield
        finally:
            with self._records_changed:
                self._held -= 1

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            for event in self._holds.values():
                event.set()
            self._holds.clear()

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
            with self._lock:
                self.internal_errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
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
        drop_after = fault is not None and fault.kind == "drop_after"
        if fault is not None and not drop_after:
            if fault.kind == "startup":
                return _Response(404, {"detail": "Not Found"})
            if fault.kind == "drop":
                return _DROP
            if fault.body is not None:
                answer = _Response(fault.status, raw=fault.body, headers={"Content-Type": "text/html"})
            elif fault.status == 500:
                answer = self._exception(fault.message, fault.error)
            else:
                answer = self._http_exception(fault.status, fault.message)
            answer.headers.update(fault.headers or {})
            return answer
        came = time.monotonic()
        with self._lock:
            seconds, in_all = self._delays.get((path, method)) or self._delays.get((path, None)) or (0.0, False)
            hold = self._holds.get((path, method)) or self._holds.get((path, None))
        if seconds and not in_all:
            with self._waiting():
                self._stop_event.wait(seconds)
        if hold is not None:
            with self._waiting():
                hold.wait()
        if path.startswith("/sdapi/") and self._users:
            denied = _check_auth(authorization, self._users)
            if denied:
                return _Response(401, {"detail": denied}, headers={"WWW-Authenticate": "Basic"})
        response = self._route(method, path, raw)
        if seconds and in_all:
            self._stop_event.wait(max(0.0, came + seconds - time.monotonic()))
        return _DROP if drop_after else response

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
