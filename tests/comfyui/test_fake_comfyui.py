"""The fake ComfyUI speaks the measured API (shared/reference/comfyui-api.md, Part A)."""

from __future__ import annotations

import json
import time

import pytest
import requests
import websocket

from bayes_merger.renderers.comfyui import graph as graphs

VALUES = {"prompt": "boat", "negative": "", "seed": 3, "width": 64, "height": 64, "steps": 2, "cfg": 7.0,
          "sampler": "euler", "scheduler": "normal", "output": "t/x"}


def prompt(model="a.safetensors", saver="SaveImage"):
    """The built-in graph, with SaveImage (as in the measurements of Part A) unless ``saver`` says otherwise."""
    workflow = graphs.builtin_workflow()
    graph = graphs.by_file(graphs.fill(workflow, VALUES), workflow, model)
    if saver == "SaveImage":
        graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": VALUES["output"]}}
    return graph


def test_every_route_answers_under_api_too(fake_comfyui):
    for path in ("/system_stats", "/api/system_stats"):
        assert requests.get(fake_comfyui.url + path).json()["system"]["comfyui_version"] == "0.3.64"
    assert requests.get(fake_comfyui.url + "/api/models/checkpoints").json() == ["a.safetensors", "b.safetensors"]


def test_unknown_things_answer_as_comfyui_does(fake_comfyui):
    assert requests.get(fake_comfyui.url + "/object_info/NoSuchNode").json() == {}
    assert requests.get(fake_comfyui.url + "/history/nope").json() == {}
    assert requests.get(fake_comfyui.url + "/models/nope").status_code == 404
    assert requests.get(fake_comfyui.url + "/view", params={"filename": "nope.png"}).status_code == 404
    assert requests.get(fake_comfyui.url + "/view", params={"filename": "../x"}).status_code == 400
    bad = requests.post(fake_comfyui.url + "/prompt", data=b"not json")
    assert bad.status_code == 500 and bad.text.startswith("500 Internal Server Error")


def test_a_merge_node_lists_its_ratios(fake_comfyui):
    """The reference says "27 FLOATs" but lists 30 names (2 + 12 + 3 + 12 + 1), as ComfyUI's
    ModelMergeSD1 defines them; the client takes the names from /object_info either way."""
    info = requests.get(fake_comfyui.url + "/object_info/ModelMergeSD1").json()["ModelMergeSD1"]
    ratios = info["input_order"]["required"][2:]
    assert len(ratios) == 30 and ratios[0] == "time_embed." and ratios[-1] == "out."
    assert info["input"]["required"]["out."] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]


@pytest.mark.parametrize("change, kind, details", [
    (lambda g: g["5"]["inputs"].pop("cfg"), "required_input_missing", "cfg"),
    (lambda g: g["5"]["inputs"].update(cfg=101), "value_bigger_than_max", "cfg"),
    (lambda g: g["5"]["inputs"].update(steps=0), "value_smaller_than_min", "steps"),
    (lambda g: g["5"]["inputs"].update(cfg="abc"), "invalid_input_type", "cfg, abc, could not convert string to float: 'abc'"),
    (lambda g: g["5"]["inputs"].update(sampler_name="nope"), "value_not_in_list",
     "sampler_name: 'nope' not in (list of length 42)"),
])
def test_invalid_inputs_get_the_measured_400_bodies(fake_comfyui, change, kind, details):
    graph = prompt()
    change(graph)
    answer = requests.post(fake_comfyui.url + "/prompt", json={"prompt": graph})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    error = body["node_errors"]["5"]
    assert error["class_type"] == "KSampler" and error["dependent_outputs"] == ["7"]
    assert error["errors"][0]["type"] == kind and error["errors"][0]["details"] == details


def test_prompt_level_errors(fake_comfyui):
    url = fake_comfyui.url + "/prompt"
    assert requests.post(url, json={}).json()["error"]["type"] == "no_prompt"
    assert requests.post(url, json={"prompt": {}}).json()["error"]["type"] == "prompt_no_outputs"
    unknown = requests.post(url, json={"prompt": {"3": {"class_type": "NoSuchNode", "inputs": {}}}}).json()
    assert unknown["error"] == {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.",
                                "details": "Node ID '#3'", "extra_info": {}}
    numbers = [requests.post(url, json={"prompt": prompt(), "prompt_id": f"id-{i}"}).json()["number"] for i in range(2)]
    assert numbers == [3, 4]  # the three refused POSTs counted too


