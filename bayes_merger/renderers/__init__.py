"""The renderer seam: ``Renderer``, what the trial loop asks of the WebUI of a slot (``executor.Slot.webui``).

Three backends inherit it: ``webui.client.WebUIClient`` (A1111 and its forks), ``comfyui.ComfyUIClient``,
and ``cluster.hosts.RayHost`` (a WebUI on a host of a Ray cluster, which runs whole trials there). Each
says what it can do with the class attributes below, and overrides the calls it makes; the checks before
trial 0 that a backend has none of are no-ops. ``probe.detect_backend`` tells which kind of server a URL
is; ``probe.open_renderer`` builds the renderer a config asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from bayes_merger.merge.weights import BlockWeights
from bayes_merger.webui.generation import Generation

if TYPE_CHECKING:
    from bayes_merger.run_folder import Trial
    from bayes_merger.webui.render_check import MergeNotRendered

__all__ = ["Renderer"]


class Renderer:
    """One WebUI of one run, as ``run.TrialLoop``, ``executor.Executor`` and ``webuis`` use it.

    A backend sets these (as a property where its config decides); the loop reads them, never asks by name."""

    # each trial's weights are handed over with ``load_weights`` and merged in its graph: no torch merge, no file
    merges_in_graph: bool = False
    # a cluster host runs each whole trial itself (``run_trial``): nothing is merged, loaded or rendered here
    renders_remotely: bool = False
    # the merge loads with the first ``txt2img`` (Forge 2), not with ``load_checkpoint``
    loads_lazily: bool = False
    # a ComfyUI's hand-off: "file", "graph", or "auto" until ``route.settle_route`` settles it
    handoff: str | None = None
    # the server keeps one checkpoint selected (A1111): the one it had (``model_at_start``) is kept in
    # run.json and selected again by ``hand_back``
    selects_a_model: bool = False

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Return once the server answers; WebUIConnectionError (unreachable) or WebUIError after ``timeout``."""
        raise NotImplementedError

    def hand_back(self, model: str = "") -> None:
        """The end of the run: ``model`` (the one it had) selected again where it selects one, our files gone."""
        raise NotImplementedError

    # ------------------------------------------------------------- before trial 0 (``webuis.prepare_webuis``)

    def check_checkpoint_dir(self) -> None:
        """Fail before the first merge if merge files cannot be written where the server reads them."""
        raise NotImplementedError

    def check_payloads(self, payloads: Iterable[Any]) -> None:
        """Fail now on a payload (``.name``, ``.request``) the server would refuse at every trial."""

    def check_memory_options(self) -> None:
        """Warn where the server's settings make its memory grow with a new model every trial."""

    def remove_leftovers(self, over: Callable[[str], bool]) -> list[Path]:
        """Delete merge files of other runs once ``over(run_id)`` says that run is over; the files deleted."""
        return []

    def model_at_start(self) -> str:
        """Where ``selects_a_model``: the checkpoint the server has now, to select again at the end."""
        raise NotImplementedError

    # ------------------------------------------------------------------- a trial (``run.TrialLoop``)

    def stage(self, write: Callable[[Path], None], trial: int) -> Path:
        """Write one trial's merge (``write(path)``) under a name the server does not list; returns it."""
        raise NotImplementedError

    def load_checkpoint(self, write: Callable[[Path], None], trial: int) -> str:
        """Show one trial's merge by file: ``write(path)`` writes it; returns the name the server uses."""
        raise NotImplementedError

    def load_weights(self, weights: BlockWeights, trial: int) -> str:
        """Where ``merges_in_graph``: show (1 − α)·A + α·B with these block weights; a label for the log."""
        raise NotImplementedError

    def txt2img(self, request: Mapping[str, Any]) -> Generation:
        """Render one payload (an A1111 txt2img request) with the merge shown last."""
        raise NotImplementedError

    def run_trial(self, index: int, params: Mapping[str, float], record: Mapping[str, Any], timings: dict[str, float],
                  run_dir: Path) -> tuple[Trial, MergeNotRendered | None]:
        """Where ``renders_remotely``: trial ``index`` run to its end elsewhere, its images saved in ``run_dir``."""
        raise NotImplementedError
