"""Formatting for the report page: numbers, durations, run.json values, image paths, payload names.

Every value comes from a run folder that may be old or half-written: missing is "unknown", never an error.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from pathlib import PurePosixPath
from typing import Any, Mapping
from urllib.parse import quote

from bayes_merger.report.data import RunData, finite
from bayes_merger.run_folder import RESUMED_AT

STAGES = ("merge", "load", "generate", "score")
UNKNOWN = "unknown"


def fmt_score(score: float | None) -> str:
    return "—" if score is None else f"{score:.4f}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def fmt_text(value: Any) -> str:
    """A run.json value as escaped text, "unknown" when missing."""
    if value is None or value == "" or value == []:
        return f'<span class="muted">{UNKNOWN}</span>'
    if isinstance(value, list):
        return escape(", ".join(str(v) for v in value))
    return escape(str(value))


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def run_duration(run: RunData) -> float | None:
    """Seconds the run has worked: from the start of each session (the run's, then each resume's) to
    the last trial it finished, summed, so a run resumed days later is not days long."""
    starts = [parse_time(run.info.get("started_at"))] + [parse_time(t.get("started_at")) for _, t in run.trials]
    ends = sorted(e for _, t in run.trials if (e := parse_time(t.get("finished_at"))) is not None)
    start = next((s for s in starts if s is not None), None)
    if start is None or not ends or ends[-1] < start:
        return None
    resumes = as_list(run.info.get(RESUMED_AT))
    sessions = sorted({start, *(r for r in map(parse_time, resumes) if r is not None and r > start)})
    total = 0.0
    for begin, following in zip(sessions, [*sessions[1:], None]):
        last = max((e for e in ends if e >= begin and (following is None or e < following)), default=None)
        total += (last - begin).total_seconds() if last is not None else 0.0
    return total


def mean_timings(run: RunData) -> dict[str, float]:
    means = {}
    for stage in (*STAGES, "total"):
        values = [v for _, t in run.trials if (v := finite(as_mapping(t.get("timings")).get(stage))) is not None]
        if values:
            means[stage] = sum(values) / len(values)
    return means


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def sort_value(value: float | None) -> str:
    """A cell's sort value: the number, or empty (sorted last) when there is none."""
    return "" if value is None else repr(value)


def image_src(path: Any) -> str | None:
    """A relative, quoted and escaped src for an image path from the log; None when there is none.

    Only paths inside the run folder are shown: the report is a page about this run, and a
    relative reference keeps working when the folder is moved or copied.
    """
    if not isinstance(path, str) or not path:
        return None
    relative = PurePosixPath(path.replace("\\", "/"))
    if not relative.parts or relative.is_absolute() or ".." in relative.parts or ":" in relative.parts[0]:
        return None
    return escape(quote(str(relative), safe="/"))


def payload_names(run: RunData) -> list[str]:
    names = [str(p) for p in as_list(run.info.get("payloads")) if isinstance(p, (str, int, float))]
    for _, trial in run.trials:
        for name in as_mapping(trial.get("payload_scores")):
            if str(name) not in names:
                names.append(str(name))
        for image in as_list(trial.get("images")):
            payload = as_mapping(image).get("payload")
            if payload is not None and str(payload) not in names:
                names.append(str(payload))
    return names
