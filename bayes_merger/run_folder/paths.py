"""The names of the files in a run folder (the format old run folders share), and the command that resumes one."""

import os
import shlex
from pathlib import Path

from bayes_merger.config import hydra_value

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
# held while a run works (liveness)
RUN_LOCK = ".run.lock"
IMAGES_DIR = "images"
# the manual scorer's ratings, when the run keeps them (resume finds them there)
MANUAL_RATINGS = "manual-ratings.json"
CONVERGENCE_PNG = "convergence.png"
WEIGHTS_PNG = "weights.png"
IMPORTANCE_PNG = "importance.png"
REPORT_HTML = "report.html"


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in ``run_dir`` with its own config, to paste into a shell from any
    folder: absolute paths, quoted for the shell and, the folder, for Hydra's override grammar."""
    where = Path(os.path.abspath(run_dir))
    return f"bayes-merger --config {_shell_word(str(where / CONFIG_FILE))} {_shell_word('resume=' + hydra_value(str(where)))}"


def _shell_word(word: str) -> str:
    # in double quotes where the shell reads nothing there: "resume='/my runs/x'" reads better than shlex's
    if shlex.quote(word) == word or any(c in word for c in '"$`\\!'):
        return shlex.quote(word)
    return f'"{word}"'
