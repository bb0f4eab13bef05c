"""The trial loop: suggest → merge → load in the WebUI → render → score → record → observe.

It only wires the parts together and records what they return; the checks live in ``inputs``, the
maths, the HTTP and the tensors in their own modules, and the files in ``run_folder``. Everything is
checked before the first merge, every finished trial is a durable line in the trial log, and a run
folder can be resumed until its budget is spent.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from bayes_merger.config import Config, MergeConfig, ScorerConfig
from bayes_merger.executor import Executor, LostAllWebUIs, Slot
from bayes_merger.errors import (
    BayesMergerError,
    BrokenMerge,
    NOT_THE_TRIALS_FAULT,
    Interrupted,
    LocalOutOfMemory,
    RatingsEnded,
    RunStopped,
    StorageError,
    WebUIsLost,
)
from bayes_merger.devices import out_of_memory_stops
from bayes_merger.files import remove_dead_temp_files, storage_errors
from bayes_merger.inputs import Inputs, check_inputs
from bayes_merger.merge.finite import check_finite
from bayes_merger.merge.merger import Merger
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.optimiser import BY_POSTERIOR_MEAN, BY_SCORE, Optimiser
from bayes_merger.progress import progress_bar
from bayes_merger.report import write_report
from bayes_merger.rescore import finalists
from bayes_merger.run_folder import (
    BEST_MERGE,
    FAILED_AT_START_FILE,
    NOT_RENDERED_FILE,
    STOPPED_BY,
    WEBUI_LOST,
    Trial,
    best_extras,
    TrialLog,
    load_run_info,
    note_lost_webui,
    now,
    observations,
    ranked,
    record_images,
    remove_trial_images,
    resume_command,
    save_image,
    write_best,
    write_run_info,
)
from bayes_merger.run_folder.liveness import run_folders, running
from bayes_merger.schedule import Schedule
from bayes_merger.scoring import ImageContext, Scorer, build_scorer, score_trial
from bayes_merger.webui.render_check import MergeNotRendered, RenderCheck
from bayes_merger.webuis import (
    open_webui_renderer,
    prepare_webuis,
    settle_comfyui_routes,
    tidy_after_a_dead_session,
    tidy_earlier_sessions,
    webui_configs,
)

log = logging.getLogger(__name__)

# what to change when the merge's models do not fit beside the WebUI on its GPU
MERGE_MEMORY_ADVICE = "set merge.device=cpu, or free memory there"


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    trials: int
    budget: int
    best: Trial | None


def run(cfg: Config, run_dir: Path, stop: threading.Event | None = None,
        accepted: Callable[[], object] | None = None, begun: Callable[[], object] | None = None) -> RunResult:
    """Run (or resume) the optimisation in ``run_dir``; raises a BayesMergerError on bad input.

    Setting ``stop`` ends the run after the trials in flight, every finished trial saved. ``accepted`` is
    called once the inputs are checked and the folder is this run's (the CLI saves the config then, so a
    refused start or resume leaves no config file behind); ``begun`` just before the first merge goes to a
    WebUI (the CLI stops at once on a Ctrl-C before it: nothing is in flight, no WebUI holds our model).
    """
    run_dir = Path(run_dir)
    inputs = check_inputs(cfg, run_dir)
    info = dict(inputs.info)

    with running(run_dir), ExitStack() as stack:
        if accepted is not None:
            accepted()
        if not inputs.resuming:
            # the run id goes to the folder before any file of the run reaches a WebUI's (the folder probe): a
            # start killed before its run.json named a run no folder knew, and its probe stayed for good
            write_run_info(run_dir, info)
        remove_dead_temp_files(run_dir)  # a best merge cut off by kill -9 is the size of a checkpoint
        runs = run_folders(Path(cfg.run.dir), run_dir.parent)
        optimiser = Optimiser(inputs.space, cfg.optimiser, cfg.run.seed)
        trial_log = TrialLog(run_dir)  # the executor tells the optimiser what each suggestion may know
        complete = len({t.trial for t in trial_log.trials if t.trial < optimiser.budget}) == optimiser.budget
        try:
            slots, before, scorer, merger = _open_trial_parts(inputs, info, runs, stack, complete)
        except LocalOutOfMemory as error:
            raise _stop_resumably(error, run_dir) from error
        if not complete:
            _note_trials_at_once(info, len(slots) * inputs.trials_per_webui, run_dir)
        else:
            _keep_budget_reached(info, len(trial_log.trials), cfg.optimiser.init_points, run_dir)
        info.pop(STOPPED_BY, None)  # the last session's reason, if it stopped early
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, info)

        if complete:
            log.info("%s has all %d trials already: the best merge, finalists and report only.", run_dir,
                     len(trial_log.trials))
        else:
            if trial_log.trials:
                log.info("Resuming %s: %d of %d trials done.", run_dir, len(trial_log.trials), optimiser.budget)
            loop = TrialLoop(inputs, merger, slots, scorer, optimiser, trial_log, stop or threading.Event())
            if begun is not None:
                begun()
            try:
                try:
                    settle_comfyui_routes(slots, inputs, info, loop.staged)
                    loop.run()
                except WebUIsLost:
                    # why it stopped, for the overnight runner: it restarts a WebUI it manages then, even one
                    # whose API still answers (hung in a generation)
                    info[STOPPED_BY] = WEBUI_LOST
                    write_run_info(run_dir, info)
                    raise
                finally:
                    hand_back(slots, before)
            except RunStopped:
                _keep_best_on_stop(inputs, info, merger, trial_log, optimiser)
                raise

        try:
            best = _keep_best(inputs, info, merger, trial_log, optimiser)
            _keep_budget_reached(info, len(trial_log.trials), cfg.optimiser.init_points, run_dir)
            write_run_info(run_dir, info)
        except (StorageError, LocalOutOfMemory) as error:  # every trial is logged: a resume only writes these again
            raise _stop_resumably(error, run_dir) from error
        # scorer.finalists: the top trials again with a stronger scorer, whose models load beside none of
        # the run's (the models to merge may be on the GPU with the WebUI's)
        loop = merger = scorer = None
        gc.collect()
        _finish(inputs, info, trial_log, best, optimiser)
        return RunResult(run_dir, len(trial_log.trials), cfg.optimiser.init_points + info["n_iters"], best)


def _open_trial_parts(inputs: Inputs, info: dict[str, Any], runs: Mapping[str, Path], stack: ExitStack, complete: bool
                    ) -> tuple[list[Slot], dict[str, str], Scorer | None, Merger | None]:
    """The run's WebUIs (slots, each one's model of before), scorer and models: on this machine, on the hosts
    of a Ray cluster (which load the models and score there), or none for a run with every trial done."""
    cfg = inputs.config
    if inputs.resuming and cfg.cluster.address is None:
        tidy_earlier_sessions(cfg, inputs.run_dir, inputs.run_id, info)
    if complete:
        # nothing to render, so no WebUI, scorer or model: a resume for another best_precision, the
        # finalists or the report works with the WebUI off
        ended = bool((load_run_info(inputs.run_dir) or {}).get("finished_at"))
        if inputs.resuming and not ended and cfg.cluster.address is None:  # killed after its last trial
            tidy_after_a_dead_session(cfg, inputs.run_id, info)
        return [], {}, None, None
    if cfg.cluster.address is not None:
        from bayes_merger.cluster.hosts import open_hosts

        return stack.enter_context(open_hosts(inputs, runs, info)), {}, None, None
    slots = [Slot(name=url, webui=stack.enter_context(open_webui_renderer(inputs, webui_cfg, run_id)),
                  checkpoint_dir=Path(webui_cfg.checkpoint_dir).expanduser())
             for url, webui_cfg, run_id in webui_configs(cfg, inputs.run_id)]
    before = prepare_webuis(slots, inputs, info, runs)
    with out_of_memory_stops("Loading the scorer", "set scorer.device=cpu, or free memory there"):
        scorer = build_scorer(inputs.scorer)
    log.info("Loading the models to merge.")
    with out_of_memory_stops("Loading the models to merge", MERGE_MEMORY_ADVICE):
        return slots, before, scorer, Merger.from_inputs(inputs.merge, cfg.merge)


def _finish(inputs: Inputs, info: dict[str, Any], trial_log: TrialLog, best: Trial | None,
            optimiser: Optimiser) -> None:
    """Every trial done, the best kept: the finalists, run.json finished, the report and the summary."""
    run_dir = inputs.run_dir
    finalists(run_dir, on_this_machine(inputs.scorer, inputs.config))
    try:  # finished once the finalists are scored too: a run stopped before, resumed, scores them
        info["finished_at"] = now()
        write_run_info(run_dir, info)
    except StorageError as error:
        raise _stop_resumably(error, run_dir) from error
    _refresh_report(run_dir, live=False)
    _log_summary(trial_log, best, optimiser.chosen_by(), run_dir)


@dataclass
class Prepared:
    """A trial between its two halves: its weights and record, and its merge staged beside the WebUI."""

    weights: BlockWeights
    record: dict[str, Any]
    staged: Path | None
    clock: float


class TrialLoop:
    """Runs the remaining trials of a run on its WebUIs (``executor.Executor``): each trial's two
    halves (``prepare``: merge and stage; ``render``: load, render, score) and what follows a
    finished trial (``record``: the trial log, best.yaml, the report, the progress bar, stops)."""

    def __init__(self, inputs: Inputs, merger: Merger, slots: list[Slot], scorer: Scorer, optimiser: Optimiser,
                 trial_log: TrialLog, stop: threading.Event) -> None:
        self.inputs = inputs
        self.cfg = inputs.config
        self.run_dir = inputs.run_dir
        self.merger = merger
        self.slots = slots
        self.scorer = scorer
        self.payloads = inputs.payloads
        self.space = inputs.space
        self.optimiser = optimiser
        self.trial_log = trial_log
        self.stop = stop
        self.render_checks = {slot.name: RenderCheck() for slot in slots}
        self.not_rendered: MergeNotRendered | None = None
        self._scoring = threading.Lock()
        self._failures: dict[str | None, int] = {}  # consecutive failed trials by WebUI
        self._bar: Any = None
        self._schedule: Schedule | None = None  # the executor's, while it runs

    def run(self) -> None:
        finished = {t.trial: t for t in self.trial_log.trials}
        budget = self.optimiser.budget
        executor = Executor(self, self.optimiser, self.slots, finished, budget, self.record, self.stop,
                            self.inputs.trials_per_webui)
        self._schedule = executor.schedule
        with progress_bar(total=budget, initial=len(finished), desc="trials", unit="trial", dynamic_ncols=True) as bar:
            self._bar = bar
            try:
                executor.run()
            except LostAllWebUIs as error:
                done = len(self.trial_log.trials)
                raise WebUIsLost(f"{error}; the {done} finished trials are saved. Resume with: {resume_command(self.run_dir)}"
                                 ) from error
            except (StorageError, RatingsEnded, LocalOutOfMemory) as error:
                raise _stop_resumably(error, self.run_dir) from error
            finally:
                if self._done(budget) < budget:  # stopped: the page must not say "in progress" for ever
                    _refresh_report(self.run_dir, live=False)
        done = self._done(budget)
        if done < budget:
            raise Interrupted(f"Stopped after {done} of {budget} trials, every one saved; "
                              f"resume with: {resume_command(self.run_dir)}")

    def _done(self, budget: int) -> int:
        """How many of trials 0 … budget − 1 are in the trial log (not its length: trials finished out of
        order beyond a budget since lowered would hide a missing one)."""
        return len({t.trial for t in self.trial_log.trials if t.trial < budget})

    def record(self, trial: Trial) -> None:
        """A finished trial: into the trial log, best.yaml and the report; a stop when the run must."""
        proof = self.not_rendered
        if proof is None or not self._built_on_unrendered(trial.trial, proof):
            self.trial_log.append(trial)
        if proof is not None:
            # the pictures of those trials were all of one model, whichever it was: none of their scores
            # is kept, and a resume renders them again; nor are the trials suggested knowing one of those
            # scores (another WebUI's, with several), so the resume goes on as a run whose WebUIs never stuck
            retracted = set(proof.trials) | {t.trial for t in self.trial_log.trials
                                             if self._built_on_unrendered(t.trial, proof)}
            self.trial_log.retract(retracted)
            record_best(self.run_dir, self.trial_log, self.optimiser)
            redone = ", ".join(str(t) for t in sorted(retracted))
            raise RunStopped(f"{proof}; then resume, which renders trials {redone} again (the records of those "
                             f"already logged are set aside in {NOT_RENDERED_FILE}): {resume_command(self.run_dir)}")
        failures = self._count_failure(trial)
        best = record_best(self.run_dir, self.trial_log, self.optimiser)
        _refresh_report(self.run_dir, live=True)
        self._bar.set_postfix(score=_fmt(trial.score), best=_fmt(best.score if best else None))
        self._bar.update(1)
        if failures >= self.cfg.run.max_consecutive_failures:
            raise self._stop_for_failures(trial, failures)

    def _built_on_unrendered(self, index: int, proof: MergeNotRendered) -> bool:
        """Whether trial ``index`` is one of ``proof``'s, or was suggested knowing one of their scores (the
        start point and the Latin hypercube know none)."""
        assert self._schedule is not None
        return index in proof.trials or (self.optimiser.phase(index) == "optimise"
                                         and min(proof.trials) in self._schedule.known_before(index))

    def _count_failure(self, trial: Trial) -> int:
        """The failed trials in a row on ``trial``'s WebUI, ``trial`` counted.

        Counted by WebUI: one that fails every trial is not excused by another's successes. A broken merge
        once a trial has been scored is its weights' fault, not the set-up's: the optimiser learns to avoid
        those weights, and a run stopped for it would lose the night (bench_optimiser, broken26)."""
        failures = self._failures.get(trial.webui, 0)
        if trial.ok:
            failures = 0
        elif not (trial.broken and any(t.ok for t in self.trial_log.trials)):
            failures += 1
        self._failures[trial.webui] = failures
        return failures

    def _stop_for_failures(self, trial: Trial, failures: int) -> RunStopped:
        """The stop after ``failures`` failed trials in a row, the last ``trial``. Where nothing was ever scored,
        the set-up failed them, not their weights (a broken merge is the weights' fault, and would only fail
        again): they are set aside for the resume to run again, so the baseline (trial 0, the even merge) is
        not lost for good, nor the budget spent on the fault."""
        on = f" on {trial.webui}" if trial.webui else ""
        again = ""
        if not any(t.ok for t in self.trial_log.trials):
            redo = sorted(t.trial for t in self.trial_log.trials if not t.broken)
            self.trial_log.retract(redo, FAILED_AT_START_FILE)
            record_best(self.run_dir, self.trial_log, self.optimiser)
            again = (f", which runs trials {', '.join(map(str, redo))} again (their records are set aside in "
                     f"{FAILED_AT_START_FILE})") if redo else ""
        return RunStopped(f"{failures} trials in a row failed{on} (last: {trial.error}); stopping. "
                          f"Fix the cause, then resume{again}: {resume_command(self.run_dir)}")

    def prepare(self, index: int, params: Mapping[str, float], slot: Slot, timings: dict[str, float]) -> Prepared:
        weights = self.space.to_block_weights(params)
        record = self._record(index, params, weights, slot)
        prepared = Prepared(weights, record, None, time.perf_counter() - timings.get("suggest", 0.0))
        if slot.webui.merges_in_graph or slot.webui.renders_remotely:
            return prepared  # the renderer merges inside its own graph, or a cluster host merges: no file here
        with _timed(timings, "merge"), out_of_memory_stops("The merge", MERGE_MEMORY_ADVICE):
            merged = self.merger.merge(weights)
            check_finite(merged, self.merger.architecture, self.merger.method.name, self.cfg.merge.dtype)
        # staged under a name the WebUI does not list; moved into place when the WebUI is free
        with _timed(timings, "write"):
            prepared.staged = slot.webui.stage(
                lambda path: self.merger.save(path, dtype=self.cfg.merge.dtype, prune=self.cfg.merge.prune), index)
        return prepared

    def staged(self, index: int, params: Mapping[str, float], slot: Slot) -> tuple[Path, float]:
        """Trial ``index``'s merge staged beside ``slot``'s WebUI by file, and the seconds its merge and write
        took (``webuis.settle_comfyui_routes`` times the file route with it)."""
        timings: dict[str, float] = {}
        staged = self.prepare(index, params, slot, timings).staged
        assert staged is not None
        return staged, timings["merge"] + timings["write"]

    def render(self, index: int, params: Mapping[str, float], prepared: Prepared, slot: Slot,
               timings: dict[str, float]) -> Trial:
        if left := remove_trial_images(self.run_dir, index):
            log.info("trial %d: deleted %d images an earlier attempt of it left, which no trial record names",
                     index, left)
        if slot.webui.renders_remotely:  # a host of a Ray cluster runs the whole trial
            trial, not_rendered = slot.webui.run_trial(index, params, prepared.record, timings, self.run_dir)
            self.not_rendered = self.not_rendered or not_rendered
            return trial
        weights, record = prepared.weights, prepared.record
        saved: list[Path] = []  # this attempt's images, unscored: deleted unless the trial is scored
        scored = False
        try:
            with _timed(timings, "load"):
                if prepared.staged is None:
                    slot.webui.load_weights(weights, trial=index)
                else:
                    slot.webui.load_checkpoint(lambda path: os.replace(prepared.staged, path), trial=index)
            if not slot.webui.loads_lazily:
                slot.loaded(index)  # the next trial's merge may start: it overlaps this render
            with _timed(timings, "generate"):  # on Forge, with the model's load
                images, contexts = self._render(index, slot, weights, saved)
            self.render_checks[slot.name].check(index, weights.alpha + (weights.beta or ()),
                                                [(c.payload, c.index, c.seed, image) for image, c in zip(images, contexts)])
            with _timed(timings, "score"), self._scoring, out_of_memory_stops(
                    "The scorer", "lower scorer.batch_size, set scorer.device=cpu, or free memory there"):
                scores = self.scorer.score(images, contexts)
                per_payload, score = score_trial(scores, [c.payload for c in contexts],
                                                 {p.name: p.score_weight for p in self.payloads}, self.cfg.scorer.combine)
            records = record_images(self.run_dir, contexts, scores)
            scored = True
        except NOT_THE_TRIALS_FAULT:
            raise
        except MergeNotRendered as error:
            self.not_rendered = error
            return self._failed(record, error, timings, prepared.clock, quiet=True)
        except BayesMergerError as error:
            return self._failed(record, error, timings, prepared.clock)
        finally:
            self.discard(prepared)
            if not scored:  # no record names them: they would stand in images/ as if of these weights
                for path in saved:
                    path.unlink(missing_ok=True)
        timings["total"] = time.perf_counter() - prepared.clock
        log.info("trial %d: score %.4f (merge %.2fs, load %.2fs, generate %.2fs, score %.2fs)%s", index, score,
                 timings.get("merge", 0.0), timings["load"], timings["generate"], timings["score"],
                 f" on {slot.name}" if record["webui"] else "")
        return Trial(status="ok", score=score, payload_scores=per_payload, images=tuple(records), timings=timings,
                     finished_at=now(), **record)

    def failed(self, index: int, params: Mapping[str, float], error: Exception, slot: Slot,
               timings: dict[str, float]) -> Trial:
        record = self._record(index, params, self.space.to_block_weights(params), slot)
        return self._failed(record, error, timings, time.perf_counter() - sum(timings.values()))

    def _record(self, index: int, params: Mapping[str, float], weights: BlockWeights, slot: Slot) -> dict[str, Any]:
        """The fields of a trial's record known before it is rendered."""
        return dict(
            trial=index, phase=self.optimiser.phase(index), params=dict(params), weights=weights.as_dict(),
            alpha_string=weights.alpha_string(), beta_string=weights.beta_string(),
            started_at=now(), webui=slot.name if len(self.slots) > 1 else None,
        )

    def discard(self, prepared: Prepared) -> None:
        if prepared.staged is not None:
            prepared.staged.unlink(missing_ok=True)

    def webui_lost(self, index: int, slot: Slot, error: Exception) -> int:
        return note_lost_webui(self.run_dir, index, slot.name, str(error))

    def _failed(self, record: dict[str, Any], error: Exception, timings: dict[str, float], clock: float,
                quiet: bool = False) -> Trial:
        timings["total"] = time.perf_counter() - clock
        if not quiet:
            log.error("trial %d failed: %s", record["trial"], error)
        return Trial(status="failed", score=None, error=str(error), timings=timings, finished_at=now(),
                     broken=is_broken_merge(error), **record)

    def _render(self, index: int, slot: Slot, weights: BlockWeights, saved: list[Path]
                ) -> tuple[list[Any], list[ImageContext]]:
        """Each payload's images, saved as they come (``keep_images``; their paths added to ``saved``)."""
        images: list[Any] = []
        contexts: list[ImageContext] = []
        for payload in self.payloads:
            generation = slot.webui.txt2img(payload.request)
            slot.loaded(index)  # Forge has loaded the model in this first generation: the next merge may start
            sent = str(payload.request.get("prompt", ""))  # wildcards were drawn when the payload was read
            for image_index, (image, seed) in enumerate(zip(generation.images, generation.seeds)):
                # what a text-aware scorer compares the image with: the prompt it was rendered from
                prompt = generation.prompts[image_index] if generation.prompts else sent
                path = None
                if self.inputs.keep_images:
                    path = save_image(self.run_dir, image, trial=index, payload=payload.name, index=image_index,
                                      prompt=prompt, seed=seed, weights=weights.alpha_string(),
                                      beta=weights.beta_string())
                    saved.append(path)
                images.append(image)
                contexts.append(ImageContext(payload=payload.name, index=image_index, seed=seed, path=path,
                                             prompt=prompt))
        return images, contexts


