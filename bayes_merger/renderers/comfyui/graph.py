"""Payloads → ComfyUI prompts (API-format graphs), and the two hand-offs of a merge into a graph.

A graph is first a *template* with named placeholders — ``{{model}}``, ``{{prompt}}``,
``{{negative}}``, ``{{seed}}``, ``{{width}}``, ``{{height}}``, ``{{steps}}``, ``{{cfg}}``,
``{{sampler}}``, ``{{scheduler}}``, ``{{output}}`` (a ``SaveImage`` prefix, ``bayes-merger/<run id>``) —
either the built-in text-to-image graph (its images come back over the websocket from
``SaveImageWebsocket``: ComfyUI saves nothing) or a user's workflow saved in API format. A value
that is exactly a placeholder takes the value with its type (``"{{seed}}"`` → 1234); inside a longer
text it is replaced as text (``"{{prompt}}, detailed"``).

``{{model}}`` is the ``ckpt_name`` of one ``CheckpointLoaderSimple``, and the hand-off works on it:
by file, it becomes the merge's listed name; in the graph, that loader loads model A, a second loader
model B, a ``ModelMergeSD1/SD2/SDXL`` node merges the UNets and a ``CLIPMergeSimple`` node the text
encoders, and every link to the loader's MODEL and CLIP outputs is moved onto the merge nodes. Its
VAE output stays model A's (see ``blocks``). Every trial of a run sends the same graph shape, so
ComfyUI's one-prompt cache keeps both checkpoints loaded between trials.

Each image of a payload is one prompt with batch size 1 and the seed A1111 gives that image
(seed + i), so seeds mean the same on both backends.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayes_merger.errors import ConfigError
from bayes_merger.renderers.comfyui.samplers import comfy_sampler

log = logging.getLogger(__name__)

MODEL = "{{model}}"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
NAMES = ("model", "prompt", "negative", "seed", "width", "height", "steps", "cfg", "sampler", "scheduler", "output")
LOADER = "CheckpointLoaderSimple"
WEBSOCKET_SAVER = "SaveImageWebsocket"

BUILTIN: dict[str, Any] = {
    "1": {"class_type": LOADER, "inputs": {"ckpt_name": MODEL}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative}}", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": "{{seed}}", "steps": "{{steps}}", "cfg": "{{cfg}}", "sampler_name": "{{sampler}}",
        "scheduler": "{{scheduler}}", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
        "denoise": 1.0}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    # images come back over the websocket and ComfyUI writes no file (SaveImage would leave one per
    # image in its output folder; a user's workflow may still use it, with {{output}} as its prefix)
    "7": {"class_type": WEBSOCKET_SAVER, "inputs": {"images": ["6", 0]}},
}

# payload fields the graph applies, and those that do not change the picture
_APPLIED = {"prompt", "negative_prompt", "seed", "width", "height", "steps", "cfg_scale", "sampler_name",
            "sampler_index", "scheduler", "batch_size", "n_iter"}
_HARMLESS = {"send_images", "save_images", "do_not_save_samples", "do_not_save_grid", "comments", "force_task_id",
             "override_settings_restore_afterwards", "subseed", "seed_resize_from_h", "seed_resize_from_w",
             "denoising_strength", "disable_extra_networks", "infotext"}
# fields that would change the picture in A1111 and that this graph cannot apply, with their neutral values
_NEUTRAL = {"enable_hr": (False, None), "restore_faces": (False, None), "tiling": (False, None),
            "subseed_strength": (0, 0.0, None), "styles": ([], None), "script_name": (None, ""),
            "alwayson_scripts": ({}, None), "refiner_checkpoint": (None, "", "Use same checkpoint")}


@dataclass(frozen=True)
class Workflow:
    """A template graph and the id of its ``{{model}}`` loader."""

    graph: Mapping[str, Any]
    model_node: str
    source: str = "the built-in graph"


def builtin_workflow() -> Workflow:
    return Workflow(BUILTIN, "1")


def load_workflow(path: str | Path) -> Workflow:
    """A user's workflow in API format (``Save (API)`` in ComfyUI), checked for its placeholders."""
    path = Path(path).expanduser()
    where = f"webui.comfyui_workflow {path}"
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not JSON ({exc.msg}, line {exc.lineno}).") from exc
    if isinstance(graph, Mapping) and "prompt" in graph and isinstance(graph["prompt"], Mapping):
        graph = graph["prompt"]
    if not isinstance(graph, Mapping) or not graph or not all(
        isinstance(n, Mapping) and "class_type" in n and isinstance(n.get("inputs"), Mapping) for n in graph.values()
    ):
        raise ConfigError(f"{where} is not a workflow in API format (node id → class_type and inputs): "
                          "save it with ComfyUI's 'Export (API)'.")
    loaders = [nid for nid, n in graph.items() if n["class_type"] == LOADER and n["inputs"].get("ckpt_name") == MODEL]
    if len(loaders) != 1:
        raise ConfigError(f"{where} must have exactly one {LOADER} whose ckpt_name is \"{MODEL}\"; it has {len(loaders)}.")
    used = {m for m in PLACEHOLDER.findall(json.dumps(graph))}
    unknown = sorted(used - set(NAMES))
    if unknown:
        raise ConfigError(f"{where} has unknown placeholders {', '.join('{{%s}}' % u for u in unknown)}; "
                          f"known: {', '.join('{{%s}}' % n for n in NAMES)}.")
    for needed in ("prompt", "seed"):
        if needed not in used:
            raise ConfigError(f"{where} has no {{{{{needed}}}}} placeholder: the payloads' {needed}s would not be used.")
    return Workflow(dict(graph), loaders[0], str(path))


