"""run.json: what a run is (models, method, architecture, budget, search space), and whether it finished.

Written atomically and durably when a run starts or resumes and when it finishes (``finished_at``).
Read strictly to resume (an unreadable file is an error) and tolerantly for the report and the
overnight runner (an unreadable file is "unknown").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from bayes_merger.errors import ConfigError
from bayes_merger.files import atomic_write_text, storage_errors
from bayes_merger.merge.fingerprint import Fingerprint
from bayes_merger.run_folder.paths import CONFIG_FILE, CONFIG_HEADER, RUN_FILE, RUN_LOCK, TRIALS_FILE, resume_command
from bayes_merger.run_folder.trials import ranked, read_trial_records, record_score

log = logging.getLogger(__name__)

# run.json fields that must match for a run folder to be resumed with a config
IDENTITY = ("model_a", "model_b", "model_c", "method", "seed", "init_points", "space", "payloads", "scorer")
# each model file's path, size, modification time and sha256 (merge/fingerprint.py), by "A", "B", "C": where
# a run recorded them, a resume is checked against the files, wherever they are now, not against the paths
MODEL_FILES = "model_files"
MODEL_KEYS = {"A": "model_a", "B": "model_b", "C": "model_c"}
# what a score means (payload requests, scorer, merge precision): resumed with another, the trials before
# and after would measure different things. Another version may record it differently: then a warning.
OBJECTIVE = "objective"
# the settings that decide a suggestion but not what a score means: a resume may change them, and is told
# what that changes
SUGGESTIONS = "suggestions"
# the versions of the libraries that decide a suggestion to the last bit (optimiser.NUMERIC_LIBRARIES), torch's
# and the scorer's device (with a CPU's number of threads), which decide a score's
LIBRARIES = "libraries"
# each payload's score_weight, so a re-score combines the payloads as the run did without its payload files
PAYLOAD_WEIGHTS = "payload_weights"
RESUMED_AT = "resumed_at"  # when each session after the first started
# why the last session stopped before its budget, where another program acts on it: WEBUI_LOST, no WebUI
# answered its trials any more (the overnight runner then restarts a WebUI it manages)
STOPPED_BY, WEBUI_LOST = "stopped_by", "webui_lost"


def model_before(info: Mapping[str, Any], webui: str, first: bool) -> str | None:
    """The model the WebUI named ``webui`` had before the run, as its run.json records it; None where unknown.

    ``webui_models_before`` (by WebUI name) is the whole record wherever a run kept it: a WebUI it does not
    name was not known to the run by that name, and is given no other WebUI's model. ``webui_model_before``
    is what a run of an older version kept for its one WebUI: read only where there is no record by WebUI,
    and only for the WebUI taken as that one (``first``)."""
    by_webui = info.get("webui_models_before")
    if isinstance(by_webui, Mapping) and by_webui:
        model = by_webui.get(webui)
    else:
        model = info.get("webui_model_before") if first else None
    return None if model is None else str(model)


def stopped_by_lost_webui(run_dir: Path) -> bool:
    return (load_run_info(run_dir) or {}).get(STOPPED_BY) == WEBUI_LOST


def write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Write run.json atomically and durably; a StorageError when it cannot be stored.

    Durably (synced before the rename): what it records must survive a power loss as written, never
    as an empty file, and it is written a few times a run, so the sync costs nothing that shows.
    """
    path = Path(run_dir) / RUN_FILE
    with storage_errors(path):
        atomic_write_text(path, json.dumps(info, indent=2), fsync=True)


def is_run_folder(run_dir: Path) -> bool:
    return (Path(run_dir) / RUN_FILE).is_file()


def foreign_files(run_dir: Path) -> list[str]:
    """What a folder holds beside what a start of a run leaves there (Hydra's job log, which it appends to,
    and its .hydra folder; the lock and the saved config): files a new run there would write over
    (best.safetensors, ...), sorted."""
    try:
        entries = sorted(Path(run_dir).iterdir())
    except FileNotFoundError:
        return []
    return [entry.name for entry in entries
            if entry.name not in (RUN_LOCK, ".hydra") and entry.suffix != ".log" and not is_saved_config(entry)]


def is_saved_config(path: Path) -> bool:
    """A config.yaml a run saved (a user's own has not its header)."""
    if path.name != CONFIG_FILE or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.read(len(CONFIG_HEADER)) == CONFIG_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """Strict, for resume: run.json as a dict, or a ConfigError saying why the run cannot be resumed."""
    try:
        info = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot resume {run_dir}: its {RUN_FILE} is unreadable ({error}).") from error
    if not isinstance(info, dict):
        raise ConfigError(f"Cannot resume {run_dir}: its {RUN_FILE} is not a JSON object.")
    return info


