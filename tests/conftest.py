"""Fixtures shared by the whole suite: a running fake WebUI and a client config pointing at it."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from bayes_merger.config import WebUIConfig
from bayes_merger.testing.fake_webui import FakeWebUI


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
