"""The ``bayes-merger`` command: ``--config PATH`` → a Hydra app, overrides, exit codes.

``--config conf/run.yaml`` is rewritten into Hydra's ``--config-path <dir> --config-name run``
before Hydra parses the command line, so every Hydra flag (``--cfg job``, ``-m``, overrides) works
as usual. Expected failures (bad input, an unreachable WebUI) end in one logged sentence and a
non-zero exit code; only bugs show a traceback. A config Hydra cannot compose (a wrong type in an
override, an unknown key) is bad input too: one sentence, exit 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from bayes_merger import __version__
from bayes_merger.cli_errors import (composition_error, dotted_settings, former_settings, integer_for_true_or_false,
                                     unknown_keys, unknown_setting)
from bayes_merger.cli_secrets import (PRINT_SECRETS, SECRET_OVERRIDE, hide_given_secrets, hide_secrets_in_hydra_log,
                                      redacted_override, scrub_hydra_files, scrub_sweep_record, without_secrets)
from bayes_merger.cli_help import USAGE, help_text
from bayes_merger.config import HYDRA_SETTINGS, Config, hydra_value, register_configs
from bayes_merger.errors import BayesMergerError, ConfigError, Interrupted
from bayes_merger.files import atomic_write_text, storage_errors, yaml_problem
from bayes_merger.run_folder.paths import (BEST_FILE, CONFIG_FILE, CONFIG_HEADER, RESUMED_CONFIG, TRIALS_FILE,
                                           resume_command, saved_configs)
from bayes_merger.run_folder.run_info import is_run_folder, is_saved_config

log = logging.getLogger("bayes_merger")


# Hydra's settings for a run (config.HYDRA_SETTINGS, which bayes_merger carries), written out in a saved config too
HYDRA_BLOCK = "\n" + OmegaConf.to_yaml(OmegaConf.create({"hydra": HYDRA_SETTINGS}))


def rewrite_config_flag(argv: Sequence[str]) -> list[str]:
    """``--config a/b/run.yaml`` (or ``--config=...``) → ``--config-path /abs/a/b --config-name run``."""
    args = list(argv)
    if sum(arg == "--config" or arg.startswith("--config=") for arg in args) > 1:  # else argparse's usage dump
        raise ConfigError("--config is given more than once: give one config file (a file may build on another in "
                          "its folder, `defaults: [run, _self_]`).")
    for i, arg in enumerate(args):
        if arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value:
                raise ConfigError("--config needs the path of a YAML config file, e.g. --config conf/run.yaml.")
            path = Path(value).expanduser().resolve()
            if path.is_dir():
                raise ConfigError(f"--config {value} is a folder: give the config file in it, e.g. --config "
                                  f"{Path(value) / 'run.yaml'}.")
            if not path.is_file():
                raise ConfigError(f"Config file {value} does not exist.")
            if path.suffix != ".yaml":  # Hydra looks for <name>.yaml: X.yml would read X.yaml beside it, or nothing
                raise ConfigError(f"--config {value}: Hydra reads only .yaml files; rename it to {path.stem}.yaml.")
            former = former_settings(_yaml_of(path))
            if former:  # all at once: one refusal a key took a start each to mend an old config
                raise ConfigError(f"--config {value} holds what sd-webui-bayesian-merger calls its settings: "
                                  f"{', '.join(former)}; bayes-merger --help lists the settings.")
            if builds_on_schema(path) is False:  # else a traceback at the first setting read, Hydra's folder left
                raise ConfigError(f"--config {value} does not build on bayes-merger's settings: {NAME_THE_SCHEMA}.")
            end = i + 1 if "=" in arg else i + 2
            return args[:i] + ["--config-path", str(path.parent), "--config-name", path.stem] + args[end:]
    return args


# the typed settings every config builds on (config.register_configs), and what to write to build on them
SCHEMA = "bayes_merger"
NAME_THE_SCHEMA = (f"begin it with `defaults: [{SCHEMA}, _self_]`, as conf/run.yaml does, so that a setting it leaves out "
                   "takes its default and a misspelt one is refused")


def _yaml_of(path: Path) -> Any:
    """A config file as YAML reads it; None where it cannot be read (Hydra says why)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _config_file_given(args: Sequence[str]) -> Any:
    """The YAML of the config file Hydra was given (--config-path, --config-name), as read; None where unknown."""
    def value(*flags: str) -> str | None:
        return next((b for a, b in zip(args, args[1:]) if a in flags), None)

    folder, name = value("--config-path", "-cp"), value("--config-name", "-cn")
    return _yaml_of(Path(folder).expanduser() / f"{name}.yaml") if folder and name else None


