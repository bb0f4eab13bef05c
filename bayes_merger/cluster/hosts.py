"""The driver's side of a cluster run: one actor per WebUI host started, each one a ``Slot`` of the executor.

To the executor a host's WebUI is a slot like any other: ``run.TrialLoop`` sees ``renders_remotely``,
does nothing in the trial's prepare, and in its render makes one remote call (``RayHost.run_trial``),
then writes the images the host sent back into the run folder. An actor or a node that dies surfaces as
a WebUIConnectionError, the executor's lost-WebUI path: the trial goes to another host and the run goes
on with the rest, saying so. Actors are not restarted (``max_restarts=0``): a restarted one would load
the models again while its trial is already elsewhere.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from bayes_merger import __version__
from bayes_merger.cluster.connect import RESOURCE, Node, connect, webui_nodes
from bayes_merger.cluster.host import HostResult, TrialHost
from bayes_merger.errors import BayesMergerError, ConfigError, WebUIConnectionError
from bayes_merger.executor import Slot
from bayes_merger.inputs import Inputs
from bayes_merger.merge.fingerprint import recorded_fingerprints
from bayes_merger.renderers import Renderer
from bayes_merger.run_folder import MODEL_FILES, Trial, write_image_file
from bayes_merger.run_folder.liveness import is_running
from bayes_merger.webui.render_check import MergeNotRendered

log = logging.getLogger(__name__)

# how long the end of a run waits for a host to hand its WebUI back
HAND_BACK_TIMEOUT = 60.0

# how long the hosts' actors may take to be placed, before their models load. Ray places an actor as soon
# as its host has a free ``webui`` unit, in a new worker process that imports torch and bayes-merger (tens
# of seconds on a busy host); one still waiting after this waits for a unit another run holds, or for a
# host that left the cluster, and Ray would keep it waiting, silently, for ever
PLACEMENT_TIMEOUT = 180.0


class RayHost(Renderer):
    """``Slot.webui`` of a WebUI on a host of the cluster: the calls the run makes, made remotely."""

    renders_remotely = True

    def __init__(self, name: str, actor: Any, ray: Any) -> None:
        self.name = name
        self.actor = actor
        self._ray = ray

    def run_trial(self, index: int, params: Mapping[str, float], record: Mapping[str, Any], timings: dict[str, float],
                  run_dir: Path) -> tuple[Trial, MergeNotRendered | None]:
        """Trial ``index`` on the host; its images saved in ``run_dir``; the driver's ``record`` fields kept."""
        result: HostResult = self._get(self.actor.run_trial.remote(index, dict(params)))
        for relative, data in result.images.items():
            write_image_file(run_dir, relative, data)
        host = dict(result.trial.timings)
        host["total"] = host.get("total", 0.0) + timings.get("suggest", 0.0)
        timings.update(host)
        # the trial log names the host even when there is only one
        trial = replace(result.trial, started_at=record["started_at"], webui=self.name, timings=dict(timings))
        if trial.ok:
            log.info("trial %d: score %.4f on %s (merge %.2fs, load %.2fs, generate %.2fs, score %.2fs)", index,
                     trial.score, self.name, *(timings.get(s, 0.0) for s in ("merge", "load", "generate", "score")))
        elif result.not_rendered is None:
            log.error("trial %d failed on %s: %s", index, self.name, trial.error)
        if result.not_rendered is None:
            return trial, None
        return trial, MergeNotRendered(result.not_rendered, result.not_rendered_trials)

    def wait_until_ready(self, timeout: float | None = None) -> None:
        self._get(self.actor.wait_until_ready.remote())

    def hand_back(self, model: str = "") -> None:
        """The host's WebUI gets the model it had back (the host knows which); best effort, as on one machine."""
        try:
            self._get(self.actor.hand_back.remote(), timeout=HAND_BACK_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - never in the way of the run's end, as on one machine
            log.warning("Could not hand %s back: %s", self.name, error)

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        """``ray.get``: a host's own error as it was raised there; a dead actor or node, or any other failure of
        Ray's own (its memory monitor killing the worker beside a WebUI: OutOfMemoryError; a worker that could
        not start) as a lost WebUI: the trial goes to another host, as the README promises, not a traceback."""
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref, timeout=timeout)
        except exceptions.RayTaskError as error:
            if isinstance(error.cause, BayesMergerError):
                raise error.cause from None
            raise
        except exceptions.GetTimeoutError:
            raise
        except exceptions.RayError as error:  # RayActorError, NodeDiedError, ActorUnschedulableError (its node left) …
            raise WebUIConnectionError(f"The host of {self.name} is gone ({type(error).__name__}).") from None


