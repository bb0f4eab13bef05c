"""bench_trial.py's Ray rows: the same loop on N WebUI hosts of a local Ray instance (one node offering
``{"webui": 3}``), an actor per fake A1111 WebUI with the same ``--switch`` and ``--render`` times, each
actor merging, rendering and scoring its own trials (``bayes_merger/cluster/``).

Throughput is counted as in every row (``throughput.trials_per_hour``), from the end of the first
round (one trial a host: the actors' start and models' load are not a trial's cost). The trial count is rounded
up to a multiple of 6, so every host runs whole rounds for N = 1, 2 and 3. Target (issue 15): rayN ≥
0.8·N × one WebUI's trials per hour (the ``sequential`` row when it ran, else ``ray1``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import statistics
import time
from pathlib import Path
from typing import Callable

from bayes_merger.run import TrialLoop
from bayes_merger.testing.fake_webui import FakeWebUI
from throughput import trials_per_hour

# name: WebUI hosts
RAY_CONFIGS = {"ray1": 1, "ray2": 2, "ray3": 3}


def start_ray(work: Path) -> None:
    """A local Ray instance offering three WebUIs, token authentication on with a token in ``work``."""
    token = work / "ray-auth-token"
    if token.exists():
        return  # started for an earlier row; its workers read this token as they start
    token.write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    import ray  # after the environment: Ray reads RAY_AUTH_MODE once

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), resources={"webui": max(RAY_CONFIGS.values())}, include_dashboard=False,
                 logging_level="WARNING")


def trial_count(trials: int) -> int:
    return 6 * math.ceil(trials / 6)


def run_ray_config(name: str, work: Path, args: argparse.Namespace, assets: dict, stages: tuple[str, ...],
                   cli_main: Callable, repo: Path) -> dict:
    hosts = RAY_CONFIGS[name]
    start_ray(work)
    servers = []
    for n in range(hosts):
        folder = work / f"{name}-webui{n}"
        folder.mkdir(parents=True)
        server = FakeWebUI(folder).start()
        server.delay("/sdapi/v1/options", args.switch, "POST", in_all=True)  # as bench_trial's run_config
        server.delay("/sdapi/v1/txt2img", args.render, "POST", in_all=True)
        servers.append(server)
    finished: list[float] = []
    record = TrialLoop.record

    def timed_record(self, trial):
        finished.append(time.perf_counter())
        return record(self, trial)

    TrialLoop.record = timed_record
    trials = trial_count(args.trials)
    try:
        payloads = work / f"{name}-payloads.yaml"
        payloads.write_text("defaults: {steps: 1, width: 64, height: 64}\npayloads:\n  - name: one\n    prompt: a fox\n")
        overrides = [
            "--config", str(repo / "conf" / "demo.yaml"), "demo=false", f"run.dir={work / name / 'runs'}",
            "cluster.address=auto", f"webui.checkpoint_dir={servers[0].checkpoint_dir}",
            f"webui.urls=[{','.join(s.url for s in servers)}]",
            f"webui.checkpoint_dirs=[{','.join(str(s.checkpoint_dir) for s in servers)}]",
            f"payloads.dir={payloads}", f"optimiser.init_points={min(3, trials)}",
            f"optimiser.n_iters={max(trials - 3, 0)}", "save_best=false", "save_images=false",
            "hydra/job_logging=none", "hydra/hydra_logging=none", *[f"{key}={value}" for key, value in assets.items()],
        ]
        try:
            cli_main(overrides)
        except SystemExit as stop:
            if stop.code:
                raise RuntimeError(f"{name}: bayes-merger exited {stop.code}") from None
    finally:
        TrialLoop.record = record
        for server in servers:
            server.stop()
    run_dir = next(p for p in (work / name / "runs").iterdir() if p.is_dir())
    logged = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    medians = {stage: statistics.median(t["timings"].get(stage, 0.0) for t in logged) for stage in stages}
    return {"name": name, "trials": len(logged), "per_hour": trials_per_hour(finished, hosts), "medians": medians,
            "ok": sum(t["status"] == "ok" for t in logged), "webuis": hosts,
            "hosts_used": len({t["webui"] for t in logged})}


def describe(results: list[dict]) -> list[str]:
    rows = [r for r in results if r["name"] in RAY_CONFIGS]
    if not rows:
        return []
    return [f"Ray rows: {r['name']} ran on {r['hosts_used']} host(s), {r['trials']} trials (rounded up to a multiple "
            "of 6); trials/h from the end of the first round to the last trial" for r in rows]


def pairs(results: list[dict]) -> list[str]:
    by = {r["name"]: r for r in results}
    one = by.get("sequential") or by.get("ray1")
    if one is None:
        return []
    return [f"{name}_vs_one={by[name]['per_hour'] / one['per_hour']:.3f}" for name in RAY_CONFIGS if name in by]