def builds_on_schema(path: Path, seen: frozenset[Path] = frozenset()) -> bool | None:
    """Whether a config file's defaults list names bayes-merger's settings, or another config file of its folder
    that does; None where that cannot be told (a file that is not YAML, which Hydra says, or names one not there)."""
    tree = _yaml_of(path)
    if tree is None:
        return None
    defaults = tree.get("defaults") if isinstance(tree, dict) else None
    untold = False
    for entry in defaults if isinstance(defaults, list) else ():
        if not isinstance(entry, str) or entry == "_self_":  # {group: option}: one of our groups' files
            continue
        name = entry.strip().lstrip("/")
        if name == SCHEMA:
            return True
        other = (path.parent / f"{name}.yaml").resolve()
        found = None if other in seen or not other.is_file() else builds_on_schema(other, seen | {path})
        if found:
            return True
        untold = untold or found is None
    return None if untold else False


# an override's value that is one path in the user's home, ~ or ~/… (no list, sweep, quote or interpolation of
# Hydra's); not ~name, another user's home: a password beginning with ~ stays as it was typed
_HOME_PATH = re.compile(r"~(/[^,\[\]{}()'\"\\$]*)?")


def expand_home(args: Sequence[str]) -> list[str]:
    """``run.dir=~/runs`` → the folder in the user's home. Hydra's grammar reads no unquoted ``~``, and a
    shell expands it only after a ``NAME=`` that could be a variable (bash: ``model_a=~/…``, not ``run.dir=~/…``;
    zsh: neither), so the path the user meant reached Hydra as its parse error."""
    expanded = []
    for arg in args:
        key, equals, value = arg.partition("=")
        if equals and not arg.startswith("-") and _HOME_PATH.fullmatch(value):
            arg = f"{key}={hydra_value(os.path.expanduser(value))}"
        expanded.append(arg)
    return expanded


def _run_dir(resume: str | None, base: str, method: str, scorer: str) -> str:
    if resume:
        path = Path(resume).expanduser()
    else:
        # run.dir: ~/runs in a config file: Hydra would make a folder named ~ in the current one
        path = Path(base).expanduser() / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{method}_{scorer}"
        candidate, number = path, 1
        while candidate.exists():  # two runs started in the same second get their own folders
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")
        path = candidate
    # Hydra makes it, for its log: a refused start or a mistyped resume= must not leave it behind
    _note_made(path, _MADE_FOR_START)
    return str(path)


def _sweep_dir(base: str, started: str) -> str:
    """A sweep's folder, ``<run.dir>/multirun/<its start>`` (``started``: Hydra's cached ``now``, the same for
    each of its jobs); what it makes is noted, as ``_run_dir`` notes a run's, for a sweep whose jobs all ended
    before their runs began."""
    path = Path(base).expanduser() / "multirun" / started
    _note_made(path, _MADE_FOR_SWEEP)
    _SWEEP_DIRS.add(path.absolute())
    return str(path)


