"""The AUTOMATIC1111 HTTP client: auth, timeouts, retries, error bodies, and the checkpoint hand-off.

Works with A1111, reForge, Forge and SD.Next (see ``shared/reference/a1111-api.md``). Every failure
is one ``WebUIError`` whose message is a sentence naming the request and the server's own message;
``WebUIConnectionError`` (a subclass, no status) when the WebUI could not be reached, dropped the
connection or did not answer in time. A merge that did not load (A1111's silent fallback, SD.Next's
keep-the-old-model, Forge's lazy load at the next generation) is caught by ``GET /options`` after
the selection and by ``info.sd_model_name`` of every generation, and is a ``WebUIError`` of that
trial, never a silently wrong score.

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

import base64
import binascii
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import requests
from PIL import Image, UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError
from bayes_merger.files import atomic_path

logger = logging.getLogger(__name__)

TXT2IMG = "/sdapi/v1/txt2img"
OPTIONS = "/sdapi/v1/options"
SD_MODELS = "/sdapi/v1/sd-models"
REFRESH = "/sdapi/v1/refresh-checkpoints"
PROGRESS = "/sdapi/v1/progress"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# " [0123456789]" that A1111 appends to a checkpoint's title once it knows the file's hash
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


@dataclass(frozen=True)
class Generation:
    """The images of one txt2img call (grid left out), its parsed ``info`` and each image's seed."""

    images: list[Image.Image]
    info: dict[str, Any]
    seeds: list[int]