def load_run_info(run_dir: Path) -> dict[str, Any] | None:
    """Tolerant: run.json as a dict; None when it is missing, or unreadable (with a warning)."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("%s cannot be read (%s); what it says is unknown.", path, error)
        return None
    if not isinstance(info, dict):
        log.warning("%s is not a JSON object; what it says is unknown.", path)
        return None
    return info


def _difference(there: Any, now: Any) -> str:
    """A setting's value in the run and now, in words; for the search space, only what changed in it
    (the whole of it is 26 to 52 parameters)."""
    if isinstance(there, Mapping) and isinstance(now, Mapping) and "parameters" in there and "parameters" in now:
        def ranges(space: Mapping[str, Any]) -> dict[str, str]:
            found = {str(p.get("name")): f"[{p.get('lower'):g}, {p.get('upper'):g}]" for p in space["parameters"]}
            found.update({str(name): f"frozen at {value:g}" for name, value in (space.get("frozen") or {}).items()})
            return found

        old, new = ranges(there), ranges(now)
        changed = [f"{name} {old.get(name, 'absent')} there, {new.get(name, 'absent')} now"
                   for name in [*old, *(n for n in new if n not in old)] if old.get(name) != new.get(name)]
        if changed:
            return "; ".join(changed[:3]) + (f"; {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"{there!r} there, {now!r} now"


def check_resumable(previous: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse to resume a run folder with a config that differs in what defines the run."""
    normalise = lambda value: json.loads(json.dumps(value))  # noqa: E731 - tuples vs lists
    files = previous.get(MODEL_FILES)
    by_content = isinstance(files, Mapping)
    for key in IDENTITY:
        if by_content and key in MODEL_KEYS.values():
            continue
        if key in previous and normalise(previous[key]) != normalise(current[key]):
            raise ConfigError(
                f"Cannot resume {run_dir}: '{key}' differs from the run's ({_difference(previous[key], current[key])}). "
                f"Resume with the run's own config: {resume_command(run_dir)}"
            )
    if by_content:
        _check_same_model_files(files, current[MODEL_FILES], run_dir)
    if OBJECTIVE in previous:
        changed = _differences(normalise(previous[OBJECTIVE]), normalise(current[OBJECTIVE]))
        if changed:
            what = ", ".join("the payload requests" if c == "payloads_sha256" else c for c in changed)
            if previous.get("version") == current.get("version"):
                raise ConfigError(f"Cannot resume {run_dir}: what a score means changed ({what}), so the trials before "
                                  "and after would measure different things. Resume with the run's own config: "
                                  f"--config {Path(run_dir) / CONFIG_FILE}, or start a new run.")
            log.warning("Resuming %s, run by bayes-merger %s, whose record of what a score means differs (%s); "
                        "if the payloads, scorer or merge settings did change, start a new run instead.",
                        run_dir, previous.get("version"), what)


def _check_same_model_files(before: Mapping[str, Any], now: Mapping[str, Mapping[str, Any]], run_dir: Path) -> None:
    """Refuse a resume whose model files are not the run's (size and sha256); a file moved or copied
    elsewhere is the same file, and the run goes on with it there."""
    for model in sorted(set(before) | set(now)):
        then, found, key = before.get(model), now.get(model), MODEL_KEYS.get(model, model)
        if _file_identity(then) != _file_identity(found):
            raise ConfigError(f"Cannot resume {run_dir}: {key} is not the file its trials were merged from "
                              f"({_said(found)} now; the run's, {_said(then)}). Give that file as {key}, or start a "
                              "new run.")
        if then.get("path") != found["path"]:
            log.info("%s is %s now, where the run had %s: the same file (sha256 %s), so the run goes on with it.",
                     key, found["path"], then.get("path"), found["sha256"][:12])


def _file_identity(record: Any) -> tuple[Any, Any] | None:
    return (record.get("size"), record.get("sha256")) if isinstance(record, Mapping) else None


def _said(record: Any) -> str:
    if not isinstance(record, Mapping):
        return "none"
    return f"{record.get('path')}: {Fingerprint(record.get('size'), str(record.get('sha256') or '')).describe()}"


def note_changed_suggestions(previous: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path) -> None:
    """Warn when a resume suggests with other optimiser settings, or other versions of the libraries that decide
    a suggestion, than the run had (older folders: unknown)."""
    before, now = previous.get(SUGGESTIONS), current[SUGGESTIONS]
    if isinstance(before, Mapping):
        changed = [f"optimiser.{key} {now.get(key)!r} (was {before.get(key)!r})"
                   for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
        if changed:
            log.warning("Resuming %s with %s: the finished trials are kept, and the next ones are suggested with these "
                        "settings, so they differ from what the run would have suggested.", run_dir, ", ".join(changed))
    before, now = previous.get(LIBRARIES), current[LIBRARIES]
    if isinstance(before, Mapping):
        changed = [f"{name} {now[name]} (was {before[name]})" for name in sorted(now)
                   if name in before and before[name] != now[name]]
        if changed:
            log.warning("Resuming %s with %s: the finished trials are kept, but the next ones may differ from what the "
                        "run would have suggested (another version's arithmetic, or the scorer's on another device or "
                        "number of threads, can differ in the last bits).", run_dir, ", ".join(changed))


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The entries of two records (one level of nesting: ``part.key``) that differ."""
    found = []
    for part in sorted(set(before) | set(now)):
        a, b = before.get(part), now.get(part)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += [f"{part}.{key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        elif a != b:
            found.append(part)
    return found


def unfinished(base: Path) -> Path | None:
    """The newest run folder under ``base`` whose run.json has no ``finished_at``."""
    found = []
    for folder in Path(base).iterdir() if Path(base).is_dir() else ():
        info = load_run_info(folder) if folder.is_dir() else None
        if info is not None and not info.get("finished_at"):
            found.append((str(info.get("started_at") or ""), folder.name, folder))
    return max(found)[2] if found else None


def describe(run_dir: Path) -> str:
    """'7 of 60 trials, best 6.1234, finished' from a run folder's files."""
    info = load_run_info(run_dir) or {}
    records = read_trial_records(Path(run_dir) / TRIALS_FILE)
    best = ranked(records, record_score, lambda record: 0)
    budget = (info.get("init_points") or 0) + (info.get("n_iters") or 0)
    best_text = f", best {record_score(best[0]):.4f}" if best else ""
    state = "finished" if info.get("finished_at") else "unfinished"
    return f"{len(records)} of {budget or '?'} trials{best_text}, {state}"

