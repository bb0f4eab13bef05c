"""ComfyUI's HTTP side: one session with timeouts and safe retries, and every error body as a sentence.

Which requests are retried (``urllib3.Retry`` on the session's adapters, with backoff), by the rules
of ``webui.http``:

- Connection errors (refused, connect timeout): every request; nothing reached the server.
- 502 and 503: every request; the server (or a proxy) says it did not run it.
- 504 and connections dropped after the request was sent: only requests that are harmless to repeat:
  the GETs, ``/free`` and ``/interrupt``. Never ``POST /prompt``: the prompt may already be queued,
  and a repeat would render it twice; the client asks ``/history`` and ``/queue`` instead.
- Read timeouts: never (asking again only adds another full wait). 4xx and 500: never.

Error bodies (``shared/reference/comfyui-api.md``): a refused prompt is a 400 with ``error`` and
``node_errors`` — the sentence names each failing node, its class and the input; a crash is a 500
``text/plain`` page; unknown routes answer aiohttp's ``404: Not Found`` text or an empty body.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError

logger = logging.getLogger(__name__)

PROMPT = "/prompt"
SYSTEM_STATS = "/system_stats"


class _Retry(Retry):
    """``Retry`` that never repeats a request whose answer timed out (see the module docstring)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class ComfyApi:
    """The HTTP session of one ComfyUI client: ``request`` returns decoded JSON (or bytes) or raises."""

    def __init__(self, config: WebUIConfig) -> None:
        self.config = config
        self.base = base_url(config.url)
        self.auth = credentials(config)  # ComfyUI has none; a proxy in front of it may
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._session = requests.Session()
        self._session.auth = self.auth
        common = dict(total=config.retries, backoff_factor=config.backoff_factor,
                      allowed_methods=frozenset({"GET", "POST"}), raise_on_status=False, other=0)
        self._session.mount(f"{self.base}/", HTTPAdapter(max_retries=_Retry(status_forcelist=(502, 503, 504), **common)))
        self._session.mount(f"{self.base}{PROMPT}",
                            HTTPAdapter(max_retries=_Retry(read=False, status_forcelist=(502, 503), **common)))
        self._session.mount(f"{self.base}{SYSTEM_STATS}", HTTPAdapter(max_retries=0))

    def close(self) -> None:
        self._session.close()

    def probe(self, timeout: tuple[float, float]) -> requests.Response:
        """One ``GET /system_stats``, not retried; requests' own exceptions pass through."""
        return self._session.get(self.base + SYSTEM_STATS, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None,
                raw: bool = False) -> Any:
        """One API call: the decoded JSON answer (``raw``: the bytes; an empty body: None), or a WebUIError."""
        started = time.monotonic()
        try:
            response = self._session.request(method, self.base + path, json=body, params=params, timeout=self._timeout)
        except requests.ReadTimeout as exc:
            raise WebUIConnectionError(
                f"{method} {path} got no answer from ComfyUI within {self.config.read_timeout:g} s "
                "(raise webui.read_timeout if it is busy for longer)."
            ) from exc
        except requests.RequestException as exc:
            raise WebUIConnectionError(
                f"{method} {path} failed: could not talk to ComfyUI at {self.base} ({cause(exc)}); "
                "is it running, and is webui.url right?"
            ) from exc
        logger.debug("%s %s: HTTP %d in %.2f s", method, path, response.status_code, time.monotonic() - started)
        if not response.ok:
            raise http_error(method, path, response)
        if raw:
            return response.content
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise WebUIError(f"{method} {path} answered something that is not JSON: {response.text[:120]!r}.") from exc


def http_error(method: str, path: str, response: requests.Response) -> WebUIError:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return WebUIError(f"ComfyUI refused the prompt ({method} {path}, HTTP {status}): {prompt_error_text(body)}.",
                          status=status)
    text = " ".join(response.text.split())
    if text.startswith(f"{status} "):  # "500 Internal Server Error Server got itself in trouble"
        text = text.split(" ", 1)[1]
    if text.startswith(f"{status}:"):  # aiohttp's "404: Not Found"
        text = text.split(":", 1)[1].strip()
    message = text[:200] if text and not text.startswith("<") else (response.reason or "no message")
    hint = " (is webui.url a ComfyUI server? set webui.backend)" if status in (404, 405) else ""
    return WebUIError(f"{method} {path} failed with HTTP {status}: {message.rstrip('.')}{hint}.", status=status)


def prompt_error_text(body: Mapping[str, Any]) -> str:
    """One sentence for a refused prompt: each node's errors with its class and input, else the error."""
    parts = []
    for node_id, node in (body.get("node_errors") or {}).items():
        if not isinstance(node, Mapping):
            continue
        for error in node.get("errors") or []:
            extra = error.get("extra_info") or {}
            where = f"node {node_id} ({node.get('class_type', '?')})"
            if extra.get("input_name"):
                where += f" input {extra['input_name']!r}"
            message = str(error.get("message") or error.get("type") or "invalid").rstrip(".")
            details = str(error.get("details") or "").strip()
            if details and details != extra.get("input_name"):
                message += f" ({details})"
            parts.append(f"{where}: {message}")
    if parts:
        return "; ".join(parts)
    error = body.get("error") or {}
    message = str(error.get("message") or error.get("type") or "invalid prompt").rstrip(".")
    details = str(error.get("details") or "").strip()
    return f"{message} ({details})" if details and details != message else message


def base_url(url: str) -> str:
    """``webui.url`` in the form requests prepares (the same rules as the A1111 client's)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"webui.url {url!r} is not an http:// or https:// address.")
    if parts.username or parts.password:
        raise ConfigError("webui.url must not contain a user name or password: use webui.auth_env (or webui.auth).")
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def credentials(config: WebUIConfig) -> tuple[str, str] | None:
    """("user", "password") from ``webui.auth`` or the variable ``webui.auth_env`` names (a proxy's)."""
    secret, source = config.auth, "webui.auth"
    if not secret and config.auth_env:
        source = f"the environment variable {config.auth_env} (webui.auth_env)"
        secret = os.environ.get(config.auth_env)
        if not secret:
            raise ConfigError(f"webui.auth_env names {config.auth_env}, but that environment variable is not set.")
    if not secret:
        return None
    user, sep, password = secret.partition(":")
    if not sep or not user:
        raise ConfigError(f"The credentials in {source} must have the form user:password.")
    return user, password


def cause(exc: BaseException) -> str:
    """A few words for what went wrong on the wire."""
    reason: BaseException | None = exc
    for _ in range(5):
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        elif isinstance(reason, requests.RequestException) and reason.args and isinstance(reason.args[0], BaseException):
            reason = reason.args[0]
        else:
            break
    if isinstance(reason, NewConnectionError) or "refused" in str(reason).lower():
        return "connection refused"
    if isinstance(reason, ProtocolError) or isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection was closed without an answer"
    if isinstance(exc, requests.ConnectTimeout):
        return "timed out while connecting"
    return str(reason or exc)