def test_the_websocket_tells_one_prompt_in_the_measured_order(fake_comfyui):
    ws = websocket.create_connection(fake_comfyui.url.replace("http", "ws") + "/ws?clientId=me", timeout=5)
    assert json.loads(ws.recv()) == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                                "sid": "me"}}
    answer = requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(), "client_id": "me",
                                                               "prompt_id": "my-own-id"}).json()
    assert answer == {"prompt_id": "my-own-id", "number": 0, "node_errors": {}}
    events = []
    while not events or events[-1] != ("executing", None):
        message = json.loads(ws.recv())
        events.append((message["type"], message["data"].get("node")))
    ws.close()
    kinds = [kind for kind, _ in events]
    assert kinds[kinds.index("execution_start") - 1] == "status"
    assert kinds.index("execution_start") < kinds.index("execution_cached") < kinds.index("executing")
    assert ("executed", "7") in events and kinds.count("progress") == 2
    assert kinds[-3:] == ["execution_success", "status", "executing"]
    entry = requests.get(fake_comfyui.url + "/history/my-own-id").json()["my-own-id"]
    assert entry["status"]["status_str"] == "success" and entry["prompt"][2] == prompt()
    image = entry["outputs"]["7"]["images"][0]
    view = requests.get(fake_comfyui.url + "/view", params=image)
    assert view.headers["Content-Type"] == "image/png" and view.content[:4] == b"\x89PNG"


def test_an_identical_prompt_is_all_cached_and_a_restart_forgets_everything(fake_comfyui):
    for prompt_id in ("one", "two"):
        requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(), "prompt_id": prompt_id})
    fake_comfyui.wait_for_requests("/prompt", 2)
    fake_comfyui.wait_until_idle()  # both ran; a TimeoutError after 5 s otherwise
    assert sorted(fake_comfyui.history) == ["one", "two"]
    assert len(fake_comfyui.executed) == 2 and fake_comfyui.executed[0]  # the first ran its nodes
    assert fake_comfyui.executed[1] == []  # nothing re-ran
    fake_comfyui.restart()
    assert requests.get(fake_comfyui.url + "/history").json() == {}


def test_a_front_prompt_runs_before_those_queued_earlier(fake_comfyui):
    # listed first in /queue (a negative number) but run in arrival order, it could not test a queue shared with a tool
    # that sends one
    gate = fake_comfyui.hold_execution()
    for prompt_id, front, seed in (("first", False, 1), ("second", False, 2), ("jumper", True, 3)):
        graph = prompt()
        graph["3"]["inputs"]["seed"] = seed
        requests.post(fake_comfyui.url + "/prompt", json={"prompt": graph, "prompt_id": prompt_id, "front": front})
    fake_comfyui.wait_until_running()
    gate.set()
    fake_comfyui.wait_until_idle()
    assert list(fake_comfyui.history) == ["first", "jumper", "second"]


def test_an_input_a_node_does_not_declare_is_left_out_as_comfyui_does(fake_comfyui):
    # the fake's merge node took any other input as a ratio: a stray name changed the picture, on ComfyUI it does not
    from bayes_merger.testing.fake_comfyui_nodes import SD1_MERGE_INPUTS

    workflow = graphs.builtin_workflow()

    def picture(extra: dict) -> list:
        graph = graphs.in_graph(graphs.fill(workflow, VALUES), workflow, "a.safetensors", "b.safetensors",
                                "ModelMergeSD1", {name: 1.0 for name in SD1_MERGE_INPUTS}, 1.0)
        merge = next(node for node in graph.values() if node["class_type"] == "ModelMergeSD1")
        merge["inputs"].update(extra)
        graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t/x"}}
        answer = requests.post(fake_comfyui.url + "/prompt", json={"prompt": graph}).json()
        fake_comfyui.wait_until_idle()
        return fake_comfyui.history[answer["prompt_id"]]["outputs"]["7"]["images"][0]

    def pixels(image: dict) -> bytes:  # the PNG's text holds the prompt as sent: the pixels are compared
        from io import BytesIO

        from PIL import Image

        return Image.open(BytesIO(requests.get(fake_comfyui.url + "/view", params=image).content)).tobytes()

    plain = picture({})
    assert pixels(picture({"input_blocks.4.1.": 0.0})) == pixels(plain)


