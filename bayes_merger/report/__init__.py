"""Plots and the HTML report of a run folder, rebuilt after every trial from run.json, trials.jsonl, best.yaml
and the rescore-*.jsonl files.

    write_report(run_dir)                   # convergence.png, weights.png, importance.png, report.html
    python -m bayes_merger.report RUN_DIR   # the same, for any run folder (older runs too)
"""

from __future__ import annotations

from pathlib import Path

from bayes_merger.files import atomic_write_text
from bayes_merger.report.data import RunData, load_run
from bayes_merger.report.html import render_html
from bayes_merger.report.plots import convergence_figure, importance_figure, save_png, weights_figure
from bayes_merger.run_folder.paths import CONVERGENCE_PNG, IMPORTANCE_PNG, REPORT_HTML, WEIGHTS_PNG

__all__ = ["write_report", "load_run", "RunData", "REPORT_HTML"]


def write_report(run_dir: Path, live: bool | None = None) -> None:
    """(Re)build convergence.png, weights.png, importance.png (when best.yaml has the blocks' importances) and
    report.html in run_dir from what it holds now.

    Each file is replaced atomically, so a browser showing the report mid-run never reads half a file.
    Missing or partial inputs (no successful trial, a cut-short last line, an old run.json) give a
    report that says so; they do not raise. ``live``: whether a process runs it now (default: whether
    one holds its lock); an unfinished run nobody runs is shown as stopped.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, live)
    plots = [(convergence_figure, CONVERGENCE_PNG), (weights_figure, WEIGHTS_PNG)]
    plots += [(importance_figure, IMPORTANCE_PNG)] if run.importance else []
    failed: Exception | None = None
    for figure, name in plots:
        try:
            save_png(figure(run), run_dir / name)
        except Exception as error:  # noqa: BLE001 - one plot that fails must not leave the page a night old
            failed = failed or error
    atomic_write_text(run_dir / REPORT_HTML, render_html(run))
    if failed is not None:
        raise failed
