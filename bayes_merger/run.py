"""The trial loop: suggest → merge → load in the WebUI → render → score → record → register.

It only wires the parts together and records what they return; the maths, the HTTP and the tensors
live in their own modules. Everything is checked before the first merge, every finished trial is a
durable line in the trial log, and a run folder can be resumed until its budget is spent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from bayes_merger import __version__
from bayes_merger.config import Config, ScorerConfig
from bayes_merger.errors import BayesMergerError, ConfigError, WebUIConnectionError
from bayes_merger.merge.methods import get_method
from bayes_merger.merge.merger import Inputs, Merger, inspect_inputs
from bayes_merger.optimiser import Optimiser, check_optimiser_config
from bayes_merger.report import write_report
from bayes_merger.scoring import ImageContext, Scorer, build_scorer
from bayes_merger.scoring.combine import objective, payload_scores
from bayes_merger.space import SearchSpace, build_space
from bayes_merger.trials import ImageRecord, Trial, TrialLog, now
from bayes_merger.webui.client import WebUIClient
from bayes_merger.webui.payloads import Payload, load_payloads

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
BEST_FILE = "best.yaml"
BEST_MERGE = "best.safetensors"
IMAGES_DIR = "images"
# how many times a trial is tried when the WebUI drops out from under it
WEBUI_ATTEMPTS = 2
# run.json fields that must match for a run folder to be resumed with a config
IDENTITY = ("model_a", "model_b", "model_c", "method", "seed", "init_points", "space", "payloads", "scorer")


class RunStopped(BayesMergerError):
    """The run stopped before its budget was spent; the run folder can be resumed."""

    exit_code = 6


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    trials: int
    budget: int
    best: Trial | None


class Interrupted(RunStopped):
    """The user (Ctrl-C) or the system (SIGTERM) asked the run to stop; it stopped between trials."""

    exit_code = 130


def run(cfg: Config, run_dir: Path, stop: threading.Event | None = None) -> RunResult:
    """Run (or resume) the optimisation in ``run_dir``; raises a BayesMergerError on bad input.

    Setting ``stop`` ends the run after the trial in flight, every finished trial saved.
    """
    run_dir = Path(run_dir)
    resuming = cfg.resume is not None
    _check_inputs(cfg)
    payloads = load_payloads(cfg.payloads, cfg.run.seed)
    # the files' headers tell the method, the architectures and so the search space: bad models
    # and bad bounds are refused before the WebUI is contacted or a tensor is read
    inputs = inspect_inputs(*_model_paths(cfg), cfg.merge)
    space = build_space(cfg.optimiser, inputs.architecture.blocks, inputs.method.needs_beta)
    if not resuming and (run_dir / RUN_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with resume={run_dir} or start a new one elsewhere.")
    previous = _read_run_file(run_dir) if resuming else None
    run_id = previous["run_id"] if previous else f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    meta = _run_meta(cfg, run_id, inputs, space, payloads)
    if previous:
        _check_resumable(previous, meta, run_dir)
        meta = {**previous, "n_iters": cfg.optimiser.n_iters}
        meta.pop("finished_at", None)

    with WebUIClient(cfg.webui, run_id=run_id) as webui:
        webui.wait_until_ready()
        webui.check_checkpoint_dir()
        scorer = build_scorer(_scorer_config(cfg, run_dir))
        log.info("Loading the models to merge.")
        merger = Merger(*_model_paths(cfg), cfg.merge)
        optimiser = Optimiser(space, cfg.optimiser, cfg.run.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_FILE, meta)

        trial_log = TrialLog(run_dir)
        for trial in trial_log.trials:
            if trial.ok and trial.score is not None:
                optimiser.register(trial.params, trial.score)
        if trial_log.trials:
            log.info("Resuming %s: %d of %d trials done.", run_dir, len(trial_log.trials), optimiser.budget)

        loop = TrialLoop(cfg, run_dir, merger, webui, scorer, payloads, space, optimiser, trial_log,
                         stop or threading.Event())
        loop.run()

        best = trial_log.best()
        if best is not None and cfg.save_best and meta.get("best_saved_trial") != best.trial:
            _save_best_merge(cfg, run_dir, merger, space, best)
            meta["best_saved_trial"] = best.trial
        meta["finished_at"] = now()
        _write_json(run_dir / RUN_FILE, meta)
        _refresh_report(run_dir)
        _log_summary(trial_log, run_dir)
        return RunResult(run_dir, len(trial_log.trials), optimiser.budget, best)


class TrialLoop:
    """Runs the remaining trials of a run, one at a time."""

    def __init__(self, cfg: Config, run_dir: Path, merger: Merger, webui: WebUIClient, scorer: Scorer,
                 payloads: list[Payload], space: SearchSpace, optimiser: Optimiser, trial_log: TrialLog,
                 stop: threading.Event) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.merger = merger
        self.webui = webui
        self.scorer = scorer
        self.payloads = payloads
        self.space = space
        self.optimiser = optimiser
        self.trial_log = trial_log
        self.stop = stop

    def run(self) -> None:
        done = len(self.trial_log.trials)
        budget = self.optimiser.budget
        failures = 0
        with tqdm(total=budget, initial=done, desc="trials", unit="trial", dynamic_ncols=True) as bar:
            for index in range(done, budget):
                trial = self._trial_surviving_the_webui(index)
                self.trial_log.append(trial)
                if trial.ok:
                    self.optimiser.register(trial.params, trial.score)
                    failures = 0
                else:
                    failures += 1
                _write_best(self.run_dir, self.trial_log.best())
                _refresh_report(self.run_dir)
                best = self.trial_log.best()
                bar.set_postfix(score=_fmt(trial.score), best=_fmt(best.score if best else None))
                bar.update(1)
                if self.stop.is_set() and index + 1 < budget:
                    raise Interrupted(f"Stopped after {index + 1} of {budget} trials, every one saved; "
                                      f"resume with resume={self.run_dir}")
                if failures >= self.cfg.run.max_consecutive_failures:
                    raise RunStopped(
                        f"{failures} trials in a row failed (last: {trial.error}); stopping. "
                        f"Fix the cause and resume with resume={self.run_dir}."
                    )

    def _trial_surviving_the_webui(self, index: int) -> Trial:
        """A lost WebUI is not the merge's fault: wait for it and redo the trial, or stop resumably."""
        lost: WebUIConnectionError | None = None
        for attempt in range(1, WEBUI_ATTEMPTS + 1):
            try:
                return self._trial(index)
            except WebUIConnectionError as error:
                lost = error
                log.warning("trial %d: %s Waiting for the WebUI to answer again.", index, error)
                try:
                    self.webui.wait_until_ready()
                except WebUIConnectionError:
                    break
                if attempt == WEBUI_ATTEMPTS:
                    break
        raise RunStopped(f"Lost the WebUI during trial {index} ({lost}); the {index} finished trials are saved. "
                         f"Resume with resume={self.run_dir}")

    def _trial(self, index: int) -> Trial:
        started_at = now()
        timings: dict[str, float] = {}
        with _timed(timings, "suggest"):
            params = self.optimiser.suggest(index)
        weights = self.space.to_block_weights(params)
        record = dict(
            trial=index, phase=self.optimiser.phase(index), params=params, weights=weights.as_dict(),
            alpha_string=weights.alpha_string(), beta_string=weights.beta_string() if weights.beta else None,
            started_at=started_at,
        )
        clock = time.perf_counter() - timings["suggest"]
        try:
            with _timed(timings, "merge"):
                self.merger.merge(weights)
            with _timed(timings, "load"):
                self.webui.load_checkpoint(
                    lambda path: self.merger.save(path, dtype=self.cfg.merge.dtype, prune=self.cfg.merge.prune),
                    trial=index,
                )
            with _timed(timings, "generate"):
                images, contexts = self._render(index, weights.alpha_string())
            with _timed(timings, "score"):
                scores = self.scorer.score([image for image, _ in images], contexts)
                per_image: dict[str, list[float]] = {}
                for context, value in zip(contexts, scores):
                    per_image.setdefault(context.payload, []).append(value)
                per_payload = payload_scores(per_image)
                score = objective(per_payload, {p.name: p.score_weight for p in self.payloads}, self.cfg.scorer.combine)
            records = self._name_images(index, contexts, scores)
        except WebUIConnectionError:
            raise
        except BayesMergerError as error:
            return self._failed(record, error, timings, clock)
        timings["total"] = time.perf_counter() - clock
        log.info("trial %d: score %.4f (merge %.2fs, load %.2fs, generate %.2fs, score %.2fs)", index, score,
                 timings["merge"], timings["load"], timings["generate"], timings["score"])
        return Trial(status="ok", score=score, payload_scores=per_payload, images=tuple(records), timings=timings,
                     finished_at=now(), **record)

    def _failed(self, record: dict[str, Any], error: Exception, timings: dict[str, float], clock: float) -> Trial:
        timings["total"] = time.perf_counter() - clock
        log.error("trial %d failed: %s", record["trial"], error)
        return Trial(status="failed", score=None, error=str(error), timings=timings, finished_at=now(), **record)

    def _render(self, index: int, alpha_string: str) -> tuple[list[tuple[Any, Path | None]], list[ImageContext]]:
        images: list[tuple[Any, Path | None]] = []
        contexts: list[ImageContext] = []
        keep = self.cfg.save_images or _manual(self.cfg)
        for payload in self.payloads:
            generation = self.webui.txt2img(payload.request)
            for image_index, (image, seed) in enumerate(zip(generation.images, generation.seeds)):
                path = None
                if keep:
                    path = self.run_dir / IMAGES_DIR / f"t{index:04d}-{_slug(payload.name)}-{image_index:02d}.png"
                    path.parent.mkdir(exist_ok=True)
                    info = PngInfo()
                    info.add_text("prompt", str(payload.request.get("prompt", "")))
                    info.add_text("seed", str(seed))
                    info.add_text("weights", alpha_string)
                    image.save(path, pnginfo=info)
                images.append((image, path))
                contexts.append(ImageContext(payload=payload.name, index=image_index, seed=seed, path=path))
        return images, contexts

    def _name_images(self, index: int, contexts: list[ImageContext], scores: list[float]) -> list[ImageRecord]:
        records = []
        for context, value in zip(contexts, scores):
            relative = None
            if context.path is not None:
                # the score goes into the name once it is known, so a folder of images sorts by it
                final = context.path.with_name(f"{context.path.stem}-{value:.3f}.png")
                context.path.replace(final)
                relative = final.relative_to(self.run_dir).as_posix()
            records.append(ImageRecord(payload=context.payload, index=context.index, seed=context.seed,
                                       score=float(value), path=relative))
        return records