def _note_made(path: Path, made: dict[Path, Path]) -> None:
    """Notes in ``made`` the topmost folder that making ``path`` would make, if it does not exist yet."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    if missing:
        made.setdefault(path.absolute(), missing[-1].absolute())


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bm_run_dir"):
        OmegaConf.register_new_resolver("bm_run_dir", _run_dir)
    if not OmegaConf.has_resolver("bm_sweep_dir"):
        OmegaConf.register_new_resolver("bm_sweep_dir", _sweep_dir)


def _given_settings() -> Iterator[tuple[str, Any]]:
    """The settings as the user wrote them, in the config file and the overrides, before OmegaConf made
    them the schema's types (the group files its defaults name are ours)."""
    hydra_config = HydraConfig.get()
    for source in hydra_config.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            path = Path(source.path) / f"{hydra_config.job.config_name}.yaml"
            try:
                tree = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):  # Hydra read it: a file changed since is not ours to judge
                tree = None
            yield from dotted_settings(tree)
    given = OmegaConf.to_container(hydra_config.overrides.task, resolve=False)  # as typed: ${oc.env:…} unresolved
    for override in OverridesParser.create().parse_overrides([str(o) for o in given]):
        if not override.is_delete():
            yield override.key_or_group, override.value()


def _first_line(error: OmegaConfBaseException) -> str:
    """An OmegaConf error's message without the lines of keys and types it adds."""
    lines = str(getattr(error, "msg", None) or error).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__


def to_config(cfg: DictConfig) -> Config:
    if OmegaConf.get_type(cfg) is not Config:  # a config composed without the schema (Hydra's own flags)
        raise ConfigError(f"The config does not build on bayes-merger's settings: {NAME_THE_SCHEMA}.")
    unknown = unknown_keys(cfg)
    if unknown:  # added with Hydra's +, as its own error message suggests for a misspelt key: it would be ignored
        raise unknown_setting(unknown[0])
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key} is required: set it in the config or on the command line ({error.full_key}=...).") from error
    except InterpolationResolutionError as error:  # ${oc.env:UNSET}: one line, with the setting that asks for it
        raise ConfigError(f"{error.full_key} cannot be resolved: {_first_line(error)}.") from error
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid config: {error.msg}") from error


def save_config(cfg: DictConfig, run_dir: Path, resuming: bool) -> Path:
    """The composed config, secrets removed, loadable again with ``--config`` (to resume), written atomically.

    A resume keeps the config it ran with beside the run's own, as ``config.resumed-<time>.yaml``: the
    run's ``config.yaml``, which the resume command names, is never overwritten. A config that one of
    the folder's files already holds word for word is not written again, so a run resumed over and
    over with one config (the overnight runner, retries) does not gather a file per attempt.
    """
    data = _absolute_paths(without_secrets(OmegaConf.to_container(cfg, resolve=True)))
    data["resume"] = None
    # absolute, as Hydra names a new run's folder: resume=runs/<run> then writes the same header
    text = CONFIG_HEADER + f"#   {resume_command(run_dir)}\n"
    text += "defaults:\n  - bayes_merger\n  - _self_\n\n" + OmegaConf.to_yaml(OmegaConf.create(data)) + HYDRA_BLOCK
    if resuming:
        same = next((path for path in saved_configs(run_dir) if _text_of(path) == text), None)
        if same is not None:
            return same
    name = CONFIG_FILE if not resuming else RESUMED_CONFIG.format(f"{datetime.now():%Y%m%d-%H%M%S}")
    path = run_dir / name
    # never overwrite what a user already has; but the config.yaml of a start that was refused before its
    # run began (no run.json: the WebUI was down, say) is ours and no run's: this start's replaces it, or
    # the resume command would read the refused start's settings
    if path.exists() and (resuming or is_run_folder(run_dir) or not is_saved_config(path)):
        return path
    with storage_errors(path):
        run_dir.mkdir(parents=True, exist_ok=True)
        # the resume command needs this file: a kill during the write must not leave half of it
        atomic_write_text(path, text, fsync=True)
    return path


