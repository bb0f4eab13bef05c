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
with 500 "Invalid image format" when their ``samples_format`` is one their API cannot encode (a payload's
override of it is set back before the API encodes its images, so it is not what is sent).

And for a payload with the hires fix on (``enable_hr``; A1111 ignores the ``hr_*`` fields otherwise):
``hr_upscaler`` must be a ``name`` of ``/latent-upscale-modes`` or of ``/upscalers`` (else A1111 answers
every image with 500 "could not find upscaler named X"), ``hr_sampler_name`` a sampler's name (A1111
creates that sampler by name alone, not splitting a legacy combined name nor taking an alias: 500 "bad
sampler name") and ``hr_scheduler`` a scheduler's name or label (anything else renders the second pass
with the sampler's default schedule). The UI's "Use same sampler" and "Use same scheduler" are turned
into null by A1111's UI only, not by its API (``modules/txt2img.py`` against ``api.text2imgapi``), so a
payload that copies them from the UI is refused too: null, or no field, is what means "the same".

And for what a payload names beside the merge: a script (``script_name``, each key of ``alwayson_scripts``:
an extension such as ADetailer) must be one ``/scripts`` lists for txt2img (A1111 looks each up by its
title, case aside, and answers every image with 422 "Script 'X' not found" before it renders), and a
checkpoint of the hires pass or the refiner (``hr_checkpoint_name`` with the hires fix on,
``refiner_checkpoint``) one ``/sd-models`` lists (A1111's ``get_closet_checkpoint_match``: an alias, or
part of a title, with or without its ``[hash]``; else 500 "Could not find checkpoint with name X").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bayes_merger.webui.http import SCHEDULERS

# what A1111's UI offers for "as in the first pass"; its UI sends null for them, its API takes them as names
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"


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
        owner = _alias_owner(str(sampler), samplers)
        if owner is not None:
            return (f"{sampler!r} is an alias of its sampler {owner!r}, which its API does not take (it would render "
                    f"with its default sampler): write {owner!r}")
        return _no_sampler(str(sampler), names)
    scheduler = request.get("scheduler")
    if not scheduler:  # null or "": Automatic (get_sampler_and_scheduler: schedulers_map.get(name, schedulers[0]))
        return None
    if schedulers is None:
        return (f"it has no scheduler field (no {SCHEDULERS}: SD.Next, or A1111 before 1.10), so scheduler "
                f"{scheduler!r} would be ignored; remove it (A1111 before 1.10 takes it in the sampler's name, "
                "as 'DPM++ 2M Karras')")
    fields = scheduler_names(schedulers)
    if str(scheduler) not in fields:
        return f"it has no scheduler {scheduler!r}{_close(str(scheduler), fields)}; its schedulers: {', '.join(_unique(fields))}"
    return None


def upscaler_names(entries: Iterable[Any]) -> list[str]:
    """The names an ``/upscalers`` or ``/latent-upscale-modes`` answer lists: what ``hr_upscaler`` takes."""
    return [str(e["name"]) for e in entries if isinstance(e, Mapping) and e.get("name")]


def hires_enabled(request: Mapping[str, Any]) -> bool:
    """Whether the request asks for the hires fix, the only case where A1111 reads its ``hr_*`` fields
    (``enable_hr`` is true or false once the payload is loaded: ``webui.payloads`` checks its kind)."""
    return request.get("enable_hr") is True


def hires_problem(request: Mapping[str, Any], samplers: Iterable[Any] | None, schedulers: Iterable[Any] | None,
                  upscalers: Sequence[str] | None) -> str | None:
    """What is wrong with the request's hires-fix fields, in words, or None (always None without ``enable_hr``).

    ``samplers`` and ``schedulers`` as for ``sampler_problem``, ``samplers`` None where the WebUI does not
    list them (``hr_sampler_name`` and ``hr_scheduler`` are not checked then); ``upscalers``: the names of
    ``/upscalers`` and of ``/latent-upscale-modes`` together, None where the WebUI lacks either route (a
    name from the missing list could be right, so ``hr_upscaler`` is not checked).
    """
    if not hires_enabled(request):
        return None
    upscaler = request.get("hr_upscaler")
    # null is A1111's default latent mode; anything else, "" too, must be one of the two lists
    if upscaler is not None and upscalers is not None and str(upscaler) not in upscalers:
        return (f"it has no upscaler {upscaler!r} for the hires fix (hr_upscaler){_close(str(upscaler), upscalers)}, "
                f"so it would answer every image with 500 'could not find upscaler'; its upscalers: "
                f"{', '.join(_unique(upscalers))}")
    if samplers is None:
        return None
    samplers = [e for e in samplers if isinstance(e, Mapping) and e.get("name")]
    schedulers = None if schedulers is None else list(schedulers)
    return _hires_sampler_problem(request.get("hr_sampler_name"), samplers, schedulers) or \
        _hires_scheduler_problem(request.get("hr_scheduler"), schedulers)


def _hires_sampler_problem(sampler: Any, samplers: Sequence[Mapping[str, Any]],
                           schedulers: Sequence[Any] | None) -> str | None:
    # null or "" is the first pass's sampler (processing.py: hr_sampler_name or sampler_name)
    if not sampler:
        return None
    sampler, names = str(sampler), sampler_names(samplers)
    if sampler in names:
        return None
    failing = "it would answer every image with 500 'bad sampler name'"
    if sampler == SAME_SAMPLER:
        return (f"hr_sampler_name {SAME_SAMPLER!r} is a word of its UI, which its API takes as a sampler's name "
                f"({failing}); leave hr_sampler_name out to use the first pass's sampler")
    owner = _alias_owner(sampler, samplers)
    if owner is not None:
        return (f"hr_sampler_name {sampler!r} is an alias of its sampler {owner!r}, which its API does not take "
                f"({failing}): write {owner!r}")
    # a legacy "DPM++ 2M Karras" is split for sampler_name only (api.text2imgapi), not for the hires pass
    split = next(((sampler[: -len(s) - 1], s) for s in scheduler_names(schedulers or (), aliases=True)
                  if sampler.endswith(" " + s) and sampler[: -len(s) - 1] in names), None)
    if split is not None:
        return (f"hr_sampler_name {sampler!r} names a scheduler too, which its API does not split there "
                f"({failing}): write {split[0]!r} and hr_scheduler {split[1]!r}")
    return _no_sampler(sampler, names, " for the hires fix (hr_sampler_name)")


