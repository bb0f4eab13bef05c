"""What the fake ComfyUI's nodes are and do: the catalogue ``/object_info`` shows, the validation of a
posted prompt (the error shapes of ``shared/reference/comfyui-api.md``), and execution on real tensors.

Checkpoints are read from the folder for real. The merge nodes apply ComfyUI's patch semantics:
``ModelMergeSD1/SD2/SDXL`` give each UNet key the ratio of the *longest* input name that prefixes it
(a key matching none takes the first ratio in the request's order) and compute
ratio·model1 + (1 − ratio)·model2; ``CLIPMergeSimple`` does the same on the text encoder, skipping
``position_ids`` and ``logit_scale``. The picture ``VAEDecode`` makes is ``fake_txt2img.render`` of the
merged model's features (UNet, text encoder and the wired VAE), so a merge done in the graph and the
same merge written to a file render the same picture.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bayes_merger.testing.fake_txt2img import model_features, read_tensors, render

SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal")
RATIO = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
SD1_MERGE_INPUTS = (
    ("time_embed.", "label_emb.") + tuple(f"input_blocks.{i}." for i in range(12))
    + tuple(f"middle_block.{i}." for i in range(3)) + tuple(f"output_blocks.{i}." for i in range(12)) + ("out.",)
)
SDXL_MERGE_INPUTS = (
    ("time_embed.", "label_emb.") + tuple(f"input_blocks.{i}" for i in range(9))
    + tuple(f"middle_block.{i}" for i in range(3)) + tuple(f"output_blocks.{i}" for i in range(9)) + ("out.",)
)
UNET = "model.diffusion_model."


@dataclass(frozen=True)
class NodeClass:
    name: str
    inputs: tuple[tuple[str, Any], ...]  # (name, spec); a spec is ("TYPE",), ("TYPE", {opts}) or ("ENUM", callable)
    outputs: tuple[str, ...] = ()
    output_node: bool = False
    category: str = ""


def _merge_class(name: str, ratios: tuple[str, ...]) -> NodeClass:
    return NodeClass(name, (("model1", ("MODEL",)), ("model2", ("MODEL",)))
                     + tuple((r, ("FLOAT", RATIO)) for r in ratios), ("MODEL",), category="advanced/model_merging")


def catalogue(checkpoints: Callable[[], list[str]]) -> dict[str, NodeClass]:
    """The node classes of the fake; ``checkpoints()`` lists the checkpoint names at each call."""
    classes = [
        NodeClass("CheckpointLoaderSimple", (("ckpt_name", ("ENUM", checkpoints)),), ("MODEL", "CLIP", "VAE"),
                  category="loaders"),
        _merge_class("ModelMergeSD1", SD1_MERGE_INPUTS),
        _merge_class("ModelMergeSD2", SD1_MERGE_INPUTS),
        _merge_class("ModelMergeSDXL", SDXL_MERGE_INPUTS),
        _merge_class("ModelMergeSimple", ("ratio",)),
        NodeClass("CLIPMergeSimple", (("clip1", ("CLIP",)), ("clip2", ("CLIP",)), ("ratio", ("FLOAT", RATIO))),
                  ("CLIP",), category="advanced/model_merging"),
        NodeClass("CLIPTextEncode", (("text", ("STRING", {"multiline": True})), ("clip", ("CLIP",))), ("CONDITIONING",)),
        NodeClass("EmptyLatentImage", (("width", ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8})),
                                       ("height", ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8})),
                                       ("batch_size", ("INT", {"default": 1, "min": 1, "max": 4096}))), ("LATENT",)),
        NodeClass("KSampler", (
            ("model", ("MODEL",)), ("seed", ("INT", {"default": 0, "min": 0, "max": 18446744073709551615})),
            ("steps", ("INT", {"default": 20, "min": 1, "max": 10000})),
            ("cfg", ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0})),
            ("sampler_name", ("ENUM", lambda: list(SAMPLERS))), ("scheduler", ("ENUM", lambda: list(SCHEDULERS))),
            ("positive", ("CONDITIONING",)), ("negative", ("CONDITIONING",)), ("latent_image", ("LATENT",)),
            ("denoise", ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})),
        ), ("LATENT",), category="sampling"),
        NodeClass("VAEDecode", (("samples", ("LATENT",)), ("vae", ("VAE",))), ("IMAGE",)),
        NodeClass("SaveImage", (("images", ("IMAGE",)), ("filename_prefix", ("STRING", {"default": "ComfyUI"}))),
                  output_node=True, category="image"),
        NodeClass("SaveImageWebsocket", (("images", ("IMAGE",)),), output_node=True, category="api/image"),
        NodeClass("PreviewImage", (("images", ("IMAGE",)),), output_node=True, category="image"),
    ]
    return {c.name: c for c in classes}


def object_info(node: NodeClass) -> dict[str, Any]:
    required = {}
    for name, spec in node.inputs:
        required[name] = [spec[1]()] if spec[0] == "ENUM" else list(spec)
    return {
        "input": {"required": required}, "input_order": {"required": [n for n, _ in node.inputs]},
        "output": list(node.outputs), "output_is_list": [False] * len(node.outputs), "output_name": list(node.outputs),
        "name": node.name, "display_name": node.name, "description": "", "python_module": "nodes",
        "category": node.category, "output_node": node.output_node,
    }


# --------------------------------------------------------------------------------- validation


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def prompt_error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"error": _error(kind, message, details), "node_errors": {}}


def validate(prompt: Mapping[str, Any], classes: Mapping[str, NodeClass]
             ) -> tuple[list[str], dict[str, Any], dict[str, Any] | None]:
    """(the output node ids to run, the node_errors of those it leaves out, None) where some output is valid:
    ComfyUI queues the prompt and answers 200 with those errors; else ([], {}, the 400 body)."""
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if class_type not in classes:
            return [], {}, prompt_error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                                        f"Node ID '#{node_id}'")
    outputs = [nid for nid, node in prompt.items() if classes[node["class_type"]].output_node]
    if not outputs:
        return [], {}, prompt_error("prompt_no_outputs", "Prompt has no outputs")
    node_errors: dict[str, Any] = {}
    checked: dict[str, bool] = {}

    def check(node_id: str, output: str) -> bool:
        if node_id in checked:
            if not checked[node_id] and node_id in node_errors and output not in node_errors[node_id]["dependent_outputs"]:
                node_errors[node_id]["dependent_outputs"].append(output)
            return checked[node_id]
        checked[node_id] = True
        node = prompt[node_id]
        inputs_valid: list[bool] = []
        errors = _input_errors(node_id, node, prompt, classes, lambda linked: inputs_valid.append(check(linked, output)))
        if errors:
            checked[node_id] = False
            node_errors[node_id] = {"errors": errors, "dependent_outputs": [output], "class_type": node["class_type"]}
        elif not all(inputs_valid):
            checked[node_id] = False  # ComfyUI's: invalid through an input, with no error of its own listed
        return checked[node_id]

    good = [output for output in outputs if check(output, output)]
    if not good:
        return [], {}, {"error": _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""),
                        "node_errors": node_errors}
    return good, node_errors, None


def _input_errors(node_id: str, node: Mapping[str, Any], prompt: Mapping[str, Any],
                  classes: Mapping[str, NodeClass], check_linked: Callable[[str], bool]) -> list[dict[str, Any]]:
    errors = []
    inputs = node.get("inputs") or {}
    for name, spec in classes[node["class_type"]].inputs:
        if name not in inputs:
            errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            source = prompt.get(value[0])
            if source is None:
                errors.append(_error("exception_during_inner_validation", "Exception when validating inner node",
                                     f"'{value[0]}'", input_name=name, exception_message=f"'{value[0]}'",
                                     exception_type="KeyError", traceback=[]))
                continue
            produced = classes[source["class_type"]].outputs
            received = produced[value[1]] if isinstance(value[1], int) and 0 <= value[1] < len(produced) else "?"
            if received != spec[0]:
                errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                     f"{name}, received_type({received}) mismatch input_type({spec[0]})",
                                     input_name=name, input_config=list(spec), received_type=received,
                                     linked_node=value))
                continue
            check_linked(value[0])
            continue
        error = _value_error(name, spec, value)
        if error is not None:
            errors.append(error)
        elif spec[0] in ("INT", "FLOAT"):
            inputs[name] = (int if spec[0] == "INT" else float)(value)
    return errors


def _value_error(name: str, spec: tuple[Any, ...], value: Any) -> dict[str, Any] | None:
    kind = spec[0]
    if kind == "ENUM":
        choices = spec[1]()
        if value in choices:
            return None
        listing, config = (f"(list of length {len(choices)})", None) if len(choices) > 20 else (str(choices), [choices, {}])
        return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                      input_name=name, input_config=config, received_value=value)
    if kind not in ("INT", "FLOAT"):
        return None
    try:
        number = int(value) if kind == "INT" else float(value)
    except (TypeError, ValueError) as exc:
        return _error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                      f"{name}, {value}, {exc}", input_name=name, input_config=list(spec), received_value=value,
                      exception_message=str(exc))
    options = spec[1] if len(spec) > 1 else {}
    if "max" in options and number > options["max"]:
        return _error("value_bigger_than_max", f"Value {number} bigger than max of {options['max']}", name,
                      input_name=name, input_config=list(spec), received_value=value)
    if "min" in options and number < options["min"]:
        return _error("value_smaller_than_min", f"Value {number} smaller than min of {options['min']}", name,
                      input_name=name, input_config=list(spec), received_value=value)
    return None


# ---------------------------------------------------------------------------------- execution


class NodeFailure(Exception):
    """A node raised: becomes ``execution_error`` with this type name and message."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message


