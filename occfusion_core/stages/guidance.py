"""Stage-1 score distillation: the glue between the trainer and the standalone SDS module.

Per iteration (docs/method.md, "Score distillation (SDS)"): with probability ``pose_probability`` the posed branch
(the frame's render alpha in the body box, gradients blocked where the person is visible, the
frame's OpenPose canvas as control), else the canonical branch (the centred canonical Gaussians
rendered from one of 18 azimuths, the project's own canonical canvases as control). The released
code backpropagates the pixel loss and the canonical SDS separately; adding the weighted SDS to the
total gives the same gradients in one backward.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..priors.configs import GuidanceConfig

log = logging.getLogger(__name__)


class Stage1Guidance:
    """SDS terms for stage 1.

    Args:
        cfg: the guidance config (``OptimizeConfig.sds``).
        model: the HumanGaussians being trained (its canonical Gaussians feed the canonical branch).
        body: the body model.
        frames: the training frames (one OpenPose canvas is drawn per frame, once).
    """

    def __init__(self, cfg: GuidanceConfig, model, body, frames, device, seed: int = 0):
        from ..priors.diffusion import sds_models_from_config
        from ..priors.sds import CanonicalViews, SilhouetteSDS, posed_openpose_canvas

        self.cfg, self.model = cfg, model
        self.sds = SilhouetteSDS(sds_models_from_config(cfg, device), cfg)
        self.canonical = CanonicalViews(body, self.sds)
        # the canonical camera is 512 px at f=1000; render it directly at the SDS resolution
        self.canonical_scale = cfg.resolution / 512.0
        with torch.no_grad():
            joints = body(torch.stack([f.poses for f in frames]), torch.stack([f.betas for f in frames]),
                          torch.stack([f.trans for f in frames])).joints45
        self.canvases = {f.name: posed_openpose_canvas(joints[i], f.camera) for i, f in enumerate(frames)}
        self.rng = np.random.default_rng(seed + 1)
        self.source = cfg.models.source

    def describe(self) -> str:
        what = ("SD-1.5 + ControlNet openpose" if self.source == "pretrained"
                else "tiny random models (smoke test only: not a prior)")
        return f"{what}, cfg {self.cfg.guidance_scale}, weights {self.cfg.pose_weight}/{self.cfg.canonical_weight}"

    def terms(self, render, frame, iteration: int, total_iterations: int, backend: str) -> dict:
        """This iteration's weighted SDS term: {'sds_pose' or 'sds_canonical': raw loss, 'total':
        weight x loss}; the trainer adds 'total' to the (scaled) pixel loss."""
        from ..gaussians.rendering import render_gaussians
        from ..priors.sds import POSE, canonical_weight_mask, choose_branch, posed_sds_input

        branch = POSE if iteration == total_iterations else choose_branch(self.rng, self.cfg.pose_probability)
        if branch == POSE:
            p = posed_sds_input(render.alpha, frame.visible, self.canvases[frame.name], frame.box_xyxy)
            loss = self.sds.step(p.alpha, p.control, p.weight_mask, iteration, total_iterations)
            return {"sds_pose": loss, "total": self.cfg.pose_weight * loss}
        _, camera, control = self.canonical.sample(self.rng)
        cam = camera.scaled(self.canonical_scale).to(render.alpha.device)
        c = self.model.canonical(center=True)
        out = render_gaussians(c, cam, torch.zeros(3, device=render.alpha.device), backend, "world")
        loss = self.sds.step(out.alpha, control, canonical_weight_mask(out.alpha), iteration, total_iterations)
        return {"sds_canonical": loss, "total": self.cfg.canonical_weight * loss}


def build_stage1_guidance(cfg: GuidanceConfig, model, body, frames, device) -> Stage1Guidance:
    guidance = Stage1Guidance(cfg, model, body, frames, device)
    log.info("stage-1 SDS: %s", guidance.describe())
    return guidance
