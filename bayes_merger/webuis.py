"""The WebUIs of a run: their settings one by one, their renderers, and getting them ready.

Shared by the run on one machine (``run``) and each host of a cluster (``cluster.host``): which WebUIs
there are and the run id each one's merge files carry, the renderer for each (A1111 client or
ComfyUI), the checks before the first trial with the model each had before the run, and a ComfyUI's
hand-off route when it is ``auto``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf

from bayes_merger.config import Config, WebUIConfig
from bayes_merger.errors import WebUIError
from bayes_merger.executor import Slot
from bayes_merger.inputs import Inputs
from bayes_merger.renderers.comfyui.route import settle_route
from bayes_merger.renderers.probe import open_renderer
from bayes_merger.run_folder import write_run_info
from bayes_merger.run_folder.paths import saved_configs
from bayes_merger.run_folder.liveness import is_running
from bayes_merger.run_folder.run_info import load_run_info, model_before
from bayes_merger.webui.client import WebUIClient
from bayes_merger.webui.merge_files import merge_run_id

log = logging.getLogger(__name__)


def webui_configs(cfg: Config, run_id: str) -> list[tuple[str, WebUIConfig, str]]:
    """(URL, its config, the run id its merge files carry) of every WebUI the run renders on.

    WebUIs sharing one checkpoint folder name their files apart (``<run id>-w2``, …), so one never
    deletes the merge another is loading.
    """
    return _webui_list(OmegaConf.to_object(cfg.webui) if OmegaConf.is_config(cfg.webui) else cfg.webui, run_id)


def _webui_list(webui: WebUIConfig, run_id: str) -> list[tuple[str, WebUIConfig, str]]:
    urls = list(webui.urls) or [webui.url]
    folders = list(webui.checkpoint_dirs) or [webui.checkpoint_dir] * len(urls)
    shared = len({_folder_key(folder) for folder in folders}) < len(folders)
    return [(url, replace(webui, url=url, checkpoint_dir=folder),
             f"{run_id}-w{n + 1}" if shared and n else run_id)
            for n, (url, folder) in enumerate(zip(urls, folders))]


def _folder_key(folder: str) -> tuple[int, int] | str:
    """What makes two checkpoint folders one: the folder itself (device, inode) where it exists, else its
    resolved path. Two spellings of one folder ('/m/bm' and '/m/bm/', '~/bm', a link to it) compared as
    strings would give their WebUIs one run id, and each would delete the merge the other is loading."""
    path = os.path.realpath(os.path.expanduser(str(folder)))
    try:
        found = os.stat(path)
    except OSError:
        return path
    return found.st_dev, found.st_ino


def open_webui_renderer(inputs: Inputs, webui_cfg: WebUIConfig, run_id: str) -> Any:
    space = inputs.space
    lower, upper = space.weight_range()  # frozen weights too: a trial carries them into the graph
    # the largest BASE weight a trial can have: above 0, a ComfyUI graph (which cannot merge the VAE)
    # renders another model than the merge by file wherever A's and B's VAEs differ
    base_max = max((p.upper for p in space.parameters if "BASE" in p.members), default=space.frozen.get("BASE", 0.0))
    cfg = inputs.config
    return open_renderer(webui_cfg, run_id, method=cfg.merge.method, lower=lower, upper=upper,
                         arch=inputs.merge.architecture, model_a=cfg.model_a, model_b=cfg.model_b, base_max=base_max)


def settle_comfyui_routes(slots: list[Slot], inputs: Inputs, info: dict[str, Any],
                          stage: Callable[[int, Mapping[str, float], Slot], tuple[Path, float]]) -> None:
    """webui.comfyui_handoff auto: each ComfyUI's route timed both ways before trial 0, or read back
    from run.json on a resume (``renderers.comfyui.route``). ``stage(index, params, slot)``: that trial's
    merge staged beside the slot's WebUI, and the seconds its merge and write took (``run.TrialLoop.staged``)."""
    auto = [slot for slot in slots if slot.webui.handoff == "auto"]
    if not auto:
        return
    space, cfg = inputs.space, inputs.config
    start = space.start_params(cfg.optimiser.start)  # trial 0's weights, then another point
    params = [start, {p.name: p.upper if start[p.name] == p.lower else p.lower for p in space.parameters}]
    request = {**inputs.payloads[0].request, "batch_size": 1, "n_iter": 1}
    recorded = dict(info.get("comfyui_handoff") or {})
    for slot in auto:
        recorded[slot.name] = settle_route(slot.webui, recorded.get(slot.name), request,
                                           [space.to_block_weights(p) for p in params],
                                           lambda index, slot=slot: stage(index, params[index], slot),
                                           cfg.webui.pipeline)
    info["comfyui_handoff"] = recorded
    write_run_info(inputs.run_dir, info)


