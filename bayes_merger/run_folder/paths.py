"""The names of the files in a run folder (the format old run folders share)."""

RUN_FILE = "run.json"
TRIALS_FILE = "trials.jsonl"
# trials taken out of the trial log because their pictures were of another model (``TrialLog.retract``)
NOT_RENDERED_FILE = "trials.not-rendered.jsonl"
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
