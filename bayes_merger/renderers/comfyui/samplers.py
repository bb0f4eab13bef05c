"""A1111 sampler and scheduler names → ComfyUI's ``KSampler`` ``sampler_name`` and ``scheduler``.

A1111 ≥ 1.9 sends a sampler and a scheduler apart (``"DPM++ 2M"`` + ``"karras"``); older payloads
write the scheduler into the sampler's name (``"DPM++ 2M Karras"``). Both are read here. A1111's
``automatic`` scheduler is the sampler's own default there (karras for DPM++ 2M, exponential for the
SDE ones, the model's sigmas — ComfyUI's ``normal`` — otherwise). ComfyUI's own names are accepted as
they are. A name with no ComfyUI equivalent (``PLMS``, ``Restart``, ``Align Your Steps``) is a
ConfigError before the run, listing the names that work, checked against the server's ``/object_info``.
"""

from __future__ import annotations

from collections.abc import Collection

from bayes_merger.errors import ConfigError

SAMPLERS = {
    "euler a": "euler_ancestral", "euler": "euler", "lms": "lms", "heun": "heun", "dpm2": "dpm_2",
    "dpm2 a": "dpm_2_ancestral", "dpm++ 2s a": "dpmpp_2s_ancestral", "dpm++ 2m": "dpmpp_2m",
    "dpm++ sde": "dpmpp_sde", "dpm++ 2m sde": "dpmpp_2m_sde", "dpm++ 2m sde heun": "dpmpp_2m_sde_heun",
    "dpm++ 3m sde": "dpmpp_3m_sde", "dpm fast": "dpm_fast", "dpm adaptive": "dpm_adaptive", "lcm": "lcm",
    "ddim": "ddim", "ddpm": "ddpm", "unipc": "uni_pc", "euler cfg++": "euler_cfg_pp",
}
SCHEDULERS = {
    "uniform": "normal", "normal": "normal", "karras": "karras", "exponential": "exponential",
    "sgm uniform": "sgm_uniform", "sgm_uniform": "sgm_uniform", "simple": "simple", "ddim": "ddim_uniform",
    "beta": "beta", "kl optimal": "kl_optimal", "kl_optimal": "kl_optimal",
}
# A1111's scheduler of each sampler under "automatic" (its samplers' "scheduler" options)
AUTOMATIC = {
    "dpmpp_2m": "karras", "dpmpp_sde": "karras", "dpm_2": "karras", "dpm_2_ancestral": "karras",
    "dpmpp_2s_ancestral": "karras", "dpmpp_2m_sde": "exponential", "dpmpp_2m_sde_heun": "exponential",
    "dpmpp_3m_sde": "exponential", "ddim": "ddim_uniform",
}
# the old combined names: "<sampler> <scheduler label>"
_SUFFIXES = (" karras", " exponential", " sgm uniform", " uniform", " simple", " normal", " beta", " kl optimal")
DEFAULT_SAMPLER = "Euler"


def comfy_sampler(sampler: str | None, scheduler: str | None, valid_samplers: Collection[str],
                  valid_schedulers: Collection[str], where: str = "the payload") -> tuple[str, str]:
    """(sampler_name, scheduler) for ComfyUI; ConfigError naming the valid names when there is none."""
    text = (sampler or DEFAULT_SAMPLER).strip()
    key = text.lower()
    implied = None
    if key not in SAMPLERS and text not in valid_samplers:
        for suffix in _SUFFIXES:
            if key.endswith(suffix) and key[: -len(suffix)] in SAMPLERS:
                key, implied = key[: -len(suffix)], suffix.strip()
                break
    name = text if text in valid_samplers else SAMPLERS.get(key)
    if name is None or name not in valid_samplers:
        known = sorted({a for a, c in SAMPLERS.items() if c in valid_samplers})
        raise ConfigError(
            f"{where}: sampler {text!r} has no ComfyUI equivalent; use one of "
            f"{', '.join(_title(k) for k in known)} (A1111 names), or a ComfyUI name: {', '.join(sorted(valid_samplers))}."
        )
    wanted = (scheduler or "").strip()
    if implied and wanted.lower() in ("", "automatic"):
        wanted = implied
    if wanted in valid_schedulers:
        return name, wanted
    lowered = wanted.lower().replace("_", " ") if wanted else "automatic"
    if lowered == "automatic":
        chosen = AUTOMATIC.get(name, "normal")
    else:
        chosen = SCHEDULERS.get(lowered) or SCHEDULERS.get(wanted.lower())
    if chosen is None or chosen not in valid_schedulers:
        known = sorted({a for a, c in SCHEDULERS.items() if c in valid_schedulers and " " not in a} | {"automatic"})
        raise ConfigError(
            f"{where}: scheduler {wanted!r} has no ComfyUI equivalent; use one of {', '.join(known)}, "
            f"or a ComfyUI name: {', '.join(sorted(valid_schedulers))}."
        )
    return name, chosen


_TITLES = {"euler a": "Euler a", "lms": "LMS", "dpm2": "DPM2", "dpm2 a": "DPM2 a", "lcm": "LCM", "ddim": "DDIM",
           "ddpm": "DDPM", "unipc": "UniPC", "dpm fast": "DPM fast", "dpm adaptive": "DPM adaptive"}


def _title(key: str) -> str:
    if key in _TITLES:
        return _TITLES[key]
    return key.replace("dpm++", "DPM++").replace("sde", "SDE").replace("heun", "Heun").replace("2m", "2M") \
        .replace("3m", "3M").replace("2s a", "2S a").replace("euler", "Euler").replace("cfg++", "CFG++")
