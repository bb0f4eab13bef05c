"""A whole run on the fake ComfyUI through the CLI: the merge in the graph, and by file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bayes_merger.testing.tiny_clip import make_tiny_clip, make_tiny_head
from tests.loop.test_cli_run import REPO, _cli, _only_run, _trials


def comfyui_run_args(url: str, models: Path, tmp_path: Path, backend: str, handoff: str, init_points: int,
                     n_iters: int) -> list[str]:
    """The demo's settings against the fake ComfyUI at ``url``, with the fixture's tiny models."""
    folder = tmp_path / "models" / "checkpoints" / "bayes-merger"  # the fixture's sub-folder for merges
    return [
        "--config", str(REPO / "conf" / "demo.yaml"), "demo=false",
        f"webui.url={url}", f"webui.backend={backend}", f"webui.comfyui_handoff={handoff}",
        f"webui.checkpoint_dir={folder}", f"model_a={models / 'a.safetensors'}",
        f"model_b={models / 'b.safetensors'}", f"run.dir={tmp_path / 'runs'}",
        f"payloads.dir={REPO / 'payloads' / 'demo.yaml'}", f"payloads.wildcards_dir={REPO / 'payloads' / 'wildcards'}",
        f"scorer.clip={make_tiny_clip(tmp_path / 'clip')}", f"scorer.head={make_tiny_head(tmp_path / 'head.safetensors')}",
        f"optimiser.init_points={init_points}", f"optimiser.n_iters={n_iters}",
        "hydra/job_logging=none", "hydra/hydra_logging=none",
    ]


@pytest.mark.parametrize("handoff", ["graph", "file"])
def test_a_run_on_comfyui_finishes_with_every_trial_scored(fake_comfyui, tiny_models, tmp_path, handoff):
    args = comfyui_run_args(fake_comfyui.url, tiny_models, tmp_path, "auto", handoff, init_points=3, n_iters=1)
    assert _cli(args) == 0
    folder = tmp_path / "models" / "checkpoints" / "bayes-merger"
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["trial"] for t in trials] == [0, 1, 2, 3] and all(t["status"] == "ok" for t in trials)
    assert len({round(t["score"], 6) for t in trials}) > 1, "different weights render different pictures"
    assert not [p for p in folder.iterdir()], "no merge file is left in ComfyUI's folder"
    assert not [p for p in (tmp_path / "output").rglob("*") if p.is_file()], "no image is left in ComfyUI's output"


def test_a_trial_comfyui_ran_out_of_memory_on_is_redone_not_failed(fake_comfyui, tiny_models, tmp_path):
    fake_comfyui.fail_execution("KSampler", "CUDA out of memory. Tried to allocate 2 GiB\n", "torch.OutOfMemoryError")
    args = comfyui_run_args(fake_comfyui.url, tiny_models, tmp_path, "comfyui", "graph", init_points=2, n_iters=0)
    assert _cli(args) == 0
    trials = _trials(_only_run(tmp_path / "runs"))
    assert [t["trial"] for t in trials] == [0, 1] and all(t["status"] == "ok" for t in trials)
    failed = [entry for entry in fake_comfyui.history.values() if entry["status"]["status_str"] != "success"]
    assert len(failed) == 1  # the prompt that ran out of memory, redone once ComfyUI had freed its memory
    assert fake_comfyui.frees[0] == {"unload_models": True, "free_memory": True}


@pytest.mark.parametrize("frozen_base", [False, True])
def test_auto_measures_the_graph_only_where_it_renders_the_merge(fake_comfyui, tiny_models, tmp_path, caplog,
                                                                   frozen_base):
    # the tiny models' VAEs differ: only with BASE held at 0 does the graph render what the file would
    args = comfyui_run_args(fake_comfyui.url, tiny_models, tmp_path, "comfyui", "auto", init_points=2, n_iters=0)
    assert _cli(args + (["+optimiser.frozen.BASE=0.0"] if frozen_base else [])) == 0
    info = json.loads((_only_run(tmp_path / "runs") / "run.json").read_text())
    if frozen_base:
        (record,) = info["comfyui_handoff"].values()
        assert "graph_s" in record and "file_s" in record  # both routes timed
    else:
        assert "comfyui_handoff" not in info  # nothing timed
        assert "file, since the graph cannot be used: models A and B have different VAEs" in caplog.text
