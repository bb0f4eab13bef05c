"""Fixtures shared by the whole suite: tiny SD1 models and a tiny scorer, a running fake WebUI and a
client config pointing at it."""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# matplotlib (the report's plots, in this process and in the bayes-merger processes the tests start) writes its
# config and font cache under ~/.config/matplotlib and ~/.cache/matplotlib: a temporary folder instead, set before
# anything imports it, removed when the session ends
if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="bayes-merger-tests-matplotlib-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)

# huggingface_hub (2.4) fetches a registry of "agent harnesses" from huggingface.co the first time it builds
# request headers, even for a load with local_files_only, unless telemetry is off: read when it is imported
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from bayes_merger.config import WebUIConfig
from bayes_merger.testing.fake_webui import FakeWebUI
from bayes_merger.testing.models import make_checkpoint
from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head


LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}


def _is_local(host: object) -> bool:
    return isinstance(host, str) and (host in LOCAL_HOSTS or host.startswith("127."))


@pytest.fixture(autouse=True)
def no_console_handler_left_on_the_root_logger() -> Iterator[None]:
    """A console handler a test's CLI call added to the root logger goes with the test: the CLI's
    logging.basicConfig for an error said before Hydra sets up logging writes to the stream of that test's
    capture, closed after it, and a later test's error, its basicConfig then a no-op, met that closed stream."""
    before = set(logging.root.handlers)
    yield
    for handler in logging.root.handlers[:]:
        if handler not in before and type(handler) is logging.StreamHandler:
            logging.root.removeHandler(handler)


@pytest.fixture(autouse=True)
def local_traffic_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test talks to any address but this machine's loopback: a connection or a name lookup elsewhere (a
    download from Hugging Face or GitHub, a WebUI URL a test forgot) is refused and fails the test, though the
    code under test catches the refusal (the attempt is recorded, and checked when the test ends, on whichever
    thread it was made). A proxy in the environment (HTTP_PROXY) would carry the fakes' traffic off the
    machine: none for 127.0.0.1."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    attempts: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refused(sock: socket.socket, address: Any) -> OSError | None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            attempts.append(f"a connection to {address}")
            return OSError(errno.ENETUNREACH, f"tests talk to 127.0.0.1 only, not {address[0]}")
        return None

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        error = refused(sock, address)
        if error is not None:
            raise error
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        error = refused(sock, address)
        return error.errno if error is not None else connect_ex(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "") and not _is_local(name):
            attempts.append(f"a name lookup of {name}")
            raise socket.gaierror(socket.EAI_NONAME, f"tests look up no name but localhost, not {name}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield
    assert not attempts, f"the test reached beyond this machine: {attempts}"


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny SD1 checkpoints (with the real key names) and a tiny CLIP + head, made once, by the
    names of the config keys they are for."""
    root = tmp_path_factory.mktemp("assets")
    return {
        "model_a": make_checkpoint(root / "a.safetensors", "sd1", seed=1),
        "model_b": make_checkpoint(root / "b.safetensors", "sd1", seed=2),
        "scorer.clip": make_tiny_clip(root / "clip"),
        "scorer.head": make_tiny_head(root / "head.safetensors"),
    }


@pytest.fixture
def fake_webui(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWebUI]:
    """A fake A1111 serving on 127.0.0.1 (a free port), scanning an empty folder ``.checkpoint_dir``.

    Another mode or other arguments by indirect parametrisation:
    ``@pytest.mark.parametrize("fake_webui", ["forge"], indirect=True)`` or
    ``[{"mode": "sdnext", "auth": "user:secret"}]``.
    """
    param = getattr(request, "param", None)
    kwargs: dict[str, Any] = {"mode": param} if isinstance(param, str) else dict(param or {})
    folder = tmp_path_factory.mktemp("webui-models")
    with FakeWebUI(folder, **kwargs) as server:
        yield server
    server.check_sound()


@pytest.fixture
def webui_config(fake_webui: FakeWebUI) -> Callable[..., WebUIConfig]:
    """``webui_config(**overrides)``: a WebUIConfig for ``fake_webui`` with test-sized timeouts,
    two retries without backoff and fast polling."""

    def make(**overrides: Any) -> WebUIConfig:
        values: dict[str, Any] = dict(
            url=fake_webui.url, checkpoint_dir=str(fake_webui.checkpoint_dir), connect_timeout=2.0,
            read_timeout=10.0, retries=2, backoff_factor=0.0, ready_timeout=5.0, poll_interval=0.01,
        )
        values.update(overrides)
        return WebUIConfig(**values)

    return make


@pytest.fixture
def syncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """os.fsync and os.replace, recorded in order: ("sync", inode of a file or "folder"), ("rename", name)."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        found = os.fstat(fd)
        events.append(("sync", found.st_ino if stat.S_ISREG(found.st_mode) else "folder"))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events