@contextmanager
def open_hosts(inputs: Inputs, runs: Mapping[str, Path], info: dict[str, Any]) -> Iterator[list[Slot]]:
    """A slot per WebUI of every host of the cluster, each host started (models loaded, WebUI checked).

    A host offering ``{"webui": N}`` runs the first N WebUIs of ``webui.urls`` (or ``webui.url``) with
    their checkpoint folders, all as seen from that host. ``runs`` are the run folders this machine
    knows, so hosts can remove the merge files of runs that are over. The model each WebUI had before
    the run goes into ``info`` (run.json) by host, as on one machine, so that a resume after a crash
    gives it back.
    """
    from bayes_merger.webuis import webui_configs

    cfg = inputs.config
    with connect(cfg.cluster.address) as ray:
        nodes = webui_nodes(ray)
        if not nodes:
            raise ConfigError(f"No host of the Ray cluster at {cfg.cluster.address} offers a WebUI: join each WebUI "
                              f"host with ray start --address=HEAD:6379 --resources='{{\"{RESOURCE}\": 1}}'.")
        webuis = webui_configs(cfg, inputs.run_id)
        reference = recorded_fingerprints(inputs.info[MODEL_FILES])  # read once, as the run's inputs were checked
        dead = {owner: path for owner, path in runs.items() if not is_running(path)}
        hosts: list[tuple[RayHost, str]] = []
        try:
            for node in nodes:
                hosts += _start_actors(ray, node, webuis, inputs, reference, dead)
            log.info("Starting %d WebUI host%s on the Ray cluster (models load there): %s", len(hosts),
                     "" if len(hosts) == 1 else "s", ", ".join(host.name for host, _ in hosts))
            _wait_until_placed(ray, [host for host, _ in hosts])
            known = dict(info.get("webui_models_before") or {})
            routes = dict(info.get("comfyui_handoff") or {})  # by host, as on one machine by WebUI
            started = [(host, host.actor.start.remote(known.get(host.name), routes.get(host.name))) for host, _ in hosts]
            for host, ref in started:
                version, known[host.name], route = host._get(ref)
                if version != __version__:
                    raise ConfigError(f"{host.name} runs bayes-merger {version}, this machine {__version__}: install "
                                      "the same version on every host.")
                if route is not None:
                    routes[host.name] = route
            info["webui_models_before"] = known
            if routes:
                info["comfyui_handoff"] = routes
            yield [Slot(name=host.name, webui=host, checkpoint_dir=Path(folder)) for host, folder in hosts]
        finally:
            for host, _ in hosts:
                ray.kill(host.actor)  # after the run handed each WebUI back; a dead one is killed already


def _wait_until_placed(ray: Any, hosts: list[RayHost]) -> None:
    """Return once Ray has placed every host's actor; a lost host (WebUIConnectionError) for one it cannot
    place (its node left the cluster) or has not placed in PLACEMENT_TIMEOUT (its WebUI taken by another run)."""
    refs = {host.actor.placed.remote(): host for host in hosts}
    deadline = time.monotonic() + PLACEMENT_TIMEOUT
    waiting = list(refs)
    while waiting:  # one at a time, so that an actor Ray cannot place stops the wait at once
        done, waiting = ray.wait(waiting, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
        if not done:
            break
        refs[done[0]]._get(done[0])
    if waiting:
        others = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
        raise WebUIConnectionError(
            f"{refs[waiting[0]].name}{others} could not start within {PLACEMENT_TIMEOUT:g} s: most likely another "
            f"run on this Ray cluster holds its host's {RESOURCE} unit (one run per WebUI: wait for that run to end "
            "or stop it), or the host has left the cluster (ray status lists the hosts).")


def _start_actors(ray: Any, node: Node, webuis: list, inputs: Inputs, reference: Mapping[str, Any],
                  dead: Mapping[str, Path]) -> list[tuple[RayHost, str]]:
    """The actors of one host, not yet started: one per WebUI it offers (and the config names)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bayes_merger.webuis import models_before_of

    count = min(node.webuis, len(webuis))
    if node.webuis != len(webuis):
        log.warning("%s offers %d WebUIs and webui.url(s) names %d: running %d there.", node.hostname or node.address,
                    node.webuis, len(webuis), count)
    actor_class = ray.remote(TrialHost)
    hosts = []
    for url, webui_cfg, run_id in webuis[:count]:
        name = f"{url}@{node.address}"
        actor = actor_class.options(
            name=f"bayes-merger:{inputs.run_id}:{name}", resources={RESOURCE: 1}, num_cpus=0, max_concurrency=2,
            max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
        ).remote(inputs, webui_cfg, run_id, reference, dead, max(node.cpus // count, 1),
                 # read here, where the dead runs' folders are, for the WebUI of this name: not on the host
                 models_before_of(dead, name))
        hosts.append((RayHost(name, actor, ray), str(webui_cfg.checkpoint_dir)))
    return hosts
