"""Everything a run needs, checked once before any work starts; the result (``Inputs``) is passed on.

``check_inputs`` is the one place a run's input is validated: the settings that need more than types,
the model files, the merge method against the models (from the files' headers: architectures, model
C, precisions), the search space, the payloads, a run folder to resume, that A1111's checkpoint folder
exists, and that the scorer's weights are here or can be downloaded. Nothing is loaded and no WebUI is
contacted; a bad input is one ``BayesMergerError`` with a sentence a user can act on. What needs the WebUI
(its API, that it lists the merges written to its checkpoint folder) and the weights' bytes are checked
when they are started, still before the first merge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from bayes_merger import __version__
from bayes_merger.cluster.settings import check_cluster_settings
from bayes_merger.config import Config, ScorerConfig, WebUIConfig
from bayes_merger.devices import resolve_device
from bayes_merger.errors import ConfigError
from bayes_merger.merge.checkpoint import parse_dtype
from bayes_merger.merge.fingerprint import model_records
from bayes_merger.merge.merger import MergeInputs, inspect_inputs, warn_of_lost_precision
from bayes_merger.optimiser import check_optimiser_config, library_versions
from bayes_merger.run_folder import (
    LIBRARIES,
    MANUAL_RATINGS,
    MODEL_FILES,
    MODEL_KEYS,
    PAYLOAD_WEIGHTS,
    RESUMED_AT,
    RUN_FILE,
    SUGGESTIONS,
    check_resumable,
    foreign_files,
    is_run_folder,
    note_changed_suggestions,
    now,
    read_run_info,
    resume_command,
)
from bayes_merger.scoring import for_run_folder, needs_image_files
from bayes_merger.scoring.registry import check_scorer_config, named_scorer, scorer_identity, weights_to_fetch
from bayes_merger.space import SearchSpace, build_space
from bayes_merger.renderers.probe import backend_of, choose_handoff
from bayes_merger.renderers.comfyui.graph import load_workflow
from bayes_merger.renderers.comfyui.http import ComfyApi
from bayes_merger.webui.http import ApiSession, base_url, credentials
from bayes_merger.webui.merge_files import RUN_ID, MergeFiles
from bayes_merger.webui.payloads import Payload, load_payloads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """A run's checked inputs."""

    config: Config
    run_dir: Path
    merge: MergeInputs  # the method, the model files and what their headers say
    space: SearchSpace
    payloads: list[Payload]
    scorer: ScorerConfig  # the scorer's config for this run folder
    info: dict[str, Any]  # run.json as the run will write it (a resumed run's own, its budget updated)
    resuming: bool

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def trials_per_webui(self) -> int:
        """The trials in flight on each WebUI: two pipelined (one merged while the other renders), else one."""
        return 2 if self.config.webui.pipeline else 1

    @property
    def keep_images(self) -> bool:
        """Whether the rendered images are written to the run folder."""
        return self.config.save_images or needs_image_files(self.config.scorer)


def model_path(value: str) -> Path:
    return Path(os.path.expanduser(str(value))).resolve()


@dataclass(frozen=True)
class Checked:
    """What ``check_without_reading`` found: the merge (from the files' headers), the space, the payloads, and
    the scorers' weights the start will download (none on a cluster, whose hosts load their own)."""

    merge: MergeInputs
    space: SearchSpace
    payloads: list[Payload]
    to_fetch: list[str]


def check_inputs(cfg: Config, run_dir: Path) -> Inputs:
    """Check everything that can be checked without the WebUI; raise a BayesMergerError on bad input."""
    run_dir = Path(run_dir)
    resuming = cfg.resume is not None
    checked = check_without_reading(cfg, run_dir)
    merge, space, payloads = checked.merge, checked.space, checked.payloads
    previous = read_run_info(run_dir) if resuming else None
    run_id = previous.get("run_id") if previous else None
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):  # a folder of an older version: a new id
        run_id = f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    known = previous.get(MODEL_FILES) if previous else None
    files = model_records(merge.models, known if isinstance(known, Mapping) else None)
    merge = replace(merge, sha256={model: record["sha256"] for model, record in files.items()})
    info = _run_info(cfg, run_id, merge, space, payloads, files)
    if previous:
        check_resumable(previous, info, run_dir)
        note_changed_suggestions(previous, info, run_dir)
        # each session's start, so the report's duration leaves out the time between sessions
        resumes = previous.get(RESUMED_AT)
        resumes = [r for r in resumes if isinstance(r, str)] if isinstance(resumes, list) else []
        info = {**previous, "n_iters": cfg.optimiser.n_iters, "run_id": run_id, SUGGESTIONS: info[SUGGESTIONS],
                LIBRARIES: info[LIBRARIES], PAYLOAD_WEIGHTS: info[PAYLOAD_WEIGHTS], RESUMED_AT: [*resumes, now()],
                # where the model files are now (a run's files moved elsewhere are the same files)
                **{key: info[key] for key in (*MODEL_KEYS.values(), MODEL_FILES)}}
        info.pop("finished_at", None)
    scorer = for_run_folder(cfg.scorer, run_dir / MANUAL_RATINGS)
    return Inputs(cfg, run_dir, merge, space, payloads, scorer, info, resuming)


