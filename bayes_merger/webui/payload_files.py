"""Payload files: finding them (a folder, a cargo file, a list file), reading their YAML, and each payload's raw fields.

What is read here is checked for form only (mappings, names, the files a cargo file lists); the
fields themselves are checked and resolved into requests in ``payloads``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bayes_merger.errors import ConfigError
from bayes_merger.files import yaml_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layer:
    """Fields from one place, with the label used in messages about them."""

    fields: Mapping[str, Any]
    label: str  # a file path, or "payloads.defaults (config)"
    kind: str  # "file_defaults", "config_defaults" or "payload"


@dataclass(frozen=True)
class RawPayload:
    """One payload as found: its name, its own fields, and the defaults of the file that lists it."""

    name: str
    own: Layer
    file_defaults: Layer | None


def discover(path: Path) -> tuple[list[RawPayload], Path]:
    """The payloads under ``path`` (a folder or a file) and the folder that holds the payload set."""
    if not path.exists():
        raise ConfigError(f"payloads.dir {path} does not exist.")
    if path.is_file():
        return _from_file(path, _read_yaml(path), direct=True), path.parent
    cargo = _cargo_file(path)
    if cargo is not None:
        log.info("Payloads: using %s and the payload files it lists.", cargo)
        return _from_cargo(cargo, _read_yaml(cargo)), cargo.parent
    files = sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml") and ".tmpl." not in p.name
    )
    if not files:
        hint = ""
        if (path / "cargo").is_dir():
            hint = f" (its cargo/ subfolder may: point payloads.dir at {path / 'cargo'})"
        raise ConfigError(f"payloads.dir {path} holds no payload files (*.yaml){hint}.")
    raws: list[RawPayload] = []
    for file in files:
        raws.extend(_from_file(file, _read_yaml(file), direct=False))
    return raws, path


def _cargo_file(folder: Path) -> Path | None:
    """The original tool's cargo file for a folder: inside it, or beside it when the folder is cargo/."""
    candidates = [folder / "cargo.yaml", folder / "cargo.yml"]
    if folder.name == "cargo":
        candidates += [folder.parent / "cargo.yaml", folder.parent / "cargo.yml"]
    return next((c for c in candidates if c.is_file()), None)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read payload file {path}: {exc}.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"payload file {path} is not valid YAML{yaml_problem(exc)}.") from None


def _from_file(path: Path, data: Any, *, direct: bool) -> list[RawPayload]:
    if data is None:
        raise ConfigError(f"payload file {path} is empty.")
    if not isinstance(data, Mapping):
        raise ConfigError(f"payload file {path} must hold a mapping, not a {type(data).__name__}.")
    if isinstance(data.get("payloads"), list):
        return _from_list(path, data)
    if direct and isinstance(data.get("defaults"), list):
        return _from_cargo(path, data)
    return _from_payload_file(path, data, file_defaults=None)


def _from_list(path: Path, data: Mapping[str, Any]) -> list[RawPayload]:
    """The list form: ``defaults:`` (optional) and ``payloads:``, a list of mappings with a ``name``."""
    extra = sorted(str(k) for k in data if k not in ("defaults", "payloads"))
    if extra:
        raise ConfigError(
            f"{path}: unknown top-level key '{extra[0]}'; a payload list file holds only "
            "'defaults' and 'payloads'."
        )
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{path}: 'defaults' must be a mapping of txt2img fields.")
    file_defaults = Layer(_string_keys(defaults, path), str(path), "file_defaults")
    if not data["payloads"]:
        raise ConfigError(f"{path}: 'payloads' is an empty list.")
    raws = []
    for index, item in enumerate(data["payloads"], start=1):
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"{path}: payload #{index} in 'payloads' must be a mapping with a name and a prompt."
            )
        fields = _string_keys(item, path)
        name = fields.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{path}: payload #{index} in 'payloads' needs a 'name' (text), got {name!r}.")
        raws.append(RawPayload(_check_name(name, path), Layer(fields, str(path), "payload"), file_defaults))
    return raws


