"""``webui.comfyui_handoff: auto`` decided by measurement: one trial's hand-off and render, in the graph
and by file, on this ComfyUI, before trial 0; the faster route is the run's, recorded in run.json.

Which is faster depends on the device (``shared/reference/comfyui-api.md``: on a 2-core CPU a ratio
change re-patches the models in about 4.8 s, while loading a 2 GB file costs about 0.5 s plus our
merge and write; on a GPU the patches are applied on the device). So each route renders the
payload's first image twice with two different weight sets: the first warms it up (loads models A
and B, or the first file), the second is timed, as every later trial of that route would be. By
file, our merge and write count too: added to ComfyUI's load and render, or, with
``webui.pipeline`` (the next merge written while ComfyUI renders), the larger of the two.

The probe's images are not scored and its files are deleted. A resumed run reads the recorded
choice and measures nothing, so a run keeps one route from its first trial to its last.

A graph that fails while it is timed (out of memory: the merge graph holds both models, about 12 GB
against 7 GB for one model on the reference's CPU; a node that raises) leaves the file route, with a
warning; a ComfyUI that stops answering stays fatal, as it is before any trial.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bayes_merger.errors import WebUIConnectionError, WebUIError
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.renderers.comfyui.prompts import OutOfMemory

log = logging.getLogger(__name__)

ROUTES = ("graph", "file")
clock: Callable[[], float] = time.perf_counter  # a test reads a fake ComfyUI's clock, whose node delays are virtual


def settle_route(client: Any, recorded: Mapping[str, Any] | None, request: Mapping[str, Any],
                 weights: Sequence[BlockWeights], stage: Callable[[int], tuple[Path, float]],
                 pipelined: bool) -> dict[str, Any]:
    """Settle ``client`` (a ComfyUIClient whose hand-off is "auto") on one route; the record for run.json.

    ``recorded``: this ComfyUI's record from an earlier start of the run (then nothing is measured).
    ``request``: one image's payload. ``weights``: the two weight sets (warm-up, timed).
    ``stage(i)``: merges ``weights[i]`` and writes it beside ComfyUI, returning the staged file and the
    seconds that took.
    """
    where = client.url
    if client.handoff != "auto":  # its check left one route (see ComfyUIClient.check_checkpoint_dir)
        return {"route": client.handoff,
                "reason": client.route_reason or "the other route failed its check before the run"}
    if recorded and recorded.get("route") in ROUTES:
        client.settle(recorded["route"])
        log.info("ComfyUI hand-off at %s: %s, as measured when the run started (%s).", where, recorded["route"],
                 _timings(recorded))
        return dict(recorded)
    log.info("ComfyUI hand-off auto at %s: timing one trial in the graph and one by file …", where)
    timed: dict[str, float] = {}
    try:
        timed.update(_time_route(client, "file", request, weights, stage))
        try:
            timed.update(_time_route(client, "graph", request, weights, stage))  # last: its models stay loaded
        except WebUIError as error:
            if isinstance(error, WebUIConnectionError) and not isinstance(error, OutOfMemory):
                raise  # ComfyUI is gone, not the graph at fault
            record = {"route": "file", "reason": f"the graph failed while it was timed: {error}"}
            log.warning("ComfyUI hand-off auto at %s: file, since %s", where, record["reason"])
            client.settle("file")
            return record
    finally:
        client.remove_merges()
    file_s = max(timed["merge_write_s"], timed["load_render_s"]) if pipelined \
        else timed["merge_write_s"] + timed["load_render_s"]
    record = {"route": "graph" if timed["graph_s"] <= file_s else "file", "graph_s": round(timed["graph_s"], 3),
              "file_s": round(file_s, 3), "merge_write_s": round(timed["merge_write_s"], 3),
              "load_render_s": round(timed["load_render_s"], 3), "pipelined": pipelined}
    record["reason"] = f"the faster: {_timings(record)}"
    log.info("ComfyUI hand-off auto at %s: %s, the faster for this device (%s).", where, record["route"],
             _timings(record))
    client.settle(record["route"])
    return record


def _time_route(client: Any, route: str, request: Mapping[str, Any], weights: Sequence[BlockWeights],
                stage: Callable[[int], tuple[Path, float]]) -> dict[str, float]:
    """Render ``request`` once per weight set by ``route``; the seconds of the last (the first warms up)."""
    timed: dict[str, float] = {}
    for index, blocks in enumerate(weights):
        started = clock()
        ours = 0.0
        if route == "graph":
            client.load_weights(blocks, trial=index)
        else:
            staged, ours = stage(index)
            started = clock()
            try:
                client.load_checkpoint(lambda path: os.replace(staged, path), trial=index)
            finally:
                staged.unlink(missing_ok=True)
        if not client.txt2img(request).images:
            raise WebUIError("ComfyUI rendered no image while the hand-offs were timed.")
        theirs = clock() - started
        if route == "file":
            timed["merge_write_s"], timed["load_render_s"] = ours, theirs
        else:
            timed["graph_s"] = theirs
    return timed


def _timings(record: Mapping[str, Any]) -> str:
    if "graph_s" not in record:
        return str(record.get("reason", "no timings"))
    combine = "the larger, pipelined" if record.get("pipelined") else "added"
    return (f"a trial's hand-off + render took {record['graph_s']:.2f} s in the graph and {record['file_s']:.2f} s "
            f"by file (our merge + write {record['merge_write_s']:.2f} s and ComfyUI's load + render "
            f"{record['load_render_s']:.2f} s, {combine})")