class _Retry(Retry):
    """``Retry`` that never repeats a request whose answer timed out (see the module docstring)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class WebUIClient:
    """One WebUI session of one run: selects each trial's merge and renders payloads with it."""

    def __init__(self, config: WebUIConfig, run_id: str) -> None:
        if not _RUN_ID.match(run_id):
            raise ConfigError(
                f"The run id {run_id!r} cannot name a checkpoint file: use letters, digits, '.', '_' and '-'."
            )
        self._config = config
        self._run_id = run_id
        self._base = _base_url(config.url)
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._checkpoint_dir = Path(config.checkpoint_dir).expanduser()
        self._session = requests.Session()
        # the password lives only in the session; it is never logged nor put in a message
        self._session.auth = _credentials(config)
        self._mount_adapters()
        # aliases of the merge selected by the last load_checkpoint: the model every txt2img must use
        self._expected: frozenset[str] | None = None
        self._expected_label = ""
        self._warned_unconfirmed = False

    def _mount_adapters(self) -> None:
        common = dict(
            total=self._config.retries,
            backoff_factor=self._config.backoff_factor,
            # every request this client sends is safe to repeat after a 502/503; the txt2img adapter
            # below narrows what else is retried (module docstring)
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,  # the last 5xx answer is returned, so its body becomes the message
            other=0,
        )
        # requests picks the adapter with the longest matching prefix
        self._session.mount(f"{self._base}/", HTTPAdapter(max_retries=_Retry(status_forcelist=(502, 503, 504), **common)))
        self._session.mount(
            f"{self._base}{TXT2IMG}", HTTPAdapter(max_retries=_Retry(read=False, status_forcelist=(502, 503), **common))
        )
        # wait_until_ready polls on its own schedule
        self._session.mount(f"{self._base}{PROGRESS}", HTTPAdapter(max_retries=0))

    def __enter__(self) -> WebUIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"WebUIClient(url={self._base!r}, run_id={self._run_id!r})"

    # ----------------------------------------------------------------------------------- start-up

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Poll ``GET /sdapi/v1/progress`` until the API answers 200, for at most ``timeout`` seconds."""
        timeout = self._config.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last, unreachable = "it did not answer", True
        while True:
            try:
                response = self._session.get(
                    self._base + PROGRESS,
                    timeout=(self._config.connect_timeout, min(self._config.read_timeout, max(timeout, 1.0))),
                )
            except requests.RequestException as exc:
                last, unreachable = f"it could not be reached ({_cause(exc)})", True
            else:
                unreachable = False
                if response.ok:
                    logger.info("The WebUI at %s is ready.", self._base)
                    return
                if response.status_code == 401:
                    raise self._http_error("GET", PROGRESS, response)
                if response.status_code == 404:
                    last = "its API answers 404: it is still starting, or it was started without --api (API not enabled)"
                else:
                    last = f"it answered HTTP {response.status_code}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = WebUIConnectionError if unreachable else WebUIError
                raise error(f"The WebUI at {self._base} was not ready after {timeout:g} s: {last}.")
            logger.debug("Waiting for the WebUI at %s: %s.", self._base, last)
            time.sleep(min(self._config.poll_interval, remaining))

    def status(self, timeout: float = 10.0) -> int | None:
        """The HTTP status of one ``GET /sdapi/v1/progress`` (not retried); None when the WebUI cannot be reached."""
        try:
            response = self._session.get(self._base + PROGRESS, timeout=(min(self._config.connect_timeout, timeout), timeout))
        except requests.RequestException:
            return None
        return response.status_code

    def set_option(self, key: str, value: Any) -> None:
        """Set one WebUI option (``POST /sdapi/v1/options``); a WebUIError when it is refused."""
        self._request("POST", OPTIONS, {key: value})

    def check_checkpoint_dir(self) -> None:
        """Fail now, not after the first merge, if merges cannot be written where the WebUI looks."""
        folder = self._checkpoint_dir
        if not folder.is_dir():
            raise ConfigError(
                f"webui.checkpoint_dir {folder} is not an existing folder: point it at the WebUI's "
                "checkpoint folder (models/Stable-diffusion, its --ckpt-dir, or a subfolder)."
            )
        probe = folder / f".bm-{self._run_id}-write-test.tmp"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"webui.checkpoint_dir {folder} is not writable: {exc.strerror or exc}.") from exc

    # --------------------------------------------------------------------------- the hand-off

    def load_checkpoint(self, write: Callable[[Path], None], trial: int) -> str:
        """Put one trial's merge in the WebUI: write, refresh, select by its listed title, confirm.

        ``write(path)`` writes the safetensors file at ``path`` (a ``.tmp`` name the WebUI does not
        list). Returns the title the WebUI reports for the loaded merge.
        """
        # until this load is confirmed, no generation may be scored (see _confirm_model)
        self._expected, self._expected_label = frozenset(), ""
        current = self._selected_model()
        target = self._checkpoint_dir / self._file_name(trial, current)
        self._write(write, target)
        started = time.monotonic()
        self._request("POST", REFRESH)
        entry = self._find_listed(target.name)
        title = str(entry["title"])
        aliases = _aliases(entry, target.name)
        self._request("POST", OPTIONS, body={"sd_model_checkpoint": title})
        selected = self._selected_model()
        if not _matches(selected, aliases):
            raise WebUIError(
                f"The WebUI kept {selected or 'no model'!r} instead of loading {target.name}: the load "
                "failed or the name was not accepted; see the WebUI's console."
            )
        self._expected = aliases
        self._expected_label = target.name
        logger.info("Selected %s in the WebUI (%.1f s).", selected, time.monotonic() - started)
        self._delete_old_merges(keep=target.name)
        return selected

    def _selected_model(self) -> str:
        options = self._get_json(OPTIONS)
        if not isinstance(options, Mapping):
            raise WebUIError(f"GET {OPTIONS} answered {type(options).__name__}, not an object of options.")
        return str(options.get("sd_model_checkpoint") or "")

    def remove_merges(self) -> None:
        """Delete every merge file of this run from the checkpoint folder (e.g. at the end of a run)."""
        for path, _ in self._own_files():
            _unlink(path)

    def _file_name(self, trial: int, current: str) -> str:
        # A1111 does not reload a checkpoint whose file name it already has loaded, even when the
        # content changed. After a resume the WebUI may still hold this trial's file: use a new name.
        stem = f"bm-{self._run_id}-t{trial:04d}"
        name, attempt = f"{stem}.safetensors", 1
        while current and _basename(_HASH_SUFFIX.sub("", current)) == name:
            attempt += 1
            name = f"{stem}-r{attempt}.safetensors"
        return name

    def _write(self, write: Callable[[Path], None], target: Path) -> None:
        try:
            # the rename overwrites our own file of an interrupted earlier attempt
            with atomic_path(target, tmp=target.with_name(target.name + ".tmp")) as tmp:
                write(tmp)
        except OSError as exc:
            raise WebUIError(f"Could not write the merge to {target}: {exc.strerror or exc}.") from exc

    def _find_listed(self, file_name: str) -> Mapping[str, Any]:
        models = self._get_json(SD_MODELS)
        stem = file_name.rsplit(".", 1)[0]
        for entry in models if isinstance(models, list) else []:
            if not isinstance(entry, Mapping) or not entry.get("title"):
                continue
            if _basename(str(entry.get("filename") or "")) == file_name:
                return entry
            model_name = str(entry.get("model_name") or "")
            if model_name == stem or model_name.endswith("_" + stem):
                return entry
        raise WebUIError(
            f"The WebUI does not list {file_name} after refresh-checkpoints: webui.checkpoint_dir "
            f"({self._checkpoint_dir}) must be a folder the WebUI scans (models/Stable-diffusion or its --ckpt-dir)."
        )

    def _own_files(self) -> list[tuple[Path, tuple[int, int, bool]]]:
        pattern = re.compile(rf"^bm-{re.escape(self._run_id)}-t(\d+)(?:-r(\d+))?\.safetensors(\.tmp)?$")
        found = []
        try:
            children = list(self._checkpoint_dir.iterdir())
        except OSError:
            return []
        for path in children:
            match = pattern.match(path.name)
            if match and path.is_file():
                found.append((path, (int(match[1]), int(match[2] or 1), bool(match[3]))))
        return found

    def _delete_old_merges(self, keep: str) -> None:
        """Keep the current merge and the ``keep_last`` newest before it; only this run's files."""
        files = [(order, path) for path, order in self._own_files() if path.name != keep]
        leftovers = [path for order, path in files if order[2]]  # .tmp of an interrupted write
        merges = sorted(((order, path) for order, path in files if not order[2]), reverse=True)
        for path in leftovers + [path for _, path in merges[max(self._config.keep_last, 0):]]:
            _unlink(path)

    # ------------------------------------------------------------------------------- generation

    def txt2img(self, request: Mapping[str, Any]) -> Generation:
        """Render one payload; confirms the images came from the merge selected last."""
        body = self._request("POST", TXT2IMG, body=_plain(request))
        if not isinstance(body, Mapping):
            raise WebUIError(f"POST {TXT2IMG} answered {type(body).__name__}, not an object with images and info.")
        info = body.get("info") or {}
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except json.JSONDecodeError as exc:
                raise WebUIError(f"POST {TXT2IMG} answered an info string that is not JSON ({exc.msg}).") from exc
        if not isinstance(info, dict):
            raise WebUIError(f"POST {TXT2IMG} answered an info field that is not an object.")
        self._confirm_model(info)
        encoded = list(body.get("images") or [])[int(info.get("index_of_first_image") or 0):]
        seeds = _seeds(info, len(encoded))
        # scripts such as ControlNet append extra pictures (detect maps) after the generations
        if len(seeds) < len(encoded) and "all_seeds" in info:
            encoded = encoded[: len(seeds)]
        if not encoded:
            raise WebUIError(f"POST {TXT2IMG} returned no images (is send_images false in the payload?).")
        images = [_decode_image(data, i) for i, data in enumerate(encoded)]
        return Generation(images=images, info=info, seeds=seeds[: len(images)])

    def _confirm_model(self, info: Mapping[str, Any]) -> None:
        if self._expected is None:  # nothing selected yet: generate with whatever the WebUI has
            return
        if not self._expected:
            raise WebUIError("No merge is loaded in the WebUI: the last load_checkpoint failed, so nothing is generated.")
        used = info.get("sd_model_name")
        if used is None:
            if not self._warned_unconfirmed:
                logger.warning("The WebUI's info has no sd_model_name: cannot confirm images come from the merge.")
                self._warned_unconfirmed = True
            return
        if not _matches(str(used), self._expected):
            raise WebUIError(
                f"The WebUI generated with {used!r} instead of the merge {self._expected_label}: the merge "
                "did not load (see the WebUI's console), so these images are not scored."
            )

    # ---------------------------------------------------------------------------------- HTTP

    def _get_json(self, path: str) -> Any:
        return self._request("GET", path)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call: the decoded JSON answer, or a WebUIError naming the call and the reason."""
        url = self._base + path
        started = time.monotonic()
        try:
            response = self._session.request(method, url, json=body, timeout=self._timeout)
        except requests.ReadTimeout as exc:
            raise WebUIConnectionError(
                f"{method} {path} got no answer within {self._config.read_timeout:g} s (raise webui.read_timeout "
                "if model loads or generations take longer)."
            ) from exc
        except requests.RequestException as exc:
            raise WebUIConnectionError(
                f"{method} {path} failed: could not talk to the WebUI at {self._base} ({_cause(exc)}); "
                "is it running, and is webui.url right?"
            ) from exc
        logger.debug("%s %s: HTTP %d in %.2f s", method, path, response.status_code, time.monotonic() - started)
        if not response.ok:
            raise self._http_error(method, path, response)
        try:
            return response.json()
        except ValueError as exc:
            raise WebUIError(f"{method} {path} answered something that is not JSON: {response.text[:120]!r}.") from exc

    def _http_error(self, method: str, path: str, response: requests.Response) -> WebUIError:
        status = response.status_code
        message = _server_message(response)
        hint = ""
        if status == 401:
            hint = " (check webui.auth or the variable named by webui.auth_env)"
        elif status == 404 and path.startswith("/sdapi/") and message == "Not Found":
            hint = " (API not enabled: start the WebUI with --api)"
        return WebUIError(f"{method} {path} failed with HTTP {status}: {message.rstrip('.')}{hint}.", status=status)


# ------------------------------------------------------------------------------------ helpers


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


def _plain(value: Any) -> Any:
    """Plain JSON values from mappings and sequences of any kind (an OmegaConf node, a tuple)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(item) for item in value]
    return value


