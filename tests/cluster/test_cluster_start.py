"""The start of a cluster run that cannot go on, said in one sentence instead of a hang: a Ray head
nothing answers at, a host whose WebUI another run holds, a host that left the cluster."""

from __future__ import annotations

import logging
import socket

import pytest

from bayes_merger.cluster import connect, hosts
from bayes_merger.cluster.connect import Node
from tests.cluster.test_cluster_runs import _cluster_args
from tests.loop.test_cli_run import _args, _cli


@pytest.fixture
def no_ray_init(monkeypatch):
    """``ray`` as in a driver that has not joined a cluster; ``ray.init`` fails the test, as for an address
    nothing answers at it retries for many minutes instead of raising."""
    ray = pytest.importorskip("ray", reason="Ray is not installed; pip install -e '.[test,ray]' runs the cluster tests")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # another test of this session may have started Ray

    def init(address=None, **kwargs):
        pytest.fail(f"ray.init(address={address!r}) was called for an address nothing answers at")

    monkeypatch.setattr(ray, "init", init)


@pytest.fixture
def closed_port():
    """A port of 127.0.0.1 that refuses connections: bound, not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port of 127.0.0.1 that never completes a connection: its one-place backlog is full, so Linux drops
    the next SYN, as a host that is gone or behind a firewall does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        with socket.create_connection(server.getsockname()):  # takes the backlog's one place
            yield server.getsockname()[1]


@pytest.mark.usefixtures("no_ray_init")
@pytest.mark.parametrize("port, address, words", [
    ("closed_port", "127.0.0.1:{port}", "Nothing answers at cluster.address=127.0.0.1:{port}: connection refused; "),
    ("silent_port", "127.0.0.1:{port}", "Nothing answers at cluster.address=127.0.0.1:{port}: no answer in 0.2 s; "),
    # auto is RAY_ADDRESS where set, as ray.init reads it; a ray:// one is a Ray Client server's host:port
    ("closed_port", "auto", "Nothing answers at cluster.address=auto (127.0.0.1:{port}): connection refused; "),
])
def test_a_ray_head_nothing_answers_at_is_one_sentence_and_exit_2(assets, fake_webui, tmp_path, caplog, monkeypatch,
                                                                  request, port, address, words):
    port = request.getfixturevalue(port)
    monkeypatch.setattr(connect, "CONNECT_TIMEOUT", 0.2)
    if address == "auto":
        monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"cluster.address={address.format(port=port)}")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(words.format(port=port)), errors
    assert "ray start --head" in errors[0]
    assert not fake_webui.requests


@pytest.mark.usefixtures("no_ray_init")
def test_a_web_server_at_the_ray_heads_address_is_one_sentence_and_exit_2(assets, fake_webui, tmp_path, caplog):
    # the dashboard's port (8265) or a WebUI's given for the head's: ray.init would retry it for many minutes
    other = fake_webui.url.split("//", 1)[1]
    assert _cli(_args(assets, fake_webui, tmp_path / "runs", f"cluster.address={other}")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"Something other than a Ray head answers at cluster.address={other} "
                                                     "(a Ray head speaks gRPC, HTTP/2; this answered b'"), errors
    assert errors[0].endswith("give the port given to ray start --head (6379 by default), not the dashboard's (8265) "
                              "or a WebUI's.")
    assert not fake_webui.requests  # its 505 to the preface is no API request


def test_a_ray_head_answers_http2s_preface_with_its_settings(ray_cluster):
    # the probe's premise, on a real head: gRPC's first frame is SETTINGS (type 4), never an HTTP/1 answer
    target = connect._head_address(ray_cluster.get_runtime_context().gcs_address)
    host, _, port = target.rpartition(":")
    assert host == "127.0.0.1"  # the tests talk to no other address
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        assert connect._is_settings_frame(connect._first_answer(connection))


@pytest.fixture
def webuis(start_webuis):
    """Two fake WebUIs, the two of the local Ray instance's host."""
    return start_webuis(2)


