"""Fixtures of the loop's end-to-end tests: tiny SD1 models and a tiny scorer, made once per session."""

from __future__ import annotations

import pytest

from bayes_merger.testing.models import make_checkpoint
from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {
        "model_a": make_checkpoint(root / "a.safetensors", "sd1", seed=1),
        "model_b": make_checkpoint(root / "b.safetensors", "sd1", seed=2),
        "scorer.clip": make_tiny_clip(root / "clip"),
        "scorer.head": make_tiny_head(root / "head.safetensors"),
    }
