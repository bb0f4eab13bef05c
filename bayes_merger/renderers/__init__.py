"""The renderer seam: what the trial loop needs from a backend that shows a merge and renders payloads.

``Renderer`` names the calls of a backend the loop hands merge files to: ``webui.client.WebUIClient``
and ``comfyui.ComfyUIClient`` (a cluster host, ``cluster.hosts.RayHost``, runs whole trials instead).
``ComfyUIClient`` also merges weighted sums inside its graph (``GraphMerging``), where the loop hands
it the block weights instead of a file. The loop asks for the rest of what a backend can do by name,
as not every backend has it (``webuis.prepare_webuis``: the payload, memory-option and leftover
checks; ``run.TrialLoop``: ``renders_remotely``, ``loads_lazily``). ``probe.detect_backend`` tells
which kind of server a URL is; ``probe.open_renderer`` builds the renderer a config asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from bayes_merger.merge.weights import BlockWeights
from bayes_merger.webui.client import Generation

__all__ = ["Generation", "GraphMerging", "Renderer"]


@runtime_checkable
class Renderer(Protocol):
    """One backend session of one run (a context manager; ``close`` ends it)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def close(self) -> None: ...

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Return once the server answers; WebUIConnectionError (unreachable) or WebUIError after ``timeout``."""

    def check_checkpoint_dir(self) -> None:
        """Fail before the first merge if merge files cannot be written where the server reads them."""

    def stage(self, write: Callable[[Path], None], trial: int) -> Path:
        """Write one trial's merge (``write(path)``) under a name the server does not list; returns it."""

    def load_checkpoint(self, write: Callable[[Path], None], trial: int) -> str:
        """Show one trial's merge by file: ``write(path)`` writes it; returns the name the server uses."""

    def txt2img(self, request: Mapping[str, Any]) -> Generation:
        """Render one payload (an A1111 txt2img request) with the merge shown last."""


@runtime_checkable
class GraphMerging(Protocol):
    """A renderer that can merge a weighted sum itself: no torch merge, no file, for that trial."""

    @property
    def merges_in_graph(self) -> bool:
        """True when this run hands each trial's weights over with ``load_weights``, not a file."""

    def load_weights(self, weights: BlockWeights, trial: int) -> str:
        """Show the weighted sum (1 − α)·A + α·B with these block weights; returns a label for the log."""
