"""What ``bayes-merger --help`` prints: usage, the config groups, the main options with their
defaults (those of ``conf/run.yaml`` when it is beside the package, else the schema's), examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

USAGE = "usage: bayes-merger --config FILE [KEY=VALUE ...] [GROUP=OPTION ...] [-m] [--check | --cfg job] | --help | --version"

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# the config groups and their options when conf/ is not beside the package (conf/<group>/*.yaml)
GROUPS = {
    "optimiser": ("default", "quick", "thorough"),
    "scorer": ("aesthetic_v25", "chad", "ensemble", "hpsv2", "laion", "manual", "pickscore", "preference"),
    "merge": ("weighted_sum", "add_difference"),
}

MAIN_OPTIONS = (
    ("model_a", "the first checkpoint (.safetensors; .ckpt through torch's weights-only loader)"),
    ("model_b", "the second checkpoint"),
    ("model_c", "the base model of add_difference and the other three-model methods"),
    ("merge.method", "weighted_sum, add_difference, sum_twice, triple_sum, tensor_sum, ..."),
    ("webui.url", "the WebUI started with --api (--nowebui: port 7861)"),
    ("webui.checkpoint_dir", "a folder the WebUI scans; each trial's merge is written there, then deleted"),
    ("webui.auth_env", "an environment variable holding user:password for --api-auth"),
    ("webui.keep_last", "previous merge files kept in checkpoint_dir"),
    ("optimiser.init_points", "initial points (trial 0 is the even merge)"),
    ("optimiser.n_iters", "Gaussian-process suggestions after them"),
    ("scorer.name", "laion, chad, aesthetic_head, aesthetic_v25, pickscore, hpsv2, manual or ensemble"),
    ("payloads.dir", "a folder of payload files or one list file"),
    ("run.dir", "each run gets its own folder below it"),
    ("run.seed", "seeds the initial points, payload seeds and wildcards"),
    ("run.max_consecutive_failures", "stop (resumable) after this many failed trials in a row on one WebUI "
                                     "(broken merges not counted once a trial has been scored)"),
    ("resume", "a run folder to continue until its budget is spent"),
    ("save_best", "save the best merge as <run>/best.safetensors"),
)

EXAMPLES = """\
Examples:
  a run:     bayes-merger --config conf/run.yaml model_a=/m/a.safetensors model_b=/m/b.safetensors \\
                 webui.checkpoint_dir=/sd/models/Stable-diffusion/bayes-merger optimiser=thorough
  a resume:  bayes-merger --config runs/<run>/config.yaml resume=runs/<run>
  a sweep:   bayes-merger --config conf/run.yaml -m merge.method=weighted_sum,add_difference model_c=/m/base.safetensors
  the demo:  bayes-merger --config conf/demo.yaml      (offline: tiny models, a fake WebUI, no GPU)
  check a command's config and inputs (not the WebUI), without running it: add --check
  the config a command composes, without running it: add --cfg job"""


def _defaults() -> tuple[Any, str]:
    """The composed config of conf/run.yaml (or the schema's defaults) and where it came from."""
    from bayes_merger.config import Config, register_configs

    run_yaml = CONF_DIR / "run.yaml"
    if run_yaml.is_file():
        try:
            from hydra import compose, initialize_config_dir

            register_configs()
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
                return compose("run"), "conf/run.yaml"
        except Exception:  # noqa: BLE001 - a broken template must not break --help; the schema says the rest
            pass
    return OmegaConf.structured(Config), "the built-in schema"


def _value(cfg: Any, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if OmegaConf.is_missing(node, leaf):
        return "required"
    value = OmegaConf.select(cfg, key)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _groups() -> dict[str, tuple[str, ...]]:
    found = {group: tuple(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))) for group in GROUPS}
    return {group: found[group] or options for group, options in GROUPS.items()}


def _group_defaults() -> dict[str, str]:
    """GROUP → the option conf/run.yaml's defaults list picks (default, laion, weighted_sum without it)."""
    chosen = {"optimiser": "default", "scorer": "laion", "merge": "weighted_sum"}
    try:
        import yaml

        for entry in yaml.safe_load((CONF_DIR / "run.yaml").read_text(encoding="utf-8")).get("defaults", []):
            if isinstance(entry, dict):
                chosen.update({str(k): str(v) for k, v in entry.items() if k in GROUPS})
    except (OSError, ValueError, AttributeError):
        pass
    return chosen


def help_text() -> str:
    cfg, source = _defaults()
    lines = [USAGE, "",
             "Find the best block weights for a Stable Diffusion checkpoint merge: a Gaussian-process optimiser",
             "proposes weights, bayes-merger merges the checkpoints, a running WebUI renders your payloads with",
             "the merge, a scorer rates the images. Every finished trial is saved; a stopped run resumes.", "",
             "Flags:",
             "  --config FILE      the YAML config: conf/run.yaml (every option documented), or a run's config.yaml",
             "  -m, --multirun     a sweep: one run per combination of comma-separated values",
             "  --check            check the config and its inputs (models, payloads, scorer) without running",
             "  --cfg job          print the composed config and run nothing",
             "  --version          the version of bayes-merger", "",
             "Config groups (GROUP=OPTION):"]
    chosen = _group_defaults()
    for group, options in _groups().items():
        lines.append(f"  {group:<10} {' | '.join(options)}  (default: {chosen[group]})")
    lines += ["", f"Main options (KEY=VALUE; defaults from {source}):"]
    width = max(len(key) for key, _ in MAIN_OPTIONS)
    for key, what in MAIN_OPTIONS:
        lines.append(f"  {key:<{width}}  {_value(cfg, key):<24} {what}")
    lines += ["", EXAMPLES, "",
              "Exit codes: 0 done, 1 no trial succeeded, 2 bad config or command line, 3 a checkpoint cannot be read",
              "or merged, 4 the WebUI, 5 the scorer's weights, 6 stopped before the budget (resume it), 130 Ctrl-C."]
    return "\n".join(lines)
