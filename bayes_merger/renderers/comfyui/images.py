"""A finished prompt's images, and the proof that they were rendered by the merge that was sent.

ComfyUI's ``/history`` echoes the graph it ran: its loaders' names and merge ratios must be those sent.
The images are those ``SaveImageWebsocket`` nodes sent over the websocket (the built-in graph: no file
in ComfyUI's output folder), else the files ``SaveImage`` nodes wrote, read back with ``GET /view``;
a PNG's ``prompt`` text is checked like the history. A user's workflow may also preview intermediate
images (``PreviewImage``: its files are of type ``temp``): those are not the trial's result and are
not scored, unless the workflow saves nothing (then its previews are its images).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError

from bayes_merger.errors import WebUIError
from bayes_merger.renderers.comfyui import graph as graphs


def prompt_images(entry: Mapping[str, Any], sent: Mapping[str, Any], frames: Mapping[str, list[bytes]],
                  view: Callable[[dict[str, str]], bytes], label: str) -> list[Image.Image]:
    """The prompt's RGB images, in node order; a WebUIError when ComfyUI ran another model than ``label``."""
    echoed = entry.get("prompt")
    echoed_graph = echoed[2] if isinstance(echoed, list) and len(echoed) > 2 else None
    expected = graphs.handoff_nodes(sent)
    if isinstance(echoed_graph, Mapping) and graphs.handoff_nodes(echoed_graph) != expected:
        raise WebUIError(f"ComfyUI's history shows another model than the one sent ({label}); "
                         "these images are not scored.")
    if graphs.websocket_savers(sent):
        return [decoded(data, f"an image node {node_id} sent over the websocket").convert("RGB")
                for node_id in sorted(frames, key=lambda n: (len(n), n)) for data in frames[node_id]]
    images = []
    outputs = entry.get("outputs") or {}
    refs = [ref for node_id in sorted(outputs, key=lambda n: (len(n), n))
            for ref in (outputs[node_id] or {}).get("images") or [] if isinstance(ref, Mapping)]
    saved = [ref for ref in refs if ref.get("type", "output") == "output"]
    for ref in saved or refs:
        params = {"filename": ref.get("filename", ""), "subfolder": ref.get("subfolder", ""),
                  "type": ref.get("type", "output")}
        image = decoded(view(params), f"GET /view of {params['filename']}")
        text = getattr(image, "text", {}).get("prompt") if hasattr(image, "text") else None
        if text:
            try:
                in_png = graphs.handoff_nodes(json.loads(text))
            except (json.JSONDecodeError, AttributeError):
                in_png = expected
            if in_png != expected:
                raise WebUIError(f"Image {params['filename']} was rendered by another graph than the one "
                                 f"sent ({label}); it is not scored.")
        images.append(image.convert("RGB"))
    return images


def decoded(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise WebUIError(f"{what} is not an image ({exc}).") from exc
    return image
