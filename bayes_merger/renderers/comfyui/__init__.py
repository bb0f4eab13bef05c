"""ComfyUI as a renderer: the client, payloads as graphs, block weights as merge-node ratios."""

from bayes_merger.renderers.comfyui.client import ComfyUIClient

__all__ = ["ComfyUIClient"]
