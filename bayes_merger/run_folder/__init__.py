"""The run folder: its file names, the trial log, run.json, best.yaml and the trials' images.

Every name in a run folder is a constant of this package (``paths.py``; rescore-<scorer>.jsonl's prefix in
``rescores.py``), and whatever reads or writes one takes it from there. The run's records (the trial log,
run.json, best.yaml, the images, the re-scores) are read and written by this package: the loop writes them
and reads them strictly for resume; the report reads them tolerantly (folders still being written or left
by older versions); the overnight runner reads which run to resume. The other files are written where they
are made, under these names: the plots and report.html (``bayes_merger.report``), the saved configs
(``cli.save_config``), best.safetensors (``run.py``, through the merger) and the manual ratings (the manual
scorer). Every file but the append-only logs (``trials*.jsonl``) and the images (written once, removed when
the write fails) is replaced atomically (``bayes_merger.files``).

    paths.py      the file names, and the check of a folder whose trials a command reads
    trials.py     Trial and ImageRecord (the schema of trials.jsonl), TrialLog, both readers, the best trial
    run_info.py   run.json: written, read strictly (resume) or tolerantly (report), resume identity
    best.py       best.yaml
    images.py     images/: PNGs with their prompt, seed and weights, named with their score
    liveness.py   .run.lock: held while a run works, so others can tell a dead run from a live one
    rescores.py   rescore-<scorer>.jsonl: the saved images scored again by another scorer
"""

from bayes_merger.run_folder.best import best_extras, read_best, write_best
from bayes_merger.run_folder.images import record_images, remove_trial_images, save_image, write_image_file
from bayes_merger.run_folder.paths import (
    BEST_FILE,
    BEST_MERGE,
    CONFIG_FILE,
    FAILED_AT_START_FILE,
    IMAGES_DIR,
    MANUAL_RATINGS,
    MANUAL_RATINGS_RESCORE,
    NOT_RENDERED_FILE,
    RESUMED_CONFIG,
    RESUMED_CONFIGS,
    RUN_FILE,
    TRIALS_FILE,
    WEBUI_LOST_FILE,
    check_trial_folder,
    resume_command,
)
from bayes_merger.run_folder.rescores import check_same_settings, read_rescores, rescore_path, write_rescores
from bayes_merger.run_folder.run_info import (
    LIBRARIES,
    MODEL_FILES,
    MODEL_KEYS,
    PAYLOAD_WEIGHTS,
    RESUMED_AT,
    STOPPED_BY,
    SUGGESTIONS,
    WEBUI_LOST,
    check_resumable,
    describe,
    foreign_files,
    is_run_folder,
    load_run_info,
    note_changed_suggestions,
    read_run_info,
    stopped_by_lost_webui,
    unfinished,
    write_run_info,
)
from bayes_merger.run_folder.trials import (
    ImageRecord,
    Trial,
    TrialLog,
    best_trial,
    finite,
    note_lost_webui,
    now,
    observations,
    ranked,
    read_trial_records,
    read_trials,
    record_score,
)

__all__ = [
    "best_extras", "read_best",
    "BEST_FILE", "BEST_MERGE", "CONFIG_FILE", "FAILED_AT_START_FILE", "IMAGES_DIR", "MANUAL_RATINGS", "MANUAL_RATINGS_RESCORE",
    "NOT_RENDERED_FILE", "RESUMED_CONFIG", "RESUMED_CONFIGS", "RUN_FILE", "TRIALS_FILE", "WEBUI_LOST_FILE",
    "check_trial_folder", "resume_command",
    "ImageRecord", "Trial", "TrialLog", "best_trial", "finite", "record_score", "note_lost_webui", "now", "observations", "ranked", "read_trial_records", "read_trials",
    "LIBRARIES", "MODEL_FILES", "MODEL_KEYS", "PAYLOAD_WEIGHTS", "RESUMED_AT", "STOPPED_BY", "SUGGESTIONS", "WEBUI_LOST", "check_resumable", "describe", "foreign_files", "is_run_folder", "load_run_info", "note_changed_suggestions",
    "read_run_info", "stopped_by_lost_webui", "unfinished", "write_run_info",
    "write_best", "record_images", "remove_trial_images", "save_image", "write_image_file",
    "check_same_settings", "read_rescores", "rescore_path", "write_rescores",
]