def _from_cargo(path: Path, data: Mapping[str, Any]) -> list[RawPayload]:
    """The original tool's cargo file: its Hydra defaults list names the payloads, the rest are defaults."""
    names = _cargo_names(path, data.get("defaults"))
    inline = data.get("cargo")
    defaults = {k: v for k, v in _string_keys(data, path).items() if k not in ("defaults", "cargo")}
    file_defaults = Layer(defaults, str(path), "file_defaults")
    raws: list[RawPayload] = []
    folder = path.parent / "cargo"
    for name in names:
        if ".." in name.split("/"):
            raise ConfigError(f"{path}: payload entry '{name}' must stay inside {folder}.")
        file = next((f for f in (folder / f"{name}.yaml", folder / f"{name}.yml") if f.is_file()), None)
        if file is None:
            expected = folder / f"{name}.yaml"
            raise ConfigError(f"{path} lists the payload '{name}', but {expected} does not exist.")
        raws.extend(_from_payload_file(file, _read_yaml(file), file_defaults))
    # A composed config (what Hydra made of the cargo) may carry the payloads inline under cargo:.
    if isinstance(inline, Mapping):
        raws.extend(_from_payload_file(path, inline, file_defaults))
    if not raws:
        raise ConfigError(f"{path} lists no payloads: add them under 'defaults: [{{cargo: [name, ...]}}]'.")
    return raws


def _cargo_names(path: Path, entries: Any) -> list[str]:
    names: list[str] = []
    for entry in entries or []:
        if entry == "_self_":
            continue
        if isinstance(entry, str) and entry.startswith("cargo/"):
            names.append(entry[len("cargo/"):])
        elif isinstance(entry, Mapping) and "cargo" in entry:
            listed = entry["cargo"]
            listed = [listed] if isinstance(listed, str) else listed
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise ConfigError(
                    f"{path}: 'cargo' in the defaults list must be a payload name or a list of names."
                )
            names.extend(listed)
        else:
            log.warning("%s: defaults entry %r is not a payload list; ignored.", path, entry)
    return names


def _from_payload_file(path: Path, data: Any, file_defaults: Layer | None) -> list[RawPayload]:
    """One payload file: ``name: {fields}`` (the original format), or bare fields named by the file."""
    if data is None:
        raise ConfigError(f"payload file {path} is empty.")
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"payload file {path} must hold a mapping 'name: {{prompt: ..., ...}}'.")
    data = _string_keys(data, path)
    if "prompt" in data and not isinstance(data["prompt"], Mapping):
        # The oldest versions of the original tool: fields at the top, the file names the payload.
        return [RawPayload(_check_name(path.stem, path), Layer(data, str(path), "payload"), file_defaults)]
    raws = []
    for name, fields in data.items():
        if not isinstance(fields, Mapping):
            raise ConfigError(
                f"{path}: top-level key '{name}' should be a payload name holding its txt2img fields "
                f"(prompt, steps, ...), not a {type(fields).__name__}."
            )
        own = Layer(_string_keys(fields, path), str(path), "payload")
        raws.append(RawPayload(_check_name(name, path), own, file_defaults))
    return raws


def _string_keys(data: Mapping[Any, Any], path: Path) -> dict[str, Any]:
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} must be text (a field or payload name).")
    return dict(data)


def _check_name(name: str, path: Path) -> str:
    # Names become parts of image file names and keys of the trial log.
    bad = not name or len(name) > 100 or name != name.strip() or name.startswith(".")
    if bad or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise ConfigError(
            f"{path}: payload name {name!r} must be 1-100 characters without slashes or a leading dot."
        )
    return name


def check_unique(raws: Sequence[RawPayload]) -> None:
    # by the name in any case: images are named by it, and Windows and macOS take t0001-Portrait-00.png and
    # t0001-portrait-00.png for one file
    seen: dict[str, tuple[str, str]] = {}  # the name as written, and where it is defined
    for raw in raws:
        first = seen.get(raw.name.casefold())
        if first is not None and first[0] == raw.name:
            where = f"in {first[1]}" if first[1] == raw.own.label else f"in {first[1]} and in {raw.own.label}"
            raise ConfigError(f"payload name '{raw.name}' is defined twice, {where}.")
        if first is not None:
            raise ConfigError(f"payload names '{first[0]}' and '{raw.name}' differ only in case: their images would be "
                              "one file on Windows and macOS; rename one.")
        seen[raw.name.casefold()] = (raw.name, raw.own.label)