def hand_back(slots: list[Slot], before: Mapping[str, str]) -> None:
    """At the end and on every stop: each WebUI its model of before back and our files gone, every one though
    a later Ctrl-C (or the overnight runner's second) cuts one short: it ends that one's, not the others'."""
    cut: KeyboardInterrupt | None = None
    for slot in slots:
        try:
            slot.webui.hand_back(before.get(slot.name, ""))
        except KeyboardInterrupt as error:
            cut = cut or error
    if cut is not None:
        raise cut


class _timed:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.stage] = time.perf_counter() - self.start


def is_broken_merge(error: Exception) -> bool:
    """Whether a trial failed for its weights: its merge had NaN or infinite values, or the WebUI's NaN
    check refused what it rendered (A1111 and Forge answer 500 naming NansException; with fixed seeds the
    same merge fails again)."""
    return isinstance(error, BrokenMerge) or getattr(error, "server_error", None) == "NansException"


def record_best(run_dir: Path, trial_log: TrialLog, optimiser: Optimiser) -> Trial | None:
    """The trial the optimiser's model rates best (``Optimiser.chosen_by``), written to best.yaml with the raw
    best and the baseline."""
    # every score so far: the model the best and the importance are read from (the executor sets what
    # each suggestion may know again before it suggests)
    scored, numbers = observations(trial_log.trials)
    optimiser.observe(scored, numbers)
    index = optimiser.best()
    best = None if index is None else next(t for t in trial_log.trials if t.ok and t.trial == numbers[index])
    write_best(run_dir, best, best_extras(trial_log.trials, best, optimiser.importance(), optimiser.chosen_by()))
    return best


