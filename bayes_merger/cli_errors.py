"""One sentence for a config Hydra cannot compose: a wrong type in an override, an unknown key, a bad
group option or an unreadable override, which Hydra itself reports in several lines (``cli`` uses it)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Iterable, Iterator

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, ConfigTypeError, OmegaConfBaseException,
                             ValidationError)

from bayes_merger.cli_help import GROUPS
from bayes_merger.config import Config
from bayes_merger.errors import ConfigError


# a Python type of the schema, as a config value is written: one, and several
_TYPE_WORDS = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("a string", "strings")}


def _schema_type(key: str) -> Any:
    """The type the schema (``Config``) gives a dotted key; None where it has no such key."""
    hint: Any = Config
    for part in key.split("."):
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            if part not in hints:
                return None
            hint = hints[part]
        elif origin is dict and len(args) == 2:
            hint = args[1]
        elif origin is list and args and part.isdigit():
            hint = args[0]
        else:
            return None
    return hint


def _expected_type(key: str) -> str | None:
    """What the schema (``Config``) takes at a dotted key, in words; None where it takes anything or has no such key."""
    hint = _schema_type(key)
    return None if hint is None else _describe(hint, key)


def unknown_keys(cfg: Any, schema: Any = Config, prefix: str = "") -> list[str]:
    """The dotted keys of a composed config (a DictConfig) that the schema and its sections do not have:
    Hydra lets ``+key=value`` add one, as its own message for a misspelt key suggests."""
    hints = typing.get_type_hints(schema)
    found = []
    for key in cfg.keys():
        if key not in hints:
            found.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]) and hasattr(cfg.get(key), "keys"):
            found += unknown_keys(cfg[key], hints[key], f"{prefix}{key}.")
    return found


def integer_for_true_or_false(given: Iterable[tuple[str, Any]]) -> ConfigError | None:
    """One sentence for the first integer other than 0 and 1 given (dotted key, value as written) to a
    true/false setting: OmegaConf takes any integer there, ``weights_clip: 2`` as true, where it refuses
    ``maybe`` and 0.5."""
    for key, value in given:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if (whole or isinstance(value, str) and value.lstrip("+-").isdigit()) and int(value) not in (0, 1) \
                and _schema_type(key) is bool:
            return ConfigError(f"{key} must be true or false, not {value!r}.")
    return None


def dotted_settings(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """A config file's settings as (dotted key, value), Hydra's own (``defaults``, ``hydra``) left out."""
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        if prefix or key not in ("defaults", "hydra"):
            if isinstance(value, dict):
                yield from dotted_settings(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value


# The flat settings of sd-webui-bayesian-merger (2023), which its users bring in their configs and habits:
# the setting that does that job here (None: none does), and a word on it
FORMER_SETTINGS: dict[str, tuple[str | None, str]] = {
    "url": ("webui.url", ""),
    "merge_mode": ("merge.method", ""),
    "device": ("merge.device", ""),
    "work_device": ("merge.device", "the models are merged where they are held"),
    "weights_clip": ("merge.weights_clip", ""),
    "prune": ("merge.prune", ""),
    "threads": (None, "torch sets its own threads"),
    "rebasin": (None, "re-basin is not offered"),
    "bounds_transformer": (None, "the optimiser's trust region narrows the search itself"),
    "latin_hypercube_sampling": (None, "the first optimiser.init_points trials are always a Latin hypercube"),
    "guided_optimisation": (None, "optimiser.frozen, optimiser.custom_ranges and optimiser.groups apply whenever set"),
    "optimisation_guide": ("optimiser.frozen, optimiser.custom_ranges and optimiser.groups", ""),
    "frozen_params": ("optimiser.frozen", ""),
    "custom_ranges": ("optimiser.custom_ranges", ""),
    "groups": ("optimiser.groups", ""),
    "init_points": ("optimiser.init_points", ""),
    "n_iters": ("optimiser.n_iters", ""),
    "batch_size": ("payloads.defaults.batch_size", "on the command line +payloads.defaults.batch_size=N"),
    "save_imgs": ("save_images", ""),
    "scorer_method": ("scorer.name", ""),
    "scorer_device": ("scorer.device", ""),
    "scorer_model_dir": ("scorer.cache_dir", ""),
    "wildcards_dir": ("payloads.wildcards_dir", ""),
    "run_name": (None, "a run's folder is named by run.dir, its time, merge method and scorer"),
    "draw_unet_weights": (None, "every run's report draws its weights"),
    "draw_unet_base_alpha": (None, "every run's report draws its weights"),
}
# the config groups of sd-webui-bayesian-merger its config's defaults list named (its optimiser's is said apart)
FORMER_OPTIMISERS = ("bayes", "tpe", "atpe")
FORMER_GROUPS: dict[str, str] = {
    "payloads": "payloads.dir names the folder of payload files",
    "optimisation_guide": "optimiser.frozen, optimiser.custom_ranges and optimiser.groups",
}


def former_settings(tree: Any) -> list[str]:
    """What of sd-webui-bayesian-merger's a config file (its YAML, as read) holds, each in words: its settings at
    the top, and its groups in the defaults list."""
    if not isinstance(tree, dict):
        return []
    said = []
    for key in tree:
        if key in FORMER_SETTINGS:
            setting, word = FORMER_SETTINGS[key]
            said.append(f"{key} ({setting} here)" if setting else f"{key} (none here: {word})")
    defaults = tree.get("defaults")
    for entry in defaults if isinstance(defaults, list) else ():
        for group in entry if isinstance(entry, dict) else ():
            if group in FORMER_GROUPS:
                said.append(f"the group {group} in its defaults (here {FORMER_GROUPS[group]})")
    if tree.get("optimiser") in FORMER_OPTIMISERS:  # ours is a group of presets of one optimiser
        said.append(f"optimiser {tree['optimiser']} (here one Gaussian process, its preset optimiser=default|quick|thorough)")
    return said


def unknown_setting(key: str) -> ConfigError:
    """One sentence for a key the schema does not have: what sd-webui-bayesian-merger's setting of that
    name is here, else the closest key its section has."""
    if key in FORMER_SETTINGS:
        setting, word = FORMER_SETTINGS[key]
        if setting is None:
            return ConfigError(f"{key}, a setting of sd-webui-bayesian-merger, has no counterpart in bayes-merger: "
                               f"{word}.")
        return ConfigError(f"{key} is sd-webui-bayesian-merger's name for {setting}{f' ({word})' if word else ''} in "
                           "bayes-merger; bayes-merger --help lists the settings.")
    section, _, name = key.rpartition(".")
    schema: Any = Config
    for part in filter(None, section.split(".")):
        schema = typing.get_type_hints(schema).get(part)
    names = list(typing.get_type_hints(schema)) if dataclasses.is_dataclass(schema) else []
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {'.'.join(filter(None, [section, close[0]]))}?" if close else "a misspelling?"
    return ConfigError(f"{key} is not a setting of bayes-merger ({hint}); bayes-merger --help lists them.")


def _describe(hint: Any, key: str) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [arg for arg in args if arg is not type(None)]
        described = _describe(inner[0], key) if len(inner) == 1 else None
        return f"{described} or null" if described else None
    if hint in _TYPE_WORDS:
        return _TYPE_WORDS[hint][0]
    # the items' type too: a list whose item is wrong is named by the list's key
    items = f" of {_TYPE_WORDS[args[-1]][1]}" if args and args[-1] in _TYPE_WORDS else ""
    if origin is list or hint is list:
        return f"a list{items} ([a, b])"
    if origin is dict or hint is dict:
        return f"a mapping{items} ({{name: value}})"
    if dataclasses.is_dataclass(hint):
        return f"a section ({key}.<setting>=...)"
    return None


# sd-webui-bayesian-merger's optimiser choice (optimiser: bayes|tpe|atpe), asked of the group of that name
_FORMER_OPTIMISER = re.compile(r"(?:Could not find 'optimiser/|OptimiserConfig\. value: )"
                               rf"(?P<name>{'|'.join(FORMER_OPTIMISERS)})\b")
_MERGED_OVERRIDE = re.compile(r"^Error merging override [^=]+=(?P<value>.*)$")


# what a setting described so (``_describe``) must be in a config file's YAML
_KINDS = {"a section": dict, "a mapping": dict, "a list": list}


def kind_mismatch(tree: Any, prefix: str = "") -> ConfigError | None:
    """The first setting of a config file (its YAML, as read) whose kind the schema does not take: a value where a
    section or a mapping goes, a mapping where a list goes, and so on — what Hydra says as "Merge error: str is not a
    subclass of ScorerConfig … full_key:", without the key."""
    if not isinstance(tree, dict):
        return None
    for key, value in tree.items():
        if not prefix and key in ("defaults", "hydra"):
            continue
        dotted, expected = f"{prefix}{key}", _expected_type(f"{prefix}{key}")
        if expected is None or (value is None and expected.endswith("or null")):
            continue
        kind = next((kind for words, kind in _KINDS.items() if expected.startswith(words)), None)
        if kind is not None and not isinstance(value, kind):
            group = (f" (a preset of conf/{key}/ is chosen in the defaults list, `- {key}: {value}`, or on the "
                     f"command line, {key}={value})") if not prefix and key in GROUPS \
                and isinstance(value, str) else ""
            return ConfigError(f"{dotted} must be {expected}, not {value!r}{group}.")
        if expected.startswith("a section"):
            found = kind_mismatch(value, f"{dotted}.")
            if found is not None:
                return found
    return None