def check_resumable_without_reading(cfg: Config, run_dir: Path, checked: Checked) -> None:
    """``--check`` of a resume: its settings against the run's record (``check_resumable``), all but the model
    files' bytes. A model file of the record's size stands for the run's until the start hashes it; one of
    another size, or a model the run did not have, is not the run's now."""
    previous = read_run_info(run_dir)
    known = previous.get(MODEL_FILES)
    known = known if isinstance(known, Mapping) else {}
    files: dict[str, dict[str, Any]] = {}
    for model, path in checked.merge.models.items():
        before = known.get(model) if isinstance(known.get(model), Mapping) else {}
        size = Path(path).stat().st_size
        files[model] = {"path": str(path), "size": size, "sha256": before.get("sha256") if before.get("size") == size
                        else None}
    run_id = str(previous.get("run_id") or "")
    check_resumable(previous, _run_info(cfg, run_id, checked.merge, checked.space, checked.payloads, files), run_dir)


def check_without_reading(cfg: Config, run_dir: Path) -> Checked:
    """The checks that read no model whole and ask no WebUI (``bayes-merger --check``): the settings, the
    model files and their headers, the method against them, the search space, the payloads, the run folder,
    that A1111's checkpoint folder exists and that the scorers' weights are here or can be fetched. Not the
    models' sha256, a resumed run's record, the WebUI, or the weights' bytes (checked when they load)."""
    models = _check_settings(cfg)
    payloads = load_payloads(cfg.payloads, cfg.run.seed)
    # the files' headers tell the method, the architectures and so the search space: bad models
    # and bad bounds are refused before the WebUI is contacted or a tensor is read
    merge = inspect_inputs(*models, cfg.merge)
    warn_of_lost_precision(merge, cfg.merge.load_dtype, {"merge.dtype": cfg.merge.dtype, "best_precision": cfg.best_precision})
    space = build_space(cfg.optimiser, merge.architecture.blocks, merge.method.needs_beta)
    space.start_params(cfg.optimiser.start)  # a bad optimiser.start is refused here, not after the models load
    if str(cfg.webui.backend).lower() in ("comfyui", "auto"):  # a graph hand-off the method cannot take
        choose_handoff(cfg.webui, cfg.merge.method, *space.weight_range(), merge.architecture)
    resuming = cfg.resume is not None
    if not resuming and is_run_folder(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; continue it with: {resume_command(run_dir)}, or start a "
                          "new one elsewhere.")
    foreign = [] if resuming else foreign_files(run_dir)
    if foreign:
        named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{run_dir} already holds files that are not a run's ({named}), which a run there could write "
                          "over: start it in a new or empty folder.")
    return Checked(merge, space, payloads, _scorer_weights_to_fetch(cfg))


def _scorer_weights_to_fetch(cfg: Config) -> list[str]:
    """The run's scorer's (on a cluster the hosts', each checks its own) and its finalists' (built here at the
    night's end): a missing file, or anything missing while downloads are off, is said now, not after the WebUI
    is up or the night is over."""
    to_fetch = [] if cfg.cluster.address else weights_to_fetch(cfg.scorer)
    if cfg.scorer.finalists:
        to_fetch += [name for name in weights_to_fetch(named_scorer(cfg.scorer, cfg.scorer.finalists))
                     if name not in to_fetch]
    return to_fetch


# settings that name a file or folder, and whether null leaves one unset: empty (an unset variable,
# `webui.checkpoint_dir=$DIR`) each meant the folder the run was started from
PATH_SETTINGS = {"model_a": False, "model_b": False, "model_c": True, "run.dir": False, "webui.checkpoint_dir": False,
                 "payloads.dir": False, "payloads.wildcards_dir": True, "scorer.head": True, "scorer.cache_dir": True,
                 "webui.comfyui_workflow": True}