# the settings that name files and folders: written absolute, so that the resume command the run prints reads
# them from any folder (relative, they were read against the folder it is pasted in). Not scorer.clip, siglip
# and tokenizer: Hugging Face ids as often as folders, and recorded as written in what a score means
_PATH_SETTINGS = ("model_a", "model_b", "model_c", "run.dir", "webui.checkpoint_dir", "webui.checkpoint_dirs",
                  "webui.comfyui_workflow", "payloads.dir", "payloads.wildcards_dir", "scorer.head", "scorer.cache_dir",
                  "scorer.manual_ratings")


def _absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(item) for item in value]
        if not isinstance(value, str) or not value or value == "???":
            return value
        return str(Path(value).expanduser().absolute())

    for key in _PATH_SETTINGS:
        *parents, name = key.split(".")
        section = data
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and name in section:
            section[name] = absolute(section[name])
    return data


def _text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@contextmanager
def _stop_on_signals() -> Iterator[tuple[threading.Event, threading.Event]]:
    """(stop, begun): once the trials have begun (``begun`` set), the first Ctrl-C, SIGTERM or SIGHUP lets the
    trials in flight finish (``stop``) and a second Ctrl-C stops at once. Before, there is nothing to finish:
    the first stops at once (it would have waited out webui.ready_timeout or the models' loading).

    SIGHUP too: a closed terminal or ``systemctl kill -s HUP`` would otherwise kill the run mid-trial,
    the trial lost and the WebUI left on our merge."""
    stop, begun = threading.Event(), threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set() or not begun.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("Stopping after the trial in flight (%s); press Ctrl-C again to stop now.", signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield stop, begun
        return
    signums = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, request_stop) for signum in signums}
    try:
        yield stop, begun
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# set once Hydra has made the run folder and handed over: an OSError before it is Hydra's, making that folder
_TASK_STARTED = threading.Event()
# the exit codes of a sweep's jobs that failed (-m): the sweep exits with the first, once every job has run
_SWEEP_FAILURES: list[int] = []
# a run folder (or resume= folder) that did not exist → the topmost folder Hydra made for it, for its log
_MADE_FOR_START: dict[Path, Path] = {}
# the same for a sweep's folder (-m): its jobs' folders are made in it
_MADE_FOR_SWEEP: dict[Path, Path] = {}
# every sweep folder of this command (ours, or hydra.sweep.dir given on the command line): its multirun.yaml is
# scrubbed of the password at the end, whatever ended the sweep
_SWEEP_DIRS: set[Path] = set()
# --check: check the config and its inputs, then end without starting the run
_CHECK_ONLY = threading.Event()


def _remove_made_folder(run_dir: Path) -> None:
    """Remove the folders Hydra made for a start that was refused before its run began, with the log it
    began there: the sentence was said, and a folder per refused attempt would look like runs. A folder
    holding anything else (the config a start saved to be resumed with) stays whole."""
    run_dir = run_dir.absolute()
    # a sweep's job: its folder made in the sweep's, the sweep's own left for the sweep's end (_remove_made_sweep)
    top = run_dir if run_dir.parent in _MADE_FOR_SWEEP else _MADE_FOR_START.get(run_dir)
    if top is None:  # not made for this start: the user's, or named by them (hydra.run.dir)
        return
    _remove_up_to(run_dir, top, lambda file: file.suffix == ".log")


def _remove_made_sweep() -> None:
    """At a sweep's end, the folders made for it when none of its jobs began a run: only Hydra's
    multirun.yaml (the sweep's record) is left in it then, every job's folder having gone."""
    for sweep_dir, top in _MADE_FOR_SWEEP.items():
        _remove_up_to(sweep_dir, top, lambda file: file.name == "multirun.yaml")


def _remove_up_to(folder: Path, top: Path, goes: Callable[[Path], bool]) -> None:
    """``folder`` with its files when each is a file that ``goes``, then its parents up to ``top`` while they
    are empty; else nothing."""
    try:
        entries = list(folder.iterdir())
        if not all(entry.is_file() and goes(entry) for entry in entries):
            return
        for file in entries:
            file.unlink()
    except OSError:
        return
    for made in (folder, *folder.parents):
        try:
            made.rmdir()  # only while empty: nothing but what this start made goes
        except OSError:
            return
        if made == top:
            return


