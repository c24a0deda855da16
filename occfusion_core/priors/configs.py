"""Configs of the generative priors and of the stages that use them (stage 0, stage-1 SDS, stage 2).

Three dataclasses, one docstring per field (the project's config convention, ``config.py``):

- :class:`MaskCompletionConfig`: stage 0, complete person masks (reference §2).
- :class:`GuidanceConfig`: score distillation on the rendered silhouette (reference §3.4-3.5), the
  standalone guidance module's own config (threestudio style).
- :class:`InpaintConfig`: stage 2, in-context inpainting of the hidden pixels (reference §4).

Model ids default to the hub mirrors of the repos the released code names (the ``runwayml/*``
repos were removed). Weights are never fetched unless ``local_files_only`` is turned off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
class BodyAlignConfig:
    """Alignment of the body estimate to each frame's visible evidence before stage 0 draws from it
    (:mod:`occfusion_core.body.align`). Data terms measure errors in units of the body box height,
    so a weight of 1e4 makes an error of 1% of the height cost 1; the priors are 1 / sigma^2 of the
    correction they allow."""

    enabled: bool = True
    """Align the body before drawing its silhouette (``silhouette``) or its OpenPose canvas (``diffusion``)."""
    rounds: int = 15
    """L-BFGS rounds over all frames at once; the evidence and the nearest-vertex assignments are
    measured again before each (like ICP, the alignment gains more from rounds than from iterations)."""
    iterations_per_round: int = 8
    """L-BFGS iterations per round."""
    refine_shape: bool = False
    """Also correct the shape (one betas correction for all frames); off by default, as masks and
    keypoints hardly constrain it."""
    weight_cover: float = 1e4
    """Weight of the cover term: pixels of the eroded visible mask should have a body vertex nearby."""
    weight_outside: float = 1e4
    """Weight of the outside term: no body vertex on pixels known to be background."""
    weight_keypoints: float = 1e4
    """Weight of the robust 2D keypoint term (where the source has keypoints)."""
    keypoint_min_visibility: float = 0.5
    """Keypoints with a detector visibility below this get no weight."""
    robust_sigma: float = 0.05
    """Geman-McClure scale of the cover and keypoint terms, fraction of the body box height."""
    cover_erosion: float = 0.015
    """The visible mask is eroded by this fraction of the box height before sampling cover pixels:
    clothing and hair stand off the body, so the mask's rim need not lie on it."""
    cover_samples: int = 300
    """Cover pixels sampled per frame."""
    outside_reach: float = 0.03
    """Known-background pixels lie within this fraction of the box height of the person's outline."""
    outline_band: float = 0.06
    """Outline evidence: largest distance between the visible outline and the body's, fraction of the
    box height."""
    max_vertices: int = 2000
    """Body vertices used per frame (every k-th vertex beyond this many)."""
    prior_pose: float = 10.0
    """Weight of the mean squared pose correction (rad^2): 10 lets about 18 degrees through."""
    prior_trans: float = 400.0
    """Weight of the mean squared translation correction (m^2): 400 lets about 5 cm through."""
    prior_shape: float = 1.0
    """Weight of the mean squared refined betas."""
    smooth_pose: float = 5.0
    """Weight of the squared second differences of the joint rotation matrices between frames."""
    smooth_trans: float = 400.0
    """Weight of the squared second differences of the translations (m^2)."""
    gap_rounds: int = 6
    """Frames the detector missed (a run of them behind an occluder) are first crossed one frame at a
    time from their detected neighbours, each aligned alone for this many rounds (0: off); used where
    the caller says which frames had detections (the video source)."""
    gap_anchor_frames: int = 3
    """Only runs of at least this many detected frames anchor a crossing; shorter ones inside an
    occlusion are crossed too (their keypoints still count in the alignment of the whole clip)."""


@dataclass
class MaskCompletionConfig:
    method: str = "diffusion"
    """'diffusion' (reference §2: ControlNet-openpose SD inpainting of everything but the visible person,
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
    inpaint_model: str = SD15_INPAINTING
    """Stable Diffusion inpainting pipeline: hub id or local folder (diffusers layout)."""
    controlnet_model: str = CONTROLNET_OPENPOSE
    """ControlNet openpose: hub id or local folder."""
    model_source: str = "pretrained"
    """'pretrained' (load inpaint_model/controlnet_model) or 'tiny' (random-weight tiny models built
    in memory: a smoke test of the code path; the output is noise, not a prior)."""
    local_files_only: bool = True
    """Load weights only from a local folder or the Hugging Face cache; false lets diffusers download."""
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
    pretrained_model: str = SD15
    """SD 1.5 text-to-image model (UNet, VAE, CLIP text encoder, tokenizer, scheduler config): hub id
    or local folder."""
    controlnet_model: str = CONTROLNET_OPENPOSE_V11
    """ControlNet openpose: hub id or local folder (the released SDS loads v1.1)."""
    model_source: str = "pretrained"
    """'pretrained' or 'tiny' (random-weight tiny models: a smoke test, not a prior)."""
    local_files_only: bool = True
    """Load weights only from a local folder or the Hugging Face cache."""
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
    """'diffusion' (reference §4: stage-1 render as the left in-context panel, observed frame on the
    right, ControlNet-openpose SD inpainting of the hidden person pixels) or 'render_fill'
    (weight-free: the stage-1 render pasted into the hidden pixels with a Poisson seam blend)."""
    inpaint_model: str = SD15_INPAINTING
    """Stable Diffusion inpainting pipeline: hub id or local folder."""
    controlnet_model: str = CONTROLNET_OPENPOSE
    """ControlNet openpose: hub id or local folder."""
    model_source: str = "pretrained"
    """'pretrained' or 'tiny' (random-weight tiny models: a smoke test, not a prior)."""
    local_files_only: bool = True
    """Load weights only from a local folder or the Hugging Face cache."""
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
