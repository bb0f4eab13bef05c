"""Whether a payload's sampler and scheduler are ones the WebUI has (``GET /sdapi/v1/samplers`` and
``/schedulers``), checked before the run: A1111 and Forge render an unknown sampler silently with
another one, and SD.Next refuses every image with 404 ``Sampler not found`` (see
``shared/reference/a1111-api.md``), so a typo would cost the whole night either way.

The names A1111 takes: a sampler's ``name`` or one of its ``aliases``, optionally followed by a
scheduler's ``label``, ``name`` or alias (the legacy combined form ``"DPM++ 2M Karras"``, which it
splits); a ``scheduler`` field is a scheduler's ``name`` or ``label``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SAMPLERS = "/sdapi/v1/samplers"
SCHEDULERS = "/sdapi/v1/schedulers"


def sampler_names(entries: Iterable[Any]) -> list[str]:
    """Every name a ``/samplers`` answer accepts: the names, then the aliases."""
    entries = [e for e in entries if isinstance(e, Mapping) and e.get("name")]
    return [str(e["name"]) for e in entries] + [str(a) for e in entries for a in e.get("aliases") or []]


def scheduler_names(entries: Iterable[Any]) -> list[str]:
    """Every name a ``/schedulers`` answer accepts: names, labels and aliases."""
    names: list[str] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            names += [str(entry[k]) for k in ("name", "label") if entry.get(k)]
            names += [str(a) for a in entry.get("aliases") or []]
    return names


def sampler_problem(request: Mapping[str, Any], samplers: Sequence[str], schedulers: Sequence[str] | None) -> str | None:
    """What is wrong with the request's sampler or scheduler, in words, or None.

    ``schedulers`` is None where the WebUI has no ``/schedulers`` (SD.Next, A1111 before 1.10): then
    a sampler name is taken whole.
    """
    sampler = request.get("sampler_name") or request.get("sampler_index")
    if sampler is not None and not _known_sampler(str(sampler), samplers, schedulers or ()):
        return f"it has no sampler {sampler!r}{_close(str(sampler), samplers)}; its samplers: {', '.join(_unique(samplers))}"
    scheduler = request.get("scheduler")
    if scheduler is not None and schedulers is not None and str(scheduler) not in schedulers:
        return (f"it has no scheduler {scheduler!r}{_close(str(scheduler), schedulers)}; its schedulers: "
                f"{', '.join(_unique(schedulers))}")
    return None


def _known_sampler(name: str, samplers: Sequence[str], schedulers: Sequence[str]) -> bool:
    if name in samplers:
        return True
    return any(name.endswith(" " + s) and name[: -len(s) - 1] in samplers for s in schedulers)


def _close(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, _unique(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
