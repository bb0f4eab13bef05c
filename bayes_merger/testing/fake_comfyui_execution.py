"""The fake ComfyUI's execution side: the worker that takes prompts off the queue one at a time, runs
their nodes in order (the one-prompt node cache, injected node failures, interrupts), sends the
websocket events of a run and writes its history entry and images.

``PromptExecution`` is a mixin of ``fake_comfyui.FakeComfyUI``, which holds the state it works on
(queue, pending and running items, history, cache, faults, the executor) and sends the events
(``_send``, ``_broadcast_status``).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from bayes_merger.testing.fake_comfyui_nodes import NodeFailure, png_text

logger = logging.getLogger("bayes_merger.testing.fake_comfyui")


class _Interrupted(Exception):
    pass


@dataclass
class PromptItem:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra, self.outputs]


class PromptExecution:
    """Runs queued prompts for ``FakeComfyUI`` (see the module docstring)."""

    def _worker(self, generation: int, work: queue.Queue) -> None:
        while True:
            woken = work.get()  # one per prompt queued; the one run is the lowest-numbered pending, as ComfyUI's heap
            if woken is None or generation != self._generation:  # runs it: a "front" prompt (negative) jumps the queue
                return
            with self._changed:
                if not self._pending:  # its prompt was deleted from the queue, or run in another's turn
                    continue
                item = min(self._pending, key=lambda pending: pending.number)
                self._pending.remove(item)
                self._running = item
                self._interrupt.clear()  # as ComfyUI's executor clears the flag when a prompt starts
                self._changed.notify_all()
            try:
                self._execute(item, generation)
            except Exception as exc:  # noqa: BLE001 - a bug of the fake must not kill its worker
                logger.exception("fake ComfyUI: prompt %s failed", item.prompt_id)
                with self._lock:  # a bug of the fake, as fake_http's internal_errors
                    self.internal_errors.append(f"prompt {item.prompt_id}: {type(exc).__name__}: {exc}")
            with self._changed:
                if generation == self._generation:
                    self._running = None
                    self._apply_free()
                    self._changed.notify_all()
            if generation == self._generation:
                self._broadcast_status()
                self._send(item.extra.get("client_id"), "executing", {"node": None, "prompt_id": item.prompt_id})

    def _execute(self, item: PromptItem, generation: int) -> None:
        client, prompt_id, prompt = item.extra.get("client_id"), item.prompt_id, item.prompt
        messages: list[list[Any]] = []

        def event(kind: str, data: dict[str, Any]) -> None:
            data = {**data, "prompt_id": prompt_id}
            if kind.startswith("execution_"):
                data.setdefault("timestamp", int(time.time() * 1000))
                messages.append([kind, data])
            self._send(client, kind, data)

        event("execution_start", {})
        with self._changed:  # held (hold_execution) until released, interrupted or restarted
            self._changed.wait_for(lambda: self._execution_gate.is_set() or self._interrupt.is_set()
                                   or generation != self._generation)
        if generation != self._generation:
            return
        order = _topological(prompt, item.outputs)
        signatures = _signatures(prompt, order)
        with self._lock:
            old_cache = self._cache
        cached = [n for n in order if signatures[n] in old_cache and prompt[n]["class_type"] != "SaveImageWebsocket"]
        event("execution_cached", {"nodes": cached})
        values: dict[str, Any] = {}
        new_cache: dict[str, tuple[Any, Any]] = {}
        outputs: dict[str, Any] = {}
        ran: list[str] = []
        executed: list[str] = []
        for node_id in order:
            class_type = prompt[node_id]["class_type"]
            # only what the class declares: ComfyUI's get_input_data leaves out any other input (validation takes it)
            declared = {name for name, _ in self._classes[class_type].inputs} if class_type in self._classes else None
            inputs = {k: values[v[0]][v[1]] if _is_link(v) else v for k, v in prompt[node_id]["inputs"].items()
                      if declared is None or k in declared}
            fault = self._take_execution_fault(class_type)
            try:
                if fault is not None:
                    raise NodeFailure(fault["exception_type"], fault["message"])
                if node_id in cached:
                    result, ui = old_cache[signatures[node_id]]
                else:
                    if self._interrupt.is_set():  # ComfyUI checks before each node it runs, and at each sampler step
                        raise _Interrupted()
                    self._send(client, "executing", {"node": node_id, "display_node": node_id})
                    self.spend_node_time(class_type)
                    result, ui = self._executor.run(class_type, inputs, prompt,
                                                    lambda k, n: self._progress(client, prompt_id, node_id, k, n))
                    ran.append(node_id)
            except NodeFailure as failure:
                event("execution_error", {"node_id": node_id, "node_type": class_type, "executed": executed,
                                          "exception_message": failure.message, "exception_type": failure.exception_type,
                                          "traceback": [f"{failure.exception_type}: {failure.message}"],
                                          "current_inputs": {}, "current_outputs": []})
                self._finish(item, {}, messages, "error", new_cache, generation, ran)
                return
            except _Interrupted:
                event("execution_interrupted", {"node_id": node_id, "node_type": class_type, "executed": executed})
                self._finish(item, {}, messages, "error", new_cache, generation, ran)
                return
            if generation != self._generation:
                return
            values[node_id] = result
            new_cache[signatures[node_id]] = (result, ui)
            executed.append(node_id)
            if ui and "images" in ui:
                outputs[node_id] = {"images": ui["images"]}
                self._send(client, "executed", {"node": node_id, "display_node": node_id, "output": outputs[node_id]})
            if ui and "websocket_images" in ui:
                self._send_images(client, prompt_id, node_id, ui["websocket_images"])
        event("execution_success", {})
        self._finish(item, outputs, messages, "success", new_cache, generation, ran)

    def _finish(self, item: PromptItem, outputs: dict[str, Any], messages: list[list[Any]], status: str,
                cache: dict[str, tuple[Any, Any]], generation: int, ran: list[str]) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._cache = cache
            self.executed.append(ran)
            self._history[item.prompt_id] = {
                "prompt": item.as_list(), "outputs": outputs,
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs},
            }

    def _progress(self, client: str | None, prompt_id: str, node_id: str, value: int, maximum: int) -> None:
        if self._interrupt.is_set():
            raise _Interrupted()
        self._send(client, "progress", {"value": value, "max": maximum, "prompt_id": prompt_id, "node": node_id})
        if self.previews:  # a sampler's preview: a JPEG frame after its step's progress (--preview-method)
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (value * 40 % 256, 0, 0)).save(buffer, "JPEG")
            self._send_binary(client, (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + buffer.getvalue())

    def _send_images(self, client: str | None, prompt_id: str, node_id: str, images: list[Any]) -> None:
        for image in images:
            self._send(client, "progress", {"value": 0, "max": 1, "prompt_id": prompt_id, "node": node_id})
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            self._send_binary(client, (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + buffer.getvalue())

    def _send_binary(self, client: str | None, frame: bytes) -> None:
        """To the prompt's client; of a prompt posted without a client_id, to every socket."""
        with self._lock:
            sockets = self._sockets_of(client)
        for ws in sockets:
            ws.send_binary(frame)

    def _take_execution_fault(self, class_type: str) -> dict[str, Any] | None:
        with self._lock:
            for fault in self._execution_faults:
                if fault["node_type"] == class_type and fault["remaining"] > 0:
                    fault["remaining"] -= 1
                    self._execution_faults = [f for f in self._execution_faults if f["remaining"] > 0]
                    return fault
        return None

    def _checkpoint_path(self, name: str) -> Path:
        return self.checkpoint_dir / name

    def _save_image(self, image: Any, prefix: str, prompt: dict[str, Any], kind: str = "output") -> dict[str, str]:
        """Write a PNG as SaveImage does (``kind`` "output") or PreviewImage ("temp": the temp folder)."""
        subfolder, _, base = prefix.rpartition("/")
        with self._lock:
            self._image_counter += 1
            counter = self._image_counter
        name = f"{base}_{counter:05d}_.png"
        folder = (self.output_dir if kind == "output" else self.temp_dir) / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", png_text(prompt))
        image.save(folder / name, "PNG", pnginfo=info)
        return {"filename": name, "subfolder": subfolder, "type": kind}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _topological(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for value in prompt[node_id]["inputs"].values():
            if _is_link(value):
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _signatures(prompt: dict[str, Any], order: list[str]) -> dict[str, str]:
    """A node's cache key: its class and inputs, links replaced by the linked node's key (not its id)."""
    keys: dict[str, str] = {}
    for node_id in order:
        node = prompt[node_id]
        inputs = {k: [keys[v[0]], v[1]] if _is_link(v) else v for k, v in sorted(node["inputs"].items())}
        keys[node_id] = json.dumps([node["class_type"], inputs], sort_keys=True)
    return keys
