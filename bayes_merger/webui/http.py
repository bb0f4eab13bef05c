"""The WebUI's HTTP side: one session with auth, timeouts and retries, and errors as sentences.

Every failure is one ``WebUIError`` whose message names the request and the server's own message;
``WebUIConnectionError`` (a subclass, no status) when the WebUI could not be reached, dropped the
connection or did not answer in time. The password lives only in the session: it is never logged
nor put in a message.

Which requests are retried (``urllib3.Retry`` on the session's adapters, with backoff):

- Connection errors (refused, connect timeout, DNS): every request. Nothing reached the server, so
  repeating cannot run anything twice.
- 502 and 503: every request. The server or the proxy in front of it says it did not run the
  request (restarting, overloaded, backend down).
- 504 and connections dropped after the request was sent: only requests that are harmless and cheap
  to repeat: the GETs, ``refresh-checkpoints`` (a rescan) and ``POST /options`` (it *sets* a value:
  once applied, setting it again is a no-op). Not txt2img: the server may still be rendering it,
  and a repeat would queue a second generation behind the first and most likely time out the same
  way; the trial fails instead and the next trial starts clean.
- Read timeouts: never. The server is busy; asking again only adds another full wait. Raise
  ``webui.read_timeout`` instead.
- 4xx and 500: never. The answer will not change.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError

logger = logging.getLogger(__name__)

TXT2IMG = "/sdapi/v1/txt2img"
OPTIONS = "/sdapi/v1/options"
SD_MODELS = "/sdapi/v1/sd-models"
REFRESH = "/sdapi/v1/refresh-checkpoints"
PROGRESS = "/sdapi/v1/progress"


class _Retry(Retry):
    """``Retry`` that never repeats a request whose answer timed out (see the module docstring)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class ApiSession:
    """The HTTP session of one client: ``request`` returns decoded JSON or raises a WebUIError."""

    def __init__(self, config: WebUIConfig) -> None:
        self.config = config
        self.base = _base_url(config.url)
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._session = requests.Session()
        self._session.auth = _credentials(config)
        self._mount_adapters()

    def _mount_adapters(self) -> None:
        common = dict(
            total=self.config.retries,
            backoff_factor=self.config.backoff_factor,
            # every request this client sends is safe to repeat after a 502/503; the txt2img adapter
            # below narrows what else is retried (module docstring)
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,  # the last 5xx answer is returned, so its body becomes the message
            other=0,
        )
        # requests picks the adapter with the longest matching prefix
        self._session.mount(f"{self.base}/", HTTPAdapter(max_retries=_Retry(status_forcelist=(502, 503, 504), **common)))
        self._session.mount(
            f"{self.base}{TXT2IMG}", HTTPAdapter(max_retries=_Retry(read=False, status_forcelist=(502, 503), **common))
        )
        # the progress probe polls on its own schedule
        self._session.mount(f"{self.base}{PROGRESS}", HTTPAdapter(max_retries=0))

    def close(self) -> None:
        self._session.close()

    def probe(self, timeout: tuple[float, float]) -> requests.Response:
        """One ``GET /sdapi/v1/progress``, not retried; requests' own exceptions pass through."""
        return self._session.get(self.base + PROGRESS, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call: the decoded JSON answer, or a WebUIError naming the call and the reason."""
        url = self.base + path
        started = time.monotonic()
        try:
            response = self._session.request(method, url, json=body, timeout=self._timeout)
        except requests.ReadTimeout as exc:
            raise WebUIConnectionError(
                f"{method} {path} got no answer within {self.config.read_timeout:g} s (raise webui.read_timeout "
                "if model loads or generations take longer)."
            ) from exc
        except requests.RequestException as exc:
            raise WebUIConnectionError(
                f"{method} {path} failed: could not talk to the WebUI at {self.base} ({cause(exc)}); "
                "is it running, and is webui.url right?"
            ) from exc
        logger.debug("%s %s: HTTP %d in %.2f s", method, path, response.status_code, time.monotonic() - started)
        if not response.ok:
            raise http_error(method, path, response)
        try:
            return response.json()
        except ValueError as exc:
            raise WebUIError(f"{method} {path} answered something that is not JSON: {response.text[:120]!r}.") from exc


def http_error(method: str, path: str, response: requests.Response) -> WebUIError:
    status = response.status_code
    message = _server_message(response)
    hint = ""
    if status == 401:
        hint = " (check webui.auth or the variable named by webui.auth_env)"
    elif status == 404 and path.startswith("/sdapi/") and message == "Not Found":
        hint = " (API not enabled: start the WebUI with --api)"
    return WebUIError(f"{method} {path} failed with HTTP {status}: {message.rstrip('.')}{hint}.", status=status)


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"webui.url {url!r} is not an http:// or https:// address.")
    if parts.username or parts.password:
        raise ConfigError("webui.url must not contain a user name or password: use webui.auth_env (or webui.auth).")
    # the form requests prepares, so the adapters mounted on this prefix really match
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _credentials(config: WebUIConfig) -> tuple[str, str] | None:
    secret = config.auth
    source = "webui.auth"
    if not secret and config.auth_env:
        source = f"the environment variable {config.auth_env} (webui.auth_env)"
        secret = os.environ.get(config.auth_env)
        if not secret:
            raise ConfigError(f"webui.auth_env names {config.auth_env}, but that environment variable is not set.")
    if not secret:
        return None
    user, sep, password = secret.partition(":")
    if not sep or not user:
        raise ConfigError(f"The credentials in {source} must have the form user:password, as for --api-auth.")
    return user, password


def plain(value: Any) -> Any:
    """Plain JSON values from mappings and sequences of any kind (an OmegaConf node, a tuple)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(item) for item in value]
    return value


def _server_message(response: requests.Response) -> str:
    """The server's own words from any of the WebUI error shapes (see the API reference)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        detail = body.get("detail")
        if isinstance(detail, list):  # 422 validation errors (pydantic v1 or v2)
            parts = []
            for item in detail:
                if not isinstance(item, Mapping):
                    parts.append(str(item))
                    continue
                where = ".".join(str(p) for p in item.get("loc") or [] if p != "body")
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            return "; ".join(parts) or "invalid request"
        for key in ("errors", "message", "detail"):  # A1111, Forge, plain HTTPException
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                error = body.get("error")
                if key != "detail" and isinstance(error, str) and error and error != "HTTPException":
                    return f"{error}: {value.strip()}"
                return value.strip()
        if isinstance(body.get("error"), str) and body["error"]:
            return body["error"]
    text = " ".join(response.text.split())
    if text and not text.startswith("<"):
        return text[:200]
    return response.reason or "no message"


def cause(exc: BaseException) -> str:
    """A few words for what went wrong on the wire."""
    reason: BaseException | None = exc
    for _ in range(5):  # unwrap requests → urllib3 MaxRetryError → the underlying error
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
