"""Fixtures of the cluster tests: one local Ray instance for them all, offering two WebUIs, and the
loop's tiny models and scorer."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile

import pytest

from bayes_merger.testing.fake_webui import FakeWebUI

# Ray on the loopback address only (as on Windows and macOS, where Ray runs no cluster): its head would bind
# to the machine's network address, and the tests talk to no address but 127.0.0.1. Read once, when Ray is
# first imported, so set before that; Ray's workers inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray instance (2 CPUs, ``{"webui": 2}``: one host with two WebUIs), started once, with
    token authentication as a real cluster has it (the token in a temporary file, not ~/.ray), its
    session files under pytest's basetemp (not /tmp/ray), its workers' TMPDIR there too (the scratch
    folder of an actor a test kills is left there, not in /tmp) and no usage stats sent to usage-stats.ray.io."""
    ray = pytest.importorskip("ray", reason="Ray is not installed; pip install -e '.[test,ray]' runs the cluster tests")
    ray_dir = tmp_path_factory.mktemp("ray")
    token = ray_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    from ray._raylet import Config  # Ray reads RAY_AUTH_MODE into this cache once; read it again, as ray.init does

    Config.initialize("")
    # Ray's Unix sockets lie at <session_dir>/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store, up to
    # 64 bytes below it, and a socket's path is at most 107 bytes: a basetemp deeper than 43 falls back to /tmp
    session_dir = str(ray_dir / "s")
    own_session_dir = len(session_dir) > 107 - 64
    if own_session_dir:
        session_dir = tempfile.mkdtemp(prefix="ray")
    workers_tmp = tmp_path_factory.mktemp("ray-workers-tmp")
    ray.init(num_cpus=2, resources={"webui": 2}, include_dashboard=False, logging_level="WARNING",
             _temp_dir=session_dir, runtime_env={"env_vars": {"TMPDIR": str(workers_tmp)}})
    try:
        yield ray
    finally:
        ray.shutdown()
        if own_session_dir:
            shutil.rmtree(session_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def start_webuis(tmp_path_factory):
    """Starts ``n`` fake WebUIs (the hosts' WebUIs), each with its own checkpoint folder; all stopped at the end."""
    servers: list[FakeWebUI] = []

    def start(n: int) -> list[FakeWebUI]:
        new = [FakeWebUI(tmp_path_factory.mktemp(f"host{len(servers) + i}-models")).start() for i in range(n)]
        servers.extend(new)
        return new

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        server.check_sound()