def _check_only(config: Config, run_dir: Path) -> None:
    """``--check``: the checks a start makes before it reads the models whole or asks the WebUI, said in one
    line with what they leave to the start; nothing is written (the folder Hydra made for the log goes)."""
    from bayes_merger.inputs import Checked, check_resumable_without_reading, check_without_reading

    def check(config: Config) -> Checked:
        checked = check_without_reading(config, run_dir)
        if config.resume:  # the overnight runner's first attempt: a config edited since, before its WebUI starts
            check_resumable_without_reading(config, run_dir, checked)
        return checked

    if config.demo:  # the demo's models are made by its environment, which also starts its fake WebUI
        from bayes_merger.testing.demo import demo_environment

        with demo_environment(config) as demo_config:
            checked = check(demo_config)
    else:
        checked = check(config)
    _remove_made_folder(run_dir)
    merge = checked.merge
    fetch = f"to download at the start: {', '.join(checked.to_fetch)}" if checked.to_fetch else ""
    if config.cluster.address:
        weights = "its weights on the cluster's hosts" + (f"; the finalists' here, {fetch}" if fetch else "")
    else:
        weights = fetch or "its weights here"
    log.info("The config and its inputs are fine: %s models %s, %s, %d weights to search, %d payloads, scorer %s (%s). "
             "Left to the start: the WebUI (and that it lists what is written to its checkpoint folder), the "
             "models' sha256 and the scorer's weights loaded%s.",
             merge.architecture.label, ", ".join(f"{model} {path.name}" for model, path in merge.models.items()),
             merge.method.name, len(checked.space.parameters), len(checked.payloads), config.scorer.name, weights,
             " (and that the resumed run's model files are its own, by their sha256)" if config.resume else "")


def _end_job(exit_code: int) -> None:
    """A failed job: the exit now, or in a sweep the sweep's exit once its other jobs have run (a bad value
    of one job, said only when Hydra composes it, ended the sweep there, the jobs after it never run). A
    stop the user asked for (Ctrl-C) ends the sweep."""
    if HydraConfig.get().mode != RunMode.MULTIRUN or exit_code == Interrupted.exit_code:
        sys.exit(exit_code)
    _SWEEP_FAILURES.append(exit_code)


def _task(cfg: DictConfig) -> None:
    _TASK_STARTED.set()

    try:
        scrub_hydra_files()  # first: a Ctrl-C during the import below left the password in .hydra/
        # imported here so that --help and config errors stay fast; seconds long (torch, matplotlib), so a
        # Ctrl-C may come during it
        from bayes_merger.run import run

        error = integer_for_true_or_false(_given_settings())
        if error:
            raise error
        config = to_config(cfg)
        # a resumed run continues in its own folder, whatever the config's hydra.run.dir says
        run_dir = Path(config.resume).expanduser() if config.resume else Path(HydraConfig.get().runtime.output_dir)
        if config.resume and not is_run_folder(run_dir):
            if run_dir.absolute() in _MADE_FOR_START:
                raise ConfigError(f"resume={config.resume}: there is no such folder; give the folder of the run to "
                                  "continue.")
            if not is_saved_config(run_dir / CONFIG_FILE):
                raise ConfigError(f"resume={config.resume} is not a run folder (it has no run.json): give the folder "
                                  "of the run to continue.")
            # a start refused before its run began (the WebUI was down, Ctrl-C) saved the config that says to
            # resume it: that starts it, in its folder
            config = dataclasses.replace(config, resume=None)
        if _CHECK_ONLY.is_set():
            _check_only(config, run_dir)
            return

        # saved once the run's checks pass, so a refused start or resume leaves no config file; the demo's is the
        # one given, not the one with its fake WebUI's port, new at every start: a resume starts the fake
        # again, and its config is then the same
        def accepted() -> Path:
            return save_config(cfg, run_dir, config.resume is not None)

        with _stop_on_signals() as (stop, begun):
            if config.demo:
                from bayes_merger.testing.demo import demo_environment

                with demo_environment(config) as demo_config:
                    result = run(demo_config, run_dir, stop, accepted, begun.set)
            else:
                result = run(config, run_dir, stop, accepted, begun.set)
    except BayesMergerError as error:
        log.error("%s", error)
        _remove_made_folder(Path(HydraConfig.get().runtime.output_dir))
        _end_job(error.exit_code)
        return
    except KeyboardInterrupt:
        folder = Path(HydraConfig.get().runtime.output_dir)
        if is_run_folder(folder) and (folder / TRIALS_FILE).exists():
            log.error("Interrupted. Every finished trial is saved; resume with: %s", resume_command(folder))
        elif is_saved_config(folder / CONFIG_FILE):
            log.error("Interrupted before the run began; start it with: %s", resume_command(folder))
        else:
            log.error("Interrupted before the run began: start it again.")
            _remove_made_folder(folder)
        sys.exit(Interrupted.exit_code)
    if result.best is None:
        log.error("No trial succeeded; see the errors in %s", result.run_dir)
        _end_job(1)
        return
    log.info("Best score %.4f (trial %d); weights in %s", result.best.score, result.best.trial, result.run_dir / BEST_FILE)