def _hires_scheduler_problem(scheduler: Any, schedulers: Sequence[Any] | None) -> str | None:
    # null is the first pass's scheduler (processing.py); "" is Automatic, a scheduler as well
    if not scheduler:
        return None
    scheduler = str(scheduler)
    if schedulers is None:  # no hr_scheduler field either: a "same" is what it does anyway
        if scheduler == SAME_SCHEDULER:
            return None
        return (f"it has no scheduler field (no {SCHEDULERS}: SD.Next, or A1111 before 1.10), so hr_scheduler "
                f"{scheduler!r} would be ignored; remove it")
    fields = scheduler_names(schedulers)
    if scheduler in fields:
        return None
    if scheduler == SAME_SCHEDULER:
        return (f"hr_scheduler {SAME_SCHEDULER!r} is a word of its UI, which its API takes as a scheduler's name (the "
                f"hires pass would use its sampler's default schedule); leave hr_scheduler out to use the first "
                f"pass's scheduler")
    return (f"it has no scheduler {scheduler!r} for the hires fix (hr_scheduler){_close(scheduler, fields)}, so the "
            f"hires pass would use its sampler's default schedule; its schedulers: {', '.join(_unique(fields))}")


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
    # the WebUI's own: a payload's override is set back before the API encodes (process_images' finally)
    image_format = options.get("samples_format")
    if isinstance(image_format, str) and image_format.lower() not in API_IMAGE_FORMATS:
        return (f"its images are saved as {image_format!r} (samples_format), which its API cannot send (it would "
                f"answer every image with 500 Invalid image format); set samples_format to png in its settings")
    return None


def named_scripts(request: Mapping[str, Any]) -> list[str]:
    """The scripts a request runs beside the generation: ``script_name`` and ``alwayson_scripts``' keys
    (empty names are none, as A1111 takes them)."""
    always_on = request.get("alwayson_scripts")
    names = [request.get("script_name"), *(always_on if isinstance(always_on, Mapping) else ())]
    return [str(name) for name in names if name]


def script_problem(request: Mapping[str, Any], scripts: Sequence[str]) -> str | None:
    """What the request names that the WebUI has no script for, in words, or None (``scripts``: the
    ``txt2img`` titles ``/scripts`` lists, which A1111 lower-cases)."""
    known = [str(name).lower() for name in scripts]
    missing = next((name for name in named_scripts(request) if name.lower() not in known), None)
    if missing is None:
        return None
    return (f"it has no script {missing!r} (script_name or alwayson_scripts: an extension it lacks?)"
            f"{_close(missing.lower(), known)}, so it would answer every image with 422 \"Script '{missing}' not "
            f"found\"; its txt2img scripts: {', '.join(_unique(known))}")


# the values of refiner_checkpoint that mean no refiner (processing.py), and hr_checkpoint_name's "the first pass's"
NO_REFINER = ("", "None", "none")
SAME_CHECKPOINT = "Use same checkpoint"


def other_checkpoints(request: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, name) of each checkpoint besides the merge that the request renders with."""
    found = []
    refiner = request.get("refiner_checkpoint")
    if refiner is not None and str(refiner) not in NO_REFINER:
        found.append(("refiner_checkpoint", str(refiner)))
    hires = request.get("hr_checkpoint_name")
    if hires_enabled(request) and hires and str(hires) != SAME_CHECKPOINT:
        found.append(("hr_checkpoint_name", str(hires)))
    return found


def checkpoint_problem(request: Mapping[str, Any], models: Iterable[Any]) -> str | None:
    """What other checkpoint the request names that the WebUI does not list (``models``: the ``/sd-models``
    answer), in words, or None."""
    models = [m for m in models if isinstance(m, Mapping)]
    titles = [str(m.get("title") or "") for m in models]
    aliases = {str(m[k]) for m in models for k in ("title", "model_name", "hash", "sha256") if m.get(k)}
    for field, name in other_checkpoints(request):
        bare = re.sub(r"\s\[[^]]+]\s*$", "", name)  # without its [hash], as A1111 tries it last
        if name in aliases or any(name in title or (bare and bare in title) for title in titles):
            continue
        return (f"it lists no checkpoint {name!r} ({field}){_close(name, titles)}, so it would answer every image "
                f"with 500 'Could not find checkpoint with name {name}'")
    return None


def _known_sampler(name: str, samplers: Sequence[str], suffixes: Sequence[str]) -> bool:
    if name in samplers:
        return True
    return any(name.endswith(" " + s) and name[: -len(s) - 1] in samplers for s in suffixes)


def _alias_owner(name: str, samplers: Iterable[Mapping[str, Any]]) -> str | None:
    """The sampler that lists ``name`` among its aliases, or None."""
    return next((str(e["name"]) for e in samplers if name in (e.get("aliases") or [])), None)


def _no_sampler(name: str, names: Sequence[str], field: str = "") -> str:
    return f"it has no sampler {name!r}{field}{_close(name, names)}; its samplers: {', '.join(_unique(names))}"


def _close(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, _unique(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