def _note_trials_at_once(info: dict[str, Any], at_once: int, run_dir: Path) -> None:
    """Record how many trials run at once; a resume with another number says what that changes (the
    suggestions from here on are those of a run with as many at once, not of the one that started)."""
    before = info.get("trials_at_once")
    if isinstance(before, int) and before != at_once:
        log.warning("%s ran up to %d trial%s at once and resumes with %d (other WebUIs or webui.pipeline): the "
                    "finished trials are kept, and the next ones are suggested as with %d at once, so they differ "
                    "from what the run would have suggested.", run_dir, before, "" if before == 1 else "s",
                    at_once, at_once)
    info["trials_at_once"] = at_once


def _keep_budget_reached(info: dict[str, Any], done: int, init_points: int, run_dir: Path) -> None:
    """run.json's budget (``n_iters``) never below the trials done: a resume that asks for fewer (config.yaml's
    command, with the first session's n_iters, after a resume with more) keeps every trial and says so, and
    the report shows them done of the budget they reached, not 20 of 16."""
    asked = init_points + info["n_iters"]
    if done > asked:
        log.info("%s has %d trials, more than the %d asked for (optimiser.init_points %d + optimiser.n_iters %d): "
                 "all are kept, and run.json and the report count its budget as %d; resume with a larger "
                 "optimiser.n_iters for more trials.",
                 run_dir, done, asked, init_points, info["n_iters"], done)
        info["n_iters"] = done - init_points