def prepare_webuis(slots: list[Slot], inputs: Inputs, info: dict[str, Any], runs: Mapping[str, Path],
                   models_before: Mapping[str, str] | None = None) -> dict[str, str]:
    """Wait for each WebUI, check its folder, clear dead runs' files; the model each had before the run.

    ``runs``: the run folders by run id; ``models_before``: what ``models_before_of(runs)`` reads in them,
    where the folders are not on this machine (a cluster host: its driver read them)."""
    before = dict(info.get("webui_models_before") or {})
    for n, slot in enumerate(slots):
        webui = slot.webui
        webui.wait_until_ready()
        webui.check_checkpoint_dir()
        webui.check_payloads(inputs.payloads)
        webui.check_memory_options()
        webui.remove_leftovers(lambda run_id: (owner := _owner(run_id)) in runs and not is_running(runs[owner]))
        if webui.selects_a_model:
            known = model_before(info, slot.name, first=n == 0)
            before[slot.name] = known if known is not None else _model_before(slot, runs, models_before)
            if n == 0:  # the first WebUI's model, where older versions look for it
                info["webui_model_before"] = before[slot.name]
    # by WebUI: a resume whose list of WebUIs is reordered or shortened gives each its own model back
    info["webui_models_before"] = before
    return before


def tidy_after_a_dead_session(cfg: Config, run_id: str, info: Mapping[str, Any]) -> None:
    """A resume with every trial logged, of a run whose last session died (kill -9) after its last trial and
    before its end: its merge may be left in each checkpoint folder, and selected in the WebUI. Each gets what
    the end of a run gives it: this run's files deleted and, where the WebUI answers and still holds one of
    them, its model of before selected. Nothing is waited for: such a resume works with the WebUI off."""
    for n, (url, webui_cfg, files_run_id) in enumerate(webui_configs(cfg, run_id)):
        _tidy(url, webui_cfg, files_run_id, model_before(info, url, first=n == 0) or "", run_id)


def tidy_earlier_sessions(cfg: Config, run_dir: Path, run_id: str, info: Mapping[str, Any]) -> None:
    """A resume, before its first trial: what the run's earlier sessions left with WebUIs this session does not
    take over as they were. A WebUI left out of this session's list (one that died, say) gets what the end of a
    run gives it: this run's merges deleted from its folder and, where it answers and still holds one, its model
    of before selected. A folder this session writes under another name (a list reordered or shortened over one
    shared folder: ``<run id>-w2`` …) loses the merges of the earlier name. None of this session's files exists
    yet, so none of them is touched."""
    now = webui_configs(cfg, run_id)
    kept = {(url, _folder_key(webui_cfg.checkpoint_dir), files) for url, webui_cfg, files in now}
    urls = {url for url, _, _ in now}
    for first, url, webui_cfg, files_run_id in _earlier_webuis(run_dir, run_id, info):
        if (url, _folder_key(webui_cfg.checkpoint_dir), files_run_id) in kept:
            continue
        if webui_cfg.auth is None and webui_cfg.auth_env is None:
            # a saved config never holds the password (``webui.auth`` is nulled): this session's, inline or by a
            # variable's name, which is every WebUI's of its list, is the one a user resuming the run gives again
            webui_cfg = replace(webui_cfg, auth=cfg.webui.auth, auth_env=cfg.webui.auth_env)
        dropped = url not in urls
        if dropped:
            log.info("%s rendered trials of this run before and is not in this session's list of WebUIs: this run's "
                     "merges are deleted from %s and, where it still holds one, its model of before is selected "
                     "again.", url, webui_cfg.checkpoint_dir)
        _tidy(url, webui_cfg, files_run_id, (model_before(info, url, first) or "") if dropped else "", run_id)


