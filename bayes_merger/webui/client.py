"""The AUTOMATIC1111 client of one run: wait for the WebUI, hand it each trial's merge, render, hand back.

Works with A1111, reForge, Forge and SD.Next (see ``shared/reference/a1111-api.md``). The HTTP side
(auth, timeouts, retries, error bodies) is ``webui.http``; the merge files in the checkpoint folder
(names, atomic write, clean-up) are ``webui.merge_files``; reading a txt2img answer is
``webui.generation``. A merge that did not load (A1111's silent fallback, SD.Next's
keep-the-old-model, Forge's lazy load at the next generation) is caught by ``GET /options`` after the
selection and by ``info.sd_model_name`` of every generation, and is a ``WebUIError`` of that trial,
never a silently wrong score. At the end of a run (or when it stops) ``hand_back`` selects the model
the WebUI had before and deletes the run's merge files.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import requests

from bayes_merger.config import WebUIConfig
from bayes_merger.errors import ConfigError, WebUIConnectionError, WebUIError
from bayes_merger.renderers import Renderer
from bayes_merger.webui.generation import Generation, parse_info, read_generation
from bayes_merger.webui.http import (
    GATEWAY_TIMEOUTS,
    INTERRUPT,
    LATENT_UPSCALE_MODES,
    OPTIONS,
    PROGRESS,
    REFRESH,
    SAMPLERS,
    SCHEDULERS,
    SCRIPTS,
    SD_MODELS,
    TXT2IMG,
    UPSCALERS,
    ApiSession,
    plain,
)
from bayes_merger.webui.http import wait_until_ready as poll_until_ready
from bayes_merger.webui.merge_files import HASH_SUFFIX, MergeFiles, aliases, basename, matches, merge_run_id
from bayes_merger.webui.samplers import (
    checkpoint_problem,
    hires_enabled,
    hires_problem,
    named_scripts,
    option_problem,
    other_checkpoints,
    sampler_problem,
    script_problem,
    upscaler_names,
)

__all__ = ["Generation", "WebUIClient", "WebUIConnectionError", "WebUIError", "OPTIONS"]

logger = logging.getLogger(__name__)

# measured on reForge without internet access: every txt2img fails with 500 URLError (shared/reference)
OFFLINE_PREVIEWS = ("reForge without internet access fails so while its live previews try to download their model: "
                    "set the WebUI's option live_previews_enable to false, in its Settings or the overnight runner's "
                    "WEBUI_OPTIONS.")

# the version Forge 2 gives in a generation's info (f<Forge>v<the A1111 it forked>)
FORGE_2 = re.compile(r"f([2-9]|\d\d+)\.\d+.*v\d")
# the options that keep models in memory, and the values A1111's maintainers advise for many switches
MEMORY_OPTIONS = {"sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0}


class WebUIClient(Renderer):
    """One WebUI session of one run: selects each trial's merge and renders payloads with it."""

    selects_a_model = True

    def __init__(self, config: WebUIConfig, run_id: str) -> None:
        self._files = MergeFiles(Path(config.checkpoint_dir), run_id, config.keep_last)
        self._config = config
        self._run_id = run_id
        self._api = ApiSession(config)
        self._base = self._api.base
        # aliases of the merge selected by the last load_checkpoint: the model every txt2img must use
        self._expected: frozenset[str] | None = None
        self._expected_label = ""
        self._warned_unconfirmed = False
        # a txt2img whose answer has not come: still waited for in another thread, or given up by a second
        # Ctrl-C, while the WebUI renders on for no one
        self._unanswered = False
        # Forge 2 loads a selected model in the next txt2img, not in POST /options (a1111-api.md, measured):
        # known from a generation's version ("f2.0.1v1.10.1-…"), so from the first trial's on
        self.loads_lazily = False

    def __enter__(self) -> WebUIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._api.close()

    def __repr__(self) -> str:
        return f"WebUIClient(url={self._base!r}, run_id={self._run_id!r})"

    # ----------------------------------------------------------------------------------- start-up

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Poll ``GET /sdapi/v1/progress`` until the API answers 200, for at most ``timeout`` seconds."""
        poll_until_ready(self._api, timeout, f"the WebUI at {self._base}", judge=_not_ready)
        logger.info("The WebUI at %s is ready.", self._base)

    def status(self, timeout: float = 10.0) -> int | None:
        """The HTTP status of one ``GET /sdapi/v1/progress`` (not retried); None when the WebUI cannot be reached."""
        try:
            response = self._api.probe((min(self._config.connect_timeout, timeout), timeout))
        except requests.RequestException:
            return None
        return response.status_code

    def set_option(self, key: str, value: Any) -> None:
        """Set one WebUI option (``POST /sdapi/v1/options``); a WebUIError when it is refused."""
        self._api.request("POST", OPTIONS, {key: value})

    def check_checkpoint_dir(self) -> None:
        """Fail now, not after the first merge, if merges cannot be written where the WebUI looks: a
        file written there must be listed after a refresh (a folder it does not scan failed every trial)."""
        self._files.probe(self._listed_after_refresh)
        self._api.request("POST", REFRESH)  # the probe is gone: out of the WebUI's list too

    def check_payloads(self, payloads: Iterable[Any]) -> None:
        """A payload (``.name``, ``.request``) the WebUI would refuse at every txt2img is a ConfigError now:
        a sampler or scheduler it does not have (naming the ones it has, see ``webui.samplers``), an
        ``override_settings`` key it has no option for (A1111 answers 500 KeyError), images in a
        ``samples_format`` its API cannot send (A1111 answers 500 "Invalid image format"), with the
        hires fix on, an upscaler, sampler or scheduler of its second pass it does not have, a script it
        does not have (422 "Script not found") or another checkpoint it does not list (500)."""
        payloads = list(payloads)
        options = self._api.request("GET", OPTIONS)
        samplers = self._listing(SAMPLERS)
        schedulers = self._listing(SCHEDULERS) if samplers is not None else None
        # each asked only when a payload needs it: hr_upscaler is read with the hires fix only
        upscalers = self._upscaler_names() if any(hires_enabled(p.request) for p in payloads) else None
        scripts = self._txt2img_scripts() if any(named_scripts(p.request) for p in payloads) else None
        models = self._listing(SD_MODELS) if any(other_checkpoints(p.request) for p in payloads) else None
        for payload in payloads:
            problem = option_problem(payload.request, options) if isinstance(options, Mapping) else None
            if samplers is not None:  # a WebUI that does not list its samplers cannot be checked
                problem = problem or sampler_problem(payload.request, samplers, schedulers)
            problem = problem or hires_problem(payload.request, samplers, schedulers, upscalers)
            problem = problem or (script_problem(payload.request, scripts) if scripts is not None else None)
            problem = problem or (checkpoint_problem(payload.request, models) if models is not None else None)
            if problem:
                raise ConfigError(f"Payload '{payload.name}' cannot be rendered as written on the WebUI at "
                                  f"{self._base}: {problem}.")

    def _txt2img_scripts(self) -> list[str] | None:
        """The scripts a txt2img may name (``/scripts``), or None where the WebUI does not say: no such route,
        or none listed (A1111 started with ``--nowebui`` names its scripts only once a first txt2img has set
        them up), so they cannot be judged."""
        try:
            answer = self._api.request("GET", SCRIPTS)
        except WebUIError as error:
            if error.status == 404:
                answer = None
            else:
                raise
        names = answer.get("txt2img") if isinstance(answer, Mapping) else None
        if not isinstance(names, list) or not names:
            logger.info("The WebUI at %s does not list its scripts yet: the payloads' script_name and "
                        "alwayson_scripts are not checked before the run.", self._base)
            return None
        return [str(name) for name in names if name]

    def _upscaler_names(self) -> list[str] | None:
        """What ``hr_upscaler`` may name on this WebUI (A1111 looks a name up among its latent modes, then
        its upscalers), or None where it lacks either list: a name from the missing one cannot be judged."""
        upscalers = self._listing(UPSCALERS)
        latent = self._listing(LATENT_UPSCALE_MODES) if upscalers is not None else None
        if upscalers is None or latent is None:
            logger.info("The WebUI at %s does not list %s: the hires fix's hr_upscaler is not checked before the run.",
                        self._base, UPSCALERS if upscalers is None else LATENT_UPSCALE_MODES)
            return None
        return upscaler_names(latent) + upscaler_names(upscalers)

    def _listing(self, path: str) -> list[Any] | None:
        """A list the WebUI answers at ``path``; None where it has no such route (404)."""
        try:
            answer = self._api.request("GET", path)
        except WebUIError as error:
            if error.status == 404:
                return None
            raise
        return list(answer) if isinstance(answer, list) else None

    def options(self) -> Mapping[str, Any]:
        """The WebUI's options (``GET /sdapi/v1/options``)."""
        options = self._api.request("GET", OPTIONS)
        if not isinstance(options, Mapping):
            raise WebUIError(f"GET {OPTIONS} answered {type(options).__name__}, not an object of options.")
        return options

    def selected_model(self) -> str:
        """The checkpoint the WebUI has selected (``sd_model_checkpoint``), "" when none."""
        return str(self.options().get("sd_model_checkpoint") or "")

    def check_memory_options(self) -> None:
        """Warn when the WebUI keeps more than one model in memory: with a new merge every trial its RAM
        would grow all night (A1111's maintainers advise ``sd_checkpoints_limit`` 1 and
        ``sd_checkpoint_cache`` 0; the overnight runner sets them, a plain run leaves the user's WebUI as it is)."""
        options = self._api.request("GET", OPTIONS)
        kept = {key: options.get(key) for key in MEMORY_OPTIONS if isinstance(options, Mapping)}
        high = {key: value for key, value in kept.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MEMORY_OPTIONS[key]}
        if high:
            logger.warning("The WebUI at %s keeps more than one model in memory (%s): with a new merge every trial its "
                           "RAM grows all night. Set %s in its Settings (Stable Diffusion) or its config.json.",
                           self._base, ", ".join(f"{k}={v}" for k, v in high.items()),
                           " and ".join(f"{k} to {MEMORY_OPTIONS[k]}" for k in high))

    def model_at_start(self) -> str:
        """The checkpoint the WebUI has now, to select again when the run ends: ``sd_model_checkpoint``,
        or where that is null (A1111 and reForge name none until one is selected, though they load one),
        the first listed checkpoint that is not a merge of a run: the one A1111 loads when none is remembered."""
        current = self.selected_model()
        if current:
            return current
        models = self._api.request("GET", SD_MODELS)
        for entry in models if isinstance(models, list) else []:
            if isinstance(entry, Mapping) and entry.get("title") and merge_run_id(str(entry["title"])) is None:
                return str(entry["title"])
        return ""

    def remove_leftovers(self, over: Callable[[str], bool]) -> list[Path]:
        """Delete merge files of other runs once ``over(run_id)`` says that run is over (see merge_files)."""
        return self._files.remove_leftovers(over)

    # --------------------------------------------------------------------------- the hand-off

    def stage(self, write: Callable[[Path], None], trial: int) -> Path:
        """Write ``trial``'s merge (``write(path)``) under a name the WebUI does not list, while it renders the
        trial before; ``load_checkpoint`` moves it into place. Returns where it is."""
        staged = self._files.staged_path(trial)
        self._files.write(write, staged)
        return staged

    def load_checkpoint(self, write: Callable[[Path], None], trial: int) -> str:
        """Put one trial's merge in the WebUI: write, refresh, select by its listed title, confirm.

        ``write(path)`` writes the safetensors file at ``path`` (a ``.tmp`` name the WebUI does not
        list). Returns the title the WebUI reports for the loaded merge.
        """
        # until this load is confirmed, no generation may be scored (see _confirm_model)
        self._expected, self._expected_label = frozenset(), ""
        current = self.selected_model()
        target = self._files.folder / self._files.name_for(trial, current)
        self._files.write(write, target)
        started = time.monotonic()
        entry = self._listed_after_refresh(target.name)
        title = str(entry["title"])
        names = aliases(entry, target.name)
        self._api.request("POST", OPTIONS, body={"sd_model_checkpoint": title})
        selected = self.selected_model()
        if not matches(selected, names):
            raise WebUIError(
                f"The WebUI kept {selected or 'no model'!r} instead of loading {target.name}: the load "
                "failed or the name was not accepted; see the WebUI's console."
            )
        self._expected = names
        self._expected_label = target.name
        logger.info("Selected %s in the WebUI (%.1f s).", selected, time.monotonic() - started)
        self._files.delete_old(keep=target.name)
        return selected

    def remove_merges(self) -> None:
        """Delete every merge file of this run from the checkpoint folder (e.g. at the end of a run)."""
        self._files.remove_all()

    def hand_back(self, model: str = "") -> None:
        """End of a run, or a stop: delete this run's merge files and select ``model`` (the one the WebUI
        had before the run) again. Best effort: a WebUI that is gone or refuses is only logged.

        The files go first: the selection waits for the generation under way and the model's load (minutes
        on a CPU), and a stop that cannot wait (the overnight runner's SIGKILL) must not leave gigabytes of
        merges in the user's model list. A generation whose answer nobody will read is interrupted first."""
        self._expected = None
        # a WebUI whose last refresh, select or render got no answer in time answers /progress but would keep
        # each call here read_timeout (15 minutes) before the process can end: its files go, nothing is asked
        hung = self._api.hung
        answering = self.status(timeout=min(self._config.connect_timeout, 5.0)) == 200
        if self._unanswered and answering:
            self._interrupt()
        removed = self._files.remove_all()
        if removed and answering and not hung:
            try:
                self._api.request("POST", REFRESH)
            except WebUIError as error:
                logger.debug("refresh-checkpoints after the clean-up failed: %s", error)
        if removed:
            logger.info("Deleted this run's %d merge file(s) from %s.", removed, self._files.folder)
        name = HASH_SUFFIX.sub("", model.strip())
        if name and merge_run_id(name) is None and answering and hung:
            logger.warning("Not selecting %s in the WebUI again: its last call got no answer within webui.read_timeout "
                           "(hung?), and this one would wait as long; select it there once the WebUI answers.", name)
        elif name and merge_run_id(name) is None and answering:
            try:
                self._api.request("POST", OPTIONS, body={"sd_model_checkpoint": name})
                logger.info("Selected %s in the WebUI again, as before the run.", name)
            except WebUIError as error:
                logger.warning("Could not select %s in the WebUI again: %s", name, error)

    def _listed_after_refresh(self, file_name: str) -> Mapping[str, Any]:
        """The WebUI's entry for a file just written to the checkpoint folder, which it lists once it has
        scanned its folders again (refresh-checkpoints); a WebUIError naming the folder where it does not."""
        self._api.request("POST", REFRESH)
        models = self._api.request("GET", SD_MODELS)
        stem = file_name.rsplit(".", 1)[0]
        for entry in models if isinstance(models, list) else []:
            if not isinstance(entry, Mapping) or not entry.get("title"):
                continue
            if basename(str(entry.get("filename") or "")) == file_name:
                return entry
            model_name = str(entry.get("model_name") or "")
            if model_name == stem or model_name.endswith("_" + stem):
                return entry
        raise WebUIError(
            f"The WebUI does not list {file_name} after refresh-checkpoints: webui.checkpoint_dir "
            f"({self._files.folder}) must be a folder the WebUI scans (models/Stable-diffusion or its --ckpt-dir)."
        )

    # ------------------------------------------------------------------------------- generation

    def txt2img(self, request: Mapping[str, Any]) -> Generation:
        """Render one payload; confirms the images came from the merge selected last."""
        self._unanswered = True  # left set only where no answer or error came back (see hand_back)
        try:
            body = self._api.request("POST", TXT2IMG, body=plain(request))
        except WebUIError as error:
            self._unanswered = False
            if error.status in GATEWAY_TIMEOUTS or isinstance(error.__cause__, requests.ReadTimeout):
                self._interrupt()
            if error.status == 500 and "URLError" in str(error):
                raise WebUIError(f"{error} {OFFLINE_PREVIEWS}", status=error.status) from error
            raise
        self._unanswered = False
        info = parse_info(body)
        self.loads_lazily = bool(FORGE_2.match(str(info.get("version") or "")))
        self._confirm_model(info)
        generation = read_generation(body, info)
        self._confirm_finished(request, len(generation.images))
        return generation

    def _confirm_finished(self, request: Mapping[str, Any], count: int) -> None:
        """An interrupted or skipped generation still answers 200, with the pictures it had (half
        denoised) and without the batches it did not reach; only ``/progress`` says so, until the next
        generation starts. Pressed in the WebUI or sent by another client, it must not be scored."""
        asked = _whole(request.get("batch_size")) * _whole(request.get("n_iter"))
        stopped = count < asked
        if not stopped:
            try:
                state = self._api.request("GET", PROGRESS).get("state") or {}
            except (WebUIError, AttributeError) as error:  # a fork without /progress: the count must do
                logger.debug("GET %s after a generation: %s", PROGRESS, error)
                return
            stopped = isinstance(state, Mapping) and bool(state.get("interrupted") or state.get("skipped"))
        if stopped:
            raise WebUIError(f"The generation was interrupted or skipped (in the WebUI, or by another of its clients): "
                             f"{count} of the {asked} images came back, not all of them finished, so none is scored.")

    def _interrupt(self) -> None:
        """Stop the generation whose answer did not come (a read timeout, a proxy's 504): the server goes
        on rendering it for no one, and the next request would queue behind it. A1111 gives a generation
        no id, so ``/interrupt`` stops whatever runs: on a WebUI this run drives, that one. Sent while
        idle, it does nothing (the next generation clears it). Best effort."""
        try:
            self._api.request("POST", INTERRUPT)
        except WebUIError as error:
            logger.debug("POST %s failed: %s", INTERRUPT, error)
        else:
            logger.info("Asked the WebUI to stop the generation whose answer did not come, so the next one does "
                        "not wait behind it.")

    def _confirm_model(self, info: Mapping[str, Any]) -> None:
        if self._expected is None:  # nothing selected yet: generate with whatever the WebUI has
            return
        if not self._expected:
            raise WebUIError("No merge is loaded in the WebUI: the last load_checkpoint failed, so nothing is generated.")
        used = info.get("sd_model_name")
        if used is None:
            if not self._warned_unconfirmed:
                logger.warning("The WebUI's info has no sd_model_name: cannot confirm images come from the merge.")
                self._warned_unconfirmed = True
            return
        if not matches(str(used), self._expected):
            raise WebUIError(
                f"The WebUI generated with {used!r} instead of the merge {self._expected_label}: the merge "
                "did not load (see the WebUI's console), so these images are not scored."
            )


def _whole(value: Any) -> int:
    """A count in a payload (batch_size, n_iter): at least 1, as A1111 takes a missing or 0 one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _not_ready(response: requests.Response) -> str:
    """What a non-2xx answer to the readiness probe means (a 401 never comes here: it ends the wait)."""
    if response.status_code == 404:
        return "its API answers 404: it is still starting, or it was started without --api (API not enabled)"
    return f"it answered HTTP {response.status_code}"
