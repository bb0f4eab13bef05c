"""Trials per hour at the render bound: the real loop against fake WebUIs that take a set time to switch
models and to render, sequential vs pipelined vs two WebUIs (pipelined or not), side by side in one run.

    python benchmarks/bench_trial.py                      # full-size SD1 (real keys and shapes), 10 s render
    python benchmarks/bench_trial.py --scale 0.1 --render 2 --switch 0.5 --trials 6   # a quick look
    python benchmarks/bench_trial.py --sdxl --scale 0.25
    python benchmarks/bench_trial.py --configs comfyui_graph comfyui_file --patch 4.8 --load 0.5   # ComfyUI routes
    python benchmarks/bench_trial.py --configs sequential ray1 ray2 ray3 --scale 0.25   # WebUI hosts on Ray

Each configuration runs ``bayes-merger`` itself (the CLI, the Merger, the WebUI client, the tiny
scorer of the demo) on in-process fake A1111 servers whose ``POST /sdapi/v1/options`` (the model
switch) answers ``--switch`` seconds after it came and whose ``POST /sdapi/v1/txt2img`` answers
``--render`` seconds after it came (one payload, one image a trial); the fake's own work (reading and
hashing the new file, as A1111 does) is part of those times, or lengthens them when it takes longer.
The render-bound ideal keeps the WebUI busy all the time: one trial per switch + render. Throughput
is counted from the end of the first round of trials to the last finished trial
(``trial_run.trials_per_hour``: the models' load at the start is not a trial's cost). Per-stage
medians come from the trial log's timings: ours
(suggest, merge, write, score) and the WebUI's (load: write-in-place + refresh + select + confirm;
generate). The peak RSS is the whole benchmark process's.

The ComfyUI rows (comfyui_graph, comfyui_file, comfyui_auto; benchmarks/trial_comfyui.py) run the same
loop against a fake ComfyUI whose loader, block-merge node and sampler take ``--load``, ``--patch`` and
``--render`` seconds: the merge handed over in the graph (a re-patch a trial) or by file (our merge and
write, then a load a trial). Their /ideal and /busy are against ComfyUI's own time by their route.

The Ray rows (ray1, ray2, ray3; benchmarks/trial_ray.py; needs the ray extra) run the loop on 1–3
WebUI hosts of a local Ray instance, an actor per fake WebUI merging, rendering and scoring its trials;
rayN_vs_one on the last line is against one WebUI on one machine (the sequential row), target ≥ 0.8·N.

The last line holds the key ratios as name=value pairs.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bayes_merger.testing.models import make_checkpoint  # noqa: E402
from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head  # noqa: E402
import trial_comfyui  # noqa: E402
from trial_run import several_webuis, start_fake_webuis, timed_run  # noqa: E402
import trial_ray  # noqa: E402

log = logging.getLogger("bench_trial")
STAGES = ("suggest", "merge", "write", "load", "generate", "score", "total")
CONFIGS = {  # name: (WebUIs, pipelined)
    "sequential": (1, False),
    "pipelined": (1, True),
    "two_webuis": (2, True),
    # one trial in flight, not three: what the optimiser's regret favours (README, trials in flight)
    "two_unpipelined": (2, False),
}


def run_config(name: str, webuis: int, pipelined: bool, work: Path, args: argparse.Namespace, assets: dict) -> dict:
    servers = start_fake_webuis(name, work, webuis, args)
    overrides = [f"webui.url={servers[0].url}", f"webui.checkpoint_dir={servers[0].checkpoint_dir}",
                 f"webui.pipeline={str(pipelined).lower()}"]
    if webuis > 1:
        overrides += several_webuis(servers)
    try:
        run = timed_run(name, work, args.trials, assets, overrides, STAGES, webuis)
    finally:
        for server in servers:
            server.stop()
    return run.row(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="model widths × scale (1: the real SD1/SDXL shapes)")
    parser.add_argument("--sdxl", action="store_true", help="SDXL models instead of SD1")
    parser.add_argument("--render", type=float, default=10.0, help="seconds the fake WebUI takes per render")
    parser.add_argument("--switch", type=float, default=2.0, help="seconds the fake WebUI takes per model switch")
    parser.add_argument("--trials", type=int, default=8, help="trials per configuration")
    parser.add_argument("--workdir", type=Path, help="where the models and runs go (default: a temporary folder)")
    parser.add_argument("--configs", nargs="+", choices=[*CONFIGS, *trial_comfyui.COMFYUI_CONFIGS, *trial_ray.RAY_CONFIGS],
                        default=[*CONFIGS, "comfyui_graph", "comfyui_file"])
    trial_comfyui.add_arguments(parser)
    args = parser.parse_args()
    if args.trials < 4:  # trials_per_hour counts from the end of the first round: three WebUIs need a fourth
        parser.error("--trials must be at least 4: trials per hour are counted from the end of the first round "
                     "(up to three WebUIs at once)")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        arch = "sdxl" if args.sdxl else "sd1"
        log.info("Writing two %s checkpoints at scale %g …", arch, args.scale)
        assets = {
            "model_a": make_checkpoint(work / "a.safetensors", arch, seed=1, scale=args.scale),
            # one VAE, as fine-tunes of one base have: ComfyUI's graph route (which cannot merge a VAE) is then
            # open to comfyui_auto, which measures both routes before trial 0
            "model_b": make_checkpoint(work / "b.safetensors", arch, seed=2, vae_seed=1, scale=args.scale),
            "scorer.clip": make_tiny_clip(work / "clip"),
            "scorer.head": make_tiny_head(work / "head.safetensors"),
        }
        size = assets["model_a"].stat().st_size / 1e9
        results = []
        for name in args.configs:
            # each configuration starts with the disk's write-back done: the models just written (GBs),
            # or the last configuration's merges, would otherwise slow the first writes of the next
            os.sync()
            if name in trial_comfyui.COMFYUI_CONFIGS:
                log.info("%s: a fake ComfyUI, hand-off %s …", name, trial_comfyui.COMFYUI_CONFIGS[name])
                results.append(trial_comfyui.run_comfyui_config(name, work, args, assets, STAGES))
                continue
            if name in trial_ray.RAY_CONFIGS:
                log.info("%s: %d WebUI host(s) on a local Ray …", name, trial_ray.RAY_CONFIGS[name])
                results.append(trial_ray.run_ray_config(name, work, args, assets, STAGES))
                continue
            webuis, pipelined = CONFIGS[name]
            log.info("%s: %d WebUI(s), pipelined %s …", name, webuis, pipelined)
            results.append(run_config(name, webuis, pipelined, work, args, assets))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ideal = 3600.0 / (args.render + args.switch)
    print(f"{arch} at scale {args.scale:g} ({size:.2f} GB a checkpoint); fake WebUI: switch {args.switch:g} s, "
          f"render {args.render:g} s; render-bound ideal {ideal:.0f} trials/h per WebUI; {args.trials} trials each")
    print("/ideal: against switch + render as set; /busy: against the WebUI's own measured time a trial "
          "(load + generate, the sequential run's medians), the bound no client can beat")
    print(f"{'config':<15} {'trials/h':>9} {'/ideal':>7} {'/busy':>6} " + " ".join(f"{s:>8}" for s in STAGES)
          + "   (median s)")
    by = {r["name"]: r for r in results}
    first = by.get("sequential", results[0])["medians"]
    busy = 3600.0 / (first["load"] + first["generate"])
    for r in results:
        webuis = r.get("webuis") or CONFIGS[r["name"]][0]
        print(f"{r['name']:<15} {r['per_hour']:9.0f} {r['per_hour'] / (r.get('ideal', ideal) * webuis):7.2f} "
              f"{r['per_hour'] / (r.get('busy', busy) * webuis):6.2f} "
              + " ".join(f"{r['medians'][s]:8.2f}" for s in STAGES) + f"   ({r['ok']}/{r['trials']} ok)")
    ours = first["suggest"] + first["merge"] + first["write"] + first["score"]
    print(f"sequential hand-off: ours (suggest, merge, write, score) {ours:.2f} s, the WebUI's (load, generate) "
          f"{first['load'] + first['generate']:.2f} s a trial")
    for line in trial_comfyui.describe(results, args):
        print(line)
    for line in trial_ray.describe(results):
        print(line)
    print(f"peak RSS of the benchmark process: {peak:.0f} MB")
    share = lambda r, bound: r["per_hour"] / (bound * (r.get("webuis") or CONFIGS[r["name"]][0]))  # noqa: E731
    pairs = [f"{r['name']}_vs_ideal={share(r, r.get('ideal', ideal)):.3f}" for r in results]
    pairs += [f"{r['name']}_vs_busy={share(r, r.get('busy', busy)):.3f}" for r in results]
    if "sequential" in by and "pipelined" in by:
        pairs.append(f"pipelined_vs_sequential={by['pipelined']['per_hour'] / by['sequential']['per_hour']:.3f}")
    if "two_webuis" in by and "pipelined" in by:
        pairs.append(f"two_webuis_vs_one={by['two_webuis']['per_hour'] / by['pipelined']['per_hour']:.3f}")
    if "two_unpipelined" in by and "sequential" in by:
        pairs.append(f"two_unpipelined_vs_sequential={by['two_unpipelined']['per_hour'] / by['sequential']['per_hour']:.3f}")
    pairs += trial_comfyui.pairs(results)
    pairs += trial_ray.pairs(results)
    pairs.append(f"peak_rss_mb={peak:.0f}")
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
