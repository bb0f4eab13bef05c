"""What every row of bench_trial.py shares: fake A1111 WebUIs with set switch and render times, one
run of ``bayes-merger`` timed trial by trial, and the one rule that turns the times into trials per hour."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bayes_merger.cli import main as cli_main
from bayes_merger.run import TrialLoop
from bayes_merger.testing.fake_webui import FakeWebUI

REPO = Path(__file__).resolve().parents[1]
PAYLOADS = "defaults: {steps: 1, width: 64, height: 64}\npayloads:\n  - name: one\n    prompt: a fox\n"


def trials_per_hour(finished: list[float], in_parallel: int) -> float:
    """Steady-state trials per hour of a loop rendering on ``in_parallel`` WebUIs.

    Counted from the end of the first round (the ``in_parallel``-th trial finished) to the last
    finished trial: the first round carries the models' load and the unpipelined first merge, and with
    several WebUIs finishing about together, a count from the first finished trial would credit the
    rest of that round without its time (17 % too many for two WebUIs in lockstep over 8 trials).
    """
    times = sorted(finished)
    first = min(max(in_parallel, 1), len(times)) - 1
    span = times[-1] - times[first] if times else 0.0
    return 3600.0 * (len(times) - 1 - first) / span if span > 0 else float("nan")


def start_fake_webuis(name: str, work: Path, count: int, args: argparse.Namespace) -> list[FakeWebUI]:
    """``count`` fake A1111 WebUIs, each with its own checkpoint folder under ``work``."""
    servers = []
    for n in range(count):
        folder = work / f"{name}-webui{n}"
        folder.mkdir(parents=True)
        server = FakeWebUI(folder).start()
        # the switch and the render take these times in all, the fake's own work (reading and hashing
        # the file, as A1111 does) included; GET /options (the client's confirmation) is not a switch
        server.delay("/sdapi/v1/options", args.switch, "POST", in_all=True)
        server.delay("/sdapi/v1/txt2img", args.render, "POST", in_all=True)
        servers.append(server)
    return servers


def several_webuis(servers: list[FakeWebUI]) -> list[str]:
    """The overrides that name every one of ``servers`` (``webui.urls``, ``webui.checkpoint_dirs``)."""
    return [f"webui.urls=[{','.join(s.url for s in servers)}]",
            f"webui.checkpoint_dirs=[{','.join(str(s.checkpoint_dir) for s in servers)}]"]


@dataclass
class TimedRun:
    run_dir: Path
    trials: list[dict]
    medians: dict[str, float]  # per stage, from the trial log's timings
    per_hour: float

    def row(self, name: str, **extra) -> dict:
        """The run as a row of bench_trial's table; ``extra``: the row's own columns."""
        return {"name": name, "trials": len(self.trials), "per_hour": self.per_hour, "medians": self.medians,
                "ok": sum(t["status"] == "ok" for t in self.trials), **extra}


def timed_run(name: str, work: Path, trials: int, assets: dict, overrides: list[str], stages: tuple[str, ...],
              in_parallel: int) -> TimedRun:
    """Run ``bayes-merger`` (the demo's config, one payload, ``trials`` trials) with ``overrides``,
    noting when each trial finished."""
    finished: list[float] = []
    original = TrialLoop.record

    def record(self, trial):
        finished.append(time.perf_counter())
        return original(self, trial)

    payloads = work / f"{name}-payloads.yaml"
    payloads.write_text(PAYLOADS)
    argv = [
        "--config", str(REPO / "conf" / "demo.yaml"), "demo=false", f"run.dir={work / name / 'runs'}",
        f"payloads.dir={payloads}", f"payloads.wildcards_dir={REPO / 'payloads' / 'wildcards'}",
        f"optimiser.init_points={min(3, trials)}", f"optimiser.n_iters={max(trials - 3, 0)}",
        "save_best=false", "save_images=false", "hydra/job_logging=none", "hydra/hydra_logging=none",
        *[f"{key}={value}" for key, value in assets.items()], *overrides,
    ]
    TrialLoop.record = record
    try:
        cli_main(argv)
    except SystemExit as stop:
        if stop.code:
            raise RuntimeError(f"{name}: bayes-merger exited {stop.code}") from None
    finally:
        TrialLoop.record = original
    run_dir = next(p for p in (work / name / "runs").iterdir() if p.is_dir())
    logged = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    medians = {stage: statistics.median(t["timings"].get(stage, 0.0) for t in logged) for stage in stages}
    return TimedRun(run_dir, logged, medians, trials_per_hour(finished, in_parallel))