# Hydra's flags that name a config, and those that need none
_CONFIG_FLAGS = ("--config", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
_HYDRA_ONLY = ("--hydra-help", "--info", "-i", "--shell-completion", "-sc")


# Hydra's flags that print the composed config (--info with it), and the setting that logs it
_PRINTS_CONFIG = ("--cfg", "-c", "--info", "-i")


def without_printed_secrets(args: Sequence[str]) -> list[str]:
    """``args`` with the WebUI password shown as ``***`` where Hydra prints the config (``--cfg job``, ``--info``,
    ``hydra.verbose``), which users paste into reports: the value is not needed to print it, given on the command
    line or in the config file (``args`` as ``rewrite_config_flag`` leaves them)."""
    args = list(args)
    if os.environ.get(PRINT_SECRETS) == "1":  # the overnight runner reads the password it starts the WebUI with
        return args
    if not any(a.split("=", 1)[0] in _PRINTS_CONFIG or a.lstrip("+").startswith("hydra.verbose") for a in args):
        return args
    shown = [a if a.startswith("-") else redacted_override(a) for a in args]
    tree = _config_file_given(args)
    webui = tree.get("webui") if isinstance(tree, dict) else None
    if isinstance(webui, dict) and webui.get("auth") and not any(SECRET_OVERRIDE.match(a) for a in shown):
        shown.insert(0, "webui.auth=***")  # first: --info takes the word after it as its own
    return shown


def _print_and_exit(text: str) -> None:
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `bayes-merger --help | head`: the reader had all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush fails no more
    sys.exit(0)


def _own_flags(args: Sequence[str]) -> None:
    """--help, --version, and no config at all: answered here, before Hydra."""
    if "--help" in args or "-h" in args:
        _print_and_exit(help_text())
    if "--version" in args:
        _print_and_exit(f"bayes-merger {__version__}")
    names_config = any(a.split("=", 1)[0] in _CONFIG_FLAGS for a in args)
    if not names_config and not any(a in _HYDRA_ONLY for a in args):
        print(USAGE, file=sys.stderr)
        print("bayes-merger: a config is needed, e.g. --config conf/run.yaml (bayes-merger --help says more).",
              file=sys.stderr)
        sys.exit(2)


@contextmanager
def _composition_errors_raised() -> Iterator[None]:
    """Hydra prints an error it meets in composing the config as lines of its own and exits 1; with
    HYDRA_FULL_ERROR set it raises it instead, to be turned into one sentence. A user who set the
    variable asked for Hydra's full report, and gets it."""
    if "HYDRA_FULL_ERROR" in os.environ:
        yield
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        try:
            yield
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    except (ConfigCompositionException, OverrideParseException) as error:  # may quote the override as it was given
        said = composition_error(error, _config_file_given(sys.argv[1:]))
        raise ConfigError(hide_given_secrets(str(said), sys.argv[1:])) from error
    except yaml.YAMLError as error:  # a config file that is not YAML; a payload file's is said by the payloads
        raise ConfigError(f"A config file is not valid YAML{yaml_problem(error)}.") from error
    except OmegaConfBaseException as error:  # Hydra resolving its own settings (an old hydra.run.dir's ${run_name})
        if _TASK_STARTED.is_set():
            raise
        where = f"{error.full_key} cannot be resolved: " if getattr(error, "full_key", None) else ""
        raise ConfigError(f"{where}{_first_line(error)}.") from error


def main(argv: Sequence[str] | None = None) -> None:
    _TASK_STARTED.clear()
    _SWEEP_FAILURES.clear()
    _MADE_FOR_START.clear()
    _MADE_FOR_SWEEP.clear()
    _SWEEP_DIRS.clear()
    args = sys.argv[1:] if argv is None else list(argv)
    _CHECK_ONLY.clear()
    if "--check" in args:  # ours, not Hydra's: taken out before Hydra reads the command line
        _CHECK_ONLY.set()
        args = [arg for arg in args if arg != "--check"]
    _own_flags(args)
    try:
        printing = next((arg for arg in args if arg.split("=", 1)[0] in _PRINTS_CONFIG), None)
        if _CHECK_ONLY.is_set() and printing:  # Hydra would print the config, and the check never run
            raise ConfigError(f"--check and {printing} together: Hydra prints the config without running the check; "
                              "give one of them.")
        args = expand_home(without_printed_secrets(rewrite_config_flag(args)))
        register_configs()
        register_resolvers()
        hide_secrets_in_hydra_log()
        sys.argv = [sys.argv[0] if sys.argv else "bayes-merger"] + args
        _SWEEP_DIRS.update(Path(arg.split("=", 1)[1]).absolute() for arg in args
                           if arg.lstrip("+").startswith("hydra.sweep.dir="))
        try:
            with _composition_errors_raised():
                hydra.main(version_base=None, config_path=None, config_name=None)(_task)()
        finally:
            for sweep_dir in _SWEEP_DIRS:  # a job Hydra could not compose ended the sweep before its task
                scrub_sweep_record(sweep_dir)
            _remove_made_sweep()
        if _SWEEP_FAILURES:
            log.error("%d of the sweep's jobs failed; see their errors above.", len(_SWEEP_FAILURES))
            sys.exit(_SWEEP_FAILURES[0])
    except OSError as error:
        if _TASK_STARTED.is_set() or not error.filename:
            raise
        # Hydra making the run folder (hydra.run.dir, run.dir or resume=) where a file is, or cannot be made
        logging.basicConfig(format="bayes-merger: %(message)s")
        log.error("The run folder %s cannot be made (%s): check run.dir, hydra.run.dir or resume=.",
                  error.filename, error.strerror or error)
        sys.exit(ConfigError.exit_code)
    except ValueError as error:
        # Hydra's log file in the run folder cannot be opened (a folder resumed as another user than made it)
        cause = error.__cause__
        if _TASK_STARTED.is_set() or not isinstance(cause, OSError) or not cause.filename:
            raise
        logging.basicConfig(format="bayes-merger: %(message)s")
        log.error("The run's log %s cannot be written (%s): the run folder must be one this user can write.",
                  cause.filename, cause.strerror or cause)
        sys.exit(ConfigError.exit_code)
    except ConfigError as error:  # before Hydra set up logging: the task's own errors end in _task
        logging.basicConfig(format="bayes-merger: %(message)s")
        log.error("%s", error)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