def _earlier_webuis(run_dir: Path, run_id: str, info: Mapping[str, Any]) -> list[tuple[bool, str, WebUIConfig, str]]:
    """(first in its list, URL, config, the run id of its files) of each WebUI an earlier session of the run
    rendered on: from the configs the sessions saved, those that run.json names (it records each WebUI's
    model of before when the session has prepared it; a session refused before that touched no WebUI)."""
    used = info.get("webui_models_before")
    used = set(used) if isinstance(used, Mapping) else set()
    found: dict[tuple[str, str, str], tuple[bool, str, WebUIConfig, str]] = {}
    for path in saved_configs(run_dir):
        try:
            saved = OmegaConf.load(path).get("webui") or {}
            webui = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WebUIConfig), saved))
        except Exception as error:  # noqa: BLE001 - an unreadable old config only loses its tidying
            log.warning("Could not read the WebUIs of an earlier session of this run from %s: %s", path, error)
            continue
        for n, (url, webui_cfg, files_run_id) in enumerate(_webui_list(webui, run_id)):
            if url in used:
                key = (url, str(webui_cfg.checkpoint_dir), files_run_id)
                found.setdefault(key, (n == 0, url, webui_cfg, files_run_id))
    return list(found.values())


def _tidy(url: str, webui_cfg: WebUIConfig, files_run_id: str, model: str, run_id: str) -> None:
    """This run's merges of ``files_run_id`` deleted from the WebUI's folder and, where it answers and holds one
    of the run's merges, ``model`` (its model of before, when known) selected again."""
    with WebUIClient(webui_cfg, files_run_id) as client:
        holds_ours = False
        # no model to give back: what it holds need not be asked (ComfyUI holds no selection)
        if model and client.status(timeout=min(webui_cfg.connect_timeout, 5.0)) == 200:
            try:
                holds_ours = _owner(merge_run_id(client.selected_model()) or "") == run_id
            except WebUIError as error:
                log.debug("Could not ask %s which model it holds: %s", url, error)
        client.hand_back(model if holds_ours else "")


def _owner(run_id: str) -> str:
    """The run a merge file belongs to (``<run id>-w2`` is a second WebUI's file of that run)."""
    return re.sub(r"-w\d+$", "", run_id)


def models_before_of(runs: Mapping[str, Path], webui: str) -> dict[str, str]:
    """The model each run found before it in the WebUI named ``webui`` (its URL; on a cluster, with its host),
    by run id, as its run.json records it (``run_info.model_before``); "" where it does not. A WebUI that holds
    the merge of a run that kept no model by WebUI was that run's one WebUI: its first."""
    return {run_id: model_before(load_run_info(path) or {}, webui, first=True) or "" for run_id, path in runs.items()}


def _model_before(slot: Slot, runs: Mapping[str, Path], models_before: Mapping[str, str] | None) -> str:
    """The model the slot's WebUI has before this run uses it (not knowing it from run.json)."""
    current = slot.webui.model_at_start()
    owner = merge_run_id(current)
    if owner is None:
        return current
    # the WebUI still holds the merge of a run that died: that run knew what was there before it
    owner = _owner(owner)
    if models_before is None:
        models_before = models_before_of({owner: runs[owner]} if owner in runs else {}, slot.name)
    return models_before.get(owner, "")
