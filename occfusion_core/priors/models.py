"""The diffusion models as the method holds them, whatever loaded them: the bundle score distillation
needs (:class:`SDSModels`), freezing it on a device, the dtype per device, and the error raised when
weights are asked for but absent. Shared by the loaders of real weights
(:mod:`occfusion_core.priors.diffusion`) and the random-weight smoke-test models
(:mod:`occfusion_core.priors.smoke_test_models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class ModelWeightsMissing(RuntimeError):
    """Pretrained weights were asked for but are not on this machine."""


@dataclass
class SDSModels:
    """The pieces score distillation needs (all on one device, one dtype).

    Attributes:
        unet: ``UNet2DConditionModel`` with 4 input channels (text-to-image).
        vae: ``AutoencoderKL``.
        text_encoder: ``CLIPTextModel``.
        tokenizer: ``CLIPTokenizer``.
        controlnet: ``ControlNetModel`` (openpose).
        scheduler: ``DDIMScheduler`` with SD's training noise schedule (1000 steps).
        source: where they came from, for logs and reports (model ids, or "tiny random weights").
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    controlnet: Any
    scheduler: Any
    source: str

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def model_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as released), fp32 elsewhere (CPU fp16 convolutions are slow or missing)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def freeze(models: SDSModels, device: torch.device | str) -> SDSModels:
    """Move the networks to ``device``, eval mode, no parameter gradients (gradients flow to inputs only)."""
    for net in (models.unet, models.vae, models.text_encoder, models.controlnet):
        net.to(device)
        net.eval()
        net.requires_grad_(False)
    return models
