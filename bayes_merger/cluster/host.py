"""One WebUI on one host of the Ray cluster, and the trials it runs there: the body of a Ray actor.

mergekit-evolve's pool pattern: the actor reads the models from its own disk once (after checking they
are the driver's files), keeps them resident and runs each trial it is given start to finish with the
one-machine code, ``run.TrialLoop``'s prepare (merge, stage the file beside the WebUI) and render
(load, render, score), on a slot of its own. What goes back to the driver is small: the finished
``Trial`` (score, per-image records) and the image files' bytes. The run folder stays the driver's;
the host writes images to a scratch folder, reads them back and deletes them. The scratch folder is
locked while its host lives, so a host that starts removes those of hosts that were killed (a driver
killed with kill -9 takes its actors with it, and they never hand back).

A plain class: the driver wraps it with ``ray.remote`` (``hosts.py``), and tests can use it as it is.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from bayes_merger import __version__
from bayes_merger.merge.fingerprint import Fingerprint, check_same_file
from bayes_merger.config import WebUIConfig
from bayes_merger.errors import NOT_THE_TRIALS_FAULT, BayesMergerError, WebUIConnectionError
from bayes_merger.executor import SETTLE_SECONDS, Slot
from bayes_merger.inputs import Inputs
from bayes_merger.merge.merger import Merger
from bayes_merger.optimiser import Optimiser
from bayes_merger.run import TrialLoop
from bayes_merger.webuis import open_webui_renderer, prepare_webuis, settle_comfyui_routes
from bayes_merger.run_folder import IMAGES_DIR, Trial, TrialLog
from bayes_merger.run_folder.liveness import is_running, running
from bayes_merger.run_folder.paths import RUN_LOCK
from bayes_merger.scoring import build_scorer
from bayes_merger.scoring.registry import weights_to_fetch

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "bayes-merger-host-"


def remove_dead_scratch() -> list[Path]:
    """Remove the scratch folders in this machine's temp folder of hosts whose process has ended without
    handing back; returns them. Each live host holds its folder's lock; a lock file without a pid yet is
    one being taken now, and a folder without one is not ours to judge (an older version's)."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        with suppress(OSError):  # another user's folder, or one going as we look
            if (folder / RUN_LOCK).read_text(encoding="utf-8").strip() and not is_running(folder):
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


@dataclass(frozen=True)
class HostResult:
    """A trial as a host returns it: the record, the image files (relative path → PNG bytes), and the
    sentence of a MergeNotRendered when the WebUI proved not to render the merges, and its trials."""

    trial: Trial
    images: dict[str, bytes]
    not_rendered: str | None = None
    not_rendered_trials: tuple[int, ...] = ()


class TrialHost:
    """The trials of one run on one WebUI of this host. ``start`` once, then ``run_trial`` per trial."""

    def __init__(self, inputs: Inputs, webui: WebUIConfig, run_id: str, models: Mapping[str, Fingerprint],
                 dead_runs: Mapping[str, Path], threads: int | None = None,
                 dead_models_before: Mapping[str, str] | None = None) -> None:
        """``dead_runs``: the driver's folders of runs that are over (their merge files here may go), and
        ``dead_models_before`` the model each found before it, read there: the folders are the driver's."""
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in its workers; a host's CPUs are ours
        for folder in remove_dead_scratch():
            log.info("Removed %s, the scratch folder of a host that was killed.", folder)
        self.scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        self.inputs = replace(inputs, run_dir=self.scratch)
        self.webui_config = webui
        self.run_id = run_id
        self.models = dict(models)
        self.dead_runs = dict(dead_runs)
        self.dead_models_before = dict(dead_models_before or {})
        self.label = f"{socket.gethostname()} ({webui.url})"
        self._stack = ExitStack()
        with suppress(OSError):  # a temp folder without locks (ENOLCK): the host runs, its folder just not tidied
            self._stack.enter_context(running(self.scratch))  # until hand_back
        self._loop: TrialLoop | None = None
        self._slot: Slot | None = None
        self._before = ""
        # one trial at a time, though Ray may call again while a call it lost track of still runs here
        # (ActorUnavailableError: "may or may not have been executed"): two would share one Merger and WebUI
        self._trial = threading.Lock()
        # set by hand_back: no trial starts merging after it; one merging or loading ends its load first
        self._handing_back = threading.Event()

    def placed(self) -> str:
        """Our label: answers as soon as Ray has placed the actor, before anything slow (see ``start``)."""
        return self.label

    def start(self, known_before: str | None = None, known_route: Mapping[str, Any] | None = None
              ) -> tuple[str, str, dict[str, Any] | None]:
        """Check the model files, open the WebUI, load the scorer and the models; returns our version, the
        model the WebUI had before the run (``known_before``: the one the driver's run.json recorded for it,
        when the run is resumed: the WebUI may still hold the merge of the session that died) and, for a
        ComfyUI with comfyui_handoff auto, its route's record for the driver's run.json (``known_route``: the
        one recorded there, so that every session of the run takes the route its first measured)."""
        cfg = self.inputs.config
        try:
            for model, path in self.inputs.merge.models.items():  # before anything slow
                check_same_file(path, self.models[model], f"model_{model.lower()}")
            weights_to_fetch(self.inputs.scorer)  # this host's: one it cannot get is said before its WebUI is asked
            renderer = self._stack.enter_context(open_webui_renderer(self.inputs, self.webui_config, self.run_id))
            slot = Slot(name=self.webui_config.url, webui=renderer,
                        checkpoint_dir=Path(self.webui_config.checkpoint_dir).expanduser())
            known = {} if known_before is None else {"webui_models_before": {slot.name: known_before}}
            self._before = prepare_webuis([slot], self.inputs, known, self.dead_runs,
                                          self.dead_models_before).get(slot.name, "")
            scorer = build_scorer(self.inputs.scorer)
            merger = Merger.from_inputs(self.inputs.merge, cfg.merge)
            optimiser = Optimiser(self.inputs.space, cfg.optimiser, cfg.run.seed)  # names each trial's phase
            self._loop = TrialLoop(self.inputs, merger, [slot], scorer, optimiser, TrialLog(self.scratch),
                                   threading.Event())
            # a ComfyUI with comfyui_handoff auto: timed here, as on one machine, or as the driver recorded
            routes = {"comfyui_handoff": {slot.name: dict(known_route)}} if known_route else {}
            settle_comfyui_routes([slot], self.inputs, routes, self._loop.staged)
            self._slot = slot
        except BaseException as error:
            # the driver kills the actor of a host that failed to start: what it holds goes now (its scratch
            # folder was left in the host's /tmp); the start's own error is the one said
            with suppress(Exception):
                self.hand_back()
            if isinstance(error, BayesMergerError):
                raise type(error)(f"{self.label}: {error}") from None
            raise
        route = (routes.get("comfyui_handoff") or {}).get(slot.name)
        return __version__, self._before, route

    def run_trial(self, index: int, params: Mapping[str, float]) -> HostResult:
        """Trial ``index`` start to finish, as the executor runs it on one machine; a lost WebUI or a
        full disk raises (NOT_THE_TRIALS_FAULT) as there."""
        with self._trial:
            loop, slot = self._loop, self._slot
            if loop is None or slot is None:
                raise WebUIConnectionError(f"{self.label} is not started.")
            if not slot.reserve(index, self._handing_back):
                raise WebUIConnectionError(f"{self.label} is handing its WebUI back.")
            try:
                return self._run_trial(loop, slot, index, params)
            finally:
                slot.loaded(index)

    def _run_trial(self, loop: TrialLoop, slot: Slot, index: int, params: Mapping[str, float]) -> HostResult:
        timings: dict[str, float] = {}
        try:
            try:
                prepared = loop.prepare(index, params, slot, timings)
            except NOT_THE_TRIALS_FAULT:
                raise
            except BayesMergerError as error:
                trial = loop.failed(index, params, error, slot, timings)
            else:
                trial = loop.render(index, params, prepared, slot, timings)
            images = {image.path: (self.scratch / image.path).read_bytes() for image in trial.images if image.path}
        finally:
            shutil.rmtree(self.scratch / IMAGES_DIR, ignore_errors=True)
        not_rendered, loop.not_rendered = loop.not_rendered, None
        if not_rendered is None:
            return HostResult(trial, images)
        return HostResult(trial, images, str(not_rendered), not_rendered.trials)

    def wait_until_ready(self) -> None:
        """Return once this host's WebUI answers (WebUIConnectionError after ``webui.ready_timeout``)."""
        if self._slot is None:
            raise WebUIConnectionError(f"{self.label} is not started.")
        self._slot.webui.wait_until_ready()

    def hand_back(self) -> None:
        """The end of the run: the WebUI gets its model back, this run's merge files go, the session ends.

        On a stop that does not wait for the trial in flight (a second Ctrl-C), as on one machine: a merge or
        load under way ends first (up to SETTLE_SECONDS), not after the WebUI got its model back."""
        self._handing_back.set()
        try:
            if self._slot is not None:
                self._slot.settle(SETTLE_SECONDS)
                self._slot.webui.hand_back(self._before)
        finally:
            self._slot = self._loop = None
            self._stack.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