class _timed:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.stage] = time.perf_counter() - self.start


def _model_paths(cfg: Config) -> tuple[Path, Path, Path | None]:
    return _path(cfg.model_a), _path(cfg.model_b), _path(cfg.model_c) if cfg.model_c else None


def _check_inputs(cfg: Config) -> None:
    """The cheap checks, before anything is loaded or contacted."""
    method = get_method(cfg.merge.method)
    check_optimiser_config(cfg.optimiser)
    for key in ("model_a", "model_b", "model_c"):
        value = getattr(cfg, key)
        if value is None:
            continue
        path = _path(value)
        if not path.exists():
            raise ConfigError(f"{key}: {path} does not exist.")
        if not path.is_file():
            raise ConfigError(f"{key}: {path} is a folder, not a checkpoint file.")
    if method.needs_c and not cfg.model_c:
        raise ConfigError(f"Merge method '{method.name}' needs a third model: set model_c.")
    if cfg.best_format != "safetensors":
        raise ConfigError(f"best_format '{cfg.best_format}' is not supported: the best merge is saved as safetensors, "
                          "which every WebUI reads and which cannot carry code.")
    if str(cfg.best_precision) not in ("16", "32", "fp16", "fp32", "bf16"):
        raise ConfigError(f"best_precision must be 16, 32 or bf16, got '{cfg.best_precision}'.")
    if cfg.run.max_consecutive_failures < 1:
        raise ConfigError("run.max_consecutive_failures must be at least 1.")
    if cfg.resume is not None and not (_path(cfg.resume) / RUN_FILE).is_file():
        raise ConfigError(f"resume={cfg.resume} is not a run folder (no {RUN_FILE} in it).")


