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
- 504 (and 524, Cloudflare's and RunPod's proxy timeout, which ends any answer slower than 100 s) and
  connections dropped after the request was sent: only requests that are harmless and cheap
  to repeat: the GETs, ``refresh-checkpoints`` (a rescan) and ``POST /options`` (it *sets* a value:
  once applied, setting it again is a no-op). Not txt2img: the server may still be rendering it,
  and a repeat would queue a second generation behind the first and most likely time out the same
  way. A 504 then fails the trial and the next trial starts clean (the client interrupts the
  generation the server may still be running); a dropped connection is a lost WebUI (below): the loop
  waits until it answers again and redoes the trial.
- Read timeouts: never. The server is busy; asking again only adds another full wait (after a txt2img,
  the client interrupts the generation instead). Raise ``webui.read_timeout``.
- 4xx and 500: never. The answer will not change. A ``Retry-After`` header is not obeyed: a proxy's
  429 or 503 could ask for hours per try, in silence; the backoff above decides the wait.

What a failed request means for the trial: a 502 or 503 still there after the retries, and a 404
"Not Found" on an API path that answered before (A1111's port opens before its API routes exist, so a
restarting WebUI answers 404 for a while), are a ``WebUIConnectionError``: the server is down or
restarting, not the trial at fault, so the loop waits for it and redoes the trial. Every other error
answer is a ``WebUIError`` of that trial.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError, WebUITimedOut

logger = logging.getLogger(__name__)

TXT2IMG = "/sdapi/v1/txt2img"
OPTIONS = "/sdapi/v1/options"
SD_MODELS = "/sdapi/v1/sd-models"
REFRESH = "/sdapi/v1/refresh-checkpoints"
PROGRESS = "/sdapi/v1/progress"
INTERRUPT = "/sdapi/v1/interrupt"
SAMPLERS = "/sdapi/v1/samplers"
SCHEDULERS = "/sdapi/v1/schedulers"
UPSCALERS = "/sdapi/v1/upscalers"
LATENT_UPSCALE_MODES = "/sdapi/v1/latent-upscale-modes"
SCRIPTS = "/sdapi/v1/scripts"
# ends the sentence of every 401, whoever answered it: the WebUI, ComfyUI, or an auth proxy in front of either
AUTH_HINT = " (check webui.auth or the variable named by webui.auth_env)"


# a proxy's answer that the server did not answer in time: it may still be running the request
GATEWAY_TIMEOUTS = (504, 524)


