"""Load the diffusion models the method uses: real weights from a local folder or the HF cache.

- Stages 0 and 2: ``StableDiffusionControlNetInpaintPipeline`` = SD-1.5 inpainting (9-channel UNet)
  + ControlNet openpose, with the sampler swapped by name (OccFusion's released ``stage0_oc.py`` and
  ``stage2_oc.py``).
- Stage-1 SDS: UNet, VAE, CLIP text encoder + tokenizer of SD 1.5, ControlNet openpose, and a DDIM
  scheduler built from SD 1.5's scheduler config (OccFusion's released ``guidance/op_utils.py``).

fp16 on CUDA, fp32 on CPU. Nothing is downloaded unless ``local_files_only`` is False. Missing
weights raise :class:`ModelWeightsMissing`, which says what was looked for, where, and how to
provide it (or which weight-free method the config can name instead).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .models import ModelWeightsMissing, SDSModels, freeze, model_dtype
from .smoke_test_models import smoke_test_inpaint_pipeline, smoke_test_sds_models

log = logging.getLogger(__name__)

SCHEDULERS = ("dpm_multistep", "unipc", "ddim", "pndm")
"""Sampler names accepted by :func:`set_scheduler`."""


def _dtype_kwargs(device: torch.device) -> dict:
    """``from_pretrained`` keyword for the device's dtype; none for fp32 (the default), which also keeps
    newer diffusers from warning that ``torch_dtype`` is being renamed."""
    dtype = model_dtype(device)
    return {} if dtype == torch.float32 else {"torch_dtype": dtype}


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder that ``from_pretrained`` searches."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _missing_message(what: str, model_id: str, local_files_only: bool, config_key: str,
                     weight_free: str | None, error: BaseException) -> str:
    local = Path(os.path.expanduser(model_id))
    looked = [f"a local folder '{local.resolve()}' ({'exists but is incomplete' if local.exists() else 'absent'})"]
    if not local.exists():
        looked.append(f"the Hugging Face cache '{hf_cache_dir()}' for repo '{model_id}'")
        if not local_files_only:
            looked.append("the Hugging Face hub (download failed)")
    lines = [
        f"{what} weights not found: looked for {' and '.join(looked)}.",
        f"  loader said: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
        "  To provide them: on a machine with internet run "
        f"`huggingface-cli download {model_id}` (then copy the cache, or set HF_HOME / HF_HUB_CACHE to it), "
        f"or point `{config_key}` at a folder in diffusers layout (save_pretrained output)",
    ]
    if local_files_only:
        lines.append("  or set `models: {local_files_only: false}` to let diffusers download them.")
    if weight_free:
        lines.append(f"  Without weights, the config can name the weight-free method instead: {weight_free}.")
    return "\n".join(lines)


def _load(loader: Callable[[], Any], what: str, model_id: str, local_files_only: bool, config_key: str,
          weight_free: str | None) -> Any:
    """Run one ``from_pretrained`` call; turn "not found" into :class:`ModelWeightsMissing`."""
    try:
        return loader()
    except OSError as err:  # diffusers, transformers and huggingface_hub all raise OSError subclasses
        raise ModelWeightsMissing(_missing_message(what, str(model_id), local_files_only, config_key,
                                                   weight_free, err)) from err


def set_scheduler(pipe, name: str):
    """Replace ``pipe.scheduler`` by sampler ``name`` (see :data:`SCHEDULERS`) built from its config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler

    classes = {"dpm_multistep": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler,
               "ddim": DDIMScheduler, "pndm": PNDMScheduler}
    if name not in classes:
        raise ValueError(f"scheduler {name!r} is not one of {', '.join(classes)}")
    pipe.scheduler = classes[name].from_config(pipe.scheduler.config)
    return pipe


def load_controlnet(model_id: str | os.PathLike, *, local_files_only: bool = True,
                    device: torch.device | str = "cpu", config_key: str = "models.controlnet",
                    weight_free: str | None = None):
    """``ControlNetModel.from_pretrained`` on ``device`` in :func:`model_dtype`."""
    from diffusers import ControlNetModel

    device = torch.device(device)
    model = _load(lambda: ControlNetModel.from_pretrained(str(model_id), local_files_only=local_files_only,
                                                          **_dtype_kwargs(device)),
                  "ControlNet openpose", str(model_id), local_files_only, config_key, weight_free)
    return model.to(device)