@dataclass
class Executor:
    """Runs one node at a time; ``loads`` counts checkpoint files read."""

    checkpoint_path: Callable[[str], Path]
    save_image: Callable[..., dict[str, str]]  # (image, prefix, prompt, kind="output"): its images entry
    max_image_size: int = 64
    loads: int = 0
    loaded: list[str] = field(default_factory=list)

    def run(self, class_type: str, inputs: Mapping[str, Any], prompt: dict[str, Any],
            progress: Callable[[int, int], None]) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """(outputs, ui) of one node with its links already resolved to values."""
        if class_type == "CheckpointLoaderSimple":
            return self._load(str(inputs["ckpt_name"])), None
        if class_type.startswith("ModelMerge"):
            ratios = {k: float(v) for k, v in inputs.items() if k not in ("model1", "model2")}
            return (_merge_unet(inputs["model1"], inputs["model2"], ratios),), None
        if class_type == "CLIPMergeSimple":
            ratio = float(inputs["ratio"])
            merged = {k: v if k.endswith(("position_ids", "logit_scale")) or k not in inputs["clip2"]
                      else ratio * v + (1 - ratio) * inputs["clip2"][k] for k, v in inputs["clip1"].items()}
            return (merged,), None
        if class_type == "CLIPTextEncode":
            return ({"text": str(inputs["text"]), "clip": inputs["clip"]},), None
        if class_type == "EmptyLatentImage":
            return ({"width": int(inputs["width"]), "height": int(inputs["height"]),
                     "batch": int(inputs["batch_size"])},), None
        if class_type == "KSampler":
            steps = int(inputs["steps"])
            for step in range(1, steps + 1):
                progress(step, steps)
            latent = dict(inputs["latent_image"], unet=inputs["model"], clip=inputs["positive"]["clip"],
                          prompt=inputs["positive"]["text"], negative=inputs["negative"]["text"], seed=int(inputs["seed"]))
            return (latent,), None
        if class_type == "VAEDecode":
            latent = inputs["samples"]
            features = model_features({**latent["unet"], **latent["clip"], **inputs["vae"]})
            images = [render(features, latent["prompt"], latent["negative"], latent["seed"] + i, latent["width"],
                             latent["height"], self.max_image_size) for i in range(latent["batch"])]
            return (images,), None
        if class_type == "SaveImage":
            saved = [self.save_image(image, str(inputs["filename_prefix"]), prompt) for image in inputs["images"]]
            return (), {"images": saved}
        if class_type == "PreviewImage":  # ComfyUI's: a SaveImage into its temp folder, a random prefix (its alphabet)
            prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
            return (), {"images": [self.save_image(image, prefix, prompt, "temp") for image in inputs["images"]]}
        if class_type == "SaveImageWebsocket":
            return (), {"websocket_images": list(inputs["images"])}
        raise NodeFailure("NotImplementedError", f"the fake ComfyUI cannot run {class_type}")

    def _load(self, name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        path = self.checkpoint_path(name)
        try:
            tensors = read_tensors(path)
        except Exception as exc:  # noqa: BLE001 - the real server reports any loader exception
            raise NodeFailure(f"{type(exc).__module__}.{type(exc).__name__}", f"{exc}\n") from exc
        self.loads += 1
        self.loaded.append(name)
        unet = {k: v for k, v in tensors.items() if k.startswith(UNET)}
        clip = {k: v for k, v in tensors.items() if k.startswith(("cond_stage_model.", "conditioner."))}
        vae = {k: v for k, v in tensors.items() if k.startswith("first_stage_model.")}
        return unet, clip, vae


def _merge_unet(model1: Mapping[str, Any], model2: Mapping[str, Any], ratios: Mapping[str, float]) -> dict[str, Any]:
    default = next(iter(ratios.values()), 1.0)
    merged = {}
    for key, value in model1.items():
        relative = key[len(UNET):]
        ratio, longest = default, 0
        for prefix, r in ratios.items():
            if relative.startswith(prefix) and len(prefix) > longest:
                ratio, longest = r, len(prefix)
        other = model2.get(key)
        use = other is not None and other.shape == value.shape and value.is_floating_point()
        merged[key] = ratio * value + (1 - ratio) * other if use else value
    return merged


def png_text(prompt: Mapping[str, Any]) -> str:
    return json.dumps(prompt)
