"""Which renderer a run gets: ``webui.backend`` (a1111, comfyui, or auto: ask the server), and for
ComfyUI which hand-off (``webui.comfyui_handoff``: graph, file, or auto).

The A1111 family (A1111, Forge, reForge, SD.Next) answers ``GET /sdapi/v1/progress``; ComfyUI answers
``GET /system_stats`` and ``GET /object_info/KSampler``. Each probe is one unretried GET, asked again
while the server is starting.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import requests

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError
from bayes_merger.merge.arch import Architecture
from bayes_merger.renderers.comfyui.http import base_url, cause, credentials
from bayes_merger.webui.http import http_error

log = logging.getLogger(__name__)

BACKENDS = ("a1111", "comfyui", "auto")
HANDOFFS = ("graph", "file", "auto")


def backend_of(value: object) -> str:
    """``webui.backend`` checked: "a1111", "comfyui" or "auto" (any case); a ConfigError otherwise."""
    backend = str(value).lower()
    if backend not in BACKENDS:
        raise ConfigError(f"webui.backend must be one of {', '.join(BACKENDS)}, not {value!r}.")
    return backend


def detect_backend(config: WebUIConfig, timeout: float | None = None) -> str:
    """"a1111" or "comfyui": ``webui.backend`` when it names one, else what the server at ``webui.url`` is.

    A server that is still starting (refusing connections, or with its port open before its API: A1111
    answers 404 then) is asked again every ``webui.poll_interval`` for up to ``webui.ready_timeout``
    (``timeout``), as a named backend is waited for; a 401 will not change, so it ends the wait.
    """
    backend = backend_of(config.backend)
    if backend != "auto":
        return backend
    base = base_url(config.url)
    deadline = time.monotonic() + (config.ready_timeout if timeout is None else timeout)
    with requests.Session() as session:
        session.auth = credentials(config)
        while True:
            answers, unreachable = {}, None
            for path in ("/sdapi/v1/progress", "/system_stats", "/object_info/KSampler"):
                try:
                    response = session.get(base + path, timeout=(config.connect_timeout, config.connect_timeout))
                except requests.RequestException as exc:
                    unreachable = exc
                    break
                if response.status_code == 401:  # the credentials will not change while we wait
                    raise http_error("GET", path, response)
                answers[path] = response.status_code == 200 and _json_object(response)
            if answers.get("/sdapi/v1/progress"):
                log.info("webui.backend auto: %s answers /sdapi/v1/progress, an A1111-compatible WebUI.", base)
                return "a1111"
            if answers.get("/system_stats") and answers.get("/object_info/KSampler"):
                log.info("webui.backend auto: %s answers /system_stats and /object_info, a ComfyUI.", base)
                return "comfyui"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            log.debug("webui.backend auto: %s is not ready yet; asking again.", base)
            time.sleep(min(config.poll_interval, remaining))
    if unreachable is not None:
        raise WebUIConnectionError(
            f"webui.backend is auto, but the server at {base} could not be reached to ask what it is "
            f"({cause(unreachable)}); start it first or set webui.backend to a1111 or comfyui."
        ) from unreachable
    raise WebUIError(
        f"webui.backend is auto, but {base} answers neither /sdapi/v1/progress (A1111, Forge, SD.Next: start it "
        "with --api) nor /system_stats and /object_info (ComfyUI); check webui.url."
    )


def choose_handoff(config: WebUIConfig, method: str, lower: float, upper: float, arch: Architecture
                   ) -> tuple[str, str]:
    """("graph", "file" or "auto", the reason, for the log) for a ComfyUI run.

    In the graph only a weighted sum of two models with weights in [0, 1] can be merged (ComfyUI's
    ratios go from 0 to 1; there is no node for the other methods). ``auto`` where both routes can
    be taken stays "auto": which is faster depends on the device (re-patching the models in the
    graph against loading a file we wrote), so ``comfyui.route.settle_route`` measures both before
    trial 0 and the run folder keeps the choice.
    """
    wanted = str(config.comfyui_handoff).lower()
    if wanted not in HANDOFFS:
        raise ConfigError(f"webui.comfyui_handoff must be one of {', '.join(HANDOFFS)}, not {config.comfyui_handoff!r}.")
    reasons = []
    if method != "weighted_sum":
        reasons.append(f"merge.method is {method} (only weighted_sum has a ComfyUI merge node)")
    if lower < 0.0 or upper > 1.0:
        reasons.append(f"the weights range over [{lower:g}, {upper:g}] (ComfyUI's ratios are within [0, 1])")
    if arch.variant:
        reasons.append(f"the models are {arch.label} (their extra input channels are merged by file only)")
    if wanted == "file":
        return "file", "webui.comfyui_handoff is file"
    if reasons:
        if wanted == "graph":
            raise ConfigError(f"webui.comfyui_handoff is graph, but {'; '.join(reasons)}: set it to file or auto.")
        return "file", "; ".join(reasons)
    if wanted == "graph":
        return "graph", "webui.comfyui_handoff is graph"
    return "auto", "weighted_sum of two models within [0, 1]: in the graph or by file, whichever measures faster"


def open_renderer(config: WebUIConfig, run_id: str, *, method: str = "weighted_sum", lower: float = 0.0,
                  upper: float = 1.0, arch: Architecture | None = None, model_a: str | Path | None = None,
                  model_b: str | Path | None = None, base_max: float | None = None):
    """The renderer the config asks for (``WebUIClient`` or ``ComfyUIClient``), not yet waited for."""
    backend = detect_backend(config)
    if backend == "a1111":
        from bayes_merger.webui.client import WebUIClient

        return WebUIClient(config, run_id=run_id)
    from bayes_merger.renderers.comfyui import ComfyUIClient

    handoff, reason = ("file", "no architecture given") if arch is None else choose_handoff(config, method, lower, upper, arch)
    log.info("ComfyUI hand-off: %s (%s).", handoff, reason)
    return ComfyUIClient(config, run_id, handoff=handoff, arch=arch, model_a=model_a, model_b=model_b,
                         base_max=base_max)


def _json_object(response: requests.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False