def _manual(cfg: Config) -> bool:
    return cfg.scorer.name == "manual" or (cfg.scorer.name == "ensemble" and "manual" in cfg.scorer.ensemble)


def _path(value: str) -> Path:
    return Path(os.path.expanduser(str(value))).resolve()


def _scorer_config(cfg: Config, run_dir: Path) -> ScorerConfig:
    if _manual(cfg) and not cfg.scorer.manual_ratings:
        # manual ratings live with the run, so a resumed run finds them
        return replace(cfg.scorer, manual_ratings=str(run_dir / "manual-ratings.json"))
    return cfg.scorer


def _run_meta(cfg: Config, run_id: str, inputs: Inputs, space: SearchSpace, payloads: list[Payload]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "version": __version__,
        "started_at": now(),
        "model_a": str(_path(cfg.model_a)),
        "model_b": str(_path(cfg.model_b)),
        "model_c": str(_path(cfg.model_c)) if cfg.model_c else None,
        "method": inputs.method.name,
        "architecture": inputs.architecture.label,
        "arch_name": inputs.architecture.name,
        "blocks": list(inputs.architecture.blocks),
        "uses_beta": space.uses_beta,
        "init_points": cfg.optimiser.init_points,
        "n_iters": cfg.optimiser.n_iters,
        "seed": cfg.run.seed,
        "scorer": cfg.scorer.name,
        "payloads": [p.name for p in payloads],
        "space": {"parameters": [asdict(p) for p in space.parameters], "frozen": dict(space.frozen)},
    }


