"""The foreground loop of a fake server's command line (``fake_webui``, ``fake_comfyui``)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Callable

from bayes_merger.testing.fake_http import FakeHTTPServer


def serve_until_stopped(checkpoint_dir: Path, make: Callable[[], FakeHTTPServer]) -> None:
    """Log to stderr, create ``checkpoint_dir``, then serve the server ``make`` returns until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with make():
        while not stop.wait(3600):
            pass
