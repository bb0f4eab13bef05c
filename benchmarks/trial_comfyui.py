"""bench_trial.py's ComfyUI routes: the same loop against an in-process fake ComfyUI whose nodes take
the times of a real one (``shared/reference/comfyui-api.md``), the merge handed over in the graph or
by file, one trial at a time.

The fake's server-side costs: ``--load`` seconds each time a checkpoint loader runs (by file: every
trial loads a new file; in the graph A and B load once), ``--patch`` seconds each time the block-merge
node runs (in the graph: every trial changes the ratios, and ComfyUI re-merges and re-patches the
models; measured ≈ 4.8 s a prompt on 2 CPU cores, SD1), ``--render`` seconds each KSampler run.
Our side is real: by file, the torch merge and the write of a checkpoint at ``--scale``.
``comfyui_auto`` lets the run measure both routes before trial 0 (``webui.comfyui_handoff=auto``)
and reports the route it took.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bayes_merger.testing.fake_comfyui import FakeComfyUI
from trial_run import timed_run

# name: the webui.comfyui_handoff it runs with
COMFYUI_CONFIGS = {"comfyui_graph": "graph", "comfyui_file": "file", "comfyui_auto": "auto"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch", type=float, default=4.8,
                        help="seconds the fake ComfyUI takes to re-merge and re-patch the models for new ratios (in the graph)")
    parser.add_argument("--load", type=float, default=0.5,
                        help="seconds the fake ComfyUI takes to load a checkpoint by name (by file)")


def ideal(route: str, args: argparse.Namespace) -> float:
    """Trials per hour if ComfyUI were never idle: its own time a trial by that route (auto: the faster)."""
    graph, by_file = args.patch + args.render, args.load + args.render
    seconds = {"graph": graph, "file": by_file, "auto": min(graph, by_file)}[route]
    return 3600.0 / seconds


def run_comfyui_config(name: str, work: Path, args: argparse.Namespace, assets: dict, stages: tuple[str, ...]) -> dict:
    """One bench_trial configuration on a fake ComfyUI; the result in bench_trial's shape, plus its
    own ``ideal`` and ``busy`` (ComfyUI's measured load + generate medians) and the route taken."""
    route = COMFYUI_CONFIGS[name]
    checkpoints = work / f"{name}-comfyui" / "models" / "checkpoints"
    (checkpoints / "bayes-merger").mkdir(parents=True)
    for key in ("model_a", "model_b"):  # loaded by name in the graph: ComfyUI must list them
        (checkpoints / Path(assets[key]).name).symlink_to(Path(assets[key]).resolve())
    server = FakeComfyUI(checkpoints, work / f"{name}-comfyui" / "output").start()
    server.delay_node("CheckpointLoaderSimple", args.load)
    server.delay_node("ModelMerge", args.patch)
    server.delay_node("KSampler", args.render)
    overrides = [f"webui.url={server.url}", "webui.backend=comfyui", f"webui.comfyui_handoff={route}",
                 f"webui.checkpoint_dir={checkpoints / 'bayes-merger'}", "webui.pipeline=false"]
    try:
        run = timed_run(name, work, args.trials, assets, overrides, stages, 1)
    finally:
        server.stop()
    measured = json.loads((run.run_dir / "run.json").read_text()).get("comfyui_handoff", {}).get(server.url, {})
    left = [p for p in checkpoints.joinpath("bayes-merger").iterdir()] + \
        [p for p in (work / f"{name}-comfyui" / "output").rglob("*") if p.is_file()]
    taken = measured.get("route") or ("file" if route == "auto" else route)  # auto unmeasured: a reason chose file
    return run.row(name, webuis=1, ideal=ideal(route, args),
                   busy=3600.0 / (run.medians["load"] + run.medians["generate"]), route=taken,
                   measured=measured, left_behind=len(left))


def describe(results: list[dict], args: argparse.Namespace) -> list[str]:
    """The lines bench_trial prints under its table for the ComfyUI rows, and its name=value pairs."""
    by = {r["name"]: r for r in results if r["name"] in COMFYUI_CONFIGS}
    if not by:
        return []
    lines = [f"fake ComfyUI: load {args.load:g} s a checkpoint, re-patch {args.patch:g} s a ratio change, render "
             f"{args.render:g} s; /ideal for comfyui_* is ComfyUI's time a trial by its route "
             "(graph: re-patch + render; file: load + render); /busy its own measured load + generate"]
    for r in by.values():
        if r["measured"].get("graph_s") is not None:
            lines.append(f"{r['name']}: took {r['route']} (measured before trial 0: graph {r['measured']['graph_s']:.2f} s,"
                         f" file {r['measured']['file_s']:.2f} s a trial)")
        if r["left_behind"]:
            lines.append(f"{r['name']}: {r['left_behind']} file(s) left in ComfyUI's folders")
    return lines


def pairs(results: list[dict]) -> list[str]:
    by = {r["name"]: r for r in results}
    found = []
    if "comfyui_graph" in by and "comfyui_file" in by:
        found.append(f"comfyui_graph_vs_file={by['comfyui_graph']['per_hour'] / by['comfyui_file']['per_hour']:.3f}")
    if "comfyui_auto" in by:
        best = max((by[n]["per_hour"] for n in ("comfyui_graph", "comfyui_file") if n in by), default=None)
        found.append(f"comfyui_auto_took_graph={int(by['comfyui_auto']['route'] == 'graph')}")  # a number: 1 or 0
        if best:
            found.append(f"comfyui_auto_vs_best={by['comfyui_auto']['per_hour'] / best:.3f}")
    found += [f"{r['name']}_left_behind={r['left_behind']}" for r in results if r["name"] in COMFYUI_CONFIGS]
    return found
