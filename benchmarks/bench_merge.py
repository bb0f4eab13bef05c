"""Merge engine benchmark: in-memory merge speed, save speed, trials against sd-meh, memory over 20 merges.

    python benchmarks/bench_merge.py               # real SD1 keys and shapes, fp16, 1.07 G parameters
    python benchmarks/bench_merge.py --scale 0.25  # every width / 4: about 1/16 of the bytes, a quick run

Builds three checkpoints (A, B and C for add_difference) with the real SD1 keys, then measures, in
one run, each phase in its own process so that its memory is its own:
- our per-merge time with resident inputs (weighted_sum, add_difference) and the bytes it moves per
  second as a ratio to a plain torch copy of the same tensors (the memory-bandwidth bound);
- our save time as a ratio to a plain write of the same tensors' bytes to the same folder, on disk
  and in /dev/shm (the disk bound): the median over repeats of each save over the plain write beside
  it in time (and the fastest of each, for a second view);
- our merge + save against ``sd_meh.merge.merge_models`` + its save (iterations of the original
  tool, which re-reads the models every time; the median of ``--sd-meh-repeats``) on the same files,
  in both folders;
- peak and current resident memory after 1 and after 20 merges.

Memory: at full scale the largest phase holds about 13 GB (sd-meh's merge, its inputs and its output
in /dev/shm); phases run one after another and every file in /dev/shm is deleted as soon as it has
been measured. The table and a final line of name=value pairs go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bayes_merger.config import MergeConfig  # noqa: E402
from bayes_merger.merge.arch import SD_BLOCKS  # noqa: E402
from bayes_merger.merge.checkpoint import is_kept_by_prune  # noqa: E402
from bayes_merger.merge.merger import Merger  # noqa: E402
from bayes_merger.merge.weights import BlockWeights  # noqa: E402
from bayes_merger.testing.checkpoint_keys import key_specs, parameter_count  # noqa: E402
from bayes_merger.testing.models import make_checkpoint  # noqa: E402

log = logging.getLogger("bench_merge")
GB = 1e9


# ------------------------------------------------------------------------------------------ helpers


def emit(text: str) -> None:
    """The benchmark's result (the table and the name=value line) is its output, not a log."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: KiB


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB


def drop_dirty_pages() -> None:
    """Flush what earlier writes left in the page cache, so each timed write starts from the same state."""
    os.sync()


def random_weights(rng: random.Random, beta: bool = False) -> BlockWeights:
    # strictly inside (0, 1): α = 0 or 1 would take weighted_sum's copy shortcut
    alpha = tuple(rng.uniform(0.05, 0.95) for _ in SD_BLOCKS)
    return BlockWeights(SD_BLOCKS, alpha, tuple(rng.uniform(0.05, 0.95) for _ in SD_BLOCKS) if beta else None)


def plain_write(path: Path, tensors: list[torch.Tensor]) -> int:
    """The disk bound: the same tensors' bytes written to one file, nothing else."""
    n = 0
    with path.open("wb") as f:
        for t in tensors:
            if t.numel():
                n += f.write(t.reshape(-1).view(torch.uint8).numpy())
    return n


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- phases