def image_values(request: Mapping[str, Any], samplers: Collection[str], schedulers: Collection[str],
                 where: str) -> list[dict[str, Any]]:
    """The placeholder values of each image of one payload, in A1111's order and seeds (seed + i)."""
    for key, neutral in _NEUTRAL.items():
        if key in request and request[key] not in neutral:
            raise ConfigError(f"{where} sets {key}={request[key]!r}, which the ComfyUI graph cannot apply; "
                              "remove it or render with A1111 (webui.backend=a1111).")
    overrides = dict(request.get("override_settings") or {})
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", 1)
    if clip_skip != 1 or overrides:
        raise ConfigError(f"{where} sets override_settings {request.get('override_settings')}, which the ComfyUI "
                          "graph cannot apply (use a workflow with CLIPSetLastLayer for a clip skip).")
    ignored = sorted(k for k in request if k not in _APPLIED | _HARMLESS | set(_NEUTRAL) | {"override_settings"})
    if ignored:
        log.warning("%s: %s not applied by the ComfyUI graph.", where, ", ".join(ignored))
    sampler, scheduler = comfy_sampler(request.get("sampler_name") or request.get("sampler_index"),
                                       request.get("scheduler"), samplers, schedulers, where)
    seed = int(request.get("seed", 0))
    if seed < 0:
        raise ConfigError(f"{where}: seed {seed} (random) is not supported with ComfyUI; give a fixed seed.")
    count = int(request.get("batch_size", 1)) * int(request.get("n_iter", 1))
    base = {"prompt": str(request.get("prompt", "")), "negative": str(request.get("negative_prompt", "")),
            "width": int(request.get("width", 512)), "height": int(request.get("height", 512)),
            "steps": int(request.get("steps", 50)), "cfg": float(request.get("cfg_scale", 7.0)),
            "sampler": sampler, "scheduler": scheduler}
    return [dict(base, seed=seed + i) for i in range(count)]


def fill(workflow: Workflow, values: Mapping[str, Any]) -> dict[str, Any]:
    """The template with every placeholder replaced (``{{model}}`` is left for the hand-off)."""
    def replace(value: Any) -> Any:
        if isinstance(value, str):
            match = PLACEHOLDER.fullmatch(value)
            if match and match.group(1) in values:
                return values[match.group(1)]
            return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), value)
        if isinstance(value, list):
            return [replace(v) for v in value]
        if isinstance(value, Mapping):
            return {k: replace(v) for k, v in value.items()}
        return value

    return {nid: {**copy.deepcopy(dict(node)), "inputs": replace(node["inputs"])} for nid, node in workflow.graph.items()}


def by_file(graph: dict[str, Any], workflow: Workflow, name: str) -> dict[str, Any]:
    graph[workflow.model_node]["inputs"]["ckpt_name"] = name
    return graph


def in_graph(graph: dict[str, Any], workflow: Workflow, model_a: str, model_b: str, merge_class: str,
             ratios: Mapping[str, float], clip_ratio: float) -> dict[str, Any]:
    """Load A where ``{{model}}`` was, B beside it, and merge them in the graph (module docstring)."""
    loader = workflow.model_node
    numbers = [int(n) for n in graph if n.isdigit()]
    top = max(numbers, default=0)
    b, unet, clip = str(top + 1), str(top + 2), str(top + 3)
    for node in graph.values():
        for key, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] == loader and value[1] in (0, 1):
                node["inputs"][key] = [unet if value[1] == 0 else clip, 0]
    graph[loader]["inputs"]["ckpt_name"] = model_a
    graph[b] = {"class_type": LOADER, "inputs": {"ckpt_name": model_b}}
    graph[unet] = {"class_type": merge_class, "inputs": {"model1": [loader, 0], "model2": [b, 0], **ratios}}
    graph[clip] = {"class_type": "CLIPMergeSimple", "inputs": {"clip1": [loader, 1], "clip2": [b, 1], "ratio": clip_ratio}}
    return graph


def websocket_savers(graph: Mapping[str, Any]) -> frozenset[str]:
    """The ids of the nodes that send their images over the websocket instead of saving them."""
    return frozenset(nid for nid, node in graph.items() if node.get("class_type") == WEBSOCKET_SAVER)


def handoff_nodes(graph: Mapping[str, Any]) -> dict[str, Any]:
    """What proves which model rendered: every loader's ckpt_name and every merge node's inputs."""
    proof = {}
    for nid, node in graph.items():
        kind = node.get("class_type", "")
        if kind == LOADER or kind.startswith("ModelMerge") or kind == "CLIPMergeSimple":
            proof[nid] = {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}
    return proof
