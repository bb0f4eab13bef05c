"""webui.comfyui_handoff auto: the route is measured both ways on the ComfyUI, the faster taken, and
the choice kept in the run folder so a resumed run takes it again without measuring."""

from __future__ import annotations

import json
import logging

import pytest
from safetensors.torch import load_file, save_file

from bayes_merger.errors import WebUIConnectionError
from bayes_merger.merge.arch import architecture
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.renderers.comfyui import ComfyUIClient, route
from bayes_merger.renderers.comfyui.route import settle_route
from bayes_merger.webui.merge_files import MergeFiles
from tests.comfyui.test_comfyui_run import comfyui_run_args
from tests.loop.test_cli_run import _cli, _only_run, _trials

SD1 = architecture("sd1")
REQUEST = {"prompt": "a red boat", "seed": 7, "steps": 1, "width": 64, "height": 64}
WEIGHTS = [BlockWeights.uniform(SD1.blocks, 0.5), BlockWeights.uniform(SD1.blocks, 0.2)]
SLOW = 60.0  # seconds the slow route's node takes, virtually: far above the rest of a tiny trial on any machine


@pytest.fixture
def slow_node(fake_comfyui, monkeypatch):
    """Makes a node class SLOW without sleeping: the fake adds the seconds to the clock the route is timed by."""
    monkeypatch.setattr(route, "clock", fake_comfyui.clock)
    return lambda class_type, seconds=SLOW: fake_comfyui.delay_node(class_type, seconds, virtual=True)


@pytest.fixture
def auto_client(comfy_config, shared_vae_models):
    """Both routes open: B has A's VAE, so the graph renders the model the merge by file does."""
    with ComfyUIClient(comfy_config(), "run1", handoff="auto", arch=SD1, model_a=shared_vae_models / "a.safetensors",
                       model_b=shared_vae_models / "b.safetensors") as client:
        client.check_checkpoint_dir()
        yield client


def stager(client_folder, tiny_models):
    """A stand-in for the loop's merge and write: model A's tensors into a staged file."""
    tensors = load_file(tiny_models / "a.safetensors")

    def stage(index):
        staged = MergeFiles(client_folder, "run1", 0).staged_path(index)
        save_file(tensors, str(staged))
        return staged, 0.01

    return stage


@pytest.mark.parametrize("slow_class, expected", [("ModelMerge", "file"), ("CheckpointLoaderSimple", "graph")])
def test_auto_takes_the_route_that_measures_faster(auto_client, fake_comfyui, tiny_models, caplog, slow_node,
                                                   slow_class, expected):
    slow_node(slow_class)  # a slow re-patch in the graph, or a slow checkpoint load
    folder = fake_comfyui.checkpoint_dir / "bayes-merger"
    with caplog.at_level(logging.INFO, logger="bayes_merger.renderers.comfyui.route"):
        record = settle_route(auto_client, None, REQUEST, WEIGHTS, stager(folder, tiny_models), pipelined=False)

    assert record["route"] == expected and auto_client.handoff == expected
    assert auto_client.merges_in_graph == (expected == "graph")
    slow, fast = (record["graph_s"], record["file_s"]) if expected == "file" else (record["file_s"], record["graph_s"])
    assert slow >= SLOW > fast
    assert f": {expected}, the faster for this device (a trial's hand-off + render took" in caplog.text
    assert not list(folder.iterdir()), "the probe's merge files are deleted"
    assert len(fake_comfyui.requests_to("/prompt", "POST")) == 4  # each route: a warm-up and a timed image


def test_pipelined_by_file_counts_the_larger_of_our_write_and_comfyuis_load_and_render(auto_client, fake_comfyui,
                                                                                     tiny_models):
    folder = fake_comfyui.checkpoint_dir / "bayes-merger"
    record = settle_route(auto_client, None, REQUEST, WEIGHTS, stager(folder, tiny_models), pipelined=True)
    assert record["file_s"] == max(record["merge_write_s"], record["load_render_s"])