def load_inpaint_pipeline(inpaint_model: str | os.PathLike, controlnet_model: str | os.PathLike, *,
                          scheduler: str, local_files_only: bool = True, device: torch.device | str = "cpu",
                          weight_free: str | None = None):
    """SD-1.5 inpainting + ControlNet openpose as ``StableDiffusionControlNetInpaintPipeline``.

    Args:
        inpaint_model: hub id or folder of an SD inpainting pipeline (9-channel UNet).
        controlnet_model: hub id or folder of a ControlNet.
        scheduler: sampler name (:data:`SCHEDULERS`).
        weight_free: the config setting that avoids weights, named in the error when they are missing.

    Raises:
        ModelWeightsMissing: either model is not on this machine.
    """
    from diffusers import StableDiffusionControlNetInpaintPipeline

    device = torch.device(device)
    controlnet = load_controlnet(controlnet_model, local_files_only=local_files_only, device=device,
                                 weight_free=weight_free)
    pipe = _load(
        lambda: StableDiffusionControlNetInpaintPipeline.from_pretrained(
            str(inpaint_model), controlnet=controlnet, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=local_files_only, **_dtype_kwargs(device)),
        "Stable Diffusion inpainting", str(inpaint_model), local_files_only, "models.base", weight_free)
    if pipe.unet.config.in_channels != 9:
        raise ValueError(f"{inpaint_model}: UNet has {pipe.unet.config.in_channels} input channels; an inpainting "
                         "model (9: latents, mask, masked-image latents) is needed")
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_sds_models(pretrained_model: str | os.PathLike, controlnet_model: str | os.PathLike, *,
                    local_files_only: bool = True, device: torch.device | str = "cpu") -> SDSModels:
    """The SDS pieces of SD 1.5 (text-to-image) and a ControlNet, frozen, on ``device``.

    The DDIM scheduler is built from the model's own scheduler config (SD 1.5 ships a PNDM config with
    the same scaled-linear betas 0.00085 -> 0.012 over 1000 steps that DDIM needs).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device(device)
    dtype = _dtype_kwargs(device)
    path = str(pretrained_model)
    weight_free = "stage 1 `sds: {enabled: false}`"

    def part(cls, subfolder, what, **kw):
        return _load(lambda: cls.from_pretrained(path, subfolder=subfolder, local_files_only=local_files_only, **kw),
                     f"Stable Diffusion 1.5 {what}", path, local_files_only, "models.base", weight_free)

    tokenizer = part(CLIPTokenizer, "tokenizer", "tokenizer")
    text_encoder = part(CLIPTextModel, "text_encoder", "text encoder", **dtype)
    vae = part(AutoencoderKL, "vae", "VAE", **dtype)
    unet = part(UNet2DConditionModel, "unet", "UNet", **dtype)
    scheduler = part(DDIMScheduler, "scheduler", "scheduler config")
    controlnet = load_controlnet(controlnet_model, local_files_only=local_files_only, device=device,
                                 weight_free=weight_free)
    if unet.config.in_channels != 4:
        raise ValueError(f"{path}: UNet has {unet.config.in_channels} input channels; SDS needs a text-to-image "
                         "model (4), not an inpainting one")
    return freeze(SDSModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            controlnet=controlnet, scheduler=scheduler,
                            source=f"{path} + {controlnet_model}"), device)


def inpaint_pipeline_from_config(cfg, device: torch.device | str, weight_free: str):
    """The inpainting pipeline a stage config asks for (``models.source`` 'pretrained' or 'tiny').

    Args:
        cfg: a ``MaskCompletionConfig`` or ``InpaintConfig``.
        weight_free: the setting that avoids weights (named in the missing-weights error).

    Returns:
        (pipeline, source description for the report).
    """
    models = cfg.models
    if models.source == "tiny":
        return (set_scheduler(smoke_test_inpaint_pipeline(), cfg.scheduler).to(device),
                "tiny random weights (smoke test of the code path: the output is noise, not a prior)")
    if models.source != "pretrained":
        raise ValueError(f"models.source {models.source!r} is not 'pretrained' or 'tiny'")
    pipe = load_inpaint_pipeline(models.base, models.controlnet, scheduler=cfg.scheduler,
                                 local_files_only=models.local_files_only, device=device, weight_free=weight_free)
    return pipe, f"{models.base} + {models.controlnet}"


def sds_models_from_config(cfg, device: torch.device | str) -> SDSModels:
    """The SDS models a ``GuidanceConfig`` asks for (``models.source`` 'pretrained' or 'tiny')."""
    models = cfg.models
    if models.source == "tiny":
        return freeze(smoke_test_sds_models(), device)
    if models.source != "pretrained":
        raise ValueError(f"models.source {models.source!r} is not 'pretrained' or 'tiny'")
    return load_sds_models(models.base, models.controlnet, local_files_only=models.local_files_only, device=device)
