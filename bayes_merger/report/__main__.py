"""``python -m bayes_merger.report RUN_DIR``: rebuild the plots and report.html of a run folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from bayes_merger.errors import BayesMergerError
from bayes_merger.report import REPORT_HTML, write_report
from bayes_merger.run_folder import check_trial_folder

log = logging.getLogger("bayes_merger.report")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bayes_merger.report",
        description="Rebuild convergence.png, weights.png, importance.png and report.html of a bayes-merger run folder.")
    parser.add_argument("run_dir", type=Path, help="the run folder (holds run.json and trials.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        check_trial_folder(args.run_dir)
        write_report(args.run_dir)
    except BayesMergerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    log.info("Wrote %s", args.run_dir / REPORT_HTML)
    return 0


if __name__ == "__main__":
    sys.exit(main())