def test_a_recorded_choice_is_taken_without_measuring(auto_client, fake_comfyui, tiny_models, caplog):
    recorded = {"route": "file", "graph_s": 1.0, "file_s": 0.5, "merge_write_s": 0.2, "load_render_s": 0.3,
                "pipelined": False, "reason": "the faster"}
    with caplog.at_level(logging.INFO, logger="bayes_merger.renderers.comfyui.route"):
        record = settle_route(auto_client, recorded, REQUEST, WEIGHTS, lambda i: pytest.fail("measured"), False)
    assert record == recorded and auto_client.handoff == "file"
    assert not fake_comfyui.requests_to("/prompt", "POST")
    assert "file, as measured when the run started" in caplog.text


def test_auto_with_models_comfyui_does_not_list_takes_the_file_without_measuring(comfy_config, tmp_path):
    with ComfyUIClient(comfy_config(), "run1", handoff="auto", arch=SD1, model_a=tmp_path / "unlisted-a.safetensors",
                       model_b=tmp_path / "unlisted-b.safetensors") as client:
        client.check_checkpoint_dir()
        assert client.handoff == "file"
        assert settle_route(client, None, REQUEST, WEIGHTS, lambda i: pytest.fail("measured"), False)["route"] == "file"


def test_a_whole_run_on_auto_records_the_measured_route_and_its_resume_keeps_it(fake_comfyui, shared_vae_models,
                                                                                 tmp_path, slow_node):
    slow_node("ModelMerge")  # the graph is the slow route on this "device"
    folder = tmp_path / "models" / "checkpoints" / "bayes-merger"
    args = comfyui_run_args(fake_comfyui.url, shared_vae_models, tmp_path, "comfyui", "auto", init_points=2,
                            n_iters=0)
    assert _cli(args) == 0
    run_dir = _only_run(tmp_path / "runs")
    record = json.loads((run_dir / "run.json").read_text())["comfyui_handoff"][fake_comfyui.url]
    assert record["route"] == "file" and record["graph_s"] >= SLOW > record["file_s"]
    first = _trials(run_dir)
    assert [t["status"] for t in first] == ["ok", "ok"]
    assert all("merge" in t["timings"] and "write" in t["timings"] for t in first), "merged by us, by file"
    posts = len(fake_comfyui.requests_to("/prompt", "POST"))

    slow_node("ModelMerge", 0.0)  # the device changed, but the run keeps its route
    resume = ["--config", str(run_dir / "config.yaml"), f"resume={run_dir}", "optimiser.n_iters=1",
              "hydra/job_logging=none", "hydra/hydra_logging=none"]
    assert _cli(resume) == 0
    trials = _trials(run_dir)
    assert [t["trial"] for t in trials] == [0, 1, 2] and trials[:2] == first
    assert "merge" in trials[2]["timings"]
    # trial 2's four images (a busy machine may ask again for one from ComfyUI's cache), and no probe:
    # nothing in the graph since the run started
    later = fake_comfyui.requests_to("/prompt", "POST")[posts:]
    assert len(later) >= 4
    assert not [r for r in later if any(n["class_type"].startswith("ModelMerge") for n in r.body["prompt"].values())]
    assert json.loads((run_dir / "run.json").read_text())["comfyui_handoff"][fake_comfyui.url] == record
    assert not list(folder.iterdir()) and not [p for p in (tmp_path / "output").rglob("*") if p.is_file()]


@pytest.mark.parametrize("exception_type, words", [("torch.OutOfMemoryError", "ComfyUI ran out of memory running node"),
                                                   ("RuntimeError", "ComfyUI failed running node")])
