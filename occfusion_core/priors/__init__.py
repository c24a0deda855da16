"""Generative priors: diffusion models, score distillation, inpainting, segmentation.

- ``configs``: :class:`MaskCompletionConfig` (stage 0), :class:`GuidanceConfig` (SDS),
  :class:`InpaintConfig` (stage 2).
- ``diffusion``: load SD-1.5 inpainting + ControlNet openpose pipelines and the SDS models from a
  local folder or the Hugging Face cache; :class:`ModelWeightsMissing` says what was looked for.
- ``tiny``: the same models at toy size with random weights (tests and the ``tiny`` smoke mode).
- ``sds``: :class:`SilhouetteSDS`, score distillation on rendered alpha maps, and its branch helpers.
- ``inpaint``: padded person boxes, one ControlNet-inpaint call, the Poisson fill of ``render_fill``.
- ``segment``: SAM-HQ (lazy import) and the weight-free silhouette completion.

Modules import diffusers/transformers lazily where they can, so the weight-free methods run without
touching them.
"""

from .configs import GuidanceConfig, InpaintConfig, MaskCompletionConfig

__all__ = ["GuidanceConfig", "InpaintConfig", "MaskCompletionConfig"]
