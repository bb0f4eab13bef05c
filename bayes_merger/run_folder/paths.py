"""The names of the files in a run folder (the format old run folders share), the command that resumes one,
and the check the commands that read a finished run's trials make of the folder they are given."""

import os
import shlex
from pathlib import Path

from bayes_merger.config import hydra_value
from bayes_merger.errors import ConfigError

RUN_FILE = "run.json"
TRIALS_FILE = "trials.jsonl"
# trials taken out of the trial log because their pictures were of another model (``TrialLog.retract``)
NOT_RENDERED_FILE = "trials.not-rendered.jsonl"
# trials that failed before any trial of the run was scored, taken out of the trial log when the run stopped
# for them (a set-up fault: the even merge, the baseline, is redone on resume, not lost)
FAILED_AT_START_FILE = "trials.failed-at-start.jsonl"
# one line per WebUI lost with a trial in flight, over every session: a trial that keeps bringing WebUIs down
# is failed instead of being tried again on every resume
WEBUI_LOST_FILE = "trials.webui-lost.jsonl"
BEST_FILE = "best.yaml"
BEST_MERGE = "best.safetensors"
CONFIG_FILE = "config.yaml"
# the first line of the config.yaml a run saves (a config.yaml without it is the user's)
CONFIG_HEADER = "# the config of this run; resume it with:\n"
# the config a resume ran with when it is not the run's own (config.yaml, which the resume command names, is never
# overwritten): RESUMED_CONFIG.format(<time>); RESUMED_CONFIGS matches them all
RESUMED_CONFIG = "config.resumed-{}.yaml"
RESUMED_CONFIGS = RESUMED_CONFIG.format("*")
# held while a run works (liveness)
RUN_LOCK = ".run.lock"
IMAGES_DIR = "images"
# the manual scorer's ratings, when the run keeps them (resume finds them there)
MANUAL_RATINGS = "manual-ratings.json"
# the manual scorer's ratings of a re-score (bayes-merger-rescore), kept apart from the run's own
MANUAL_RATINGS_RESCORE = "manual-ratings-rescore.json"
CONVERGENCE_PNG = "convergence.png"
WEIGHTS_PNG = "weights.png"
IMPORTANCE_PNG = "importance.png"
REPORT_HTML = "report.html"


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in ``run_dir`` with its own config, to paste into a shell from any
    folder: absolute paths, quoted for the shell and, the folder, for Hydra's override grammar."""
    where = Path(os.path.abspath(run_dir))
    return f"bayes-merger --config {_shell_word(str(where / CONFIG_FILE))} {_shell_word('resume=' + hydra_value(str(where)))}"


def saved_configs(run_dir: Path) -> list[Path]:
    """The configs the run's sessions saved: its own, then each resume's that differed, oldest first."""
    return [path for path in [Path(run_dir) / CONFIG_FILE, *sorted(Path(run_dir).glob(RESUMED_CONFIGS))]
            if path.is_file()]


def check_trial_folder(run_dir: Path) -> None:
    """A ConfigError, in one sentence, unless ``run_dir`` is a folder with a trial log: what the report and
    bayes-merger-rescore read (a run folder is one with run.json, ``is_run_folder``; these need its trials)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder: give the path of a bayes-merger run folder.")
    if not (run_dir / TRIALS_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {TRIALS_FILE}: it is not a bayes-merger run folder, "
                          "or no trial of that run has finished yet.")


def _shell_word(word: str) -> str:
    # in double quotes where the shell reads nothing there: "resume='/my runs/x'" reads better than shlex's
    if shlex.quote(word) == word or any(c in word for c in '"$`\\!'):
        return shlex.quote(word)
    return f'"{word}"'
