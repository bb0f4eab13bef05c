"""One ComfyUI prompt run to its end: queued, followed over the websocket, confirmed in the history.

Each image is one prompt (``POST /prompt`` with the run's client id); the ``/ws`` websocket says when
it has run or failed and carries the images of ``SaveImageWebsocket`` nodes. A websocket that drops is
reopened and ``/history`` and ``/queue`` tell what became of the prompt; images a dropped socket may
have lost are asked for again with the identical prompt, which ComfyUI serves from its cache (only
``SaveImageWebsocket`` re-runs, in milliseconds). A prompt ComfyUI no longer knows (it restarted) is a
``WebUIConnectionError``, so the loop waits and redoes the trial. An execution error (a checkpoint
that does not load, a node that raises) is a ``WebUIError`` of that trial.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from bayes_merger.errors import WebUIConnectionError, WebUIError
from bayes_merger.renderers.comfyui import graph as graphs
from bayes_merger.renderers.comfyui.events import EventStream
from bayes_merger.renderers.comfyui.http import ComfyApi

logger = logging.getLogger(__name__)

# how often the history is asked while the websocket is silent
HISTORY_POLL = 5.0
# how often one image's prompt is sent again when a dropped websocket may have lost its images
IMAGE_ATTEMPTS = 3


class PromptRunner:
    """Runs prompts on one ComfyUI through its API and the websocket of one client id."""

    def __init__(self, api: ComfyApi, events: EventStream, read_timeout: float) -> None:
        self._api = api
        self._events = events
        self._read_timeout = read_timeout

    def run(self, graph: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, list[bytes]]]:
        """Run ``graph`` to its end: its prompt id, its history entry and the images its
        ``SaveImageWebsocket`` nodes sent; sent again while a dropped websocket may have lost some."""
        savers = graphs.websocket_savers(graph)
        for _ in range(IMAGE_ATTEMPTS):
            prompt_id, entry, frames, intact = self._run(graph, savers)
            if intact or not savers:
                return prompt_id, entry, frames
            logger.warning("ComfyUI's websocket dropped during prompt %s, so its images may be incomplete; sending the "
                           "identical prompt again (ComfyUI answers it from its cache).", prompt_id)
        raise WebUIConnectionError(f"ComfyUI's websocket dropped during each of {IMAGE_ATTEMPTS} tries of one image's "
                                   "prompt, so its images never arrived whole.")

    def _run(self, graph: dict[str, Any], savers: frozenset[str]
             ) -> tuple[str, dict[str, Any], dict[str, list[bytes]], bool]:
        """Queue one prompt and wait until it has run, or a WebUIError: its id, its history entry, the
        images its ``savers`` (SaveImageWebsocket node ids) sent, and whether the websocket stayed open."""
        self._events.connect()  # before the POST, so no event of this prompt is missed
        answer = self._api.request("POST", "/prompt", {"prompt": graph, "client_id": self._events.client_id})
        prompt_id = str((answer or {}).get("prompt_id") or "")
        if not prompt_id:
            raise WebUIError(f"POST /prompt answered without a prompt_id: {str(answer)[:120]}.")
        deadline = time.monotonic() + self._read_timeout
        outcome: dict[str, Any] | None = None
        frames: dict[str, list[bytes]] = {}
        intact, started, told, node = True, False, False, None  # node: that of this prompt's last progress event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WebUIConnectionError(
                    f"ComfyUI did not finish prompt {prompt_id} within {self._read_timeout:g} s "
                    "(raise webui.read_timeout if renders take longer)."
                )
            try:
                message = self._events.next(min(remaining, HISTORY_POLL))
            except WebUIConnectionError as error:
                logger.warning("%s Reopening it and asking ComfyUI about prompt %s.", error, prompt_id)
                intact = False
                self._events.connect()
                message = None
            if message is None:  # silence or a dropped socket: ask the history
                entry = self._history_or_lost(prompt_id)
                if entry is not None and savers and intact and not told:
                    told = True  # finished: its last events and images may still be on their way
                    continue
                if entry is not None:  # images not seen to their end count as lost
                    return prompt_id, self._finished(prompt_id, entry, outcome), frames, not savers
                continue
            data = message.get("data") or {}
            kind = message.get("type")
            if kind == "image_frame":
                # ComfyUI runs one prompt at a time, so after this prompt's start an image is this prompt's;
                # it is an output when it comes from a SaveImageWebsocket node, else a sampler's preview
                source = data.get("node") or node
                if started and data.get("prompt_id") in (None, prompt_id) and source in savers:
                    frames.setdefault(source, []).append(data["image"])
                continue
            if not isinstance(data, Mapping) or data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_start":
                started = True
            elif kind == "progress":
                node = data.get("node")
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                outcome = {"type": kind, **data}
                if kind != "execution_success":
                    raise WebUIError(_execution_error(prompt_id, outcome))
            elif kind == "executing" and data.get("node") is None:  # the prompt is done and in the history
                entry = self._history_wait(prompt_id)
                return prompt_id, self._finished(prompt_id, entry, outcome), frames, intact and started

    def _history_or_lost(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history entry once it has finished; None while queued or running;
        WebUIConnectionError when ComfyUI has forgotten it (a restart)."""
        entry = self._api.request("GET", f"/history/{prompt_id}") or {}
        if prompt_id in entry:
            return entry[prompt_id]
        queue = self._api.request("GET", "/queue") or {}
        for item in (queue.get("queue_running") or []) + (queue.get("queue_pending") or []):
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return None
        # it may have finished between the two questions: the history is written before the queue lets go
        entry = self._api.request("GET", f"/history/{prompt_id}") or {}
        if prompt_id in entry:
            return entry[prompt_id]
        raise WebUIConnectionError(
            f"ComfyUI no longer knows prompt {prompt_id}: it was restarted or its queue was cleared."
        )

    def _history_wait(self, prompt_id: str) -> dict[str, Any]:
        for _ in range(20):
            entry = self._history_or_lost(prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.05)
        raise WebUIError(f"ComfyUI said prompt {prompt_id} was done, but its history does not have it.")

    def _finished(self, prompt_id: str, entry: Mapping[str, Any], outcome: Mapping[str, Any] | None) -> dict[str, Any]:
        status = entry.get("status") or {}
        if status.get("status_str") not in (None, "success") or status.get("completed") is False:
            messages = status.get("messages") or []
            last = messages[-1] if messages else ["execution_error", {}]
            raise WebUIError(_execution_error(prompt_id, {"type": last[0], **(last[1] if len(last) > 1 else {})}))
        return dict(entry)


def _execution_error(prompt_id: str, event: Mapping[str, Any]) -> str:
    node = f"node {event.get('node_id', '?')} ({event.get('node_type', '?')})"
    if event.get("type") == "execution_interrupted":
        return f"ComfyUI interrupted prompt {prompt_id} at {node}; the trial's images are incomplete."
    kind = str(event.get("exception_type") or "error").rsplit(".", 1)[-1]
    message = " ".join(str(event.get("exception_message") or "no message").split())
    return f"ComfyUI failed running {node} of prompt {prompt_id}: {kind}: {message.rstrip('.')}."
