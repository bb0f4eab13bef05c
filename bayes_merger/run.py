"""The trial loop: suggest → merge → load in the WebUI → render → score → record → register.

It only wires the parts together and records what they return; the checks live in ``inputs``, the
maths, the HTTP and the tensors in their own modules, and the files in ``run_folder``. Everything is
checked before the first merge, every finished trial is a durable line in the trial log, and a run
folder can be resumed until its budget is spent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayes_merger.config import Config
from bayes_merger.errors import BayesMergerError, StorageError, WebUIConnectionError
from bayes_merger.inputs import Inputs, check_inputs
from bayes_merger.merge.finite import check_finite
from bayes_merger.merge.merger import Merger
from bayes_merger.optimiser import Optimiser
from bayes_merger.progress import progress_bar
from bayes_merger.report import write_report
from bayes_merger.rescore import finalists
from bayes_merger.run_folder import (
    BEST_MERGE,
    Trial,
    best_extras,
    TrialLog,
    now,
    record_images,
    save_image,
    write_best,
    write_run_info,
)
from bayes_merger.run_folder.liveness import is_running, run_folders, running
from bayes_merger.run_folder.run_info import load_run_info
from bayes_merger.scoring import ImageContext, Scorer, build_scorer, score_trial
from bayes_merger.webui.client import WebUIClient
from bayes_merger.webui.merge_files import merge_run_id
from bayes_merger.webui.render_check import MergeNotRendered, RenderCheck

log = logging.getLogger(__name__)

# how many times a trial is tried when the WebUI drops out from under it
WEBUI_ATTEMPTS = 2


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
    inputs = check_inputs(cfg, run_dir)
    info = dict(inputs.info)

    with running(run_dir), WebUIClient(cfg.webui, run_id=inputs.run_id) as webui:
        webui.wait_until_ready()
        webui.check_checkpoint_dir()
        runs = {**run_folders(Path(cfg.run.dir)), **run_folders(run_dir.parent)}
        webui.remove_leftovers(lambda run_id: run_id in runs and not is_running(runs[run_id]))
        info["webui_model_before"] = _model_before(webui, info, runs)
        scorer = build_scorer(inputs.scorer)
        log.info("Loading the models to merge.")
        merger = Merger.from_inputs(inputs.merge, cfg.merge)
        optimiser = Optimiser(inputs.space, cfg.optimiser, cfg.run.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, info)

        trial_log = TrialLog(run_dir)
        for trial in trial_log.trials:
            if trial.ok and trial.score is not None:
                optimiser.register(trial.params, trial.score)
        if trial_log.trials:
            log.info("Resuming %s: %d of %d trials done.", run_dir, len(trial_log.trials), optimiser.budget)

        try:
            TrialLoop(inputs, merger, webui, scorer, optimiser, trial_log, stop or threading.Event()).run()
        finally:
            # at the end and on every stop: the WebUI gets its model back and our files go
            webui.hand_back(info["webui_model_before"])

        best = record_best(run_dir, trial_log, optimiser)
        if best is not None and cfg.save_best and info.get("best_saved_trial") != best.trial:
            _save_best_merge(inputs, merger, best)
            info["best_saved_trial"] = best.trial
        info["finished_at"] = now()
        write_run_info(run_dir, info)
        finalists(run_dir, inputs.scorer)  # scorer.finalists: the top trials again with a stronger scorer
        _refresh_report(run_dir)
        _log_summary(trial_log, best, run_dir)
        return RunResult(run_dir, len(trial_log.trials), optimiser.budget, best)


def _model_before(webui: WebUIClient, info: dict[str, Any], runs: dict[str, Path]) -> str:
    """The model the WebUI had before this run first started (a resumed run kept it in run.json)."""
    if info.get("webui_model_before") is not None:
        return str(info["webui_model_before"])
    current = webui.selected_model()
    owner = merge_run_id(current)
    if owner is None:
        return current
    # the WebUI still holds the merge of a run that died: that run knew what was there before it
    earlier = load_run_info(runs[owner]) if owner in runs else None
    return str((earlier or {}).get("webui_model_before") or "")


class TrialLoop:
    """Runs the remaining trials of a run, one at a time."""

    def __init__(self, inputs: Inputs, merger: Merger, webui: WebUIClient, scorer: Scorer, optimiser: Optimiser,
                 trial_log: TrialLog, stop: threading.Event) -> None:
        self.inputs = inputs
        self.cfg = inputs.config
        self.run_dir = inputs.run_dir
        self.merger = merger
        self.webui = webui
        self.scorer = scorer
        self.payloads = inputs.payloads
        self.space = inputs.space
        self.optimiser = optimiser
        self.trial_log = trial_log
        self.stop = stop
        self.render_check = RenderCheck()
        self.not_rendered: MergeNotRendered | None = None

    def run(self) -> None:
        done = len(self.trial_log.trials)
        budget = self.optimiser.budget
        failures = 0
        with progress_bar(total=budget, initial=done, desc="trials", unit="trial", dynamic_ncols=True) as bar:
            for index in range(done, budget):
                try:
                    trial = self._trial_surviving_the_webui(index)
                except StorageError as error:
                    raise RunStopped(f"{str(error).rstrip('.')}, then resume with resume={self.run_dir}.") from error
                self.trial_log.append(trial)
                if self.not_rendered is not None:
                    raise RunStopped(f"{self.not_rendered}, and resume with resume={self.run_dir}.")
                if trial.ok:
                    self.optimiser.register(trial.params, trial.score)
                    failures = 0
                else:
                    failures += 1
                best = record_best(self.run_dir, self.trial_log, self.optimiser)
                _refresh_report(self.run_dir)
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
                merged = self.merger.merge(weights)
                check_finite(merged, self.merger.architecture, self.merger.method.name)
            with _timed(timings, "load"):
                self.webui.load_checkpoint(
                    lambda path: self.merger.save(path, dtype=self.cfg.merge.dtype, prune=self.cfg.merge.prune),
                    trial=index,
                )
            with _timed(timings, "generate"):
                images, contexts = self._render(index, weights.alpha_string())
            self.render_check.check(index, weights.alpha + (weights.beta or ()),
                                    [(c.payload, c.index, c.seed, image) for image, c in zip(images, contexts)])
            with _timed(timings, "score"):
                scores = self.scorer.score(images, contexts)
                per_payload, score = score_trial(scores, [c.payload for c in contexts],
                                                 {p.name: p.score_weight for p in self.payloads}, self.cfg.scorer.combine)
            records = record_images(self.run_dir, contexts, scores)
        except (WebUIConnectionError, StorageError):
            raise
        except MergeNotRendered as error:
            self.not_rendered = error
            return self._failed(record, error, timings, clock, quiet=True)
        except BayesMergerError as error:
            return self._failed(record, error, timings, clock)
        timings["total"] = time.perf_counter() - clock
        log.info("trial %d: score %.4f (merge %.2fs, load %.2fs, generate %.2fs, score %.2fs)", index, score,
                 timings["merge"], timings["load"], timings["generate"], timings["score"])
        return Trial(status="ok", score=score, payload_scores=per_payload, images=tuple(records), timings=timings,
                     finished_at=now(), **record)

    def _failed(self, record: dict[str, Any], error: Exception, timings: dict[str, float], clock: float,
                quiet: bool = False) -> Trial:
        timings["total"] = time.perf_counter() - clock
        if not quiet:
            log.error("trial %d failed: %s", record["trial"], error)
        return Trial(status="failed", score=None, error=str(error), timings=timings, finished_at=now(), **record)

    def _render(self, index: int, alpha_string: str) -> tuple[list[Any], list[ImageContext]]:
        images: list[Any] = []
        contexts: list[ImageContext] = []
        for payload in self.payloads:
            generation = self.webui.txt2img(payload.request)
            prompt = str(payload.request.get("prompt", ""))  # wildcards were drawn when the payload was read
            for image_index, (image, seed) in enumerate(zip(generation.images, generation.seeds)):
                path = None
                if self.inputs.keep_images:
                    path = save_image(self.run_dir, image, trial=index, payload=payload.name, index=image_index,
                                      prompt=prompt, seed=seed, weights=alpha_string)
                images.append(image)
                contexts.append(ImageContext(payload=payload.name, index=image_index, seed=seed, path=path,
                                             prompt=prompt))
        return images, contexts


class _timed:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.stage] = time.perf_counter() - self.start


def record_best(run_dir: Path, trial_log: TrialLog, optimiser: Optimiser) -> Trial | None:
    """The trial the optimiser's model rates best, written to best.yaml with the raw best and the baseline."""
    ok = [t for t in trial_log.trials if t.ok and t.score is not None]
    index = optimiser.best([(t.params, t.score) for t in ok]) if ok else None
    best = ok[index] if index is not None else None
    write_best(run_dir, best, best_extras(trial_log.trials, best, optimiser.importance()))
    return best