def _stop_resumably(error: StorageError | RatingsEnded | LocalOutOfMemory, run_dir: Path) -> RunStopped:
    return RunStopped(f"{str(error).rstrip('.')}, then resume with: {resume_command(run_dir)}")


def _keep_best(inputs: Inputs, info: dict[str, Any], merger: Merger | None, trial_log: TrialLog,
               optimiser: Optimiser) -> Trial | None:
    """best.yaml, and the best merge (``save_best``) where it is not saved as it is wanted: the best trial
    changed, a resume asks for it in another form, or it is gone. ``merger`` None: the models are loaded
    for it (a cluster's driver, or a run with every trial done)."""
    best = record_best(inputs.run_dir, trial_log, optimiser)
    cfg = inputs.config
    if best is not None and cfg.save_best:
        saved = {"trial": best.trial, "precision": str(cfg.best_precision), "prune": bool(cfg.merge.prune)}
        if info.get("best_saved") != saved or not (inputs.run_dir / BEST_MERGE).is_file():
            with out_of_memory_stops("Loading the models for the best merge", MERGE_MEMORY_ADVICE):
                _save_best_merge(inputs, merger or Merger.from_inputs(inputs.merge, on_this_machine(cfg.merge, cfg)), best)
            info["best_saved"] = saved
    return best


