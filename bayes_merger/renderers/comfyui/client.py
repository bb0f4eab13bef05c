"""The ComfyUI client of one run: wait for ComfyUI, hand it each trial's merge, render, read back.

A renderer beside ``webui.client.WebUIClient`` (see ``renderers.Renderer``). Each image is one prompt,
run to its end by ``prompts.PromptRunner``. The images come back over the websocket from
``SaveImageWebsocket`` nodes (the built-in graph's output: ComfyUI writes no file), or, for a user's
workflow with ``SaveImage`` instead, from ``/history`` and ``/view`` (``images``).

The merge is confirmed to be the one rendered: the graph ComfyUI reports in ``/history`` (and in
each PNG's ``prompt`` text) must load the names and carry the ratios this client sent.

Two hand-offs (``graph`` for how a merge becomes nodes):
- by file (``load_checkpoint``): the merge is written into ``webui.checkpoint_dir``, a sub-folder
  of ComfyUI's models/checkpoints; ComfyUI lists files at every request (no refresh call); the
  previous trial's file is deleted. Names never repeat, since ComfyUI caches a loader by its name.
  The files are ``webui.merge_files``' (``files``), as are the clean-ups: a run that starts removes
  the files of runs that are over (``remove_leftovers``).
- in the graph (``load_weights``, weighted_sum only): models A and B stay loaded in ComfyUI and the
  block-merge node applies the weights as patches; no file, no torch merge. The VAE is A's (ComfyUI
  cannot merge one), so where A's and B's VAEs differ and BASE can be above 0 the graph renders another
  model than the merge by file and ``best.safetensors``: "auto" then takes the file, "graph" warns.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Mapping

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import CheckpointError, ConfigError, WebUIConnectionError, WebUIError
from bayes_merger.merge.arch import Architecture
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.renderers import Renderer
from bayes_merger.renderers.comfyui import blocks, graph as graphs
from bayes_merger.renderers.comfyui.events import EventStream
from bayes_merger.renderers.comfyui.files import ComfyMergeFiles, basename
from bayes_merger.renderers.comfyui.http import ComfyApi
from bayes_merger.renderers.comfyui.images import prompt_images
from bayes_merger.renderers.comfyui.prompts import PromptRunner
from bayes_merger.renderers.comfyui.vae import vaes_differ
from bayes_merger.webui.client import Generation
from bayes_merger.webui.http import wait_until_ready as poll_until_ready

logger = logging.getLogger(__name__)


class ComfyUIClient(Renderer):
    """One ComfyUI session of one run; ``handoff`` is "file", "graph", or "auto": both possible until
    ``settle`` picks one (``route.settle_route`` measures which is faster; see ``choose_handoff``)."""

    def __init__(self, config: WebUIConfig, run_id: str, *, handoff: str = "file", arch: Architecture | None = None,
                 model_a: str | Path | None = None, model_b: str | Path | None = None,
                 base_max: float | None = None) -> None:
        """``model_a``/``model_b``: the model files here; ``base_max``: the largest BASE weight the run
        can try (None: not known, so taken as above 0), which decides whether their VAEs matter."""
        if handoff not in ("file", "graph", "auto"):
            raise ConfigError(f"The ComfyUI hand-off must be file, graph or auto, not {handoff!r}.")
        if handoff != "file" and (arch is None or model_a is None or model_b is None):
            raise ConfigError("Merging in ComfyUI's graph needs the architecture and models A and B.")
        self._config = config
        self._run_id = run_id
        self._handoff = handoff
        self._arch = arch
        self._models = (config.comfyui_model_a or model_a, config.comfyui_model_b or model_b)
        self._model_files = (model_a, model_b)
        self._base_max = base_max
        self._route_reason: str | None = None
        self._files = ComfyMergeFiles(Path(config.checkpoint_dir), run_id, config.keep_last) if config.checkpoint_dir \
            and config.checkpoint_dir != "???" else None
        self._api = ComfyApi(config)
        self._events = EventStream(self._api.base, f"bayes-merger-{run_id}-{uuid.uuid4().hex[:8]}",
                                   config.connect_timeout, self._api.auth)
        self._prompts = PromptRunner(self._api, self._events, config.read_timeout)
        self._workflow = graphs.load_workflow(config.comfyui_workflow) if config.comfyui_workflow \
            else graphs.builtin_workflow()
        self._samplers: tuple[list[str], list[str]] | None = None
        self._merge_inputs: list[str] | None = None
        self._names: tuple[str, str] | None = None  # models A and B as ComfyUI lists them
        self._shown: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # the hand-off of the last load
        self._shown_label = ""

    def __enter__(self) -> ComfyUIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._events.close()
        self._api.close()

    def __repr__(self) -> str:
        return f"ComfyUIClient(url={self._api.base!r}, run_id={self._run_id!r}, handoff={self._handoff!r})"

    @property
    def merges_in_graph(self) -> bool:
        return self._handoff == "graph"

    @property
    def handoff(self) -> str:
        """"graph", "file", or "auto" while both routes are open."""
        return self._handoff

    @property
    def url(self) -> str:
        return self._api.base

    @property
    def route_reason(self) -> str | None:
        """Why the check of "auto" left one route (None while both are open)."""
        return self._route_reason

    def settle(self, handoff: str) -> None:
        """Take one route for the rest of the run (from "auto")."""
        if handoff not in ("file", "graph"):
            raise ConfigError(f"The ComfyUI hand-off must be file or graph, not {handoff!r}.")
        self._handoff = handoff

    # ----------------------------------------------------------------------------------- start-up

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Poll ``GET /system_stats`` until ComfyUI answers 200, for at most ``timeout`` seconds; a 401
        (a proxy in front of it refuses the credentials) ends the wait at once."""
        poll_until_ready(self._api, timeout, f"ComfyUI at {self._api.base}",
                         judge=lambda response: f"it answered HTTP {response.status_code} to GET /system_stats",
                         reason=lambda exc: type(exc).__name__)
        self._events.close()  # a restarted server forgot the old socket
        logger.info("ComfyUI at %s is ready.", self._api.base)

    def check_checkpoint_dir(self) -> None:
        """By file: the folder is writable and ComfyUI lists what is written there. In the graph:
        ComfyUI lists models A and B and has the merge nodes. Both before the first merge; with "auto",
        a route that fails its check leaves the other (both failing: the by-file error). The graph also
        fails it, under "auto", where it would render another VAE than the merge (``vae``)."""
        if self._handoff == "auto":
            failed = {}
            for route, check in (("graph", self._check_graph_renders_the_merge), ("file", self._check_file)):
                try:
                    check()
                except WebUIConnectionError:
                    raise
                except (ConfigError, WebUIError) as error:  # a folder or models ComfyUI does not list
                    failed[route] = error
            if len(failed) == 2:
                raise failed["file"]
            for route, error in failed.items():
                self.settle("file" if route == "graph" else "graph")
                self._route_reason = f"{'the graph' if route == 'graph' else 'a file'} cannot be used: {error}"
                logger.warning("ComfyUI hand-off auto at %s: %s, since %s", self.url, self._handoff, self._route_reason)
            return
        if self._handoff == "graph":
            self._check_graph()
            mismatch = self._vae_mismatch()
            if mismatch:  # asked for: the README documents this limitation of the graph
                logger.warning("webui.comfyui_handoff is graph, but %s", mismatch)
        else:
            self._check_file()

    def _check_graph_renders_the_merge(self) -> None:
        self._check_graph()
        mismatch = self._vae_mismatch()
        if mismatch:
            raise ConfigError(mismatch)

    def _vae_mismatch(self) -> str | None:
        """Why the graph would render another model than the merge by file, or None: A's and B's VAEs
        differ while BASE, which the torch merge gives the VAE, can be above 0."""
        if self._base_max is not None and self._base_max <= 0.0:
            return None
        try:
            differ = vaes_differ(*(Path(str(path)).expanduser() for path in self._model_files))
        except (CheckpointError, OSError) as error:
            return f"the VAEs of models A and B could not be compared ({error})."
        if not differ:
            return None
        base = "BASE may be above 0" if self._base_max is None else f"BASE can reach {self._base_max:g}"
        return (f"models A and B have different VAEs and {base}: ComfyUI cannot merge a VAE, so the graph decodes "
                "with A's while the merge by file (and best.safetensors) merges it with BASE.")

    def _check_graph(self) -> None:
        self._model_names()
        self._merge_node_inputs()

    def _check_file(self) -> None:
        files = self._require_files()
        files.probe(self._listed_name)

    def check_payloads(self, payloads: Iterable[Any]) -> None:
        """Every payload (``.name``, ``.request``) becomes a graph: unknown samplers and fields ComfyUI
        cannot apply are a ConfigError now, naming the valid samplers from ``/object_info``; so is a node
        of the workflow ComfyUI does not have, which would refuse every prompt after the first merge."""
        for node_class in sorted({str(node["class_type"]) for node in self._workflow.graph.values()}):
            if self._node_info(node_class) is None:
                raise ConfigError(_missing_node_message(node_class, self._workflow.source, self.url))
        samplers, schedulers = self._sampler_names()
        for payload in payloads:
            graphs.image_values(payload.request, samplers, schedulers, f"payload '{payload.name}'")

    # ---------------------------------------------------------------------------- the hand-off

    def stage(self, write: Callable[[Path], None], trial: int) -> Path:
        """Write ``trial``'s merge (``write(path)``) under a name ComfyUI does not list, while it renders the
        trial before; ``load_checkpoint`` moves it into place. Returns where it is."""
        files = self._require_files()
        staged = files.staged_path(trial)
        files.write(write, staged)
        return staged

    def load_checkpoint(self, write: Callable[[Path], None], trial: int) -> str:
        """By file: write the merge into the checkpoint folder under a new name and render with it."""
        self._shown, self._shown_label = None, ""
        files = self._require_files()
        name = files.fresh_name(trial)
        files.write(write, files.folder / name)
        listed = self._listed_name(name)
        self._shown = lambda graph: graphs.by_file(graph, self._workflow, listed)
        self._shown_label = listed
        files.delete_old(keep=name)
        logger.info("ComfyUI lists the merge as %s.", listed)
        return listed

    def load_weights(self, weights: BlockWeights, trial: int) -> str:
        """In the graph: the weighted sum (1 − α)·A + α·B of these weights, merged by ComfyUI."""
        self._shown, self._shown_label = None, ""
        assert self._arch is not None
        model_a, model_b = self._model_names()
        ratios = blocks.block_ratios(self._arch, weights, self._merge_node_inputs())
        clip = blocks.clip_ratio(weights)
        merge_class = blocks.merge_node(self._arch)
        self._shown = lambda graph: graphs.in_graph(graph, self._workflow, model_a, model_b, merge_class, ratios, clip)
        self._shown_label = f"{model_a} + {model_b} merged in the graph (trial {trial})"
        return self._shown_label

    def remove_merges(self) -> None:
        if self._files is not None:
            self._files.remove_all()

    def remove_leftovers(self, over: Callable[[str], bool]) -> list[Path]:
        """Delete merge files of other runs once ``over(run_id)`` says that run is over (see merge_files):
        a pipelined run killed while ComfyUI rendered leaves a checkpoint-sized ``.staged`` merge."""
        return self._files.remove_leftovers(over) if self._files is not None else []

    def hand_back(self, model: str = "") -> None:
        """End of a run: delete this run's merge files and let ComfyUI free the models. Best effort."""
        self._shown = None
        removed = self._files.remove_all() if self._files is not None else 0
        if removed:
            logger.info("Deleted this run's %d merge file(s) from %s.", removed, self._files.folder)  # type: ignore[union-attr]
        self.free(unload_models=True, free_memory=True)

    def free(self, unload_models: bool = True, free_memory: bool = False) -> None:
        self._prompts.free(unload_models, free_memory)

    # ------------------------------------------------------------------------------- generation

    def txt2img(self, request: Mapping[str, Any]) -> Generation:
        """Render one payload with the merge shown last: one prompt per image, seeds as A1111's."""
        if self._shown is None:
            raise WebUIError("No merge is shown to ComfyUI: the last hand-off failed, so nothing is rendered.")
        samplers, schedulers = self._sampler_names()
        images, seeds, prompt_ids = [], [], []
        for values in graphs.image_values(request, samplers, schedulers, "the payload"):
            graph = self._shown(graphs.fill(self._workflow, {**values, "output": f"bayes-merger/{self._run_id}"}))
            prompt_id, entry, frames = self._prompts.run(graph)
            rendered = prompt_images(entry, graph, frames,
                                     lambda params: self._api.request("GET", "/view", params=params, raw=True),
                                     self._shown_label)
            images.extend(rendered)
            seeds.extend([values["seed"]] * len(rendered))
            prompt_ids.append(prompt_id)
        if not images:
            raise WebUIError("ComfyUI ran the prompt but it produced no image: the workflow needs a SaveImageWebsocket "
                             "(or SaveImage) node.")
        info = {"sd_model_name": self._shown_label, "prompt_ids": prompt_ids, "seed": seeds[0], "all_seeds": seeds,
                "backend": "comfyui"}
        return Generation(images=images, info=info, seeds=seeds)

    # --------------------------------------------------------------------------- server facts

    def _sampler_names(self) -> tuple[list[str], list[str]]:
        if self._samplers is None:
            required = self._node_inputs("KSampler")
            try:
                self._samplers = (list(required["sampler_name"][0]), list(required["scheduler"][0]))
            except (KeyError, IndexError, TypeError) as exc:
                raise WebUIError("ComfyUI's /object_info/KSampler lists no sampler_name or scheduler choices.") from exc
        return self._samplers

    def _merge_node_inputs(self) -> list[str]:
        if self._merge_inputs is None:
            assert self._arch is not None
            node = blocks.merge_node(self._arch)
            required = self._node_inputs(node)
            self._merge_inputs = [name for name in required if name not in ("model1", "model2")]
            for node_class in ("CLIPMergeSimple", graphs.LOADER):
                self._node_inputs(node_class)
        return self._merge_inputs

    def _node_inputs(self, node_class: str) -> dict[str, Any]:
        entry = self._node_info(node_class)
        if entry is None:
            raise WebUIError(f"ComfyUI has no {node_class} node (GET /object_info/{node_class} is empty): "
                             "is it a ComfyUI with the core nodes?")
        return dict((entry.get("input") or {}).get("required") or {})

    def _node_info(self, node_class: str) -> Mapping[str, Any] | None:
        info = self._api.request("GET", f"/object_info/{node_class}") or {}
        entry = info.get(node_class) if isinstance(info, Mapping) else None
        return entry if isinstance(entry, Mapping) else None

    def _checkpoints(self) -> list[str]:
        listed = self._api.request("GET", "/models/checkpoints")
        return [str(n) for n in listed] if isinstance(listed, list) else []

    def _listed_name(self, file_name: str) -> str:
        for name in self._checkpoints():
            if basename(name) == file_name:
                return name
        folder = self._require_files().folder
        raise WebUIError(
            f"ComfyUI does not list {file_name} written to {folder}: webui.checkpoint_dir must be ComfyUI's "
            "models/checkpoints folder or a sub-folder of it (or a checkpoints path of its extra_model_paths.yaml)."
        )

    def _model_names(self) -> tuple[str, str]:
        if self._names is None:
            listed = self._checkpoints()
            self._names = (self._resolve(self._models[0], listed, "a"), self._resolve(self._models[1], listed, "b"))
        return self._names

    def _resolve(self, model: Any, listed: list[str], which: str) -> str:
        text = str(model)
        if text in listed:
            return text
        name = basename(text)
        found = [n for n in listed if basename(n) == name]
        if len(found) == 1:
            return found[0]
        if found:
            # the one whose folders match most of the end of the model's path (at equal counts, a listed
            # name that is the path's whole end beats one with a folder the path does not have); a guess
            # beyond that could merge another model than the user's, so a tie is theirs to settle
            ranked = sorted(found, key=lambda n: _tail_match(text, n), reverse=True)
            if _tail_match(text, ranked[0]) > _tail_match(text, ranked[1]):
                return ranked[0]
            raise ConfigError(
                f"ComfyUI lists several checkpoints named {name} and none matches more of model {which.upper()}'s "
                f"path ({text}) than the others: {', '.join(found[:20])}; name the one to load with "
                f"webui.comfyui_model_{which}."
            )
        raise ConfigError(
            f"ComfyUI does not list model {which.upper()} ({name}) among its checkpoints: merging in the graph loads "
            f"A and B by name, so put the file in ComfyUI's models/checkpoints (a link will do) or name it with "
            f"webui.comfyui_model_{which}; listed: {', '.join(listed[:20]) or 'nothing'}."
        )

    def _require_files(self) -> ComfyMergeFiles:
        if self._files is None:
            raise ConfigError("webui.checkpoint_dir is not set: with ComfyUI, point it at a sub-folder of "
                              "ComfyUI's models/checkpoints (e.g. models/checkpoints/bayes-merger).")
        return self._files


def _tail_match(path: str, listed: str) -> tuple[int, bool]:
    """How many trailing components of ``path`` the listed name ``listed`` matches, and whether it is
    the path's whole end (every one of its components matches)."""
    ours = re.split(r"[\\/]", path)[::-1]
    theirs = re.split(r"[\\/]", listed)[::-1]
    matched = 0
    for mine, other in zip(ours, theirs):
        if mine != other:
            break
        matched += 1
    return matched, matched == len(theirs)


def _missing_node_message(node_class: str, source: str, url: str) -> str:
    if node_class == graphs.WEBSOCKET_SAVER:
        # an example node in ComfyUI's custom_nodes/, not a core node: gone with custom nodes off
        return (f"ComfyUI at {url} has no {node_class} node, which {source} sends its images with: ComfyUI ships "
                "it as custom_nodes/websocket_image_save.py, left out with --disable-all-custom-nodes or a "
                "custom_nodes folder of your own; put that file back, or set webui.comfyui_workflow to a workflow "
                "that saves with SaveImage.")
    return (f"ComfyUI at {url} has no {node_class} node, which {source} uses: install the custom node that "
            "provides it, or change the workflow.")