def _save_best_merge(inputs: Inputs, merger: Merger, best: Trial) -> None:
    merger.merge(inputs.space.to_block_weights(best.params))
    path = merger.save(inputs.run_dir / BEST_MERGE, dtype=inputs.config.best_precision, prune=inputs.config.merge.prune,
                       metadata={"bayes_merger_score": f"{best.score:.6f}", "bayes_merger_trial": str(best.trial)})
    log.info("Saved the best merge (trial %d, score %.4f) to %s", best.trial, best.score, path)


def _refresh_report(run_dir: Path) -> None:
    try:
        write_report(run_dir)
    except Exception:  # noqa: BLE001 - a broken plot must never stop an overnight run
        log.exception("Could not rebuild the report of %s; the run goes on.", run_dir)


def _log_summary(trial_log: TrialLog, best: Trial | None, run_dir: Path) -> None:
    ok = sorted((t for t in trial_log.trials if t.ok), key=lambda t: -t.score)
    failed = sum(1 for t in trial_log.trials if not t.ok)
    lines = [f"{'rank':>4}  {'trial':>5}  {'score':>8}  weights (α)"]
    lines += [f"{rank:>4}  {t.trial:>5}  {t.score:>8.4f}  {','.join(f'{w:.2f}' for w in t.weights['alpha'].values())}"
              for rank, t in enumerate(ok[:5], start=1)]
    baseline = next((t for t in trial_log.trials if t.trial == 0 and t.ok), None)
    if best is not None:
        lines.append(f"Best (by the model's posterior mean): trial {best.trial}, score {best.score:.4f}"
                     + (f", {best.score - baseline.score:+.4f} over the baseline (trial 0, {baseline.score:.4f})"
                        if baseline is not None else ""))
    log.info("Run finished: %d trials (%d failed) in %s\n%s", len(trial_log.trials), failed, run_dir, "\n".join(lines))


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
