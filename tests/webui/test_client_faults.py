"""WebUIClient when things go wrong on the wire: retries, timeouts, refused connections, restarts, start-up."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
import urllib3.util.retry
from safetensors.torch import save_file

from bayes_merger.errors import WebUIError, WebUITimedOut
from bayes_merger.webui.client import WebUIClient, WebUIConnectionError

TXT2IMG = "/sdapi/v1/txt2img"
OPTIONS = "/sdapi/v1/options"
SD_MODELS = "/sdapi/v1/sd-models"
PROGRESS = "/sdapi/v1/progress"
INTERRUPT = "/sdapi/v1/interrupt"
PAYLOAD = {"prompt": "a red boat", "seed": 7, "steps": 20, "width": 64, "height": 64}


def write_merge(path: Path) -> None:
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.full((4, 4), 0.25)}, str(path))


def statuses(fake, path, method=None):
    return [r.status for r in fake.requests_to(path, method)]


# ---------------------------------------------------------------------------------- retries


def test_a_503_is_retried_until_the_generation_succeeds(fake_webui, webui_config):
    with WebUIClient(webui_config(retries=3), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(2, status=503, path=TXT2IMG)
        generation = client.txt2img(PAYLOAD)

    assert generation.seeds == [7]
    assert statuses(fake_webui, TXT2IMG) == [503, 503, 200]


@pytest.mark.parametrize("status", [502, 503, 504, 524])
def test_gateway_errors_on_reads_and_selection_are_retried(fake_webui, webui_config, status):
    fake_webui.fail_next(1, status=status, path=SD_MODELS)
    fake_webui.fail_next(1, status=status, path=OPTIONS, method="POST")
    with WebUIClient(webui_config(retries=2), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)

    assert statuses(fake_webui, SD_MODELS) == [status, 200]
    assert statuses(fake_webui, OPTIONS, "POST") == [status, 200]


def test_a_503_that_does_not_go_away_ends_as_an_error_after_the_configured_retries(fake_webui, webui_config):
    with WebUIClient(webui_config(retries=2), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(10, status=503, path=TXT2IMG, message="Server busy")
        with pytest.raises(WebUIError, match="HTTP 503: Server busy. Still so after 3 tries") as error:
            client.txt2img(PAYLOAD)

    assert error.value.status == 503
    assert statuses(fake_webui, TXT2IMG) == [503, 503, 503]  # the first try and 2 retries
    # the server said it did not run the request: not the trial's fault, so the loop waits and redoes it
    assert isinstance(error.value, WebUIConnectionError)


def test_a_500_stays_the_trials_error(fake_webui, webui_config):
    with WebUIClient(webui_config(retries=2), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(1, status=500, path=TXT2IMG)
        with pytest.raises(WebUIError) as error:
            client.txt2img(PAYLOAD)

    assert error.value.status == 500
    assert statuses(fake_webui, TXT2IMG) == [500]  # the server ran it and failed: not retried
    assert not isinstance(error.value, WebUIConnectionError)
    assert not fake_webui.requests_to(INTERRUPT), "a generation that ended is not interrupted"


def test_reforge_offline_fails_every_image_with_urlerror_and_the_error_names_the_option_that_fixes_it(
        fake_webui, webui_config):
    body = json.dumps({"error": "URLError", "detail": "", "body": "",
                       "errors": "<urlopen error [Errno -3] Temporary failure in name resolution>"})
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(1, status=500, path=TXT2IMG, body=body)
        with pytest.raises(WebUIError, match=r"HTTP 500: URLError: <urlopen error .*>\. reForge without internet "
                                             r"access .* live_previews_enable to false") as error:
            client.txt2img(PAYLOAD)

    assert error.value.status == 500 and not isinstance(error.value, WebUIConnectionError)


@pytest.mark.parametrize("status", [400, 404, 422, 500])
def test_client_errors_and_500_are_never_retried(fake_webui, webui_config, status):
    with WebUIClient(webui_config(retries=3), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(1, status=status, path=TXT2IMG)
        with pytest.raises(WebUIError) as error:
            client.txt2img(PAYLOAD)

    assert error.value.status == status
    assert statuses(fake_webui, TXT2IMG) == [status]


@pytest.mark.parametrize("status", [504, 524])  # 524: Cloudflare's and RunPod's proxies end answers after 100 s
def test_a_gateway_timeout_on_txt2img_is_not_retried_because_the_server_may_still_be_rendering(fake_webui, webui_config,
                                                                                                 status):
    with WebUIClient(webui_config(retries=3), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(1, status=status, path=TXT2IMG, message="Gateway Timeout")
        with pytest.raises(WebUIError, match=f"HTTP {status}"):
            client.txt2img(PAYLOAD)

    assert statuses(fake_webui, TXT2IMG) == [status]
    # and the generation the server may be running for no one is interrupted
    assert statuses(fake_webui, INTERRUPT, "POST") == [200]


@pytest.mark.parametrize("status", [429, 503])
def test_a_proxys_retry_after_is_not_obeyed_and_a_429_is_not_repeated(fake_webui, webui_config, status, monkeypatch):
    # a proxy asking for an hour per try would hold the run in silence; the backoff decides (0 here)
    slept = []
    # urllib3's retry module's own time.sleep only (its Retry-After and backoff waits), not every thread's
    monkeypatch.setattr(urllib3.util.retry, "time", SimpleNamespace(sleep=slept.append, time=time.time))
    with WebUIClient(webui_config(retries=2, backoff_factor=0), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.fail_next(1, status=status, path=SD_MODELS, message="Slow down", headers={"Retry-After": "3600"})
        if status == 429:
            with pytest.raises(WebUIError, match="HTTP 429"):
                client.load_checkpoint(write_merge, trial=1)
        else:
            client.load_checkpoint(write_merge, trial=1)

    assert slept == []
    assert statuses(fake_webui, SD_MODELS)[-2:] == ([200, 429] if status == 429 else [503, 200])


def test_a_dropped_connection_on_a_read_is_retried(fake_webui, webui_config):
    fake_webui.drop_next(1, path=SD_MODELS)
    with WebUIClient(webui_config(retries=2), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)

    assert statuses(fake_webui, SD_MODELS) == [None, 200]


def test_a_dropped_connection_during_txt2img_is_an_error_without_a_retry(fake_webui, webui_config):
    with WebUIClient(webui_config(retries=3), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.drop_next(1, path=TXT2IMG)
        with pytest.raises(WebUIConnectionError, match="closed without an answer"):
            client.txt2img(PAYLOAD)
        assert client.txt2img(PAYLOAD).images  # the next call works again

    assert statuses(fake_webui, TXT2IMG) == [None, 200]
    # a dropped connection is most often a WebUI that died: nothing to interrupt, and no retries to wait out
    assert not fake_webui.requests_to(INTERRUPT)


# ---------------------------------------------------------------------- timeouts and refusals


def test_a_generation_slower_than_the_read_timeout_is_an_error_is_not_repeated_and_is_interrupted(
        fake_webui, webui_config):
    # only the generation is slow; 2 s leaves the load's requests time on a busy machine
    fake_webui.render_for(600.0)
    with WebUIClient(webui_config(read_timeout=2.0, retries=3), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        with pytest.raises(WebUITimedOut, match=r"no answer within 2 s \(raise webui.read_timeout"):
            client.txt2img(PAYLOAD)
        # the server stops rendering for no one (else it holds the generation queue for ten minutes)
        fake_webui.wait_for_requests(TXT2IMG, 1)
        assert fake_webui.generations == ["interrupted"]
        fake_webui.render_for(0.0)
        assert client.txt2img(PAYLOAD).images  # and the WebUI renders the next one

    assert len(fake_webui.requests_to(TXT2IMG)) == 2
    assert fake_webui.generations == ["interrupted", "done"]


@pytest.mark.parametrize("n_iter, came", [(1, 1), (2, 1)])
def test_a_generation_interrupted_by_someone_else_answers_200_but_is_not_scored(fake_webui, webui_config, n_iter, came):
    # the Interrupt button, or another client: A1111 answers with the unfinished first batch, and with
    # one batch only, the count is right and only /progress tells
    fake_webui.render_for(600.0)
    with WebUIClient(webui_config(), "run1") as client, ThreadPoolExecutor(1) as pool:
        client.load_checkpoint(write_merge, trial=0)
        answer = pool.submit(client.txt2img, {**PAYLOAD, "n_iter": n_iter})
        fake_webui.wait_until_rendering()
        assert requests.post(fake_webui.url + INTERRUPT, timeout=5).status_code == 200
        with pytest.raises(WebUIError, match=f"interrupted or skipped .*: {came} of the {n_iter} images came back"):
            answer.result(timeout=30)
        fake_webui.render_for(0.0)
        assert len(client.txt2img({**PAYLOAD, "n_iter": n_iter}).images) == n_iter  # the next one is scored

    assert fake_webui.generations == ["interrupted", "done"]


def test_a_stop_that_abandons_a_generation_interrupts_it_and_deletes_the_merges_before_selecting_the_model_back(
        fake_webui, webui_config):
    # a second Ctrl-C leaves the worker's txt2img unanswered: the WebUI renders on for no one, and the selection
    # waits behind that render and the model's load, which the overnight runner's SIGKILL may cut short
    SREFRESH = "/sdapi/v1/refresh-checkpoints"
    write_merge(fake_webui.checkpoint_dir / "base.safetensors")
    fake_webui.restart(forget_selection=True)
    fake_webui.render_for(600.0)
    with WebUIClient(webui_config(read_timeout=30.0), "run1") as client, ThreadPoolExecutor(1) as pool:
        client.load_checkpoint(write_merge, trial=0)
        abandoned = pool.submit(client.txt2img, PAYLOAD)
        fake_webui.wait_until_rendering()
        handed_back = len(fake_webui.requests)
        client.hand_back("base.safetensors")
        assert fake_webui.generations == ["interrupted"]  # ended by us, not rendered to its end
        # interrupted by the hand-back (not the read timeout's own interrupt, 30 s later)
        with pytest.raises(WebUIError, match="interrupted or skipped"):
            abandoned.result(timeout=60)

    assert fake_webui.loaded_model == "base.safetensors"
    assert not list(fake_webui.checkpoint_dir.glob("bm-*"))
    after = [(r.method, r.path) for r in fake_webui.requests[handed_back:] if r.path in (SREFRESH, OPTIONS)]
    assert after.index(("POST", SREFRESH)) < after.index(("POST", OPTIONS))  # the merges gone before the wait


def test_a_hung_webui_gets_its_merges_deleted_at_the_end_without_a_call_that_waits_its_read_timeout(
        fake_webui, webui_config, caplog):
    # hung mid-render: /progress and /interrupt answer, but a refresh or a select waits behind the render, each
    # read_timeout (15 minutes by default) before the run could end and the overnight runner restart the WebUI
    REFRESH = "/sdapi/v1/refresh-checkpoints"
    write_merge(fake_webui.checkpoint_dir / "base.safetensors")
    fake_webui.restart(forget_selection=True)
    with WebUIClient(webui_config(read_timeout=1.0), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        stuck = [fake_webui.hold(path, "POST") for path in (TXT2IMG, REFRESH, OPTIONS)]
        with pytest.raises(WebUITimedOut):
            client.txt2img(PAYLOAD)
        client.hand_back("base.safetensors")
        held = fake_webui.held  # what the hand-back left waiting: its calls, had it sent any
        for release in stuck:
            release.set()

    assert held == 1  # the render only
    assert not list(fake_webui.checkpoint_dir.glob("bm-*"))
    assert "Not selecting base.safetensors in the WebUI again: its last call got no answer" in caplog.text


def test_a_read_timeout_on_a_get_is_not_retried_either(fake_webui, webui_config):
    release = fake_webui.hold(OPTIONS, "GET")  # only the GET is slow; the load's other requests answer at once
    with WebUIClient(webui_config(read_timeout=2.0, retries=3), "run1") as client:
        with pytest.raises(WebUIError, match="GET /sdapi/v1/options got no answer"):
            client.load_checkpoint(write_merge, trial=0)
        release.set()
        fake_webui.wait_for_requests(OPTIONS, 1)

    assert len(fake_webui.requests_to(OPTIONS)) == 1


def test_a_refused_connection_is_retried_then_reported(fake_webui, webui_config, caplog):
    config = webui_config(retries=3)
    fake_webui.stop()
    caplog.set_level(logging.WARNING, logger="urllib3")
    with WebUIClient(config, "run1") as client:
        with pytest.raises(WebUIConnectionError, match="connection refused") as error:
            client.txt2img(PAYLOAD)

    assert fake_webui.url in str(error.value)
    assert "webui.url" in str(error.value)
    assert len([r for r in caplog.records if r.getMessage().startswith("Retrying")]) == 3


# ------------------------------------------------------------------------------- restarts


def test_after_a_webui_restart_the_same_client_carries_on_and_selects_again(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        before = client.txt2img(PAYLOAD).images[0].tobytes()
        fake_webui.restart()  # the pooled keep-alive connection is now dead
        after = client.txt2img(PAYLOAD).images[0].tobytes()
        posts_before = len(fake_webui.requests_to(OPTIONS, "POST"))
        client.load_checkpoint(write_merge, trial=1)

    assert before == after
    assert len(fake_webui.requests_to(OPTIONS, "POST")) == posts_before + 1
    assert fake_webui.loaded_model == "bm-run1-t0001.safetensors"


def test_a_restart_that_fell_back_to_another_model_fails_the_trial_until_selected_again(fake_webui, webui_config):
    save_file({"model.diffusion_model.out.0.weight": torch.ones(3)}, str(fake_webui.checkpoint_dir / "base.safetensors"))
    with WebUIClient(webui_config(keep_last=0), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.restart(forget_selection=True)
        with pytest.raises(WebUIError, match="generated with 'base' instead of the merge"):
            client.txt2img(PAYLOAD)
        client.load_checkpoint(write_merge, trial=0)
        generation = client.txt2img(PAYLOAD)

    assert generation.info["sd_model_name"] == "bm-run1-t0000"


# ------------------------------------------------------------------------------- start-up


def test_wait_until_ready_waits_for_a_webui_that_is_still_starting(fake_webui, webui_config, caplog):
    fake_webui.starting_up(3)
    with caplog.at_level(logging.INFO), WebUIClient(webui_config(), "run1") as client:
        client.wait_until_ready(timeout=5)

    assert statuses(fake_webui, PROGRESS) == [404, 404, 404, 200]
    # said once, at the first unanswered probe: a WebUI not started yet is not minutes of silence
    waits = [r.getMessage() for r in caplog.records if "does not answer yet" in r.getMessage()]
    assert waits == [f"The WebUI at {fake_webui.url} does not answer yet (its API answers 404: it is still starting, or "
                     "it was started without --api (API not enabled)): waiting up to 5 s."]


def test_a_webui_not_started_yet_is_said_with_the_setting_that_bounds_the_wait(fake_webui, webui_config, caplog):
    fake_webui.stop()
    with caplog.at_level(logging.INFO), WebUIClient(webui_config(ready_timeout=0.3), "run1") as client:
        with pytest.raises(WebUIConnectionError):
            client.wait_until_ready()
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == [
        f"The WebUI at {fake_webui.url} does not answer yet (it could not be reached (connection refused)): waiting "
        "up to 0.3 s (webui.ready_timeout)."]


def test_a_webui_without_the_api_is_reported_as_such_when_the_wait_ends(fake_webui, webui_config):
    fake_webui.starting_up(10**6)
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(WebUIError, match=r"not ready after 0.2 s: .*--api \(API not enabled\)"):
            client.wait_until_ready(timeout=0.2)


def test_a_webui_that_never_comes_up_is_reported_as_unreachable(fake_webui, webui_config):
    config = webui_config()
    fake_webui.stop()
    with WebUIClient(config, "run1") as client:
        with pytest.raises(WebUIConnectionError, match="could not be reached .connection refused"):
            client.wait_until_ready(timeout=0.2)


def test_a_webui_host_name_that_does_not_resolve_is_said_so_not_connection_refused(webui_config, monkeypatch):
    import socket

    def no_such_host(host, *args, **kwargs):  # noqa: ANN001, ANN202 - no lookup leaves the machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with WebUIClient(webui_config(url="http://webui.invalid:7860"), "run1") as client:
        with pytest.raises(WebUIConnectionError, match="its host name could not be resolved; check the address"):
            client.wait_until_ready(timeout=0.2)


def test_wait_until_ready_tolerates_a_server_restarting_under_it(fake_webui, webui_config):
    fake_webui.fail_next(2, status=502, path=PROGRESS)
    with WebUIClient(webui_config(), "run1") as client:
        client.wait_until_ready(timeout=5)

    assert statuses(fake_webui, PROGRESS) == [502, 502, 200]


def test_a_404_from_the_api_hints_at_a_missing_api_flag(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        fake_webui.starting_up(1)
        with pytest.raises(WebUIError, match=r"HTTP 404: Not Found \(API not enabled: start the WebUI with --api\)") as error:
            client.txt2img(PAYLOAD)

    assert not isinstance(error.value, WebUIConnectionError)


def test_a_404_from_an_api_that_answered_before_is_a_restart_not_the_trials_error(fake_webui, webui_config):
    with WebUIClient(webui_config(), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)
        fake_webui.restart()
        fake_webui.starting_up(1)  # the port is open again before the API routes are
        with pytest.raises(WebUIConnectionError, match="HTTP 404: Not Found, where the WebUI's API answered before"):
            client.txt2img(PAYLOAD)
        client.wait_until_ready(timeout=5)
        generation = client.txt2img(PAYLOAD)

    assert generation.seeds == [7]


def test_retries_apply_however_the_url_is_written(fake_webui, webui_config):
    url = fake_webui.url.replace("http://", "HTTP://") + "/"
    fake_webui.fail_next(1, status=503, path=SD_MODELS)
    with WebUIClient(webui_config(url=url), "run1") as client:
        client.load_checkpoint(write_merge, trial=0)

    assert statuses(fake_webui, SD_MODELS) == [503, 200]


def test_only_wire_failures_are_connection_errors_a_merge_that_did_not_load_is_not(fake_webui, webui_config):
    save_file({"model.diffusion_model.out.0.weight": torch.randn(4)}, str(fake_webui.checkpoint_dir / "base.safetensors"))
    fake_webui.restart(forget_selection=True)
    fake_webui.fail_loads(1)
    with WebUIClient(webui_config(), "run1") as client:
        with pytest.raises(WebUIError) as error:
            client.load_checkpoint(write_merge, trial=0)

    assert error.value.status is None
    assert not isinstance(error.value, WebUIConnectionError)