def composition_error(error: ConfigCompositionException | OverrideParseException, tree: Any = None) -> ConfigError:
    """One sentence for what Hydra reports in several lines when the config or an override cannot be composed
    (``tree``: the --config file's YAML, where Hydra's own message does not name the setting it could not merge)."""
    text = str(error).split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].rstrip(".") if lines else "The config cannot be composed"
    if isinstance(error, OverrideParseException):
        first = f"{error.override} cannot be read: {first}"
    cause = error.__cause__ or error.__context__  # a YAML file's wrong value comes as the context
    former = _FORMER_OPTIMISER.search(text if isinstance(error, MissingConfigException) else str(cause or ""))
    if former:
        return ConfigError(
            f"optimiser {former['name']} is sd-webui-bayesian-merger's; bayes-merger's optimiser is one Gaussian "
            "process (the README's benchmark compares it with TPE), and optimiser=default|quick|thorough picks its preset."
        )
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        section = str(cause.full_key).rpartition(".")[0]
        # a key missing from a section, not from a mapping setting (custom_ranges={…} without its +)
        if not section or (_expected_type(section) or "").startswith("a section"):
            return unknown_setting(str(cause.full_key))
    if isinstance(cause, (ValidationError, ConfigTypeError)) and not cause.full_key:
        found = kind_mismatch(tree)
        if found is not None:
            return found
    if isinstance(cause, (ValidationError, ConfigTypeError)) and cause.full_key:
        expected = _expected_type(str(cause.full_key))
        if expected is not None:
            typed = _MERGED_OVERRIDE.match(first)
            value = repr(cause.value) if cause.value is not None else typed["value"] if typed else None
            return ConfigError(f"{cause.full_key} must be {expected}" + (f", not {value}." if value else "."))
    if isinstance(error, MissingConfigException) and error.options:
        return ConfigError(f"{first}; the options are {', '.join(error.options)}.")
    lines = [first] + lines[1:]
    if isinstance(cause, OmegaConfBaseException):
        lines.insert(1, str(cause.msg or cause).splitlines()[0])
    return ConfigError("; ".join(line.rstrip(".") for line in lines[:4]) + ".")