def phase_ours(args: argparse.Namespace) -> dict:
    """Load A, B [, C] once; time merges, a copy of the same bytes, saves and plain writes."""
    models = [Path(p) for p in args.models]
    method = "add_difference" if len(models) == 3 else "weighted_sum"
    config = MergeConfig(method=method, device="cpu", dtype="fp16", prune=True)
    result: dict = {"method": method}

    start = time.perf_counter()
    merger = Merger(models[0], models[1], models[2] if len(models) == 3 else None, config)
    result["load_s"] = time.perf_counter() - start
    steps = merger._steps  # the benchmark looks inside: it needs the exact tensors a merge touches
    merged_bytes = sum(s.out.numel() * s.out.element_size() for s in steps)
    result["merged_bytes"] = merged_bytes

    def inputs_of(s) -> list:
        # what a merge of this key reads: what was prepared for it (add_difference: a and b − c), else a, b [, c]
        tensors = s.prepared if s.prepared is not None else (s.a, s.b, s.c)
        return [t for t in tensors if isinstance(t, torch.Tensor)]

    read_bytes = sum(t.numel() * t.element_size() for s in steps for t in inputs_of(s))

    def copy_all() -> None:
        for s in steps:
            s.out.copy_(inputs_of(s)[0])  # model A's tensor (None in a prepared step: it is in s.prepared)

    # merges and copies alternate, so a change in the machine's load hits both alike
    rng = random.Random(0)
    times, copies = [], []
    for i in range(args.merges):
        times.append(timed(lambda: merger.merge(random_weights(rng))))
        if i == 0:
            result["rss_peak_1_gb"], result["rss_now_1_gb"] = peak_rss_gb(), current_rss_gb()
        copies.append(timed(copy_all))
    result["rss_peak_n_gb"], result["rss_now_n_gb"] = peak_rss_gb(), current_rss_gb()
    result["merges"] = args.merges
    result["first_merge_s"] = times[0]
    result["merge_s"] = statistics.median(times[1:])
    result["copy_s"] = statistics.median(copies[1:])
    # bytes moved: a copy reads and writes each tensor once; a merge writes each once and reads its inputs
    # (weighted_sum: a and b; add_difference: a and b − c where that was prepared, else a, b and c)
    merge_bw = (read_bytes + merged_bytes) / result["merge_s"]
    copy_bw = 2 * merged_bytes / result["copy_s"]
    result["merge_gbps"], result["copy_gbps"] = merge_bw / GB, copy_bw / GB
    result["bw_ratio"] = merge_bw / copy_bw

    if args.save_dirs:
        result["hash_s"] = timed(merger.recipe)  # sha256 of the models: once per run, cached
        merger.merge(random_weights(rng))
        saved = [t for k, t in merger._outputs.items() if is_kept_by_prune(k)]
        for folder in map(Path, args.save_dirs):
            ours, plain = [], []
            # untimed: the first 2 GB written after the models were loaded waits seconds for the kernel
            # to reclaim memory, whichever writer comes first; a run's trials write in the steady state
            warm = folder / f"bench-warm-{os.getpid()}.bin"
            plain_write(warm, saved)
            warm.unlink()
            for repeat in range(args.save_repeats):
                target = folder / f"bench-save-{os.getpid()}.safetensors"
                baseline = folder / f"bench-plain-{os.getpid()}.bin"
                # alternate which goes first, so neither always follows the other's writeback
                for which in ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours"):
                    drop_dirty_pages()
                    if which == "ours":
                        ours.append(timed(lambda: merger.save(target)))
                        size = target.stat().st_size
                        target.unlink()
                    else:
                        plain.append(timed(lambda: plain_write(baseline, saved)))
                        plain_size = baseline.stat().st_size
                        baseline.unlink()
            result[f"save:{folder}"] = {
                "save_s": statistics.median(ours),
                "plain_s": statistics.median(plain),
                # each save beside the plain write next to it in time: a disk's write-back and the
                # machine's other users vary by 5x between repeats here, far more than within a pair
                "paired_ratio": statistics.median(o / p for o, p in zip(ours, plain)),
                "min_ratio": min(ours) / min(plain),
                "bytes": size,
                "plain_bytes": plain_size,
            }
    return result


