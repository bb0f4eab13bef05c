"""The structured configuration: one dataclass per section, registered with Hydra's ConfigStore.

A YAML config names the schema ``bayes_merger`` first in its defaults list, so an unknown key or a
wrong type is rejected by OmegaConf while the config is composed, naming the key. Checks that need
more than types (bounds, files, method vs models) live in ``validate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class MergeConfig:
    method: str = "weighted_sum"
    # "auto" is CUDA when available, else CPU; "cpu", "cuda", "cuda:1" … are taken as they are.
    device: str = "auto"
    # clamp every merged value to [min(a, b), max(a, b)] (the seed tool's never-applied option)
    weights_clip: bool = False
    # precision of each trial's merge file handed to the WebUI: fp16, bf16 or fp32
    dtype: str = "fp16"
    # keep only UNet, VAE and text-encoder keys in saved files (drops EMA and other extras)
    prune: bool = True
    # precision the models are held and merged in (fp16, bf16, fp32); None keeps model A's
    # (fp16 halves the memory of fp32 checkpoints); a bf16 A saved as fp16 is held in fp16
    load_dtype: Optional[str] = None


@dataclass
class WebUIConfig:
    url: str = "http://127.0.0.1:7860"
    # "user:password" for --api-auth; prefer auth_env, the name of an environment variable holding it
    auth: Optional[str] = None
    auth_env: Optional[str] = None
    # where we write each trial's merge; the WebUI must scan this folder (its --ckpt-dir or a
    # subfolder of models/Stable-diffusion); it may see it under another path
    checkpoint_dir: str = MISSING
    connect_timeout: float = 10.0
    # generation and model loads can take minutes
    read_timeout: float = 900.0
    retries: int = 5
    backoff_factor: float = 1.0
    # how long to wait for the API to answer at start-up, in seconds
    ready_timeout: float = 120.0
    # seconds between polls of GET /sdapi/v1/progress while waiting for the WebUI to start
    poll_interval: float = 2.0
    # how many of the previous trials' merge files to keep in checkpoint_dir (0: delete each)
    keep_last: int = 0
    # while the WebUI renders one trial, suggest, merge and write the next beside it (two trials in
    # flight per WebUI; one more staged merge file in the checkpoint folder; each suggestion then
    # knows every score but the previous trial's)
    pipeline: bool = False
    # several WebUIs, one trial (two, pipelined) in flight on each: their URLs (empty: just `url`)
    urls: List[str] = field(default_factory=list)
    # their checkpoint folders, in the order of `urls` (empty: all share checkpoint_dir)
    checkpoint_dirs: List[str] = field(default_factory=list)
    # the server at url: a1111 (also Forge, reForge, SD.Next), comfyui, or auto (ask the server)
    backend: str = "a1111"
    # ComfyUI only. How each trial's merge reaches it: graph (weighted_sum merged inside the graph by
    # ModelMergeSD1/SDXL + CLIPMergeSimple, no file), file (written into checkpoint_dir, a sub-folder
    # of ComfyUI's models/checkpoints), or auto (where both can be taken, one trial timed each way
    # before trial 0 and the faster kept in run.json; else the one that can)
    comfyui_handoff: str = "auto"
    # ComfyUI, in the graph: models A and B as ComfyUI lists them (null: found by their file names)
    comfyui_model_a: Optional[str] = None
    comfyui_model_b: Optional[str] = None
    # ComfyUI: an API-format workflow JSON with {{model}}, {{prompt}}, {{negative}}, {{seed}}, …
    # placeholders, instead of the built-in text-to-image graph
    comfyui_workflow: Optional[str] = None


@dataclass
class PayloadsConfig:
    # a folder of payload YAML files (the original tool's format) or one file with a list
    dir: str = "payloads"
    wildcards_dir: Optional[str] = None
    # txt2img fields applied to every payload unless the payload sets them
    defaults: Dict[str, Any] = field(default_factory=dict)
    # payloads with seed: -1 are refused unless this is true (they make the objective noisy)
    allow_random_seeds: bool = False


@dataclass
class ScorerConfig:
    # laion, chad, aesthetic_head, aesthetic_v25, pickscore, hpsv2, manual, or ensemble (several, see `ensemble`)
    name: str = "laion"
    # the CLIP image model: a Hugging Face id or a local folder (config.json, model.safetensors, …)
    clip: str = "openai/clip-vit-large-patch14"
    # a local head file (.pth or .safetensors) instead of the downloaded one
    head: Optional[str] = None
    # where downloaded heads are kept (default: $XDG_CACHE_HOME/bayes-merger or ~/.cache/bayes-merger)
    cache_dir: Optional[str] = None
    device: str = "auto"
    batch_size: int = 8
    # how per-payload means become the objective: arithmetic, geometric or quadratic
    combine: str = "arithmetic"
    # with name: ensemble, {scorer name: weight}: each image scores the weighted mean of these
    # scorers' scores, e.g. {laion: 1.0, chad: 0.5}; they share one CLIP and this section's settings
    ensemble: Dict[str, float] = field(default_factory=dict)
    # manual scoring: the JSON file each rating is saved to as it is typed (resumable; default
    # manual-ratings.json in the working directory — the run sets one in its run folder)
    manual_ratings: Optional[str] = None
    # manual scoring: open each image in the system viewer (false, or no display: only print its path)
    manual_viewer: bool = True
    # pickscore, hpsv2: the CLIP tokenizer for the prompts (a Hugging Face id or a local folder)
    tokenizer: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    # aesthetic_v25: the SigLIP image model (a Hugging Face id or a local folder)
    siglip: str = "google/siglip-so400m-patch14-384"
    # finalists: at the end of a run, re-score the top finalists_top_k trials' saved images with this
    # scorer (a name, e.g. pickscore; null: off) into rescore-<name>.jsonl and the report
    finalists: Optional[str] = None
    finalists_top_k: int = 5


@dataclass
class OptimiserConfig:
    init_points: int = 10
    n_iters: int = 50
    # ei (expected improvement, in log space), ucb or poi; see bayes_merger/optimiser/
    acquisition: str = "ei"
    kappa: float = 2.576
    # in score units, so any fixed margin is the wrong size for some scorer (0.01 is a sixth of HPS
    # v2's range) and, once the remaining gains are smaller than it, sends every suggestion exploring
    # (bench_optimiser, 20 seeds: ξ = 0.01 → 0 took the median regret to 0.97× at 40 trials, 0.64× at 80)
    xi: float = 0.0
    # default bounds of every parameter
    lower: float = 0.0
    upper: float = 1.0
    # per-parameter ranges, e.g. {IN00: [0.2, 0.8]} (names: BASE/IN00/… or base_alpha/block_0_alpha)
    # (List[Any]: OmegaConf refuses an integer in a List[float], so [0, 1] is checked as numbers in space.py)
    custom_ranges: Dict[str, List[Any]] = field(default_factory=dict)
    # parameters held at a value, e.g. {BASE: 0.0, OUT11_beta: 0.5}
    frozen: Dict[str, float] = field(default_factory=dict)
    # parameters that move together, e.g. [[IN00, IN01, IN02], [OUT09, OUT10, OUT11]]
    groups: List[List[str]] = field(default_factory=list)
    # trial 0, the baseline the report measures the gain against: null is the centre of every range
    # (the even merge); or a mapping {IN00: 0.3, …} (weights not named stay at their centre); or an
    # MBW string of one number per block, "0.5,0.3,…" (26 for SD1/SD2, 20 for SDXL; twice as many
    # with β: the α values, then the β values)
    start: Any = None


@dataclass
class RunSettings:
    # one seed for the whole run: initial points, payload seeds, wildcards
    seed: int = 42
    # where runs go: each run gets its own folder below it (Hydra's run dir)
    dir: str = "runs"
    # stop the run (resumable) after this many failed trials in a row, rather than burn the budget
    max_consecutive_failures: int = 3


@dataclass
class ClusterConfig:
    # the Ray cluster whose hosts run the trials on their own WebUIs (pip install 'bayes-merger[ray]'):
    # null (no Ray: the WebUIs of `webui` on this machine), auto (the cluster this machine belongs to),
    # or the head's host:port
    address: Optional[str] = None


@dataclass
class Config:
    model_a: str = MISSING
    model_b: str = MISSING
    model_c: Optional[str] = None
    # a previous run folder to continue until its budget is spent
    resume: Optional[str] = None
    save_images: bool = True
    save_best: bool = True
    # 16 (the dtype fp16) or 32; bf16 is also accepted
    best_precision: str = "16"
    best_format: str = "safetensors"
    run: RunSettings = field(default_factory=RunSettings)
    merge: MergeConfig = field(default_factory=MergeConfig)
    webui: WebUIConfig = field(default_factory=WebUIConfig)
    payloads: PayloadsConfig = field(default_factory=PayloadsConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # the offline demo: generate tiny models and start the fake WebUI in-process
    demo: bool = False


# Hydra's settings for a run: its folder (a resume's own; else under run.dir, named by the time, method and scorer),
# a sweep's, no .hydra folder (bayes-merger saves its config without the WebUI password), the log's name, and the
# password left out of override_dirname (Hydra's idiom hydra.sweep.subdir=${hydra.job.override_dirname} named a
# job's folder after it)
HYDRA_SETTINGS: dict[str, Any] = {
    "run": {"dir": "${bm_run_dir:${resume},${run.dir},${merge.method},${scorer.name}}"},
    "sweep": {"dir": "${bm_sweep_dir:${run.dir},${now:%Y-%m-%d_%H-%M-%S}}",
              "subdir": "${hydra.job.num}_${merge.method}_${scorer.name}"},
    "output_subdir": None,
    "job": {"name": "bayes-merger", "chdir": False, "config": {"override_dirname": {"exclude_keys": ["webui.auth"]}}},
}


def register_configs() -> None:
    """``bayes_merger``, what every config builds on: the typed settings and Hydra's settings for a run, so that a
    config of one's own (``defaults: [bayes_merger, _self_]``) runs in the same folders as conf/run.yaml."""
    store = ConfigStore.instance()
    store.store(name="bayes_merger_settings", node=Config)
    store.store(name="bayes_merger_hydra", node={"hydra": HYDRA_SETTINGS})
    store.store(name="bayes_merger", node={"defaults": ["bayes_merger_settings", "bayes_merger_hydra", "_self_"]})


def hydra_value(value: str) -> str:
    """A value for a Hydra override, quoted when it holds characters Hydra's grammar would read (its
    unquoted values are ASCII: a folder such as /home/jérôme must be quoted)."""
    if all((c.isascii() and c.isalnum()) or c in "/._-+:@%" for c in value):
        return value
    # in a quoted value a backslash is literal, except before a quote (or the closing quote)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"