def test_save_image_websocket_sends_the_png_after_its_progress_and_writes_nothing(fake_comfyui):
    ws = websocket.create_connection(fake_comfyui.url.replace("http", "ws") + "/ws?clientId=me", timeout=5)
    ws.recv()  # the first status
    frames = []
    for prompt_id in ("one", "two"):  # the second is identical: SaveImageWebsocket re-runs all the same
        requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(saver="SaveImageWebsocket"),
                                                          "client_id": "me", "prompt_id": prompt_id})
        events = []
        while not events or events[-1] != ("executing", None):
            frame = ws.recv()
            if isinstance(frame, bytes):
                frames.append(frame)
                events.append(("binary", None))
            else:
                message = json.loads(frame)
                events.append((message["type"], message["data"].get("node")))
        binary = events.index(("binary", None))
        assert events[binary - 1] == ("progress", "7") and ("executed", "7") not in events
    ws.close()
    assert [f[:8] for f in frames] == [b"\x00\x00\x00\x01\x00\x00\x00\x02"] * 2 and frames[0][8:12] == b"\x89PNG"
    assert frames[0][8:] == frames[1][8:]
    assert fake_comfyui.executed[1] == ["7"]
    assert fake_comfyui.history["one"]["outputs"] == {}  # it returns no UI data
    assert not [p for p in fake_comfyui.output_dir.rglob("*") if p.is_file()]


def _two_identical_prompts(fake_comfyui, clock):
    """The seconds each of two identical prompts took by ``clock``: the second finds its loader cached."""
    times = []
    for prompt_id in ("one", "two"):
        start = clock()
        answer = requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(), "prompt_id": prompt_id})
        assert answer.status_code == 200
        fake_comfyui.wait_until_idle()  # the prompt ran and its history is written; a TimeoutError after 5 s
        times.append(clock() - start)
        assert fake_comfyui.history[prompt_id]["status"]["status_str"] == "success"
    return times


def test_a_node_delay_costs_its_time_only_when_the_node_runs(fake_comfyui):
    fake_comfyui.delay_node("CheckpointLoaderSimple", 0.3)
    times = _two_identical_prompts(fake_comfyui, time.monotonic)
    assert times[0] >= 0.3 and fake_comfyui.executed[1] == []


def test_a_virtual_node_delay_adds_to_the_clock_only_when_the_node_runs(fake_comfyui):
    fake_comfyui.delay_node("CheckpointLoaderSimple", 1000.0, virtual=True)
    times = _two_identical_prompts(fake_comfyui, fake_comfyui.clock)
    assert times[0] >= 1000.0 > times[1] and fake_comfyui.executed[1] == []


def test_a_silent_websocket_outlives_the_idle_timeout_of_http_connections(fake_comfyui, monkeypatch):
    from bayes_merger.testing import fake_http

    monkeypatch.setattr(fake_http._Handler, "timeout", 0.1)
    ws = websocket.create_connection(fake_comfyui.url.replace("http", "ws") + "/ws?clientId=me", timeout=5)
    ws.recv()  # the first status
    time.sleep(0.5)  # the silence under test: several idle timeouts of an HTTP connection
    requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(), "client_id": "me", "prompt_id": "late"})
    kinds = []
    while not kinds or kinds[-1] != "execution_success":
        kinds.append(json.loads(ws.recv())["type"])
    ws.close()
    assert "execution_start" in kinds


@pytest.mark.parametrize("fault, queued", [("drop_next", False), ("drop_after_next", True)])
def test_a_dropped_prompt_request_is_queued_only_when_dropped_after_it_was_carried_out(fake_comfyui, fault, queued):
    getattr(fake_comfyui, fault)(1, path="/prompt", method="POST")
    with pytest.raises(requests.ConnectionError):
        requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(), "prompt_id": "lost"})
    assert [r.status for r in fake_comfyui.requests_to("/prompt", "POST")] == [None]
    fake_comfyui.wait_until_idle()
    assert list(fake_comfyui.history) == (["lost"] if queued else [])
    # the fault is spent: the next request is answered
    answer = requests.post(fake_comfyui.url + "/prompt", json={"prompt": prompt(), "prompt_id": "next"})
    assert answer.json()["prompt_id"] == "next"
