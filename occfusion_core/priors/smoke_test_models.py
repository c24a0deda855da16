"""Smoke-test stand-ins: tiny random-weight versions of every diffusion model the method uses, built
from config (``model_source: tiny`` in a stage's config, and the tests).

They have SD 1.5's structure at toy width: the VAE downsamples by 8 (4 latent channels, scaling
factor 0.18215), the UNets take 4 (text-to-image) or 9 (inpainting) channels, the ControlNet's
condition embedding downsamples by 8 like the real one, the text encoder is a 2-layer CLIP over a
byte-level vocabulary the code writes (``vocab.json`` + ``merges.txt``), and the noise schedule is
SD's. So the real diffusers pipelines and the real SDS maths run on them on a CPU in well under a
second. They are for tests and the ``tiny`` smoke mode: their output is noise, never a prior.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .models import SDSModels

TEXT_WIDTH = 32
"""Hidden size of the tiny CLIP text encoder = cross-attention width of the tiny UNet/ControlNet."""
MAX_TOKENS = 77
"""CLIP's context length (prompts are padded or truncated to it)."""
_UNET_BLOCKS = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    cross_attention_dim=TEXT_WIDTH, attention_head_dim=8)


def sd_scheduler_config() -> dict:
    """SD 1.5's noise schedule (the keys of its ``scheduler/scheduler_config.json`` that every
    scheduler class accepts)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                set_alpha_to_one=False, steps_offset=1)


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False, **sd_scheduler_config())


def _pndm():
    """SD 1.5 ships a PNDM config; the loaders rebuild other schedulers from it."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(skip_prk_steps=True, **sd_scheduler_config())


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2's bytes_to_unicode), in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tiny_tokenizer(folder: str | os.PathLike) -> Path:
    """Write a CLIP tokenizer with a byte-level vocabulary and no merges (``vocab.json``,
    ``merges.txt``, ``tokenizer_config.json``) into ``folder``; every text tokenizes to characters.

    Returns:
        the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # CLIP marks the last symbol of a word with </w>
        for symbol in _byte_symbols():
            vocab[symbol + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_TOKENS,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    return folder


def tiny_tokenizer():
    """A ``CLIPTokenizer`` loaded from a freshly written byte-level vocabulary."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="occfusion_tiny_tok_") as tmp:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp), model_max_length=MAX_TOKENS)


def tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=TEXT_WIDTH))


def tiny_vae():
    """``AutoencoderKL`` that downsamples by 8 like SD's (4 blocks), 4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8, 8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=4, sample_size=64, scaling_factor=0.18215)


def tiny_unet(in_channels: int = 4):
    """``UNet2DConditionModel``: 4 input channels (text-to-image) or 9 (inpainting)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(in_channels=in_channels, out_channels=4, sample_size=8,
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **_UNET_BLOCKS)


def tiny_controlnet():
    """``ControlNetModel`` matching :func:`tiny_unet`; its condition embedding downsamples by 8."""
    from diffusers import ControlNetModel

    return ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 8, 16, 16), **_UNET_BLOCKS)


def smoke_test_inpaint_pipeline(seed: int = 0):
    """The real ``StableDiffusionControlNetInpaintPipeline`` around tiny random models (DDIM sampler;
    swap it with :func:`occfusion_core.priors.diffusion.set_scheduler`)."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionControlNetInpaintPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        unet=tiny_unet(in_channels=9), controlnet=tiny_controlnet(),
        scheduler=_ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def smoke_test_sds_models(seed: int = 0) -> SDSModels:
    """UNet (4 channels), VAE, CLIP, tokenizer, ControlNet and DDIM scheduler, random weights."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    return SDSModels(unet=tiny_unet(4), vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)),
                     tokenizer=tokenizer, controlnet=tiny_controlnet(),
                     scheduler=_ddim(),
                     source="tiny random weights (smoke test: not a prior)")


def save_smoke_test_models(folder: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write tiny models in the layouts of the real hub repos, for the ``from_pretrained`` loaders.

    Layout::

        <folder>/inpainting/   StableDiffusionInpaintPipeline (9-channel UNet), like SD-1.5 inpainting
        <folder>/sd15/         StableDiffusionPipeline (4-channel UNet, PNDM scheduler config), like SD 1.5
        <folder>/controlnet/   ControlNetModel, like lllyasviel/sd-controlnet-openpose

    Returns:
        {"inpainting": path, "sd15": path, "controlnet": path}.
    """
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    folder = Path(folder)
    inpaint = smoke_test_inpaint_pipeline(seed)
    paths = {"inpainting": folder / "inpainting", "sd15": folder / "sd15", "controlnet": folder / "controlnet"}
    StableDiffusionInpaintPipeline(
        vae=inpaint.vae, text_encoder=inpaint.text_encoder, tokenizer=inpaint.tokenizer, unet=inpaint.unet,
        scheduler=_pndm(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(paths["inpainting"])
    inpaint.controlnet.save_pretrained(paths["controlnet"])
    sds = smoke_test_sds_models(seed + 1)
    StableDiffusionPipeline(
        vae=sds.vae, text_encoder=sds.text_encoder, tokenizer=sds.tokenizer, unet=sds.unet,
        scheduler=_pndm(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(paths["sd15"])
    return paths