def phase_sd_meh(args: argparse.Namespace) -> dict:
    """Iterations of the original tool: sd-meh's merge_models (reads both models) and its save, each
    with new random weights; the medians of ``--sd-meh-repeats`` (the first is as warm as ours: the
    files are in the page cache and the imports done before the clock starts)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from sd_meh.merge import merge_models, save_model

    rng = random.Random(0)
    models = {"model_a": Path(args.models[0]), "model_b": Path(args.models[1])}
    out = Path(args.save_dirs[0]) / f"bench-sdmeh-{os.getpid()}"
    merges, saves = [], []
    for _ in range(args.sd_meh_repeats):
        weights = random_weights(rng)
        start = time.perf_counter()
        merged = merge_models(
            models,
            {"alpha": list(weights.alpha[1:])},
            {"alpha": weights.alpha[0]},
            "weighted_sum",
            precision=16,
            device="cpu",
        )
        merges.append(time.perf_counter() - start)
        drop_dirty_pages()
        saves.append(timed(lambda merged=merged: save_model(merged, out, "safetensors")))
        Path(f"{out}.safetensors").unlink()
        del merged
        gc.collect()
    return {"merge_s": statistics.median(merges), "save_s": statistics.median(saves), "rss_peak_gb": peak_rss_gb()}


def run_phase(name: str, models: list[Path], save_dirs: list[Path], args: argparse.Namespace) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--phase", name, "--merges", str(args.merges),
        "--save-repeats", str(args.save_repeats), "--sd-meh-repeats", str(args.sd_meh_repeats),
        "--models", *map(str, models),
    ]
    if save_dirs:
        command += ["--save-dirs", *map(str, save_dirs)]
    log.info("phase %s: %s", name, " ".join(m.name for m in models))
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="width factor of the SD1 shapes (1 = real)")
    parser.add_argument(
        "--disk-dir", type=Path, default=None, help="a folder on disk (default: a new one in the system's temp folder)"
    )
    parser.add_argument("--shm-dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--merges", type=int, default=20)
    parser.add_argument("--save-repeats", type=int, default=5)
    parser.add_argument("--skip-sd-meh", action="store_true")
    parser.add_argument("--sd-meh-repeats", type=int, default=3, help="sd-meh trials per folder (their median)")
    parser.add_argument("--phase", choices=["ours", "sd_meh"], help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--save-dirs", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merges < 2 or args.save_repeats < 1 or args.sd_meh_repeats < 1:
        parser.error("--merges must be at least 2 (the first merge is timed apart), --save-repeats and "
                     "--sd-meh-repeats at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    if args.phase:
        result = phase_ours(args) if args.phase == "ours" else phase_sd_meh(args)
        emit(json.dumps(result))
        return

    # never inside the repository: a commit made while the benchmark runs would pick up its files
    disk_root = args.disk_dir or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    disk = disk_root / "disk"
    shm = args.shm_dir / f"bench-merge-{os.getpid()}"
    disk.mkdir(parents=True, exist_ok=True)
    shm.mkdir(parents=True, exist_ok=True)
    try:
        report(args, disk, shm)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        if args.disk_dir is None:
            shutil.rmtree(disk_root, ignore_errors=True)
        else:
            shutil.rmtree(disk, ignore_errors=True)


def report(args: argparse.Namespace, disk: Path, shm: Path) -> None:
    start_load = os.getloadavg()[0]
    params = parameter_count({k: s for k, s in key_specs("sd1", scale=args.scale, scheduler=False).items()})
    log.info("building 3 SD1 checkpoints, scale %s: %.3f G parameters each, fp16", args.scale, params / GB)
    files = {}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        files[name] = make_checkpoint(disk / f"{name}.safetensors", "sd1", seed=seed, scale=args.scale)
        gc.collect()
    drop_dirty_pages()  # the phases should not compete with the writeback of the files just made

    ws = run_phase("ours", [files["a"], files["b"]], [disk, shm], args)
    ad = run_phase("ours", [files["a"], files["b"], files["c"]], [], args)

    meh_disk = meh_shm = None
    if not args.skip_sd_meh:
        meh_disk = run_phase("sd_meh", [files["a"], files["b"]], [disk], args)
        shm_files = [Path(shutil.copy(files[n], shm / f"{n}.safetensors")) for n in ("a", "b")]
        try:
            meh_shm = run_phase("sd_meh", shm_files, [shm], args)
        finally:
            for f in shm_files:
                f.unlink(missing_ok=True)

    save_disk, save_shm = ws[f"save:{disk}"], ws[f"save:{shm}"]
    ours_disk = ws["merge_s"] + save_disk["save_s"]
    ours_shm = ws["merge_s"] + save_shm["save_s"]
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str, target: str = "") -> None:
        rows.append((name, value, target))

    n = ws["merges"] - 1
    row("parameters per model", f"{params / GB:.3f} G, fp16; {ws['merged_bytes'] / GB:.2f} GB merged per trial")
    row("load A+B (once; disk, page-cached)", f"{ws['load_s']:.2f} s")
    row("sha256 of A+B (once, cached)", f"{ws['hash_s']:.2f} s")
    row(
        f"weighted_sum merge (median of {n})",
        f"{ws['merge_s']:.3f} s, {ws['merge_gbps']:.1f} GB/s (first merge {ws['first_merge_s']:.3f} s)",
    )
    row(f"plain torch copy, same tensors (median of {n})", f"{ws['copy_s']:.3f} s, {ws['copy_gbps']:.1f} GB/s")
    row("weighted_sum bandwidth / copy bandwidth", f"{ws['bw_ratio']:.2f}", _target(ws["bw_ratio"] >= 0.7, ">= 0.7"))
    row(f"add_difference merge (median of {n})", f"{ad['merge_s']:.3f} s, {ad['merge_gbps']:.1f} GB/s")
    row("add_difference bandwidth / copy bandwidth", f"{ad['bw_ratio']:.2f}", _target(ad["bw_ratio"] >= 0.7, ">= 0.7"))
    for label, save in (("disk", save_disk), ("/dev/shm", save_shm)):
        ratio = save["paired_ratio"]
        row(
            f"save, {label} (median of {args.save_repeats})",
            f"{save['save_s']:.2f} s vs plain write {save['plain_s']:.2f} s of {save['plain_bytes'] / GB:.2f} GB; "
            f"median of the paired ratios {ratio:.2f}x (fastest over fastest {save['min_ratio']:.2f}x)",
            _target(ratio <= 1.3, "<= 1.3x"),
        )
    speedups = {}
    for label, ours, meh in (("disk", ours_disk, meh_disk), ("/dev/shm", ours_shm, meh_shm)):
        if meh is None:
            continue
        theirs = meh["merge_s"] + meh["save_s"]
        speedups[label] = theirs / ours
        row(
            f"trial (merge + save), {label}",
            f"ours {ours:.2f} s vs sd-meh {theirs:.2f} s (median of {args.sd_meh_repeats}: merge {meh['merge_s']:.2f} "
            f"+ save {meh['save_s']:.2f}): "
            f"{speedups[label]:.1f}x faster",
            _target(speedups[label] >= 5, ">= 5x") if label == "/dev/shm" else "",
        )
        row(f"sd-meh peak RSS, {label}", f"{meh['rss_peak_gb']:.2f} GB")
    growth = ws["rss_peak_n_gb"] - ws["rss_peak_1_gb"]
    row("our peak RSS after 1 merge", f"{ws['rss_peak_1_gb']:.2f} GB (current {ws['rss_now_1_gb']:.2f} GB)")
    row(
        f"our peak RSS after {ws['merges']} merges",
        f"{ws['rss_peak_n_gb']:.2f} GB (current {ws['rss_now_n_gb']:.2f} GB), growth {growth * 1000:.0f} MB",
        _target(growth * 1000 < 50, "no growth"),
    )

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    emit(
        f"bench_merge: SD1, scale {args.scale}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1-minute load "
        f"average {start_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other users of the machine)"
    )
    for name, value, target in rows:
        emit(f"{name:<{width}}  {value:<{value_width}}  {target}")

    pairs = {
        "scale": args.scale,
        "params": params,
        "merge_ws_s": round(ws["merge_s"], 4),
        "merge_ad_s": round(ad["merge_s"], 4),
        "copy_s": round(ws["copy_s"], 4),
        "bw_ratio_ws": round(ws["bw_ratio"], 3),
        "bw_ratio_ad": round(ad["bw_ratio"], 3),
        "save_disk_s": round(save_disk["save_s"], 3),
        "plain_disk_s": round(save_disk["plain_s"], 3),
        "save_ratio_disk": round(save_disk["paired_ratio"], 3),
        "save_min_ratio_disk": round(save_disk["min_ratio"], 3),
        "save_shm_s": round(save_shm["save_s"], 3),
        "plain_shm_s": round(save_shm["plain_s"], 3),
        "save_ratio_shm": round(save_shm["paired_ratio"], 3),
        "save_min_ratio_shm": round(save_shm["min_ratio"], 3),
    }
    if meh_disk is not None:
        pairs |= {
            "sdmeh_disk_s": round(meh_disk["merge_s"] + meh_disk["save_s"], 3),
            "sdmeh_shm_s": round(meh_shm["merge_s"] + meh_shm["save_s"], 3),
            "speedup_disk": round(speedups["disk"], 2),
            "speedup_shm": round(speedups["/dev/shm"], 2),
            "sdmeh_rss_peak_gb": round(meh_disk["rss_peak_gb"], 2),
        }
    pairs |= {
        "rss_peak_1_gb": round(ws["rss_peak_1_gb"], 3),
        "merges": ws["merges"],
        "rss_peak_n_gb": round(ws["rss_peak_n_gb"], 3),
        "rss_growth_mb": round(growth * 1000, 1),
    }
    emit(" ".join(f"{k}={v}" for k, v in pairs.items()))


def _target(met: bool, text: str) -> str:
    return f"target {text}: {'met' if met else 'NOT met'}"


if __name__ == "__main__":
    main()