def _read_run_file(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot resume {run_dir}: its {RUN_FILE} is unreadable ({error}).") from error


def _check_resumable(previous: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    normalise = lambda value: json.loads(json.dumps(value))  # noqa: E731 - tuples vs lists
    for key in IDENTITY:
        if key in previous and normalise(previous[key]) != normalise(current[key]):
            raise ConfigError(
                f"Cannot resume {run_dir}: '{key}' differs from the run's ({previous[key]!r} there, {current[key]!r} now). "
                "Resume with the run's own config: --config " + str(run_dir / "config.yaml")
            )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(data, indent=2))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_best(run_dir: Path, best: Trial | None) -> None:
    if best is None:
        return
    data = {
        "score": best.score,
        "trial": best.trial,
        "weights": best.weights,
        "alpha": best.alpha_string,
        "beta": best.beta_string,
        "params": best.params,
        "payload_scores": best.payload_scores,
    }
    _atomic_write(run_dir / BEST_FILE, OmegaConf.to_yaml(OmegaConf.create(data)))


def _save_best_merge(cfg: Config, run_dir: Path, merger: Merger, space: SearchSpace, best: Trial) -> None:
    weights = space.to_block_weights(best.params)
    merger.merge(weights)
    dtype = {"16": "fp16", "32": "fp32"}.get(str(cfg.best_precision), str(cfg.best_precision))
    path = merger.save(run_dir / BEST_MERGE, dtype=dtype, prune=cfg.merge.prune,
                       metadata={"bayes_merger_score": f"{best.score:.6f}", "bayes_merger_trial": str(best.trial)})
    log.info("Saved the best merge (trial %d, score %.4f) to %s", best.trial, best.score, path)


def _refresh_report(run_dir: Path) -> None:
    try:
        write_report(run_dir)
    except Exception:  # noqa: BLE001 - a broken plot must never stop an overnight run
        log.exception("Could not rebuild the report of %s; the run goes on.", run_dir)


def _log_summary(trial_log: TrialLog, run_dir: Path) -> None:
    ok = sorted((t for t in trial_log.trials if t.ok), key=lambda t: -t.score)
    failed = sum(1 for t in trial_log.trials if not t.ok)
    lines = [f"{'rank':>4}  {'trial':>5}  {'score':>8}  weights (α)"]
    lines += [f"{rank:>4}  {t.trial:>5}  {t.score:>8.4f}  {','.join(f'{w:.2f}' for w in t.weights['alpha'].values())}"
              for rank, t in enumerate(ok[:5], start=1)]
    log.info("Run finished: %d trials (%d failed) in %s\n%s", len(trial_log.trials), failed, run_dir, "\n".join(lines))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "payload"


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
