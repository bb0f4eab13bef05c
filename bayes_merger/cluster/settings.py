"""``cluster.address`` and the settings a run on a Ray cluster cannot take, checked before any work."""

from __future__ import annotations

from typing import Any

from bayes_merger.errors import ConfigError

INSTALL = "pip install 'bayes-merger[ray]'"


def require_ray() -> Any:
    """The ``ray`` module; a ConfigError saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"cluster.address is set, but Ray is not installed: {INSTALL} "
                          "(on this machine and on every WebUI host).") from None
    return ray


def check_address(address: Any) -> None:
    """None (no Ray), ``auto``, or ``host:port`` of the Ray head; anything else is a ConfigError."""
    if address is None:
        return
    text = str(address).strip()
    if text == "auto":
        return
    host, colon, port = text.rpartition(":")
    if not colon or not host.strip("[]") or "/" in text or " " in text or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"cluster.address must be auto or the Ray head's host:port (e.g. 10.0.0.1:6379), not {address!r}.")


def check_cluster_settings(cfg: Any) -> None:
    """Everything about ``cluster`` that can be checked without contacting it; nothing when it is off."""
    address = cfg.cluster.address
    check_address(address)
    if address is None:
        return
    if str(cfg.scorer.name) == "manual":
        raise ConfigError("scorer.name=manual asks you to rate each image here, but on a Ray cluster (cluster.address) "
                          "the hosts score: choose an automatic scorer or run without cluster.address.")
    if cfg.webui.pipeline:
        raise ConfigError("webui.pipeline is for one machine; on a Ray cluster (cluster.address) each host runs one "
                          "trial at a time: set webui.pipeline=false.")
    require_ray()
