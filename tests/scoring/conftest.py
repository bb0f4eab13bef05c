"""Fixtures for the scoring tests: the tiny CLIP, the real head files, a 127.0.0.1 file server.

Every test here runs with HF_HUB_OFFLINE=1 and a downloader that refuses anything but 127.0.0.1,
so nothing can reach the network even by mistake; download tests lift HF_HUB_OFFLINE themselves.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from bayes_merger.scoring import weights
from bayes_merger.testing.fake_http import free_port
from bayes_merger.testing.tiny_clip import make_tiny_clip

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LAION_PTH = SHARED_DATA / "laion-aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"
CHAD_PTH = SHARED_DATA / "chad-scorer" / "chadscorer.pth"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    real_download = weights.http_download

    def local_only(url: str, dest: Path) -> None:
        if not url.startswith("http://127.0.0.1:"):
            # pytest.fail, not an AssertionError: the download's caller turns any Exception into "download failed"
            pytest.fail(f"a test tried to download {url}")
        real_download(url, dest, timeout=5.0)

    monkeypatch.setattr(weights, "http_download", local_only)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def laion_pth() -> Path:
    if not LAION_PTH.is_file():
        pytest.skip(f"the real LAION head is not in {LAION_PTH.parent} (../shared/data is absent)")
    return LAION_PTH


@pytest.fixture
def chad_pth() -> Path:
    if not CHAD_PTH.is_file():
        pytest.skip(f"the real Chad head is not in {CHAD_PTH.parent} (../shared/data is absent)")
    return CHAD_PTH


class FileServer:
    """Serves one folder on 127.0.0.1 over HTTP, like the raw GitHub file URLs do."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.requests = 0
        self._server.on_request = self._count  # type: ignore[attr-defined]

    def _count(self) -> None:
        self.requests += 1

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.on_request()  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def file_server() -> Iterator[type[FileServer]]:
    """A FileServer factory: ``with file_server(folder) as server: server.url(name)``."""
    yield FileServer


@pytest.fixture
def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on: the download fails at once, like a machine offline."""
    return f"http://127.0.0.1:{free_port()}/missing.pth"


def _make_images(count: int, size: tuple[int, int] = (96, 64), seed: int = 0) -> list[Image.Image]:
    """``count`` different random RGB images (width, height)."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


@pytest.fixture
def make_images():
    """``make_images(count, size=(w, h), seed=0)``: different random RGB images."""
    return _make_images


@pytest.fixture
def images() -> list[Image.Image]:
    return _make_images(5)