def test_a_host_whose_webuis_another_run_holds_is_one_sentence_and_exit_4(assets, webuis, tmp_path, caplog,
                                                                            monkeypatch, ray_cluster):
    monkeypatch.setattr(hosts, "PLACEMENT_TIMEOUT", 0.5)  # placement is either done or never: nothing frees the units

    class OtherRun:
        def placed(self) -> bool:
            return True

    others = [ray_cluster.remote(OtherRun).options(resources={"webui": 1}, num_cpus=0).remote() for _ in range(2)]
    try:
        ray_cluster.get([other.placed.remote() for other in others])  # both of the host's WebUIs are taken
        caplog.set_level(logging.INFO)
        assert _cli(_cluster_args(assets, webuis, tmp_path / "runs")) == 4
    finally:
        for other in others:
            ray_cluster.kill(other)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{webuis[0].url}@") and " (and 1 more) could not start within 0.5 s: " in errors[0]
    assert "another run on this Ray cluster holds its host's webui unit" in errors[0]
    assert not any(server.requests for server in webuis)


def test_a_host_that_left_the_cluster_before_its_actor_started_is_a_lost_host(assets, webuis, tmp_path, caplog,
                                                                               monkeypatch, ray_cluster):
    gone = Node(id="ab" * 28, address="10.0.0.9", hostname="gone", webuis=1, cpus=1)  # no such node: unschedulable
    monkeypatch.setattr(hosts, "webui_nodes", lambda ray: [gone])
    assert _cli(_cluster_args(assets, webuis[:1], tmp_path / "runs")) == 4
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"The host of {webuis[0].url}@10.0.0.9 is gone (ActorUnschedulableError)."]
    assert not webuis[0].requests


@pytest.mark.parametrize("answer, settings", [
    (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00", True),  # gRPC's: SETTINGS, 18 bytes of parameters, stream 0
    (b"HTTP/1.1 400 Bad Request\r\n", False),  # uvicorn's, aiohttp's (the dashboard), nginx's
    (b"<!DOCTYPE HTML>\n", False),  # Python's http.server: an HTTP/0.9 error page
    (b"\x00\x00\x08\x07\x00\x00\x00\x00\x00", False),  # GOAWAY: HTTP/2, but not a server's preface
    (b"\x00\x00", False),  # cut short
])
def test_only_a_settings_frame_is_taken_for_a_ray_heads_answer(answer, settings):
    assert connect._is_settings_frame(answer) is settings


@pytest.mark.parametrize("failure", [
    lambda e: e.OutOfMemoryError("Task was killed due to the node running low on memory."),  # Ray's memory monitor
    lambda e: e.RaySystemError("the worker could not start"),
    lambda e: e.RuntimeEnvSetupError("the runtime environment could not be set up"),
    lambda e: e.ActorDiedError(),
])
def test_a_failure_of_rays_own_on_a_host_is_a_lost_host_not_a_traceback(failure):
    """A host holding the models beside its WebUI is where Ray's memory monitor kills the actor's worker: the
    trial goes to another host (the executor's lost-WebUI path), as for a dead actor."""
    ray_exceptions = pytest.importorskip("ray.exceptions", reason="Ray is not installed")
    from types import SimpleNamespace

    from bayes_merger.errors import WebUIConnectionError

    def get(ref, timeout=None):  # noqa: ANN001, ANN202
        raise failure(ray_exceptions)

    host = hosts.RayHost("http://127.0.0.1:7860@10.0.0.9", actor=None,
                         ray=SimpleNamespace(exceptions=ray_exceptions, get=get))
    with pytest.raises(WebUIConnectionError, match=r"^The host of http://127.0.0.1:7860@10.0.0.9 is gone \("):
        host._get(object())


def test_a_hosts_own_error_comes_back_as_it_was_raised_and_a_timeout_stays_a_timeout():
    ray_exceptions = pytest.importorskip("ray.exceptions", reason="Ray is not installed")
    from types import SimpleNamespace

    from bayes_merger.errors import StorageError

    raised = {"own": ray_exceptions.RayTaskError("run_trial", "", StorageError("the disk of the host is full")),
              "timeout": ray_exceptions.GetTimeoutError("no answer in 60 s")}

    def get(ref, timeout=None):  # noqa: ANN001, ANN202
        raise raised[ref]

    host = hosts.RayHost("h", actor=None, ray=SimpleNamespace(exceptions=ray_exceptions, get=get))
    with pytest.raises(StorageError, match="the disk of the host is full"):
        host._get("own")
    with pytest.raises(ray_exceptions.GetTimeoutError):
        host._get("timeout")
