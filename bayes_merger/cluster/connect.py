"""Joining the Ray cluster of ``cluster.address``, and the hosts in it that offer WebUIs.

A host offers its WebUIs with a custom resource, ``ray start --address=HEAD:6379 --resources='{"webui": 1}'``
(``{"webui": 2}`` for a machine with two WebUIs). Ray itself never starts or stops a WebUI.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from bayes_merger.cluster.settings import require_ray
from bayes_merger.errors import ConfigError

log = logging.getLogger(__name__)

# the custom resource a WebUI host offers, one unit per WebUI
RESOURCE = "webui"

# how long the Ray head's address may take to accept a TCP connection before the run says nothing answers
# there: a head on a reachable network answers in milliseconds, and ray.init itself has no timeout (for an
# address nothing answers at it retries for many minutes, saying only "Failed to connect to GCS")
CONNECT_TIMEOUT = 10.0
# how long a server that accepted the connection may take to answer HTTP/2's preface before ray.init is left to judge it
HTTP2_PROBE_TIMEOUT = 5.0


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
    _check_answers(address)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
        raise _not_joined(address, error) from None
    finally:
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    finally:
        ray.shutdown()  # a joined cluster keeps running; only this driver leaves it


def _check_answers(address: str) -> None:
    """Nothing when the Ray head ``address`` leads to accepts a connection; a ConfigError saying what to
    check when nothing answers there in CONNECT_TIMEOUT (ray.init would wait, retrying, for many minutes)."""
    target = _head_address(address)
    if target is None:
        return  # Ray changed how it finds a local cluster: ray.init finds it, or says it finds none
    host, _, port = target.rpartition(":")
    where = f"cluster.address={address}" + ("" if target == address else f" ({target})")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT) as connection:
            answer = _first_answer(connection)
    except OSError as error:
        why = f"no answer in {CONNECT_TIMEOUT:g} s" if isinstance(error, TimeoutError) else str(error.strerror or error)
        raise ConfigError(f"Nothing answers at {where}: {why[:1].lower() + why[1:]}; check that the Ray head runs "
                          "there (ray status on the head), that this is the port given to "
                          "ray start --head (6379 by default), and that this machine can reach it.") from None
    if answer and not _is_settings_frame(answer):
        raise ConfigError(f"Something other than a Ray head answers at {where} (a Ray head speaks gRPC, HTTP/2; this "
                          f"answered {answer[:12]!r}): give the port given to ray start --head (6379 by default), "
                          "not the dashboard's (8265) or a WebUI's.")


def _first_answer(connection: socket.socket) -> bytes:
    """The first bytes (up to a frame header's 9) a server sends after HTTP/2's connection preface; empty when
    nothing comes in HTTP2_PROBE_TIMEOUT (then ray.init decides)."""
    answer = b""
    try:
        # the client preface (RFC 9113 §3.4) and an empty SETTINGS frame
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        connection.settimeout(HTTP2_PROBE_TIMEOUT)
        while len(answer) < 9:
            chunk = connection.recv(9 - len(answer))
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    return answer


def _is_settings_frame(answer: bytes) -> bool:
    """Whether ``answer`` begins as an HTTP/2 server's preface must (RFC 9113 §3.4): a SETTINGS frame (type 4)
    on stream 0. A web server answers the preface in HTTP/1 ("HTTP/1.1 400 …", or a bare error page)."""
    return len(answer) >= 9 and answer[3] == 4 and answer[5:9] == b"\x00\x00\x00\x00"


def _head_address(address: str) -> str | None:
    """The ``host:port`` ray.init dials for ``address``: for ``auto``, RAY_ADDRESS or the latest local Ray
    session, as Ray finds them; None where Ray's way of finding them is not there."""
    if address != "auto":
        return address  # host:port, checked by settings.check_address
    found = os.environ.get("RAY_ADDRESS", "")  # ray.init takes it over auto (a ray:// one: a Ray Client server)
    if not found:
        try:  # ray.init's own lookup (Ray has no public one): the latest ray start, else any Ray on this machine
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:
            return None
        try:
            found = canonicalize_bootstrap_address("auto") or ""
        except (ConnectionError, ValueError) as error:  # no Ray running on this machine
            raise _not_joined(address, error) from None
    found = found.split("://", 1)[-1]
    return found if found.rpartition(":")[2].isdigit() else None


def _not_joined(address: str, error: Exception) -> ConfigError:
    """The sentence for a cluster Ray itself could not join (none running here for ``auto``, or refused)."""
    return ConfigError(f"Could not join the Ray cluster at cluster.address={address} ({str(error).strip()}); start "
                       "it first (ray start --head on the head machine; see the README's several machines).")


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