DeviceSetting = TypeVar("DeviceSetting", MergeConfig, ScorerConfig)


def on_this_machine(settings: DeviceSetting, cfg: Config) -> DeviceSetting:
    """``merge`` or ``scorer`` settings for work done here: on a cluster their ``device`` is the hosts' (checked
    there, not here), and the driver's best merge and finalists take its own GPU if it has one, else the CPU."""
    return settings if cfg.cluster.address is None else replace(settings, device="auto")


def _keep_best_on_stop(inputs: Inputs, info: dict[str, Any], merger: Merger | None, trial_log: TrialLog,
                       optimiser: Optimiser) -> None:
    """A run that stops before its budget leaves the best merge of its trials so far, as a finished run
    does: best.safetensors of an earlier session would otherwise stand beside a best.yaml naming a better
    trial. Only with the models loaded here (not a cluster's driver, which would load them for it);
    best effort, the stop's own error is the one said."""
    if merger is None:
        return
    try:
        _keep_best(inputs, info, merger, trial_log, optimiser)
        write_run_info(inputs.run_dir, info)
    except BayesMergerError as error:  # the disk that stopped the run, full: the trials are what counts
        log.warning("The best merge so far was not saved: %s", error)


def _save_best_merge(inputs: Inputs, merger: Merger, best: Trial) -> None:
    merged = merger.merge(inputs.space.to_block_weights(best.params))
    precision = inputs.config.best_precision
    try:  # trials were checked in merge.dtype: values past fp16's 65504 were saved as infinities here, unsaid
        check_finite(merged, merger.architecture, merger.method.name, precision)
    except BrokenMerge as error:
        precision = inputs.config.merge.dtype
        log.warning("best_precision %s cannot hold the best merge (%s); it is saved as its trial was rendered, in "
                    "merge.dtype %s.", inputs.config.best_precision, error, precision or "(each tensor's own)")
    with storage_errors(inputs.run_dir / BEST_MERGE):  # the checkpoint writer's CheckpointError of a full disk
        path = merger.save(inputs.run_dir / BEST_MERGE, dtype=precision,
                           prune=inputs.config.merge.prune, durable=True,
                           metadata={"bayes_merger_score": f"{best.score:.6f}", "bayes_merger_trial": str(best.trial)})
    log.info("Saved the best merge (trial %d, score %.4f) to %s", best.trial, best.score, path)


