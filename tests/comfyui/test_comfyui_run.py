"""A whole run on the fake ComfyUI through the CLI: the merge in the graph, and by file."""

from __future__ import annotations

import pytest

from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head
from tests.loop.test_cli_run import REPO, _cli, _only_run, _trials


@pytest.mark.parametrize("handoff", ["graph", "file"])
def test_a_run_on_comfyui_finishes_with_every_trial_scored(fake_comfyui, tiny_models, tmp_path, handoff):
    folder = tmp_path / "models" / "checkpoints" / "bayes-merger"  # the fixture's sub-folder for merges
    args = [
        "--config", str(REPO / "conf" / "demo.yaml"), "demo=false",
        f"webui.url={fake_comfyui.url}", "webui.backend=auto", f"webui.comfyui_handoff={handoff}",
        f"webui.checkpoint_dir={folder}", f"model_a={tiny_models / 'a.safetensors'}",
        f"model_b={tiny_models / 'b.safetensors'}", f"run.dir={tmp_path / 'runs'}",
        f"payloads.dir={REPO / 'payloads' / 'demo.yaml'}", f"payloads.wildcards_dir={REPO / 'payloads' / 'wildcards'}",
        f"scorer.clip={make_tiny_clip(tmp_path / 'clip')}", f"scorer.head={make_tiny_head(tmp_path / 'head.safetensors')}",
        "optimiser.init_points=3", "optimiser.n_iters=1", "hydra/job_logging=none", "hydra/hydra_logging=none",
    ]
    assert _cli(args) == 0
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["trial"] for t in trials] == [0, 1, 2, 3] and all(t["status"] == "ok" for t in trials)
    assert len({round(t["score"], 6) for t in trials}) > 1, "different weights render different pictures"
    assert not [p for p in folder.iterdir()], "no merge file is left in ComfyUI's folder"
    assert not [p for p in (tmp_path / "output").rglob("*") if p.is_file()], "no image is left in ComfyUI's output"
