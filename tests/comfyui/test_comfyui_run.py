"""A whole run on the fake ComfyUI through the CLI: the merge in the graph, and by file."""

from __future__ import annotations

import json
import logging
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


@pytest.mark.parametrize("frozen", ["1.3", "-0.2"])
def test_graph_with_a_frozen_weight_outside_0_1_is_refused_before_any_prompt(fake_comfyui, tiny_models, tmp_path,
                                                                             caplog, frozen):
    # a frozen weight is part of every trial's weights as much as a searched one: ComfyUI's ratios cannot take it
    args = comfyui_run_args(fake_comfyui.url, tiny_models, tmp_path, "comfyui", "graph", init_points=2, n_iters=0)
    assert _cli(args + [f"+optimiser.frozen.IN00={frozen}"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    low, high = ("0", "1.3") if frozen == "1.3" else ("-0.2", "1")
    assert len(errors) == 1 and f"webui.comfyui_handoff is graph, but the weights range over [{low}, {high}]" in errors[0]
    assert not fake_comfyui.requests_to("/prompt", "POST")


def test_auto_with_a_frozen_weight_outside_0_1_takes_the_file_without_timing_the_graph(fake_comfyui, shared_vae_models,
                                                                                       tmp_path, caplog):
    # A and B share a VAE and BASE is searched in [0, 1]: only the frozen IN00 rules the graph out
    caplog.set_level(logging.INFO, logger="bayes_merger.renderers.probe")
    args = comfyui_run_args(fake_comfyui.url, shared_vae_models, tmp_path, "comfyui", "auto", init_points=2, n_iters=0)
    assert _cli(args + ["+optimiser.frozen.IN00=1.3"]) == 0
    run_dir = _only_run(tmp_path / "runs")
    assert [t["status"] for t in _trials(run_dir)] == ["ok", "ok"]
    assert "comfyui_handoff" not in json.loads((run_dir / "run.json").read_text())  # nothing timed
    assert "ComfyUI hand-off: file (the weights range over [0, 1.3]" in caplog.text
    prompts = fake_comfyui.requests_to("/prompt", "POST")
    assert not [r for r in prompts if any(n["class_type"].startswith("ModelMerge") for n in r.body["prompt"].values())]
