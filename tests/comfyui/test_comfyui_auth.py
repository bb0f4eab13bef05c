"""A ComfyUI behind an auth proxy that refuses the credentials: one sentence naming webui.auth, at once."""

from __future__ import annotations

import pytest

from bayes_merger.errors import WebUIConnectionError, WebUIError
from bayes_merger.renderers.comfyui import ComfyUIClient
from bayes_merger.renderers.comfyui.http import ComfyApi

# what nginx's auth_basic answers to wrong or missing credentials
PROXY_401 = "<html><head><title>401 Authorization Required</title></head><body>401 Authorization Required</body></html>"


def test_a_401_while_waiting_for_comfyui_ends_the_wait_at_once_naming_webui_auth(comfy_config, fake_comfyui):
    fake_comfyui.fail_next(1000, status=401, path="/system_stats", body=PROXY_401)
    # wrong credentials do not change while we wait: the wait must not run out its ready_timeout
    with ComfyUIClient(comfy_config(ready_timeout=5.0, auth="alice:wrong"), "run1") as client:
        with pytest.raises(WebUIError) as raised:
            client.wait_until_ready()

    error = raised.value
    assert not isinstance(error, WebUIConnectionError), "ComfyUI answered: it is not a lost server to wait for"
    assert error.status == 401
    assert str(error) == ("GET /system_stats failed with HTTP 401: Unauthorized (check webui.auth or the variable "
                          "named by webui.auth_env).")
    assert len(fake_comfyui.requests_to("/system_stats")) == 1, "a 401 will not change: no second probe"


def test_a_401_to_any_comfyui_request_names_webui_auth(comfy_config, fake_comfyui):
    fake_comfyui.fail_next(1, status=401, path="/object_info/KSampler", body=PROXY_401)
    with pytest.raises(WebUIError, match=r"HTTP 401: Unauthorized \(check webui.auth or the variable named by "
                                         r"webui.auth_env\)\.$"):
        ComfyApi(comfy_config()).request("GET", "/object_info/KSampler")