def _check_settings(cfg: Config) -> tuple[Path, Path, Path | None]:
    """The cheap checks, before a file is opened; returns the model paths (A, B, C or None)."""
    for key, optional in PATH_SETTINGS.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{key} is empty: give a path{', or null to leave it unset' if optional else ''}.")
    check_optimiser_config(cfg.optimiser)
    _check_model_files(cfg)
    if not 0 <= cfg.run.seed < 2**32:  # A1111's -1 habit: a random seed would make the run unrepeatable
        raise ConfigError(f"run.seed must be a whole number from 0 to {2**32 - 1}, got {cfg.run.seed}: the run's "
                          "seed is fixed so that it can be repeated and resumed.")
    _check_webui_settings(cfg.webui)
    if cfg.best_format != "safetensors":
        raise ConfigError(f"best_format '{cfg.best_format}' is not supported: the best merge is saved as safetensors, "
                          "which every WebUI reads and which cannot carry code.")
    parse_dtype(cfg.best_precision, "best_precision")
    check_cluster_settings(cfg)
    check_scorer_config(cfg.scorer)  # loaded after the WebUI is found: a typo is said before it is asked
    _check_finalists(cfg)
    if cfg.cluster.address is None:  # on a cluster the devices and the folders are the hosts', checked there
        resolve_device(cfg.merge.device, "merge device")
        resolve_device(cfg.scorer.device, "scorer device")
        if backend_of(cfg.webui.backend) == "a1111":  # ComfyUI's is needed by a file hand-off only: its start says
            for folder in list(cfg.webui.checkpoint_dirs) or [cfg.webui.checkpoint_dir]:
                MergeFiles.check_folder(Path(folder).expanduser())
        _check_webui_files(cfg.webui)
    if cfg.run.max_consecutive_failures < 1:
        raise ConfigError("run.max_consecutive_failures must be at least 1.")
    if cfg.resume is not None and not is_run_folder(model_path(cfg.resume)):
        raise ConfigError(f"resume={cfg.resume} is not a run folder (no {RUN_FILE} in it).")
    return model_path(cfg.model_a), model_path(cfg.model_b), model_path(cfg.model_c) if cfg.model_c else None


def _check_model_files(cfg: Config) -> None:
    """Each model a file that exists, and A and B two different files."""
    for key in ("model_a", "model_b", "model_c"):
        value = getattr(cfg, key)
        if value is None:
            continue
        path = model_path(value)
        if not path.exists():
            raise ConfigError(f"{key}: {path} does not exist.")
        if not path.is_file():
            raise ConfigError(f"{key}: {path} is a folder, not a checkpoint file.")
        try:  # a model owned by the WebUI's user (mode 600) was a traceback at its header, exit 1
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as error:
            raise ConfigError(f"{key}: {path} cannot be read ({error.strerror or error}).") from None
    if os.path.samefile(model_path(cfg.model_a), model_path(cfg.model_b)):
        raise ConfigError(f"model_a and model_b are the same file ({model_path(cfg.model_b)}): a model merged with "
                          "itself is itself whatever the weights; give two different models.")


def _check_webui_settings(webui: WebUIConfig) -> None:
    """The WebUI's numbers, backend, which credentials setting is used, and the list of WebUIs with their folders."""
    for key in ("connect_timeout", "read_timeout", "ready_timeout", "poll_interval", "retries", "backoff_factor",
                "keep_last"):
        if not getattr(webui, key) >= 0:  # nan too: a backoff of nan waited urllib3's longest, 120 s, each retry
            raise ConfigError(f"webui.{key} must be a number, 0 or more, got {getattr(webui, key)}.")
    for key in ("connect_timeout", "read_timeout", "poll_interval"):  # 0 is no wait at all, or a busy loop
        if not 0 < getattr(webui, key) < math.inf:
            raise ConfigError(f"webui.{key} must be a number of seconds above 0, got {getattr(webui, key)}.")
    if backend_of(webui.backend) == "a1111":  # set for ComfyUI, they would be taken as if in use
        defaults = WebUIConfig()
        unused = [f"webui.{key}" for key in vars(defaults)
                  if key.startswith("comfyui_") and getattr(webui, key) != getattr(defaults, key)]
        if unused:
            log.warning("%s %s for ComfyUI, and webui.backend is a1111: not used.", " and ".join(unused),
                        "is" if len(unused) == 1 else "are")
    if webui.auth and webui.auth_env:
        log.warning("webui.auth and webui.auth_env are both set: webui.auth is used, the variable %s is not read.",
                    webui.auth_env)
    urls, folders = list(webui.urls), list(webui.checkpoint_dirs)
    for url in urls or [webui.url]:  # before the models' sha256 and the run folder, not when the WebUI is asked
        base_url(url, "webui.urls" if urls else "webui.url")
    if len(set(urls)) < len(urls):
        raise ConfigError(f"webui.urls names a WebUI twice: {urls}; each WebUI renders one trial at a time.")
    if folders and len(folders) != max(len(urls), 1):
        raise ConfigError(f"webui.checkpoint_dirs has {len(folders)} folders for {max(len(urls), 1)} WebUIs: give "
                          "one per URL of webui.urls, in the same order, or none to share webui.checkpoint_dir.")