def _refresh_report(run_dir: Path, live: bool) -> None:
    try:
        write_report(run_dir, live)
    except Exception:  # noqa: BLE001 - a broken plot must never stop an overnight run
        log.exception("Could not rebuild the report of %s; the run goes on.", run_dir)


# the end-of-run summary's words for how the best was chosen (Optimiser.chosen_by)
CHOSEN_BY = {BY_POSTERIOR_MEAN: "the model's posterior mean", BY_SCORE: "score"}


def _log_summary(trial_log: TrialLog, best: Trial | None, chosen_by: str, run_dir: Path) -> None:
    ok = ranked((t for t in trial_log.trials if t.ok), lambda t: t.score, lambda t: t.trial)
    failed = sum(1 for t in trial_log.trials if not t.ok)
    lines = [f"{'rank':>4}  {'trial':>5}  {'score':>8}  weights (α)"]
    lines += [f"{rank:>4}  {t.trial:>5}  {t.score:>8.4f}  {','.join(f'{w:.2f}' for w in t.weights['alpha'].values())}"
              for rank, t in enumerate(ok[:5], start=1)]
    if best is not None:
        extras = best_extras(trial_log.trials, best, {}, chosen_by)  # best.yaml's baseline and gain
        baseline = extras.get("baseline")
        if baseline is None:
            gain = ""
        elif baseline["trial"] == best.trial:
            gain = ", the baseline itself"
        else:
            gain = f", {extras['gain_over_baseline']:+.4f} over the baseline (trial 0, {baseline['score']:.4f})"
        lines.append(f"Best (by {CHOSEN_BY[chosen_by]}): trial {best.trial}, score {best.score:.4f}{gain}")
        # exactly, as best.yaml has them: the table above rounds them
        lines.append(f"Its weights: alpha {best.alpha_string}" + (f", beta {best.beta_string}" if best.beta_string else ""))
    count = len(trial_log.trials)
    log.info("Run finished: %d trial%s (%d failed) in %s\n%s", count, "" if count == 1 else "s", failed, run_dir,
             "\n".join(lines))


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
