"""ComfyUI's HTTP side: one session with timeouts and safe retries, and every error body as a sentence.

The session, the retries, ``webui.url`` and the credentials are ``webui.http``'s (``ApiSession``);
this module adds ComfyUI's paths, words and error bodies.

Which requests are retried (``urllib3.Retry`` on the session's adapters, with backoff), by the rules
of ``webui.http``:

- Connection errors (refused, connect timeout): every request; nothing reached the server.
- 502 and 503: every request; the server (or a proxy) says it did not run it.
- 504 (524) and connections dropped after the request was sent: only requests that are harmless to repeat:
  the GETs, ``/free`` and ``/interrupt``. Never ``POST /prompt`` here: the prompt may already be
  queued, and a repeat would render it twice. Each prompt carries an id of the client's own instead,
  so the runner asks ``/history`` and ``/queue`` about that id (``lost_answer`` tells when) and
  follows it; one ComfyUI never got is posted once more only after a dropped connection
  (``prompts.PromptRunner``).
- Read timeouts: never (asking again only adds another full wait). 4xx and 500: never.

Error bodies (``shared/reference/comfyui-api.md``): a refused prompt is a 400 with ``error`` and
``node_errors`` — the sentence names each failing node, its class and the input; a crash is a 500
``text/plain`` page; unknown routes answer aiohttp's ``404: Not Found`` text or an empty body.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import requests
from urllib3.exceptions import ProtocolError

from bayes_merger.errors import WebUIConnectionError, WebUIError
from bayes_merger.webui.http import AUTH_HINT, GATEWAY_TIMEOUTS, ApiSession, base_url, cause, credentials, decode_json, underlying

__all__ = ["PROMPT", "SYSTEM_STATS", "ComfyApi", "base_url", "cause", "credentials", "http_error", "lost_answer",
           "prompt_error_text"]

PROMPT = "/prompt"
SYSTEM_STATS = "/system_stats"


class ComfyApi(ApiSession):
    """The HTTP session of one ComfyUI client: ``request`` returns decoded JSON (or bytes) or raises."""

    server = "ComfyUI"
    once_path = PROMPT
    probe_path = SYSTEM_STATS
    busy_words = "got no answer from ComfyUI within {timeout:g} s (raise webui.read_timeout if it is busy for longer)"
    credentials_form = ""  # ComfyUI has none; a proxy in front of it may
    queued = frozenset()  # its HTTP calls answer while it renders (a prompt is queued, its end heard on the socket)

    def error_for(self, method: str, path: str, response: requests.Response) -> WebUIError:
        return http_error(method, path, response)

    def request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None,  # type: ignore[override]
                raw: bool = False) -> Any:
        """One API call: the decoded JSON answer (``raw``: the bytes; an empty body: None), or a WebUIError."""
        response = self.send(method, path, body, params)
        if raw:
            return response.content
        if not response.content:
            return None
        return decode_json(method, path, response)


def lost_answer(error: WebUIError) -> Literal["dropped", "timeout", "gateway"] | None:
    """How a request that reached the server lost its answer, or None where it did not reach it (refused,
    connect timeout) or the error is the server's answer.

    "dropped": the connection closed before the answer was whole (ComfyUI's or a proxy's side, or an idle
    keep-alive connection the server closed as the request went out); "timeout": no answer within
    ``webui.read_timeout``; "gateway": a proxy's 504 (Cloudflare's 524), it gave up waiting for ComfyUI.
    In all three ComfyUI may have acted on the request, or may still be about to.
    """
    if error.status in GATEWAY_TIMEOUTS:
        return "gateway"
    if not isinstance(error, WebUIConnectionError) or error.status is not None:
        return None  # a 502 or 503: the server (or proxy) said it did not run it
    reason = error.__cause__
    if isinstance(reason, requests.ReadTimeout):
        return "timeout"
    if isinstance(reason, requests.exceptions.ChunkedEncodingError):  # the answer was cut off
        return "dropped"
    if reason is not None and isinstance(underlying(reason), ProtocolError):
        return "dropped"
    return None


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
    hint = ""
    if status == 401:  # ComfyUI has no credentials of its own: a proxy in front of it asks for them
        hint = AUTH_HINT
    elif status == 404 and path == "/view":  # ComfyUI's own answer for a file it does not have
        hint = " (ComfyUI has no such image file: deleted from its output folder since a workflow saved it?)"
    elif status in (404, 405):
        hint = " (is webui.url a ComfyUI server? set webui.backend)"
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