def _basename(path: str) -> str:
    """The last component of a path written with / or \\ (the WebUI may run on Windows)."""
    return re.split(r"[\\/]", path)[-1]


def _aliases(entry: Mapping[str, Any], file_name: str) -> frozenset[str]:
    """Every name under which the WebUI may report the model of one ``sd-models`` entry."""
    names = {file_name, file_name.rsplit(".", 1)[0], str(entry.get("model_name") or "")}
    for key in ("title", "filename"):
        value = _HASH_SUFFIX.sub("", str(entry.get(key) or ""))
        names.update({value, _basename(value)})
    return frozenset(name for name in names if name)


def _matches(reported: str, aliases: frozenset[str]) -> bool:
    name = _HASH_SUFFIX.sub("", reported.strip())
    return bool(name) and (name in aliases or _basename(name) in aliases)


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


def _cause(exc: BaseException) -> str:
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


def _seeds(info: Mapping[str, Any], count: int) -> list[int]:
    seeds = info.get("all_seeds")
    if isinstance(seeds, list):
        return [int(seed) for seed in seeds]
    seed = info.get("seed")
    return [int(seed) + i for i in range(count)] if isinstance(seed, int) else []


def _decode_image(data: Any, index: int) -> Image.Image:
    try:
        text = str(data)
        if text.startswith("data:"):
            text = text.split(",", 1)[1]
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=False)))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError, IndexError) as exc:
        raise WebUIError(f"Image {index} of the txt2img answer is not a PNG, JPEG or WebP image ({exc}).") from exc
    return image


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        logger.debug("Deleted %s.", path)
    except OSError as exc:
        logger.warning("Could not delete the old merge %s: %s.", path, exc.strerror or exc)
