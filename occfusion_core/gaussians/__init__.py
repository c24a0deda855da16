"""Animatable human Gaussians (GauHuman style), KNN and KL densification.

- :mod:`.human`: :class:`HumanGaussians` (canonical big-pose Gaussians, LBS deformation, optimiser
  groups, checkpoints) and :class:`DeformedGaussians` (what the rasterizer takes).
- :mod:`.networks`: :class:`BodyPoseRefiner`, :class:`LBSOffsetDecoder`.
- :mod:`.densify`: :class:`DensifyState`, :func:`densify_and_prune`.
- :mod:`.knn`: :func:`knn`, :func:`init_scales`.
"""

from .densify import DensifyState, densify_and_prune, is_densify_step
from .human import DeformedGaussians, HumanGaussians
from .knn import init_scales, knn
from .networks import BodyPoseRefiner, LBSOffsetDecoder

__all__ = ["BodyPoseRefiner", "DeformedGaussians", "DensifyState", "HumanGaussians", "LBSOffsetDecoder",
           "densify_and_prune", "init_scales", "is_densify_step", "knn"]
