"""bench_trial.py's Ray rows: the same loop on N WebUI hosts of a local Ray instance (one node offering
``{"webui": 3}``), an actor per fake A1111 WebUI with the same ``--switch`` and ``--render`` times, each
actor merging, rendering and scoring its own trials (``bayes_merger/cluster/``).

Throughput is counted as in every row (``trial_run.trials_per_hour``), from the end of the first
round (one trial a host: the actors' start and models' load are not a trial's cost). The trial count is rounded
up to a multiple of 6, so every host runs whole rounds for N = 1, 2 and 3. Target (issue 15): rayN ≥
0.8·N × one WebUI's trials per hour (the ``sequential`` row when it ran, else ``ray1``).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
from pathlib import Path

from trial_run import several_webuis, start_fake_webuis, timed_run

# name: WebUI hosts
RAY_CONFIGS = {"ray1": 1, "ray2": 2, "ray3": 3}


def start_ray(work: Path) -> None:
    """A local Ray instance offering three WebUIs, token authentication on with a token in ``work``."""
    token = work / "ray-auth-token"
    if token.exists():
        return  # started for an earlier row; its workers read this token as they start
    token.write_text(secrets.token_hex(32))
    # a benchmark stays on this machine: no usage stats sent to usage-stats.ray.io
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    import ray  # after the environment: Ray reads RAY_AUTH_MODE once

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), resources={"webui": max(RAY_CONFIGS.values())}, include_dashboard=False,
                 logging_level="WARNING")


def trial_count(trials: int) -> int:
    return 6 * math.ceil(trials / 6)


def run_ray_config(name: str, work: Path, args: argparse.Namespace, assets: dict, stages: tuple[str, ...]) -> dict:
    hosts = RAY_CONFIGS[name]
    start_ray(work)
    servers = start_fake_webuis(name, work, hosts, args)
    overrides = ["cluster.address=auto", f"webui.checkpoint_dir={servers[0].checkpoint_dir}",
                 *several_webuis(servers)]
    try:
        run = timed_run(name, work, trial_count(args.trials), assets, overrides, stages, hosts)
    finally:
        for server in servers:
            server.stop()
    return run.row(name, webuis=hosts, hosts_used=len({t["webui"] for t in run.trials}))


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