def _check_webui_files(webui: WebUIConfig) -> None:
    """What the WebUI's client reads when it opens, said before the models' sha256 and the run folder: the
    credentials (a variable webui.auth_env names; user:password) and a ComfyUI workflow of the user's.
    Not on a cluster: there each host has its own environment and files."""
    credentials(webui, (ComfyApi if backend_of(webui.backend) == "comfyui" else ApiSession).credentials_form)
    if webui.comfyui_workflow and backend_of(webui.backend) != "a1111":
        load_workflow(webui.comfyui_workflow)


def _check_finalists(cfg: Config) -> None:
    """scorer.finalists, used only at the end of the night: a typo is said now."""
    if not cfg.scorer.finalists:
        return
    try:
        named_scorer(cfg.scorer, cfg.scorer.finalists)
    except ConfigError as error:
        raise ConfigError(f"scorer.finalists: {error}") from error
    if cfg.scorer.finalists_top_k < 1:
        raise ConfigError(f"scorer.finalists_top_k is {cfg.scorer.finalists_top_k}; it must be at least 1.")
    if not (cfg.save_images or needs_image_files(cfg.scorer)):
        raise ConfigError("scorer.finalists scores the top trials' saved images again, but save_images is false: "
                          "set save_images: true, or leave scorer.finalists unset.")


def _run_info(cfg: Config, run_id: str, merge: MergeInputs, space: SearchSpace, payloads: list[Payload],
              model_files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "version": __version__,
        "started_at": now(),
        "model_a": str(model_path(cfg.model_a)),
        "model_b": str(model_path(cfg.model_b)),
        "model_c": str(model_path(cfg.model_c)) if cfg.model_c else None,
        MODEL_FILES: model_files,
        "method": merge.method.name,
        "architecture": merge.architecture.label,
        "arch_name": merge.architecture.name,
        "blocks": list(merge.architecture.blocks),
        "uses_beta": space.uses_beta,
        "init_points": cfg.optimiser.init_points,
        "n_iters": cfg.optimiser.n_iters,
        "seed": cfg.run.seed,
        "scorer": cfg.scorer.name,
        "payloads": [p.name for p in payloads],
        PAYLOAD_WEIGHTS: {p.name: p.score_weight for p in payloads},
        "space": {"parameters": [asdict(p) for p in space.parameters], "frozen": dict(space.frozen)},
        "objective": _objective(cfg, payloads),
        SUGGESTIONS: {"acquisition": cfg.optimiser.acquisition, "xi": cfg.optimiser.xi, "kappa": cfg.optimiser.kappa},
        LIBRARIES: {**library_versions(), **_scoring_arithmetic(cfg)},
    }


def _scoring_arithmetic(cfg: Config) -> dict[str, str]:
    """What decides a score's last bits beside the images: torch's version and where the scorer runs (on a CPU
    its number of threads, among which torch splits a long sum: one image's embedding differed at 1, 2 and 4
    threads, and the suggestions after it). On a cluster the hosts score, each with its own."""
    import torch

    record = {"torch": torch.__version__}
    if cfg.cluster.address is None:
        device = resolve_device(cfg.scorer.device, "scorer device")
        record["scorer device"] = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else device.type
    return record


def _objective(cfg: Config, payloads: list[Payload]) -> dict[str, Any]:
    """What a score means beyond the models and the payload names: the requests as sent, the scorer,
    the merge's precision and clipping. A resume that changes one would mix two objectives in one log."""
    requests = [[p.name, dict(p.request), p.score_weight] for p in payloads]
    return {
        "payloads_sha256": hashlib.sha256(json.dumps(requests, sort_keys=True, default=str).encode()).hexdigest(),
        "scorer": scorer_identity(cfg.scorer),
        "merge": {"dtype": cfg.merge.dtype, "load_dtype": cfg.merge.load_dtype,
                  "weights_clip": cfg.merge.weights_clip, "prune": cfg.merge.prune},
    }
