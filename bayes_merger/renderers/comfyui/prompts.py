"""One ComfyUI prompt run to its end: queued, followed over the websocket, confirmed in the history.

Each image is one prompt (``POST /prompt`` with the run's client id and a prompt id of our own, which
ComfyUI keeps); the ``/ws`` websocket says when it has run or failed and carries the images of
``SaveImageWebsocket`` nodes. A websocket that drops is reopened and ``/history`` and ``/queue`` tell
what became of the prompt; images a dropped socket may have lost are asked for again with the
identical prompt, which ComfyUI serves from its cache (only ``SaveImageWebsocket`` re-runs, in
milliseconds). A prompt ComfyUI no longer knows (it restarted) is a ``WebUIConnectionError``, so the
loop waits and redoes the trial. An execution error (a checkpoint that does not load, a node that
raises) is a ``WebUIError`` of that trial, except two that are not the trial's fault and are redone
like a lost server: a prompt stopped by ComfyUI's Cancel button (with no prompt id, ``/interrupt``
stops whatever runs; ``PromptInterrupted``) and an out-of-memory error, after which ComfyUI is asked
to free its models and cache (``OutOfMemory``).

A ``POST /prompt`` whose answer is lost after it was sent (the connection dropped, the read timed out, a
proxy's 504) is looked up by its id in ``/history`` and ``/queue``: a prompt ComfyUI has is followed as
if the POST had answered, so it is neither orphaned nor rendered twice. One it does not have was not
queued: after a dropped connection (ComfyUI had done with the request, or never got it) it is posted
once more, under a new id, so that a first copy arriving late could not mix its events and images in;
but only where ComfyUI has kept our id before (an older one makes its own, so the lookup proves
nothing). After a read timeout or a 504 ComfyUI may still be about to queue it, so the error is raised
as before, and before each of the next few prompts it is looked up again: queued late, it would run
for no one, ahead of the redone trial's prompts, so it is withdrawn.

A prompt given up on while ComfyUI may still hold it (our wait ran out, the websocket could not be
reopened, Ctrl-C) is taken off ComfyUI's queue and, if it runs, interrupted by its id, so a redone
trial does not queue behind it and no one else's prompt is stopped (``shared/reference/comfyui-api.md``:
``/queue`` deletes pending items only; ``/interrupt`` with another prompt's id does nothing).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Mapping

from bayes_merger.errors import WebUIConnectionError, WebUIError, WebUITimedOut
from bayes_merger.renderers.comfyui import graph as graphs
from bayes_merger.renderers.comfyui.events import EventStream
from bayes_merger.renderers.comfyui.http import PROMPT, ComfyApi, lost_answer, prompt_error_text

logger = logging.getLogger(__name__)

# how often the history is asked while the websocket is silent
HISTORY_POLL = 5.0
# how often one image's prompt is sent again when a dropped websocket may have lost its images
IMAGE_ATTEMPTS = 3
# before how many later prompts one whose POST answer was lost to a timeout or a 504 is looked up again
LATE_PROMPT_CHECKS = 3
# how an execution error names torch's failed allocation (torch.OutOfMemoryError, alias
# torch.cuda.OutOfMemoryError); the last part of exception_type is compared
OUT_OF_MEMORY = "OutOfMemoryError"
# a failed allocation torch raises as a plain RuntimeError (ComfyUI names it so): on a CPU (the reference's
# --cpu server; torch 2.13's text), on Apple's MPS, and CUDA's own error; Python's MemoryError as well
OUT_OF_MEMORY_TEXT = re.compile(r"DefaultCPUAllocator: (?:can't allocate|not enough) memory|MPS backend out of memory|"
                                r"CUDA error: out of memory")


class PromptInterrupted(WebUIConnectionError):
    """Someone stopped the prompt in ComfyUI (its Cancel button): not the trial's fault, so it is redone."""


class OutOfMemory(WebUIConnectionError):
    """ComfyUI ran out of memory running the prompt; it was asked to free its memory, and the trial is redone."""


