"""ComfyUIClient when things go wrong: refused prompts, execution errors, dropped sockets, restarts."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from safetensors.torch import load_file, save_file

from bayes_merger.errors import WebUIConnectionError, WebUIError, WebUITimedOut
from bayes_merger.merge.arch import architecture
from bayes_merger.merge.weights import BlockWeights
from bayes_merger.renderers.comfyui import ComfyUIClient
from bayes_merger.renderers.comfyui.http import ComfyApi, lost_answer
from bayes_merger.renderers.comfyui.prompts import OutOfMemory, PromptInterrupted
from tests.comfyui.test_comfyui_client import save_image

PAYLOAD = {"prompt": "a red boat", "seed": 7, "steps": 3, "width": 64, "height": 64}
SD1 = architecture("sd1")
WEIGHTS = BlockWeights.uniform(SD1.blocks, 0.4)


def prompt_posts(fake):
    return [r.status for r in fake.requests_to("/prompt", "POST")]


def test_a_refused_prompt_names_the_node_and_the_input(comfy_config, fake_comfyui):
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
             "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "3": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
             "5": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
    api = ComfyApi(comfy_config())
    with pytest.raises(WebUIError) as error:
        api.request("POST", "/prompt", {"prompt": graph})
    message = str(error.value)
    assert "ComfyUI refused the prompt" in message and "HTTP 400" in message
    assert "node 1 (CheckpointLoaderSimple) input 'ckpt_name': Value not in list" in message
    assert "'nope.safetensors' not in ['a.safetensors', 'b.safetensors']" in message
    assert "node 5 (SaveImageWebsocket) input 'images': Return type mismatch" in message


def test_a_missing_merge_ratio_is_named(comfy_config):
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
             "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["1", 0]}},
             "4": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["3", 0]}}}
    with pytest.raises(WebUIError, match="node 4 \\(SaveImageWebsocket\\) input 'images': Return type mismatch"):
        ComfyApi(comfy_config()).request("POST", "/prompt", {"prompt": graph})


def test_a_prompt_without_outputs_and_a_server_crash_are_sentences(comfy_config, fake_comfyui):
    api = ComfyApi(comfy_config())
    with pytest.raises(WebUIError, match="refused the prompt .*: Prompt has no outputs\\.$"):
        api.request("POST", "/prompt", {"prompt": {"1": {"class_type": "EmptyLatentImage", "inputs": {}}}})
    fake_comfyui.fail_next(1, status=500, path="/object_info")
    with pytest.raises(WebUIError, match="GET /object_info failed with HTTP 500: Internal Server Error Server got "
                                         "itself in trouble\\.$"):
        api.request("GET", "/object_info")


def test_an_execution_error_over_the_websocket_fails_the_trial_with_the_node_and_its_message(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.fail_execution("KSampler", "Expected all tensors to be on the same device\n", "RuntimeError")
    with pytest.raises(WebUIError) as error:
        graph_client.txt2img(PAYLOAD)
    assert not isinstance(error.value, WebUIConnectionError)  # the trial's failure, not a lost server
    assert "ComfyUI failed running node 5 (KSampler)" in str(error.value)
    assert "RuntimeError: Expected all tensors to be on the same device." in str(error.value)
    assert fake_comfyui.frees == []
    assert graph_client.txt2img(PAYLOAD).images  # the next render works


@pytest.mark.parametrize("exception_type", ["torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"])
def test_out_of_memory_frees_comfyuis_memory_and_is_redone_not_failed(graph_client, fake_comfyui, exception_type):
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.fail_execution("KSampler", "CUDA out of memory. Tried to allocate 2 GiB\n", exception_type)
    with pytest.raises(OutOfMemory) as error:
        graph_client.txt2img(PAYLOAD)
    assert isinstance(error.value, WebUIConnectionError)  # the executor waits and redoes the trial
    assert str(error.value).startswith("ComfyUI ran out of memory running node 5 (KSampler) of prompt ")
    assert "(OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB), so it was asked to free" in str(error.value)
    assert fake_comfyui.frees == [{"unload_models": True, "free_memory": True}]
    loads = fake_comfyui.load_count
    assert graph_client.txt2img(PAYLOAD).images  # the redone render works
    assert fake_comfyui.load_count == loads + 2, "the freed cache makes it reload A and B"


@pytest.mark.parametrize("exception_type, message", [
    # torch 2.13 on a CPU (the reference's --cpu server) raises a plain RuntimeError, as ComfyUI names it
    ("RuntimeError", "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                     "tried to allocate 70368744177664 bytes. Error code 12 (Cannot allocate memory)"),
    ("RuntimeError", "MPS backend out of memory (MPS allocated: 17.9 GB, other allocations: 1.2 GB)."),
    ("MemoryError", ""),
])
def test_out_of_memory_on_a_cpu_or_mps_comfyui_frees_its_memory_and_is_redone_not_failed(graph_client, fake_comfyui,
                                                                                         exception_type, message):
    # only CUDA's OutOfMemoryError was known: a failed trial, the optimiser steered away, the merge graph kept in RAM
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.fail_execution("KSampler", message, exception_type)
    with pytest.raises(OutOfMemory):
        graph_client.txt2img(PAYLOAD)
    assert fake_comfyui.frees == [{"unload_models": True, "free_memory": True}]
    assert graph_client.txt2img(PAYLOAD).images  # the redone render works


def test_a_prompt_cancelled_in_comfyuis_ui_is_redone_not_failed(graph_client, fake_comfyui, comfy_config):
    graph_client.load_weights(WEIGHTS, trial=0)
    gate = fake_comfyui.hold_execution()
    outcome = Background(graph_client)
    ours = fake_comfyui.wait_until_running()
    ComfyApi(comfy_config()).request("POST", "/interrupt", {})  # the Cancel button: no prompt id
    outcome.thread.join(10)
    assert len(outcome.errors) == 1 and isinstance(outcome.errors[0], PromptInterrupted)
    assert isinstance(outcome.errors[0], WebUIConnectionError)
    assert str(outcome.errors[0]).startswith(f"ComfyUI's prompt {ours} was interrupted at node ")
    fake_comfyui.wait_until_idle()  # the event comes before the history is written
    assert fake_comfyui.history[ours]["status"]["messages"][-1][0] == "execution_interrupted"
    gate.set()
    assert graph_client.txt2img(PAYLOAD).images


class Background:
    """A render on another thread and what it raised."""

    def __init__(self, client: ComfyUIClient) -> None:
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._render, args=(client,))
        self.thread.start()

    def _render(self, client: ComfyUIClient) -> None:
        try:
            client.txt2img(PAYLOAD)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.errors.append(exc)


def _graph_client(comfy_config, tiny_models, read_timeout: float) -> ComfyUIClient:
    """A client of the built-in graph that waits ``read_timeout`` s for a prompt (to be used in a ``with``)."""
    return ComfyUIClient(comfy_config(read_timeout=read_timeout), "run1", handoff="graph", arch=SD1,
                         model_a=tiny_models / "a.safetensors", model_b=tiny_models / "b.safetensors")


def queued_ids(api: ComfyApi) -> tuple[list[str], list[str]]:
    """(running, pending) prompt ids, as GET /queue lists them."""
    queue = api.request("GET", "/queue")
    return [item[1] for item in queue["queue_running"]], [item[1] for item in queue["queue_pending"]]


def test_a_prompt_we_stop_waiting_for_is_interrupted_so_the_redone_trial_does_not_queue_behind_it(
        comfy_config, fake_comfyui, tiny_models):
    gate = fake_comfyui.hold_execution()
    with _graph_client(comfy_config, tiny_models, read_timeout=2.0) as client:
        client.load_weights(WEIGHTS, trial=0)
        with pytest.raises(WebUITimedOut, match="did not finish prompt (\\S+) within 2 s") as error:
            client.txt2img(PAYLOAD)
        ours = str(error.value).split("prompt ", 1)[1].split(" ", 1)[0]
        fake_comfyui.wait_until_idle()  # the interrupt stops it while it is still held
        assert queued_ids(ComfyApi(comfy_config())) == ([], [])
        assert fake_comfyui.history[ours]["status"]["messages"][-1][0] == "execution_interrupted"
        assert [r.body for r in fake_comfyui.requests_to("/interrupt", "POST")] == [{"prompt_id": ours}]
        gate.set()
        assert client.txt2img(PAYLOAD).images  # the redone trial runs at once


def test_a_prompt_we_stop_waiting_for_leaves_the_queue_and_anothers_running_prompt_runs_on(
        comfy_config, fake_comfyui, tiny_models):
    with _graph_client(comfy_config, tiny_models, read_timeout=2.0) as client:
        client.load_weights(WEIGHTS, trial=0)
        client.txt2img(PAYLOAD)
        graph = next(iter(fake_comfyui.history.values()))["prompt"][2]
        api = ComfyApi(comfy_config())
        gate = fake_comfyui.hold_execution()
        theirs = api.request("POST", "/prompt", {"prompt": graph, "client_id": "another-user"})["prompt_id"]
        assert fake_comfyui.wait_until_running() == theirs
        with pytest.raises(WebUITimedOut, match="did not start prompt .* within 2 s: the prompt ahead of it in its "
                                                "queue ran longer than that"):
            client.txt2img(PAYLOAD)
        assert queued_ids(api) == ([theirs], [])  # ours is gone; the interrupt with our id left theirs alone
        gate.set()
        fake_comfyui.wait_until_idle()
        assert fake_comfyui.history[theirs]["status"]["status_str"] == "success"


def test_a_prompt_queued_behind_others_that_each_end_in_time_is_waited_for_longer_than_the_read_timeout(
        comfy_config, fake_comfyui, tiny_models):
    # a shared server: two prompts of another user ahead of ours, each rendering within webui.read_timeout
    # (2.5 s here), the three together well beyond it
    with _graph_client(comfy_config, tiny_models, read_timeout=2.5) as client:
        client.load_weights(WEIGHTS, trial=0)
        client.txt2img(PAYLOAD)
        graph = next(iter(fake_comfyui.history.values()))["prompt"][2]
        fake_comfyui.delay_node("KSampler", 1.5)
        api, theirs = ComfyApi(comfy_config()), []
        for shift in (1, 2):  # other seeds: not served from ComfyUI's cache
            other = copy.deepcopy(graph)
            for node in other.values():
                if "seed" in node["inputs"]:
                    node["inputs"]["seed"] += shift
            theirs.append(api.request("POST", "/prompt", {"prompt": other, "client_id": "another-user"})["prompt_id"])
        assert client.txt2img({**PAYLOAD, "seed": 70}).images
    assert [fake_comfyui.history[p]["status"]["status_str"] for p in theirs] == ["success", "success"]
    assert len(fake_comfyui.requests_to("/prompt", "POST")) == 4, "ours was withdrawn and sent again"


def test_the_images_of_a_prompt_posted_without_a_client_id_are_never_taken_for_ours(
        graph_client, fake_comfyui, comfy_config):
    # ComfyUI sends the progress and the images of such a prompt (another tool's) to every socket, ours too
    graph_client.load_weights(WEIGHTS, trial=0)
    alone = [image.tobytes() for image in graph_client.txt2img(PAYLOAD).images]
    graph = copy.deepcopy(next(iter(fake_comfyui.history.values()))["prompt"][2])
    for node in graph.values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] += 1  # other pictures
    gate = fake_comfyui.hold_execution()
    theirs = ComfyApi(comfy_config()).request("POST", "/prompt", {"prompt": graph})["prompt_id"]
    assert fake_comfyui.wait_until_running() == theirs
    with ThreadPoolExecutor(1) as pool:
        ours = pool.submit(graph_client.txt2img, PAYLOAD)
        fake_comfyui.wait_for_requests("/prompt", 3)  # ours is queued behind theirs
        gate.set()
        images = ours.result(timeout=30).images

    assert [image.tobytes() for image in images] == alone
    assert fake_comfyui.history[theirs]["status"]["status_str"] == "success"


def test_a_failed_clean_up_is_logged_and_the_timeout_is_what_is_raised(comfy_config, fake_comfyui, tiny_models,
                                                                        caplog):
    gate = fake_comfyui.hold_execution()
    with _graph_client(comfy_config, tiny_models, read_timeout=2.0) as client:
        client.load_weights(WEIGHTS, trial=0)
        fake_comfyui.fail_next(1, status=500, path="/queue", method="POST")
        with pytest.raises(WebUIConnectionError, match="did not finish prompt"):
            client.txt2img(PAYLOAD)
    assert "Could not withdraw prompt" in caplog.text and "so it may still run" in caplog.text
    gate.set()


def test_a_corrupt_merge_file_fails_the_trial_with_the_loaders_error(file_client, fake_comfyui):
    file_client.load_checkpoint(lambda path: path.write_bytes(b"\xff" * 64), trial=0)
    with pytest.raises(WebUIError, match="node 1 \\(CheckpointLoaderSimple\\).*SafetensorError"):
        file_client.txt2img(PAYLOAD)


@pytest.mark.parametrize("event", ["execution_start", "progress", "execution_success", "executing"])
def test_a_websocket_dropped_mid_prompt_is_reopened_and_the_image_asked_for_again_from_the_cache(
        graph_client, fake_comfyui, monkeypatch, event):
    monkeypatch.setattr("bayes_merger.renderers.comfyui.prompts.HISTORY_POLL", 0.2)
    graph_client.load_weights(WEIGHTS, trial=0)
    undisturbed = graph_client.txt2img(PAYLOAD).images[0]
    fake_comfyui.drop_websocket_at(event)
    generation = graph_client.txt2img(PAYLOAD)
    assert generation.seeds == [7] and len(generation.images) == 1
    assert generation.images[0].tobytes() == undisturbed.tobytes()
    # the image may have gone with the socket: the identical prompt once more, which only re-runs the
    # websocket saver (everything else is ComfyUI's cache)
    assert prompt_posts(fake_comfyui) == [200, 200, 200]
    assert fake_comfyui.executed[-1] == ["7"]
    assert 2 <= len(fake_comfyui.requests_to("/ws")) <= 3  # reopened (once more if the history answered first)


def test_a_dropped_websocket_that_hears_another_prompts_progress_still_finds_ours_done_in_the_history(
        comfy_config, fake_comfyui, tiny_models, monkeypatch):
    # the reopened socket has a new client id, so our prompt's end reaches it only through the history,
    # which was asked after HISTORY_POLL seconds of silence: another tool's progress, sent to every
    # socket, kept it from ever being silent, and the finished prompt was waited for until read_timeout
    monkeypatch.setattr("bayes_merger.renderers.comfyui.prompts.HISTORY_POLL", 0.2)
    with _graph_client(comfy_config, tiny_models, read_timeout=40.0) as client:
        client.load_weights(WEIGHTS, trial=0)
        undisturbed = client.txt2img(PAYLOAD).images[0]
        chatter = fake_comfyui.progress_of_another_prompt(every=0.02)
        gate = fake_comfyui.hold_execution()
        fake_comfyui.drop_websocket_at("execution_start")
        queues = len(fake_comfyui.requests_to("/queue"))
        try:
            with ThreadPoolExecutor(1) as pool:
                ours = pool.submit(client.txt2img, PAYLOAD)
                held = fake_comfyui.wait_until_running()
                # asked once the socket dropped (the history, then the queue): still running. The queue is
                # asked once more for the status the prompt's POST sent, before the drop or after the lookup
                fake_comfyui.wait_for_requests(f"/history/{held}", 1)
                fake_comfyui.wait_for_requests("/queue", queues + 2)
                gate.set()
                generation = ours.result(timeout=20)  # found done at the next ask, not at read_timeout's end
        finally:
            chatter.set()
            gate.set()
    assert generation.images[0].tobytes() == undisturbed.tobytes()
    assert prompt_posts(fake_comfyui) == [200, 200, 200]  # the identical prompt once more, for its image


def test_a_websocket_reopened_after_a_drop_keeps_getting_the_events_of_later_prompts(graph_client, fake_comfyui,
                                                                                    monkeypatch):
    # ComfyUI keeps one socket a client id, and a dropped socket's handler, ending after the client has
    # reopened, forgets whichever socket is filed under its id: a new socket needs a new id
    monkeypatch.setattr("bayes_merger.renderers.comfyui.prompts.HISTORY_POLL", 0.2)
    fake_comfyui.end_websockets_late()
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.drop_websocket_at("progress")
    graph_client.txt2img(PAYLOAD)
    posts = len(prompt_posts(fake_comfyui))
    for seed in (8, 9):
        assert graph_client.txt2img({**PAYLOAD, "seed": seed}).seeds == [seed]
    assert len(prompt_posts(fake_comfyui)) == posts + 2  # each once: its events and image came


def test_with_a_save_image_workflow_a_dropped_websocket_costs_no_second_prompt(workflow_client, fake_comfyui,
                                                                             monkeypatch):
    monkeypatch.setattr("bayes_merger.renderers.comfyui.prompts.HISTORY_POLL", 0.2)
    with workflow_client(save_image) as client:
        client.load_weights(WEIGHTS, trial=0)
        fake_comfyui.drop_websocket_at("progress")
        generation = client.txt2img(PAYLOAD)
    assert generation.seeds == [7] and len(generation.images) == 1
    assert prompt_posts(fake_comfyui) == [200]  # its images are files: the history and /view give them back


def test_a_restart_mid_prompt_is_a_lost_server_and_the_trial_can_be_redone(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    gate = fake_comfyui.hold_execution()
    outcome: list[BaseException] = []

    def render():
        try:
            graph_client.txt2img(PAYLOAD)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=render)
    thread.start()
    fake_comfyui.wait_for_requests("/prompt", 1)
    fake_comfyui.restart()
    gate.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], WebUIConnectionError)
    assert "restarted" in str(outcome[0]) or "websocket" in str(outcome[0]).lower()

    graph_client.wait_until_ready()
    assert graph_client.txt2img(PAYLOAD).images  # the same hand-off renders again after the restart


def test_a_websocket_a_proxy_closed_while_idle_is_reopened_before_the_next_prompt_not_found_dead_after_it(
        graph_client, fake_comfyui, monkeypatch):
    graph_client.load_weights(WEIGHTS, trial=0)
    graph_client.txt2img(PAYLOAD)
    # the merge between two trials outlasts a proxy's idle timeout (here: any silence), which drops the socket
    monkeypatch.setattr("bayes_merger.renderers.comfyui.events.IDLE_REOPEN", 0.0)
    fake_comfyui.drop_websockets()
    graph_client.load_weights(BlockWeights.uniform(SD1.blocks, 0.6), trial=1)
    assert graph_client.txt2img(PAYLOAD).images
    assert len(fake_comfyui.requests_to("/prompt", "POST")) == 2, "the second trial's prompt was sent twice"


def sent_ids(fake):
    return [r.body["prompt_id"] for r in fake.requests_to("/prompt", "POST")]


def test_every_prompt_carries_a_new_id_of_the_clients_own_which_comfyui_keeps(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    generation = graph_client.txt2img({**PAYLOAD, "batch_size": 2})
    ids = sent_ids(fake_comfyui)
    assert len(set(ids)) == 2 and all(len(i) == 36 for i in ids)  # uuid4s
    assert generation.info["prompt_ids"] == ids and sorted(fake_comfyui.history) == sorted(ids)


def test_a_prompt_whose_answer_is_lost_after_comfyui_queued_it_is_followed_not_sent_again(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.drop_after_next(1, path="/prompt", method="POST")
    generation = graph_client.txt2img(PAYLOAD)
    assert generation.seeds == [7] and len(generation.images) == 1
    assert prompt_posts(fake_comfyui) == [None]  # no answer, and no second POST
    [ours] = sent_ids(fake_comfyui)
    assert list(fake_comfyui.history) == [ours] and generation.info["prompt_ids"] == [ours]  # rendered once
    # the images that arrived are those an undisturbed render gives
    assert graph_client.txt2img(PAYLOAD).images[0].tobytes() == generation.images[0].tobytes()


def test_a_prompt_request_dropped_before_comfyui_got_it_is_sent_once_more_under_a_new_id(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    graph_client.txt2img(PAYLOAD)  # ComfyUI answers with our own id: it keeps the ids we send
    fake_comfyui.drop_next(1, path="/prompt", method="POST")
    generation = graph_client.txt2img(PAYLOAD)
    assert len(generation.images) == 1
    assert prompt_posts(fake_comfyui) == [200, None, 200]
    first, dropped, again = sent_ids(fake_comfyui)
    assert dropped != again and generation.info["prompt_ids"] == [again]
    assert sorted(fake_comfyui.history) == sorted([first, again])


def test_a_prompt_request_dropped_twice_is_a_lost_server(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    graph_client.txt2img(PAYLOAD)
    fake_comfyui.drop_next(2, path="/prompt", method="POST")
    with pytest.raises(WebUIConnectionError, match="the connection was closed without an answer"):
        graph_client.txt2img(PAYLOAD)
    assert prompt_posts(fake_comfyui) == [200, None, None]


def test_a_first_prompt_request_dropped_is_not_sent_again_until_comfyui_has_kept_an_id(graph_client, fake_comfyui):
    # an older ComfyUI makes its own ids, so not finding ours proves nothing there: no second POST
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.drop_next(1, path="/prompt", method="POST")
    with pytest.raises(WebUIConnectionError, match="the connection was closed without an answer"):
        graph_client.txt2img(PAYLOAD)
    assert prompt_posts(fake_comfyui) == [None]
    [ours] = sent_ids(fake_comfyui)
    assert fake_comfyui.requests_to(f"/history/{ours}", "GET") and fake_comfyui.requests_to("/queue", "GET")


@pytest.mark.parametrize("status", [504, 524])  # 524: Cloudflare's (RunPod's proxy) gateway timeout
def test_a_504_on_the_queue_is_looked_up_and_not_sent_again(graph_client, fake_comfyui, status):
    graph_client.load_weights(WEIGHTS, trial=0)
    graph_client.txt2img(PAYLOAD)
    fake_comfyui.fail_next(1, status=status, path="/prompt", method="POST", message="Gateway Timeout")
    with pytest.raises(WebUIError, match=f"HTTP {status}"):
        graph_client.txt2img(PAYLOAD)
    assert prompt_posts(fake_comfyui) == [200, status]  # ComfyUI may still be about to queue it
    assert fake_comfyui.requests_to(f"/history/{sent_ids(fake_comfyui)[1]}", "GET")


def test_a_prompt_lost_to_a_504_is_looked_for_before_the_next_three_prompts_only(graph_client, fake_comfyui):
    # a proxy's 504 for a request that never reached ComfyUI: nothing to withdraw, and no lookups for ever
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.fail_next(1, status=504, path="/prompt", method="POST", message="Gateway Timeout")
    with pytest.raises(WebUIError, match="HTTP 504"):
        graph_client.txt2img(PAYLOAD)
    lost = f"/history/{sent_ids(fake_comfyui)[0]}"
    looked = [len(fake_comfyui.requests_to(lost, "GET"))]
    for _ in range(4):
        graph_client.txt2img(PAYLOAD)
        looked.append(len(fake_comfyui.requests_to(lost, "GET")))
    steps = [after - before for before, after in zip(looked, looked[1:])]
    assert all(step > 0 for step in steps[:3]) and steps[3] == 0, steps
    assert not fake_comfyui.requests_to("/interrupt")


def test_a_prompt_request_that_times_out_before_comfyui_queued_it_is_not_sent_again(comfy_config, fake_comfyui,
                                                                                    tiny_models):
    with _graph_client(comfy_config, tiny_models, read_timeout=2.0) as client:
        client.load_weights(WEIGHTS, trial=0)
        client.txt2img(PAYLOAD)  # ComfyUI keeps our ids: a repost would be allowed after a drop
        fake_comfyui.hold("/prompt", "POST")  # ComfyUI has the request but has not queued it (yet)
        with pytest.raises(WebUIConnectionError, match="got no answer from ComfyUI within 2 s"):
            client.txt2img(PAYLOAD)
    fake_comfyui.stop()  # ends the held requests unanswered and waits for them: the record is complete
    assert prompt_posts(fake_comfyui) == [200, None]  # it may still be queued late, so not sent again
    assert fake_comfyui.requests_to(f"/history/{sent_ids(fake_comfyui)[1]}", "GET")  # but looked up


def test_a_prompt_comfyui_queues_after_its_post_timed_out_is_withdrawn_before_the_next(comfy_config, fake_comfyui,
                                                                                      tiny_models):
    # queued late, it would run for no one, and the redone trial's prompts would wait behind it
    with _graph_client(comfy_config, tiny_models, read_timeout=2.0) as client:
        client.load_weights(WEIGHTS, trial=0)
        client.txt2img(PAYLOAD)
        release = fake_comfyui.hold("/prompt", "POST")
        with pytest.raises(WebUIConnectionError, match="got no answer from ComfyUI within 2 s"):
            client.txt2img(PAYLOAD)
        gate = fake_comfyui.hold_execution()
        release.set()  # ComfyUI queues it now
        late = fake_comfyui.wait_until_running()
        assert late == sent_ids(fake_comfyui)[1]
        done: dict = {}
        redone = threading.Thread(target=lambda: done.setdefault("generation", client.txt2img(PAYLOAD)))
        redone.start()
        try:
            [interrupt] = fake_comfyui.wait_for_requests("/interrupt", 1)
        finally:
            gate.set()  # our own prompt runs on
            redone.join(30)
    assert interrupt.body == {"prompt_id": late}
    assert {"delete": [late]} in [r.body for r in fake_comfyui.requests_to("/queue", "POST")]
    assert fake_comfyui.history[late]["status"]["status_str"] == "error"  # interrupted
    assert len(done["generation"].images) == 1


def lost_answer_of(api: ComfyApi) -> str | None:
    with pytest.raises(WebUIError) as error:
        api.request("POST", "/prompt", {"prompt": {}})
    return lost_answer(error.value)


def test_which_failed_posts_may_have_reached_comfyui(comfy_config, fake_comfyui):
    # 2 s: the answers below (a 400, 503s, a 504, drops) come in time on a busy machine; only the
    # delayed POST is slow, and the stop() after it ends that delay
    api = ComfyApi(comfy_config(read_timeout=2.0))
    assert lost_answer_of(api) is None  # its 400: the answer itself
    fake_comfyui.fail_next(3, status=503, path="/prompt")
    assert lost_answer_of(api) is None  # ComfyUI (or a proxy) said it did not run it
    fake_comfyui.fail_next(1, status=504, path="/prompt")
    assert lost_answer_of(api) == "gateway"
    for fault in (fake_comfyui.drop_next, fake_comfyui.drop_after_next):
        fault(1, path="/prompt")
        assert lost_answer_of(api) == "dropped"
    fake_comfyui.delay("/prompt", 30.0, "POST")
    assert lost_answer_of(api) == "timeout"
    fake_comfyui.stop()
    assert lost_answer_of(api) is None  # refused: nothing reached it, so it stays a plain connection error


def test_a_503_on_the_queue_is_retried(graph_client, fake_comfyui):
    graph_client.load_weights(WEIGHTS, trial=0)
    fake_comfyui.fail_next(1, status=503, path="/prompt", method="POST", message="Service Unavailable")
    assert graph_client.txt2img(PAYLOAD).images
    assert prompt_posts(fake_comfyui) == [503, 200]


def test_a_comfyui_that_is_not_running_is_a_connection_error_after_the_ready_timeout(comfy_config, fake_comfyui):
    fake_comfyui.stop()
    with ComfyUIClient(comfy_config(ready_timeout=0.3), "run1") as client:
        with pytest.raises(WebUIConnectionError, match="was not ready after 0.3 s"):
            client.wait_until_ready()


def test_an_a1111_at_the_url_is_told_apart(comfy_config, fake_webui):
    with ComfyUIClient(comfy_config(url=fake_webui.url), "run1") as client:
        with pytest.raises(WebUIError, match="HTTP 404"):
            client.wait_until_ready(timeout=0.2)


def test_a_merge_file_is_confirmed_by_what_comfyui_reports_it_rendered(file_client, fake_comfyui, tiny_models,
                                                                       monkeypatch):
    tensors = load_file(tiny_models / "a.safetensors")
    file_client.load_checkpoint(lambda p: save_file(tensors, str(p)), trial=0)
    original = fake_comfyui._route

    def rewrite_history(method, path, raw):  # a server that rendered another model than asked
        response = original(method, path, raw)
        if path.startswith("/history/") and response.payload:
            for entry in response.payload.values():
                entry["prompt"][2]["1"]["inputs"]["ckpt_name"] = "a.safetensors"
        return response

    monkeypatch.setattr(fake_comfyui, "_route", rewrite_history)
    with pytest.raises(WebUIError, match="another model than the one sent"):
        file_client.txt2img(PAYLOAD)


def test_a_prompt_is_posted_only_once_comfyui_has_filed_our_websocket(graph_client, fake_comfyui, caplog):
    # a busy ComfyUI answers the handshake before it files the socket under our client id: events sent
    # meanwhile reach no one, and a prompt posted at once would have its images taken for lost
    fake_comfyui.file_websockets_late(0.5)
    graph_client.load_weights(WEIGHTS, trial=0)
    assert len(graph_client.txt2img(PAYLOAD).images) == 1
    assert prompt_posts(fake_comfyui) == [200]
    assert "websocket dropped" not in caplog.text