def test_a_graph_that_fails_while_it_is_timed_leaves_the_file_route(auto_client, fake_comfyui, tiny_models, caplog,
                                                                    exception_type, words):
    # the merge node only runs in the graph: the file route is timed undisturbed, then the graph fails
    fake_comfyui.fail_execution("ModelMergeSD1", "CUDA out of memory. Tried to allocate 5 GiB\n", exception_type)
    folder = fake_comfyui.checkpoint_dir / "bayes-merger"
    with caplog.at_level(logging.WARNING, logger="bayes_merger.renderers.comfyui.route"):
        record = settle_route(auto_client, None, REQUEST, WEIGHTS, stager(folder, tiny_models), pipelined=False)

    assert record == {"route": "file", "reason": record["reason"]} and auto_client.handoff == "file"
    assert record["reason"].startswith(f"the graph failed while it was timed: {words} ")
    warnings = [r.getMessage() for r in caplog.records if r.name == "bayes_merger.renderers.comfyui.route"]
    assert warnings == [f"ComfyUI hand-off auto at {fake_comfyui.url}: file, since {record['reason']}"]
    assert fake_comfyui.frees == ([{"unload_models": True, "free_memory": True}] if "memory" in words else [])
    assert len(fake_comfyui.requests_to("/prompt", "POST")) == 3  # the file route's two, the graph's first
    assert not list(folder.iterdir()), "the probe's merge files are deleted"
    auto_client.load_checkpoint(lambda path: save_file(load_file(tiny_models / "b.safetensors"), str(path)), trial=0)
    assert auto_client.txt2img(REQUEST).images  # the run goes on by file


def test_a_comfyui_lost_while_the_graph_is_timed_stops_the_run(auto_client, fake_comfyui, tiny_models, monkeypatch):
    load_weights = auto_client.load_weights

    def stop_then_load(*args, **kwargs):
        fake_comfyui.stop()
        return load_weights(*args, **kwargs)

    monkeypatch.setattr(auto_client, "load_weights", stop_then_load)
    folder = fake_comfyui.checkpoint_dir / "bayes-merger"
    with pytest.raises(WebUIConnectionError, match="websocket|could not|refused"):
        settle_route(auto_client, None, REQUEST, WEIGHTS, stager(folder, tiny_models), pipelined=False)
    assert auto_client.handoff == "auto"


def test_a_cluster_host_hands_the_driver_its_measured_route_and_takes_the_one_recorded(fake_comfyui, shared_vae_models,
                                                                                     tmp_path, slow_node, assets):
    # on a Ray cluster each host times its ComfyUI; the driver keeps the record in run.json, by host, so that
    # a resume takes the route its first session measured, as on one machine (it timed it anew every session)
    from bayes_merger.merge.fingerprint import fingerprint
    from bayes_merger.cluster.host import TrialHost
    from bayes_merger.config import ClusterConfig, Config, OptimiserConfig, PayloadsConfig, ScorerConfig, WebUIConfig
    from bayes_merger.inputs import check_inputs
    from tests.loop.test_cli_run import REPO

    slow_node("ModelMerge")
    folder = tmp_path / "models" / "checkpoints" / "bayes-merger"
    cfg = Config(model_a=str(shared_vae_models / "a.safetensors"), model_b=str(shared_vae_models / "b.safetensors"),
                 webui=WebUIConfig(url=fake_comfyui.url, checkpoint_dir=str(folder), backend="comfyui"),
                 payloads=PayloadsConfig(dir=str(REPO / "payloads" / "demo.yaml"),
                                         wildcards_dir=str(REPO / "payloads" / "wildcards")),
                 scorer=ScorerConfig(name="aesthetic_head", clip=str(assets["scorer.clip"]),
                                     head=str(assets["scorer.head"])),
                 optimiser=OptimiserConfig(init_points=2, n_iters=1), cluster=ClusterConfig())
    inputs = check_inputs(cfg, tmp_path / "run")
    models = {m: fingerprint(p) for m, p in inputs.merge.models.items()}

    def start(known_route=None):
        host = TrialHost(inputs, cfg.webui, inputs.run_id, models, {})
        try:
            return host.start(None, known_route)[2]
        finally:
            host.hand_back()

    measured = start()
    assert measured["route"] == "file" and measured["graph_s"] >= SLOW > measured["file_s"]
    posts = len(fake_comfyui.requests_to("/prompt", "POST"))
    slow_node("ModelMerge", 0.0)  # the device changed: timed anew, the graph would win now
    assert start(measured) == measured
    assert len(fake_comfyui.requests_to("/prompt", "POST")) == posts, "the recorded route was timed again"
