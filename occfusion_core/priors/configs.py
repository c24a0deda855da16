"""Configs of the generative priors and of the stages that use them (stage 0, stage-1 SDS, stage 2).

Three dataclasses, one docstring per field (the project's config convention, ``config.py``):

- :class:`MaskCompletionConfig`: stage 0, complete person masks (docs/method.md, "Stage 0: mask completion").
- :class:`GuidanceConfig`: score distillation on the rendered silhouette (docs/method.md, "Score
  distillation (SDS)"), the standalone guidance module's own config (threestudio style).
- :class:`InpaintConfig`: stage 2, in-context inpainting of the hidden pixels (docs/method.md, "Stage 2:
  in-context inpainting").

Model ids default to the hub mirrors of the repos the released code names (the ``runwayml/*``
repos were removed). Weights are never fetched unless ``local_files_only`` is turned off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..body.configs import BodyAlignConfig

SD15_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
"""Mirror of ``runwayml/stable-diffusion-inpainting`` (9-channel inpainting UNet)."""
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""Mirror of ``runwayml/stable-diffusion-v1-5`` (the SDS UNet, VAE, CLIP and DDIM schedule)."""
CONTROLNET_OPENPOSE = "lllyasviel/sd-controlnet-openpose"
"""ControlNet openpose for SD 1.5, used by stages 0 and 2."""
CONTROLNET_OPENPOSE_V11 = "lllyasviel/control_v11p_sd15_openpose"
"""ControlNet 1.1 openpose, the one the released SDS code loads."""

STAGE0_PROMPT = ("clean background, high contrast to background, a person only, plain clothes, simple clothes, "
                 "natural body, natural limbs, no texts, no overlay, two arms, two legs, one head")
STAGE0_NEGATIVE = ("multiple objects, occlusions, complex pattern, fancy clothes, longbody, lowres, bad anatomy, "
                   "bad hands, bad feet, missing fingers, cropped, worst quality, low quality, blurry")
SDS_PROMPT = ("high contrast to background, solid white silhouette of a person, dressed in normal clothing, "
              "legs are straightly stretched, arms are straightly stretched, the person is standing in front "
              "of a solid white background, highly realistic, complete body trunk, complete legs, complete "
              "feet, complete arms, complete head, complete shoulder, complete hands")
SDS_NEGATIVE = ("incomplete body limbs, incomplete body trunk, rotated body, twisted body, ugly, incomplete "
                "anatomy, blurry, pixelated obscure, unnatural colors, rich lighting, poor lighting, dull, and "
                "unclear, cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn "
                "face, deformed, dehydrated, bad proportions")
# The released stage-2 prompt concatenates its two parts with no separator; kept verbatim.
STAGE2_PROMPT = ("the same person standing in two different rooms"
                 "realistic, typical, natural body, two arms, two legs, real person")
STAGE2_NEGATIVE = ("holding something, complex textures, malformed, abnormal, unnatural, cartoonish, "
                   "occlusions, low quality, objects, blurry")


@dataclass
class DiffusionModels:
    """Which diffusion models a stage loads, and from where (stages 0 and 2, and stage 1's SDS)."""

    base: str = SD15_INPAINTING
    """Stable Diffusion 1.5: hub id or local folder (diffusers layout); an inpainting model for
    stages 0 and 2, the text-to-image one for SDS."""
    controlnet: str = CONTROLNET_OPENPOSE
    """ControlNet openpose: hub id or local folder."""
    source: str = "pretrained"
    """'pretrained' (load ``base`` and ``controlnet``) or 'tiny' (random-weight tiny models built in
    memory: a smoke test of the code path; the output is noise, not a prior)."""
    local_files_only: bool = True
    """Load weights only from a local folder or the Hugging Face cache; false lets diffusers download."""


