"""Joining the Ray cluster of ``cluster.address``, and the hosts in it that offer WebUIs.

A host offers its WebUIs with a custom resource, ``ray start --address=HEAD:6379 --resources='{"webui": 1}'``
(``{"webui": 2}`` for a machine with two WebUIs). Ray itself never starts or stops a WebUI.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from bayes_merger.cluster.settings import require_ray
from bayes_merger.errors import ConfigError

log = logging.getLogger(__name__)

# the custom resource a WebUI host offers, one unit per WebUI
RESOURCE = "webui"


@dataclass(frozen=True)
class Node:
    """A live host of the cluster that offers ``webuis`` WebUIs."""

    id: str
    address: str
    hostname: str
    webuis: int
    cpus: int


@contextmanager
def connect(address: str) -> Iterator[Any]:
    """Connected to the cluster for the block (the ``ray`` module); a ConfigError when it cannot be reached.

    A process that started Ray itself (a test, a notebook) keeps its own instance. Ray installs a
    SIGTERM handler of its own when it connects; the run's (stop after the trials in flight) is put back.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
        raise ConfigError(f"Could not join the Ray cluster at cluster.address={address} ({str(error).strip()}); start "
                          "it first (ray start --head on the head machine; see the README's several machines).") from None
    finally:
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    finally:
        ray.shutdown()  # a joined cluster keeps running; only this driver leaves it


def webui_nodes(ray: Any) -> list[Node]:
    """The live hosts that offer the ``webui`` resource, in a stable order (by address)."""
    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources") or {}
        if node.get("Alive") and resources.get(RESOURCE, 0) >= 1:
            nodes.append(Node(id=node["NodeID"], address=str(node.get("NodeManagerAddress", "")),
                              hostname=str(node.get("NodeManagerHostname", "")), webuis=int(resources[RESOURCE]),
                              cpus=int(resources.get("CPU", 1))))
    return sorted(nodes, key=lambda n: (n.address, n.id))