class _Deadline:
    """``webui.read_timeout`` for one prompt's run: ours from its start and, while ours is queued (a shared
    server), each prompt ahead of it; a queue that moves is waited for, one whose head runs on is not."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ahead: str | None = None  # the prompt ComfyUI ran when last asked, while ours was queued
        self.restart()

    def restart(self) -> None:
        self.at = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def moved(self, running: str | None) -> bool:
        """Whether ComfyUI runs another prompt than when last asked (ours, maybe): the deadline starts again."""
        if running is None or running == self.ahead:
            return False
        self.ahead = running
        self.restart()
        return True


class PromptRunner:
    """Runs prompts on one ComfyUI through its API and the websocket of one client id."""

    def __init__(self, api: ComfyApi, events: EventStream, read_timeout: float) -> None:
        self._api = api
        self._events = events
        self._read_timeout = read_timeout
        self._ended: set[str] = set()  # prompts of the running ``_run`` that ComfyUI holds no more
        # whether ComfyUI has answered a POST with the prompt id we sent (older versions make their own):
        # only then does "not in /history nor /queue" prove that a prompt whose answer was lost was never queued
        self._ids_kept = False
        # prompts whose POST lost its answer to a timeout or a 504 and that ComfyUI did not have then:
        # id → how many more times to look for them (``_withdraw_late``)
        self._unsettled: dict[str, int] = {}
        self._left_out: set[str] = set()  # the refused outputs already warned of (``_warn_left_out``)

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
        prompt_id = self._queue(graph)
        try:
            return self._follow(prompt_id, savers)
        except BaseException:
            if prompt_id not in self._ended:
                self._give_up(prompt_id)
            raise
        finally:
            self._ended.discard(prompt_id)

    def _queue(self, graph: dict[str, Any]) -> str:
        """POST ``graph`` under a new prompt id of our own; the id ComfyUI queued it under. An answer lost
        after sending is looked up by that id (see the module docstring)."""
        self._withdraw_late()
        resent = False
        while True:
            prompt_id = str(uuid.uuid4())  # random: nothing needs it but to find the prompt again
            body = {"prompt": graph, "client_id": self._events.client_id, "prompt_id": prompt_id}
            try:
                answer = self._api.request("POST", PROMPT, body)
            except WebUIError as error:
                lost = lost_answer(error)
                if lost is None:  # nothing reached ComfyUI, or this is its answer
                    raise
                try:
                    known, _ = self._lookup(prompt_id)
                except WebUIError as asking:
                    logger.warning("Could not ask ComfyUI whether it queued prompt %s (%s).", prompt_id, asking)
                    raise error
                if known:
                    self._ids_kept = True
                    logger.warning("POST /prompt lost its answer (%s), but ComfyUI has prompt %s, so it is followed.",
                                   lost, prompt_id)
                    return prompt_id
                if lost != "dropped":
                    self._unsettled[prompt_id] = LATE_PROMPT_CHECKS  # it may still be on its way to the queue
                    raise error
                if resent or not self._ids_kept:
                    raise error
                logger.warning("POST /prompt lost its answer (dropped) and ComfyUI never queued prompt %s, so it is "
                               "sent once more.", prompt_id)
                resent = True
                continue
            answered = str((answer or {}).get("prompt_id") or "")
            if not answered:
                raise WebUIError(f"POST /prompt answered without a prompt_id: {str(answer)[:120]}.")
            self._ids_kept = answered == prompt_id
            if answer.get("node_errors"):
                self._warn_left_out(answer)
            return answered

    def _warn_left_out(self, answer: Mapping[str, Any]) -> None:
        """ComfyUI queues a prompt some of whose outputs are valid and runs only those, answering 200 with
        the others' errors: said once a run, since every prompt of the workflow leaves the same out."""
        text = prompt_error_text(answer)
        if text not in self._left_out:
            self._left_out.add(text)
            logger.warning("ComfyUI runs the workflow without the outputs it refused: %s.", text)

    def _withdraw_late(self) -> None:
        """Withdraw a prompt whose POST lost its answer to a timeout or a 504 and that ComfyUI has queued
        since: it would run for no one, ahead of ours. Each is looked for before ``LATE_PROMPT_CHECKS``
        prompts at most (a 504's request that never reaches ComfyUI is never queued)."""
        for prompt_id, checks in list(self._unsettled.items()):
            try:
                known, entry = self._lookup(prompt_id)
            except WebUIError as error:
                logger.debug("Could not look for prompt %s, whose POST lost its answer: %s", prompt_id, error)
                continue
            if known and entry is None:
                logger.warning("ComfyUI queued prompt %s late, after its POST had lost its answer, so it is withdrawn.",
                               prompt_id)
                self._give_up(prompt_id)
            if known or checks <= 1:
                del self._unsettled[prompt_id]
            else:
                self._unsettled[prompt_id] = checks - 1

    def _follow(self, prompt_id: str, savers: frozenset[str]
                ) -> tuple[str, dict[str, Any], dict[str, list[bytes]], bool]:
        """Wait for the queued prompt ``prompt_id`` to end (see ``_run``); ``_ended`` gets it once ComfyUI
        no longer holds it, so a failure after that leaves ComfyUI's queue alone."""
        deadline = _Deadline(self._read_timeout)
        outcome: dict[str, Any] | None = None
        frames: dict[str, list[bytes]] = {}
        intact, started, told, node = True, False, False, None  # node: that of this prompt's last progress event
        ask_at = time.monotonic() + HISTORY_POLL  # when the history is next asked, once the socket has dropped
        while True:
            remaining = self._time_left(deadline, started, prompt_id)
            if remaining is None:
                continue
            try:
                message = self._events.next(min(remaining, HISTORY_POLL if intact else
                                                max(ask_at - time.monotonic(), 0.0)))
            except WebUIConnectionError as error:
                logger.warning("%s Reopening it and asking ComfyUI about prompt %s.", error, prompt_id)
                intact = False
                self._events.connect()
                message = None
            # silence or a dropped socket: ask the history. A reopened socket has a new client id, so the
            # prompt's events never reach it: the history is asked every HISTORY_POLL seconds then, whatever
            # else the socket hears (another tool's prompt's progress, sent to every socket, is never silent)
            if message is None or (not intact and time.monotonic() >= ask_at):
                ask_at = time.monotonic() + HISTORY_POLL
                entry = self._history_or_lost(prompt_id)
                if entry is not None and savers and intact and not told:
                    told = True  # finished: its last events and images may still be on their way
                    continue
                if entry is not None:  # images not seen to their end count as lost
                    return prompt_id, self._finished(prompt_id, entry, outcome), frames, not savers
                if message is None:
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
            if kind == "status" and not started:  # ComfyUI's queue changed (to every socket)
                try:
                    deadline.moved(self._running())
                except WebUIError as error:  # the socket's news of a restart, or the history, will tell
                    logger.debug("GET /queue failed after a status message: %s", error)
                continue
            if not isinstance(data, Mapping) or data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_start":
                started = True
                deadline.restart()
            elif kind == "progress":
                node = data.get("node")
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                self._ended.add(prompt_id)
                outcome = {"type": kind, **data}
                if kind != "execution_success":
                    raise self._failed(prompt_id, outcome)
            elif kind == "executing" and data.get("node") is None:  # the prompt is done and in the history
                entry = self._history_wait(prompt_id)
                return prompt_id, self._finished(prompt_id, entry, outcome), frames, intact and started

    def _time_left(self, deadline: _Deadline, started: bool, prompt_id: str) -> float | None:
        """Seconds left to wait for ``prompt_id``; None when its time ran out while it was queued but the
        prompt ahead of it has changed since (its time starts again: ask again); WebUITimedOut when out."""
        remaining = deadline.left()
        if remaining > 0:
            return remaining
        if not started:
            if deadline.moved(self._running()):
                return None
            raise WebUITimedOut(
                f"ComfyUI did not start prompt {prompt_id} within {self._read_timeout:g} s: the prompt ahead of "
                "it in its queue ran longer than that (raise webui.read_timeout if renders take longer)."
            )
        raise WebUITimedOut(
            f"ComfyUI did not finish prompt {prompt_id} within {self._read_timeout:g} s "
            "(raise webui.read_timeout if renders take longer)."
        )

    def _give_up(self, prompt_id: str) -> None:
        """Take a prompt we no longer wait for off ComfyUI's queue, and interrupt it if it is running.
        Best effort: the error that made us give up is the one that counts."""
        # delete first: a prompt that starts between the two requests is then caught by the interrupt
        for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self._api.request("POST", path, body)
            except WebUIError as error:
                logger.warning("Could not withdraw prompt %s from ComfyUI (%s), so it may still run.", prompt_id, error)
                return
        logger.info("Withdrew prompt %s from ComfyUI's queue (interrupted if it was running).", prompt_id)

    def free(self, unload_models: bool = True, free_memory: bool = False) -> bool:
        """Ask ComfyUI to unload its models (``free_memory``: and drop its node cache); whether it answered."""
        try:
            self._api.request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})
        except WebUIError as error:
            logger.debug("POST /free failed: %s", error)
            return False
        return True

    def _failed(self, prompt_id: str, event: Mapping[str, Any]) -> WebUIError:
        """The error of a prompt that ended in ``execution_error`` or ``execution_interrupted``."""
        node = f"node {event.get('node_id', '?')} ({event.get('node_type', '?')})"
        if event.get("type") == "execution_interrupted":
            return PromptInterrupted(f"ComfyUI's prompt {prompt_id} was interrupted at {node}, by its Cancel button "
                                     "or another client's /interrupt, so the trial's images are incomplete.")
        kind = str(event.get("exception_type") or "error").rsplit(".", 1)[-1]
        message = " ".join(str(event.get("exception_message") or "no message").split()).rstrip(".")
        if kind.endswith(OUT_OF_MEMORY) or kind == "MemoryError" or OUT_OF_MEMORY_TEXT.search(message):
            # its models and its node cache hold the memory: the redone trial starts from a clean device
            if not self.free(unload_models=True, free_memory=True):
                logger.warning("ComfyUI ran out of memory and did not answer POST /free, so its memory may stay full.")
            return OutOfMemory(f"ComfyUI ran out of memory running {node} of prompt {prompt_id} ({kind}: {message}), "
                               "so it was asked to free its models and cache.")
        return WebUIError(f"ComfyUI failed running {node} of prompt {prompt_id}: {kind}: {message}.")

    def _history_or_lost(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history entry once it has finished; None while queued or running;
        WebUIConnectionError when ComfyUI has forgotten it (a restart)."""
        known, entry = self._lookup(prompt_id)
        if entry is not None or not known:  # finished, or forgotten: either way ComfyUI holds it no more
            self._ended.add(prompt_id)
        if not known:
            raise WebUIConnectionError(
                f"ComfyUI no longer knows prompt {prompt_id}: it was restarted or its queue was cleared."
            )
        return entry

    def _lookup(self, prompt_id: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether ComfyUI has the prompt (in its history, queued or running), and its history entry once
        it has finished."""
        entry = self._api.request("GET", f"/history/{prompt_id}") or {}
        if prompt_id in entry:
            return True, entry[prompt_id]
        queue = self._api.request("GET", "/queue") or {}
        for item in (queue.get("queue_running") or []) + (queue.get("queue_pending") or []):
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True, None
        # it may have finished between the two questions: the history is written before the queue lets go
        entry = self._api.request("GET", f"/history/{prompt_id}") or {}
        return (True, entry[prompt_id]) if prompt_id in entry else (False, None)

    def _running(self) -> str | None:
        """The id of the prompt ComfyUI is running now, or None."""
        queue = self._api.request("GET", "/queue") or {}
        running = [item for item in queue.get("queue_running") or [] if isinstance(item, list) and len(item) > 1]
        return str(running[0][1]) if running else None

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
            raise self._failed(prompt_id, {"type": last[0], **(last[1] if len(last) > 1 else {})})
        return dict(entry)