class SafeRetry(Retry):
    """``Retry`` that never repeats a request whose answer timed out (see the module docstring)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class ApiSession:
    """The HTTP session of one client: ``request`` returns decoded JSON or raises a WebUIError.

    The ComfyUI session (``renderers.comfyui.http.ComfyApi``) is this one with its own paths and words.
    """

    server = "the WebUI"  # who the error messages name
    once_path = TXT2IMG  # the request never repeated after a 504 or a dropped connection (module docstring)
    probe_path = PROGRESS  # the readiness probe: polled on its own schedule, never retried
    busy_words = "got no answer within {timeout:g} s (raise webui.read_timeout if model loads or generations take longer)"
    credentials_form = ", as for --api-auth"
    api_prefix = "/sdapi/"  # where a 404 "Not Found" after earlier answers means a restart (module docstring)
    # the calls A1111 answers only once the render under way is done (its queue lock): one that got no answer in
    # time leaves the server ``hung`` until one of them answers again (/interrupt and /progress answer anyway)
    queued = frozenset({("POST", TXT2IMG), ("POST", REFRESH), ("POST", OPTIONS)})

    def __init__(self, config: WebUIConfig) -> None:
        self.config = config
        self.base = base_url(config.url)
        self.auth = credentials(config, self.credentials_form)
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._session = requests.Session()
        self._session.auth = self.auth
        self._mount_adapters()
        self._answered = False  # whether an API path has answered 2xx: a later route-404 is a restart
        self.hung = False

    def _mount_adapters(self) -> None:
        common = dict(
            total=self.config.retries,
            backoff_factor=self.config.backoff_factor,
            # every request this client sends is safe to repeat after a 502/503; the once_path adapter
            # below narrows what else is retried (module docstring)
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,  # the last 5xx answer is returned, so its body becomes the message
            respect_retry_after_header=False,  # module docstring
            other=0,
        )
        # requests picks the adapter with the longest matching prefix
        self._session.mount(f"{self.base}/", HTTPAdapter(max_retries=SafeRetry(status_forcelist=(502, 503, *GATEWAY_TIMEOUTS),
                                                                                **common)))
        self._session.mount(
            f"{self.base}{self.once_path}",
            HTTPAdapter(max_retries=SafeRetry(read=False, status_forcelist=(502, 503), **common)),
        )
        # the probe polls on its own schedule
        self._session.mount(f"{self.base}{self.probe_path}", HTTPAdapter(max_retries=0))

    def close(self) -> None:
        self._session.close()

    def probe(self, timeout: tuple[float, float]) -> requests.Response:
        """One GET of ``probe_path``, not retried; requests' own exceptions pass through."""
        return self._session.get(self.base + self.probe_path, timeout=timeout)

    def send(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> requests.Response:
        """One API call: the answer when it is 2xx, else a WebUIError naming the call and the reason."""
        started = time.monotonic()
        try:
            response = self._session.request(method, self.base + path, json=body, params=params, timeout=self._timeout)
        except requests.ReadTimeout as exc:
            self.hung = self.hung or (method, path) in self.queued
            words = self.busy_words.format(timeout=self.config.read_timeout)
            raise WebUITimedOut(f"{method} {path} {words}.") from exc
        except requests.RequestException as exc:
            raise WebUIConnectionError(
                f"{method} {path} failed: could not talk to {self.server} at {self.base} ({cause(exc)}); "
                "is it running, and is webui.url right?"
            ) from exc
        self.hung = self.hung and (method, path) not in self.queued
        logger.debug("%s %s: HTTP %d in %.2f s", method, path, response.status_code, time.monotonic() - started)
        if not response.ok:
            error = self.error_for(method, path, response)
            status = response.status_code
            if status in (502, 503):  # the retries ran out
                raise WebUIConnectionError(f"{error} Still so after {self.config.retries + 1} tries: {self.server} "
                                           "(or a proxy in front of it) is down, restarting or overloaded.", status=status)
            if self._answered and status == 404 and path.startswith(self.api_prefix) \
                    and _server_message(response) == "Not Found":
                raise WebUIConnectionError(f"{method} {path} failed with HTTP 404: Not Found, where {self.server}'s API "
                                           "answered before: it is restarting (its API is not up yet).", status=status)
            raise error
        if path.startswith(self.api_prefix):
            self._answered = True
        return response

    def error_for(self, method: str, path: str, response: requests.Response) -> WebUIError:
        return http_error(method, path, response)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call: the decoded JSON answer, or a WebUIError naming the call and the reason."""
        return decode_json(method, path, self.send(method, path, body))


def decode_json(method: str, path: str, response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise WebUIError(f"{method} {path} answered something that is not JSON: {response.text[:120]!r}.") from exc


def wait_until_ready(
    api: ApiSession,
    timeout: float | None,
    server: str,
    judge: Callable[[requests.Response], str],
    reason: Callable[[BaseException], str] | None = None,
) -> None:
    """Call ``api.probe`` every ``poll_interval`` until it answers 2xx, for at most ``timeout`` seconds.

    A 401 ends the wait at once with ``api.error_for``'s sentence, which names webui.auth (``AUTH_HINT``):
    wrong or missing credentials do not change while we wait, whichever server (or proxy) asks for them.
    ``server`` names it ("the WebUI at ..."); ``judge`` says in words what another non-2xx answer means
    (or raises, for an answer that will not change); ``reason`` does the same for an exception
    (default: ``cause``).
    """
    config = api.config
    named = server[:1].upper() + server[1:]
    setting = " (webui.ready_timeout)" if timeout is None else ""
    timeout = config.ready_timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    last, unreachable = "it did not answer", True
    said = False
    while True:
        try:
            response = api.probe((config.connect_timeout, min(config.read_timeout, max(timeout, 1.0))))
        except requests.RequestException as exc:
            last, unreachable = f"it could not be reached ({(reason or cause)(exc)})", True
        else:
            unreachable = False
            if response.ok:
                return
            if response.status_code == 401:
                raise api.error_for("GET", api.probe_path, response)
            last = judge(response)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = WebUIConnectionError if unreachable else WebUIError
            raise error(f"{named} was not ready after {timeout:g} s: {last}.")
        if not said:  # a WebUI not started yet would otherwise be minutes of silence
            logger.info("%s does not answer yet (%s): waiting up to %g s%s.", named, last, timeout, setting)
            said = True
        else:
            logger.debug("Waiting for %s: %s.", server, last)
        time.sleep(min(config.poll_interval, remaining))


def http_error(method: str, path: str, response: requests.Response) -> WebUIError:
    status = response.status_code
    message = _server_message(response)
    hint = ""
    if status == 401:
        hint = AUTH_HINT
    elif status == 404 and path.startswith("/sdapi/") and message == "Not Found":
        hint = " (API not enabled: start the WebUI with --api)"
    return WebUIError(f"{method} {path} failed with HTTP {status}: {message.rstrip('.')}{hint}.", status=status,
                      server_error=_server_error(response))


def base_url(url: str, key: str = "webui.url") -> str:
    """``webui.url`` in the form requests prepares; a ConfigError, naming the setting ``key``, for anything else."""
    parts = urlsplit(url)
    # said without the user name and password a URL may hold (refused below): an error goes to logs
    shown = url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1) if "@" in parts.netloc else url
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} {shown!r} is not an http:// or https:// address.")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError:
        raise ConfigError(f"{key} {shown!r} has no valid port (a number from 1 to 65535).") from None
    if parts.username or parts.password:
        raise ConfigError(f"{key} must not contain a user name or password: use webui.auth_env (or webui.auth).")
    # the form requests prepares, so the adapters mounted on this prefix really match
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def credentials(config: WebUIConfig, form: str = "") -> tuple[str, str] | None:
    """("user", "password") from ``webui.auth`` or the variable ``webui.auth_env`` names.

    ``form`` ends the sentence of a malformed value (", as for --api-auth").
    """
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
        raise ConfigError(f"The credentials in {source} must have the form user:password{form}.")
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


def _server_error(response: requests.Response) -> str | None:
    """The exception an A1111-style error body names (``{"error": "NansException", …}``), if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, str) and error else None


def underlying(exc: BaseException) -> BaseException:
    """The error on the wire behind a requests exception: requests → urllib3 MaxRetryError → the error."""
    reason = exc
    for _ in range(5):
        if isinstance(reason, MaxRetryError) and reason.reason is not None:
            reason = reason.reason
        elif isinstance(reason, requests.RequestException) and reason.args and isinstance(reason.args[0], BaseException):
            reason = reason.args[0]
        else:
            break
    return reason


def cause(exc: BaseException) -> str:
    """A few words for what went wrong on the wire."""
    reason = underlying(exc)
    if isinstance(reason, NameResolutionError):  # a NewConnectionError too: said before it
        return "its host name could not be resolved; check the address"
    if isinstance(reason, NewConnectionError) or "refused" in str(reason).lower():
        return "connection refused"
    if isinstance(reason, ProtocolError) or isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection was closed without an answer"
    if isinstance(exc, requests.ConnectTimeout):
        return "timed out while connecting"
    return str(reason or exc)
