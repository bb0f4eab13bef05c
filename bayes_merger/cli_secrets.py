"""The WebUI password kept out of what bayes-merger and Hydra write and log.

``webui.auth=user:pass`` reaches the composed config and Hydra's records of the command line: the run's
``config.yaml`` (written by ``cli.save_config``), a sweep's ``multirun.yaml``, a ``.hydra/`` folder
where ``hydra.output_subdir`` is set, and the line Hydra's launcher logs before each job of a sweep.
Each gets the value nulled or shown as ``***``; the overnight runner hides it in the commands it logs
with ``redacted_override``. ``webui.auth_env`` (a variable's name) is not a secret.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bayes_merger.files import atomic_write_text

# set to 1 by a program of ours that reads the config --cfg job prints, password included (the overnight runner)
PRINT_SECRETS = "BAYES_MERGER_PRINT_SECRETS"
# never written to disk: the WebUI password
SECRET_KEYS = (("webui", "auth"),)
# a Hydra override of a key that ends in "auth" (webui.auth=u:p, +webui.auth=u:p); webui.auth_env names a variable.
# The overnight runner shows the commands it starts with these values hidden too.
SECRET_OVERRIDE = re.compile(r"^([^=\s]*auth=).*$", re.IGNORECASE | re.DOTALL)
# the logger of Hydra's own launcher, which prints each job's overrides ("#0 : webui.auth=u\:p ...")
_HYDRA_LAUNCHER_LOGGER = "hydra._internal.core_plugins.basic_launcher"


def without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as plain data) with every secret value set to None, in place; returned."""
    for section, key in SECRET_KEYS:
        if isinstance(data.get(section), dict) and data[section].get(key):
            data[section][key] = None
    return data


# an auth key's value inside a mapping override (webui={auth: u:p, url: …}); auth_env's is a variable's name
_SECRET_IN_MAPPING = re.compile(r"""(\bauth\s*:\s*)("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,}\s]+)""", re.IGNORECASE)
# in a line of several overrides (Hydra's launcher's): an auth key's value, quoted (spaces and all) or not
_SECRET_IN_LINE = re.compile(r"""((?:^|(?<=\s))[^=\s]*auth=)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|(?:\\\s|\S)+)""",
                             re.IGNORECASE)


def redacted_override(override: str) -> str:
    """``override`` with the value of an auth key shown as ``***`` (``webui.auth=***``, ``webui={auth: ***}``); any
    other as it is."""
    return _SECRET_IN_MAPPING.sub(r"\1***", SECRET_OVERRIDE.sub(r"\1***", override))


def hide_given_secrets(text: str, args: Sequence[str]) -> str:
    """``text`` (an error message that may quote an override) with the value of each auth override in ``args``, and
    its password alone, shown as ``***``."""
    for arg in args:
        if SECRET_OVERRIDE.match(arg):
            value = arg.split("=", 1)[1].strip("'\"")
            password = value.partition(":")[2]
            for secret in sorted({value, password} - {""}, key=len, reverse=True):
                text = text.replace(secret, "***")
    return text


def _redacted_words(line: str) -> str:
    """``line`` with each of its overrides redacted: Hydra joins them with spaces, escaping those in a value."""
    return _SECRET_IN_MAPPING.sub(r"\1***", _SECRET_IN_LINE.sub(r"\1***", line))


class _RedactedOverrides(logging.Filter):
    """Hides the WebUI password in the line Hydra's launcher logs before each job of a sweep."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = _redacted_words(message)
        if shown != message:
            record.msg, record.args = shown, ()
        return True


def hide_secrets_in_hydra_log() -> None:
    # a filter on the launcher's own logger, set before Hydra configures logging: dictConfig keeps it
    launcher = logging.getLogger(_HYDRA_LAUNCHER_LOGGER)
    if not any(isinstance(f, _RedactedOverrides) for f in launcher.filters):
        launcher.addFilter(_RedactedOverrides())


def _scrubbed(data: object) -> object:
    """A config file Hydra wrote, as plain data, with the WebUI password removed: the config's own value (nulled)
    and the overrides that set it, as given (``hydra.overrides``) and as joined into ``hydra.job.override_dirname``."""
    if isinstance(data, list):  # .hydra/overrides.yaml: the overrides alone
        return [redacted_override(o) if isinstance(o, str) else o for o in data]
    if not isinstance(data, dict):
        return data
    without_secrets(data)
    hydra_cfg = data.get("hydra") if isinstance(data.get("hydra"), dict) else {}
    overrides = hydra_cfg.get("overrides") if isinstance(hydra_cfg.get("overrides"), dict) else {}
    job = hydra_cfg.get("job") if isinstance(hydra_cfg.get("job"), dict) else {}
    dirname = job.get("override_dirname")
    kv_sep = str(((job.get("config") or {}).get("override_dirname") or {}).get("kv_sep", "="))
    for kind, given in overrides.items():
        if not isinstance(given, list):
            continue
        overrides[kind] = [redacted_override(o) if isinstance(o, str) else o for o in given]
        # override_dirname joins the overrides (sorted, some left out), every "=" in them turned into kv_sep
        for before, after in zip(given, overrides[kind]):
            if before != after and isinstance(dirname, str):
                dirname = dirname.replace(before.replace("=", kv_sep), after.replace("=", kv_sep))
    if isinstance(dirname, str):
        job["override_dirname"] = dirname
    return data


def _scrub_file(path: Path) -> None:
    try:
        loaded = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException):
        return
    data = OmegaConf.to_container(loaded, resolve=False)
    scrubbed = _scrubbed(OmegaConf.to_container(loaded, resolve=False))
    if scrubbed != data:  # a sweep's later jobs find multirun.yaml scrubbed already
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(scrubbed)))


def scrub_sweep_record(sweep_dir: Path) -> None:
    """The password out of a sweep's multirun.yaml, which Hydra writes before its first job: where no job
    reached the run (``scrub_hydra_files``), the sweep ended on a value Hydra could not compose for a job."""
    _scrub_file(Path(sweep_dir) / "multirun.yaml")


def scrub_hydra_files() -> None:
    """Hydra writes the composed config and the overrides as given, password included: a sweep's to <sweep
    dir>/multirun.yaml, a job's to <run dir>/<hydra.output_subdir> (config.yaml, hydra.yaml, overrides.yaml;
    conf/*.yaml set no such folder, a user may). Remove it from each, before the run starts."""
    hydra_cfg = HydraConfig.get()
    paths: list[Path] = []
    if hydra_cfg.mode == RunMode.MULTIRUN:
        paths.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    if hydra_cfg.output_subdir is not None:
        folder = Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)
        paths += [folder / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    for path in paths:
        _scrub_file(path)
