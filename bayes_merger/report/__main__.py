"""``python -m bayes_merger.report RUN_DIR``: rebuild the plots and report.html of a run folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from bayes_merger.errors import BayesMergerError, ConfigError
from bayes_merger.report import REPORT_HTML, write_report
from bayes_merger.run_folder import TRIALS_FILE

log = logging.getLogger("bayes_merger.report")


def check_run_dir(run_dir: Path) -> None:
    """Raise ConfigError unless run_dir is a run folder with a trial log."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder: give the path of a bayes-merger run folder.")
    if not (run_dir / TRIALS_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {TRIALS_FILE}: it is not a bayes-merger run folder, "
                          "or no trial of that run has finished yet.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bayes_merger.report",
        description="Rebuild convergence.png, weights.png, importance.png and report.html of a bayes-merger run folder.")
    parser.add_argument("run_dir", type=Path, help="the run folder (holds run.json and trials.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        check_run_dir(args.run_dir)
        write_report(args.run_dir)
    except BayesMergerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    log.info("Wrote %s", args.run_dir / REPORT_HTML)
    return 0


if __name__ == "__main__":
    sys.exit(main())
