"""One sentence for a config Hydra cannot compose: a wrong type in an override, an unknown key, a bad
group option or an unreadable override, which Hydra itself reports in several lines (``cli`` uses it)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigTypeError, OmegaConfBaseException, ValidationError

from bayes_merger.config import Config
from bayes_merger.errors import ConfigError


# a Python type of the schema, as a config value is written: one, and several
_TYPE_WORDS = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("a string", "strings")}


def _expected_type(key: str) -> str | None:
    """What the schema (``Config``) takes at a dotted key, in words; None where it takes anything or has no such key."""
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
    return _describe(hint, key)


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


def unknown_setting(key: str) -> ConfigError:
    """One sentence for a key the schema does not have, naming the closest one its section has."""
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


_MERGED_OVERRIDE = re.compile(r"^Error merging override [^=]+=(?P<value>.*)$")


def composition_error(error: ConfigCompositionException | OverrideParseException) -> ConfigError:
    """One sentence for what Hydra reports in several lines when the config or an override cannot be composed."""
    text = str(error).split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].rstrip(".") if lines else "The config cannot be composed"
    if isinstance(error, OverrideParseException):
        first = f"{error.override} cannot be read: {first}"
    cause = error.__cause__ or error.__context__  # a YAML file's wrong value comes as the context
    if isinstance(cause, ConfigAttributeError) and cause.full_key:
        section = str(cause.full_key).rpartition(".")[0]
        # a key missing from a section, not from a mapping setting (custom_ranges={…} without its +)
        if not section or (_expected_type(section) or "").startswith("a section"):
            return unknown_setting(str(cause.full_key))
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
