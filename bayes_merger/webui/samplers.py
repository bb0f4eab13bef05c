"""Whether a payload's sampler and scheduler are ones the WebUI has (``GET /sdapi/v1/samplers`` and
``/schedulers``), checked before the run: A1111 and Forge render an unknown sampler silently with
another one, and SD.Next refuses every image with 404 ``Sampler not found`` (see
``shared/reference/a1111-api.md``), so a typo would cost the whole night either way.

The names A1111's API takes (``sd_samplers.get_sampler_and_scheduler``): a sampler's ``name``, optionally
followed by a scheduler's ``label``, ``name`` or alias (the legacy combined form ``"DPM++ 2M Karras"``,
which it splits); a ``scheduler`` field is a scheduler's ``name`` or ``label``. Not the aliases
``/samplers`` lists (``k_euler_a``): those are for pasted infotexts, and the API renders them with its
default sampler. A WebUI without ``/schedulers`` (SD.Next, A1111 before 1.10) has no ``scheduler`` field:
it would ignore one, so a payload that sets it is refused too.

The same check for the WebUI's options (``GET /sdapi/v1/options`` lists every one): A1111 and Forge
answer every txt2img with 500 ``KeyError`` for an ``override_settings`` key they have no option for, and
with 500 "Invalid image format" when ``samples_format`` (theirs, or the payload's override) is one their
API cannot encode.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SAMPLERS = "/sdapi/v1/samplers"
SCHEDULERS = "/sdapi/v1/schedulers"


def sampler_names(entries: Iterable[Any]) -> list[str]:
    """The names a ``/samplers`` answer lists (not their aliases: see the module docstring)."""
    return [str(e["name"]) for e in entries if isinstance(e, Mapping) and e.get("name")]


def scheduler_names(entries: Iterable[Any], aliases: bool = False) -> list[str]:
    """The names and labels a ``/schedulers`` answer lists, and with ``aliases`` their aliases: what a
    ``scheduler`` field takes, or what may end a legacy combined sampler name."""
    names: list[str] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            names += [str(entry[k]) for k in ("name", "label") if entry.get(k)]
            names += [str(a) for a in entry.get("aliases") or []] if aliases else []
    return names


def sampler_problem(request: Mapping[str, Any], samplers: Iterable[Any], schedulers: Iterable[Any] | None) -> str | None:
    """What is wrong with the request's sampler or scheduler, in words, or None.

    ``samplers`` is the ``/samplers`` answer; ``schedulers`` the ``/schedulers`` one, None where the
    WebUI has none (SD.Next, A1111 before 1.10): then a sampler name is taken whole.
    """
    samplers = [e for e in samplers if isinstance(e, Mapping) and e.get("name")]
    schedulers = None if schedulers is None else list(schedulers)
    names = sampler_names(samplers)
    sampler = request.get("sampler_name") or request.get("sampler_index")
    if sampler is not None and not _known_sampler(str(sampler), names, scheduler_names(schedulers or (), aliases=True)):
        owner = next((str(e["name"]) for e in samplers if str(sampler) in (e.get("aliases") or [])), None)
        if owner is not None:
            return (f"{sampler!r} is an alias of its sampler {owner!r}, which its API does not take (it would render "
                    f"with its default sampler): write {owner!r}")
        return f"it has no sampler {sampler!r}{_close(str(sampler), names)}; its samplers: {', '.join(_unique(names))}"
    scheduler = request.get("scheduler")
    if scheduler is None:
        return None
    if schedulers is None:
        return (f"it has no scheduler field (no {SCHEDULERS}: SD.Next, or A1111 before 1.10), so scheduler "
                f"{scheduler!r} would be ignored; remove it (A1111 before 1.10 takes it in the sampler's name, "
                "as 'DPM++ 2M Karras')")
    fields = scheduler_names(schedulers)
    if str(scheduler) not in fields:
        return f"it has no scheduler {scheduler!r}{_close(str(scheduler), fields)}; its schedulers: {', '.join(_unique(fields))}"
    return None


# the formats A1111's API encodes its images in (api.encode_pil_to_base64)
API_IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp")


def option_problem(request: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """Why the WebUI with these ``options`` would refuse ``request`` at every txt2img, or None."""
    overrides = request.get("override_settings")
    overrides = overrides if isinstance(overrides, Mapping) else {}  # its type is checked with the payload
    unknown = [str(key) for key in overrides if key not in options]
    if unknown:
        near = [f"{key!r}{_close(key, list(map(str, options)))}" for key in unknown]
        return (f"override_settings names {', '.join(near)}, which the WebUI has no option for "
                f"(it would answer every image with 500 KeyError)")
    image_format = overrides.get("samples_format", options.get("samples_format"))
    if isinstance(image_format, str) and image_format.lower() not in API_IMAGE_FORMATS:
        return (f"its images are saved as {image_format!r} (samples_format), which its API cannot send (it would "
                f"answer every image with 500 Invalid image format); set samples_format to png")
    return None


def _known_sampler(name: str, samplers: Sequence[str], suffixes: Sequence[str]) -> bool:
    if name in samplers:
        return True
    return any(name.endswith(" " + s) and name[: -len(s) - 1] in samplers for s in suffixes)


def _close(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, _unique(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