@dataclass
class MaskCompletionConfig:
    method: str = "diffusion"
    """'diffusion' (the paper's: ControlNet-openpose SD inpainting of everything but the visible person,
    then segmentation of the generated image) or 'silhouette' (weight-free: visible mask united with
    the body-model silhouette fitted to the visible outline)."""
    segmenter: str = "sam_hq"
    """method 'diffusion' only: 'sam_hq' (SAM-HQ prompted with the 18 joints; needs
    segment_anything_hq and sam_checkpoint) or 'silhouette' (the mask is the weight-free silhouette
    completion; the generated image is then only kept for inspection)."""
    sam_checkpoint: str | None = None
    """SAM-HQ weights file (e.g. sam_hq_vit_h.pth)."""
    sam_model_type: str = "vit_h"
    """SAM-HQ registry key matching sam_checkpoint: 'vit_h', 'vit_l', 'vit_b' or 'vit_tiny'."""
    models: DiffusionModels = field(default_factory=DiffusionModels)
    """method 'diffusion': SD 1.5 inpainting + ControlNet openpose (released stage0_oc.py)."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'; fp16 on CUDA, fp32 on CPU."""
    prompt: str = STAGE0_PROMPT
    """Text prompt of the inpainting (released stage0_oc.py)."""
    negative_prompt: str = STAGE0_NEGATIVE
    """Negative prompt of the inpainting (released stage0_oc.py)."""
    num_inference_steps: int = 15
    """Denoising steps (released script: 15)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale (diffusers default, as released)."""
    controlnet_conditioning_scale: float = 1.0
    """Weight of the ControlNet residuals (released: 1.0)."""
    scheduler: str = "dpm_multistep"
    """Sampler: 'dpm_multistep' (released), 'unipc', 'ddim' or 'pndm'."""
    seed: int = 0
    """Seed of frame k's sampler is seed + k (the released code sets none)."""
    roi_padding: int = 20
    """Pixels added on each side of the body silhouette's box before rounding it up to a multiple of 8."""
    self_occlusion_tolerance: float = 0.3
    """A joint is drawn only if the body surface at its pixel lies within this many metres of it."""
    silhouette_max_shift: float = 0.1
    """Silhouette fit: largest 2D shift of the body silhouette, as a fraction of its box diagonal."""
    silhouette_band: float = 0.04
    """Silhouette fit: clip of the signed distance used to centre the body in the visible mask, and the
    largest local margin (person wider or narrower than the body), fractions of the box diagonal."""
    silhouette_margin_radius: float = 0.15
    """Silhouette fit: distance (fraction of the box diagonal) over which a margin measured on the
    visible outline carries into the hidden region before the frame's median margin takes over."""
    align: BodyAlignConfig = field(default_factory=BodyAlignConfig)
    """Align the body estimate to each frame's visible mask (and keypoints) before drawing from it."""


@dataclass
class GuidanceConfig:
    enabled: bool = False
    """Add score distillation to stage 1."""
    models: DiffusionModels = field(default_factory=lambda: DiffusionModels(base=SD15,
                                                                             controlnet=CONTROLNET_OPENPOSE_V11))
    """SD 1.5 text-to-image (UNet, VAE, CLIP text encoder, tokenizer, scheduler config) and ControlNet
    openpose v1.1, which the released SDS loads."""
    prompt: str = SDS_PROMPT
    """Prompt of the silhouette prior (released stage1.py)."""
    negative_prompt: str = SDS_NEGATIVE
    """Negative prompt; with guidance_scale 0 it is the only branch that counts."""
    guidance_scale: float = 0.0
    """CFG scale s in eps = eps_neg + s (eps_pos - eps_neg); the released call uses 0."""
    resolution: int = 256
    """Side of the square image the silhouette is resized to before encoding (latents: 1/8 of it)."""
    t_range: tuple = (0.02, 0.98)
    """Fraction of the 1000 training timesteps between which t is drawn or annealed."""
    timestep_schedule: str = "anneal"
    """'anneal': t = round((1 - (it-1)/(T-1)) 1000) clipped to t_range (released, deterministic);
    'random': uniform in t_range."""
    controlnet_conditioning_scale: float = 1.0
    """Weight of the ControlNet residuals."""
    pose_weight: float = 20.0
    """Weight of the posed-space SDS loss in stage 1 (released: 20)."""
    canonical_weight: float = 20.0
    """Weight of the canonical-space SDS loss in stage 1 (released: 20)."""
    pose_probability: float = 0.75
    """Probability that an iteration uses the posed branch (else canonical)."""


@dataclass
class InpaintConfig:
    method: str = "diffusion"
    """'diffusion' (the paper's: stage-1 render as the left in-context panel, observed frame on the
    right, ControlNet-openpose SD inpainting of the hidden person pixels) or 'render_fill'
    (weight-free: the stage-1 render pasted into the hidden pixels with a Poisson seam blend)."""
    models: DiffusionModels = field(default_factory=DiffusionModels)
    """method 'diffusion': SD 1.5 inpainting + ControlNet openpose (released stage2_oc.py)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'; fp16 on CUDA, fp32 on CPU."""
    prompt: str = STAGE2_PROMPT
    """Text prompt (released stage2_oc.py, verbatim)."""
    negative_prompt: str = STAGE2_NEGATIVE
    """Negative prompt (released stage2_oc.py)."""
    num_inference_steps: int = 35
    """Denoising steps (released: 35)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale (diffusers default, as released)."""
    controlnet_conditioning_scale: float = 0.3
    """Weight of the ControlNet residuals (released: 0.3)."""
    guess_mode: bool = True
    """ControlNet guess mode (released: on)."""
    scheduler: str = "unipc"
    """Sampler: 'unipc' (released), 'dpm_multistep', 'ddim' or 'pndm'."""
    seed: int = 0
    """Seed of frame k's sampler is seed + k."""
    alpha_threshold: float = 0.65
    """Stage-1 alpha above which a pixel counts as person (released: 0.65)."""
    roi_padding: int = 20
    """Pixels added on each side of the person box before rounding to a multiple of 8."""
    keep_observed: bool = True
    """Paste the observed person pixels back over the generated panel (only the hidden pixels come
    from the model); false keeps the whole decoded panel, as the released code does."""
    poisson_blend: bool = True
    """render_fill: blend the render into the hidden pixels in the gradient domain, matching the
    observed colours at the seam; false pastes it as is."""
