"""Stage 1 (optimize): fit animatable human Gaussians to the frames.

Losses (docs/method.md, "Stage-1 losses"): L1 on the colour, a squared alpha-vs-mask loss inside the
projected body box, 1 - SSIM, and LPIPS where it can really be computed. ``loss_region`` says which
pixels the photometric losses see: ``visible`` (OccGauHuman: only the person pixels the input
shows) or ``full`` (GauHuman: the whole frame, hidden person pixels included as background).
The released code multiplies the stage-1 loss by 10000 and weighs the SDS terms by 20; the same
balance is kept here (``pixel_loss_scale``): without SDS Adam makes the factor irrelevant, with SDS it
decides how much the prior counts. The per-frame body corrections
(:mod:`occfusion_core.body.refine`) learn with the Gaussians, their regularisers inside the scaled sum.

The job is resumable (see :mod:`occfusion_core.stages.training`): a changed config or input starts
afresh rather than resuming a different run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..config import OptimizeConfig, to_dict
from ..io import atomic_dir, save_torch, write_image
from ..losses import LPIPSLoss, box_crop, masked_mean, region_ssim_loss
from .checkpoint import config_digest, file_digest
from .device import pick_device
from .frames import TrainingFrame, load_training_frames
from .training import TrainSchedule, build_optimizer, frame_body, train_gaussians

log = logging.getLogger(__name__)


def stage1_losses(render, frame: TrainingFrame, cfg: OptimizeConfig, lpips: LPIPSLoss | None) -> dict:
    """Loss terms for one rendered frame.

    Args:
        render: RenderOutput with rgb (H, W, 3) over the background and alpha (H, W, 1).
    Returns:
        dict of scalar tensors: l1, mask, ssim (1 - SSIM), lpips (when available), total.
    """
    rgb, alpha = render.rgb, render.alpha
    region = frame.visible if cfg.loss_region == "visible" else torch.ones_like(frame.visible)
    terms = {"l1": masked_mean((rgb - frame.image).abs(), region)}
    terms["mask"] = masked_mean((alpha - frame.target_mask) ** 2, frame.box)
    box = frame.box_xyxy
    bg = frame.image.new_tensor(cfg.background)
    terms["ssim"] = region_ssim_loss(rgb, frame.image, region, box, bg)
    total = cfg.lambda_l1 * terms["l1"] + cfg.lambda_mask * terms["mask"] + cfg.lambda_ssim * terms["ssim"]
    if lpips is not None and lpips.available and cfg.lambda_lpips > 0:
        r = torch.where(box_crop(region, box), box_crop(rgb, box), bg)
        terms["lpips"] = lpips(r, box_crop(frame.image, box))
        total = total + cfg.lambda_lpips * terms["lpips"]
    terms["total"] = total
    return terms


def input_signature(cfg_dict: dict, data_dir, body_model_path, *extra_dirs) -> str:
    """What a checkpoint must match to be resumed: the settings and the inputs' contents."""
    parts = {"cfg": cfg_dict, "metadata": file_digest(Path(data_dir) / "metadata.json"),
             "body": file_digest(body_model_path)}
    for d in extra_dirs:
        if d:
            parts[str(d)] = sorted(os.listdir(d))
    return config_digest(parts)


def body_refinement_record(body, stages: str) -> dict:
    """What ``model.pt`` stores of the per-frame body refinement: the plain-tensor capture plus the
    mean size of the corrections."""
    from ..body.refine import rotation_error_deg

    record = body.capture()
    refined_poses, refined_betas, refined_trans = body.refined_numpy()
    estimate = record["estimate_poses"].double().numpy()
    record.update(
        stages=stages,
        mean_correction_deg=float(rotation_error_deg(estimate, refined_poses).mean()),
        mean_correction_cm=float(100.0 * np.linalg.norm(refined_trans - record["estimate_trans"].double().numpy(),
                                                        axis=-1).mean()),
        shape_correction=[round(float(b), 4) for b in record["delta_betas"]])
    return record


def make_body_refinement(frames, cfg: OptimizeConfig, device, body_model=None):
    """A :class:`BodyRefinement` of the training frames' estimates, or None when it is off; with the
    body model, each joint's prior is weighted by how much of its body part each frame shows."""
    from ..body.refine import BodyRefinement, seen_share

    if not cfg.body_refine.enabled:
        return None
    poses, betas, trans = (torch.stack([getattr(f, k) for f in frames]).cpu() for k in ("poses", "betas", "trans"))
    refinement = BodyRefinement(poses, trans, [f.name for f in frames], betas)
    if body_model is not None:
        refinement.seen.copy_(seen_share(body_model, poses, betas, trans, [f.camera for f in frames],
                                         [f.visible[..., 0].cpu().numpy() for f in frames], cfg.body_refine.seen_reach))
    return refinement.to(device)


def optimize(data_dir, body_model_path, cfg: OptimizeConfig, out_model, out_renders, checkpoint_dir,
             complete_masks_dir=None, progress: bool = True) -> dict:
    """Run stage 1 and write ``out_model`` (model.pt) and ``out_renders`` (training-frame renders).

    Args:
        complete_masks_dir: the mask-loss targets when ``cfg.mask_source`` is 'complete' (stage-0
            masks) or 'ground_truth' (the sequence's ``gt/full_masks``, a control that needs ground truth).
    Returns:
        a summary dict (iterations, resumed-from, seconds, final losses).
    """
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence
    from ..gaussians.human import HumanGaussians
    from ..render.backends import resolve_backend

    seq = read_sequence(data_dir)
    masks_dir = mask_targets(cfg, seq, complete_masks_dir)
    device = pick_device(cfg.device)
    backend = resolve_backend(cfg.backend)
    torch.manual_seed(cfg.seed)
    log.info("stage 1 on %s with the '%s' rasterizer, %d iterations", device, backend, cfg.iterations)

    body_model = load_body_model(body_model_path).to(device)
    frames = load_training_frames(seq, body_model, cfg.background, device, masks_dir)
    model = HumanGaussians(body_model, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                           pose_refiner=cfg.pose_refiner, lbs_offsets=cfg.lbs_offsets).to(device)
    body = make_body_refinement(frames, cfg, device, body_model)
    optimizer = build_optimizer(model, cfg, body)
    lpips = LPIPSLoss(device) if cfg.lambda_lpips > 0 else None
    if lpips is not None and not lpips.available:
        log.warning("LPIPS term skipped: %s", lpips.reason)
    background = torch.tensor(cfg.background, device=device)
    guidance = None
    if cfg.sds.enabled:
        from .guidance import build_stage1_guidance

        guidance = build_stage1_guidance(cfg.sds, model, body_model, frames, device)

    def loss_fn(render, frame, iteration):
        return stage1_losses(render, frame, cfg, lpips)

    def guidance_fn(render, frame, iteration):
        return guidance.terms(render, frame, iteration, cfg.iterations, backend)

    schedule = TrainSchedule(first=1, last=cfg.iterations, lr=cfg, densify=cfg.densify,
                             sh_increase_every=cfg.sh_increase_every,
                             checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                             loss_scale=cfg.pixel_loss_scale, body_start=cfg.body_refine.start_iter)
    signature = input_signature(to_dict(cfg), data_dir, body_model_path, masks_dir)
    model, optimizer, history, seconds, resumed = train_gaussians(
        model, optimizer, frames, loss_fn, schedule, background, backend, checkpoint_dir,
        signature, cfg.seed, label="stage 1", progress=progress, body=body,
        guidance=guidance_fn if guidance is not None else None)

    methods = {"stage1": "gaussian optimisation, " + (f"SDS ({guidance.describe()})" if guidance else "no SDS"),
               "stage1_masks": MASK_TARGETS[cfg.mask_source]}
    record = body_refinement_record(body, "stage 1") if body is not None else None
    methods["body"] = ("per-frame refinement of the body estimate" if body is not None
                       else "input body estimates, not refined")
    save_torch(out_model, {
        "model": model.capture(), "optimizer": optimizer.state_dict(), "iteration": cfg.iterations,
        "config": to_dict(cfg), "history": history, "backend": backend, "device": str(device),
        "stage": "optimize", "seconds": seconds, "resumed_from": resumed, "methods": methods,
        "lpips_in_loss": bool(lpips is not None and lpips.available), "body_refinement": record,
    })
    render_training_frames(model, frames, background, backend, out_renders, cfg.sh_view_frame, body)
    if Path(checkpoint_dir).exists():
        shutil.rmtree(checkpoint_dir)  # model.pt supersedes it (it holds the optimiser state too)
    summary = {"iterations": cfg.iterations, "resumed_from": resumed, "seconds": round(seconds, 1),
               "its_per_second": round((cfg.iterations - resumed) / max(seconds, 1e-9), 2),
               "final": history[-1] if history else None}
    if record is not None:
        summary["body_correction"] = {"mean_deg": round(record["mean_correction_deg"], 3),
                                      "mean_cm": round(record["mean_correction_cm"], 3)}
    log.info("stage 1 done: %s", summary)
    return summary


MASK_TARGETS = {"visible": "visible input masks", "complete": "stage-0 complete masks",
                "ground_truth": "true full masks (gt/full_masks): a control, not a method"}
"""What the mask loss is fitted to, per ``OptimizeConfig.mask_source``."""


def mask_targets(cfg: OptimizeConfig, seq, complete_masks_dir) -> Path | None:
    """Folder of the mask-loss targets for ``cfg.mask_source``; None for the visible masks.

    Raises:
        ValueError: an unknown source, 'complete' without stage-0 masks, or 'ground_truth' without it.
    """
    if cfg.mask_source not in MASK_TARGETS:
        raise ValueError(f"optimize.mask_source {cfg.mask_source!r} is not one of {', '.join(MASK_TARGETS)}")
    if cfg.mask_source == "complete":
        if complete_masks_dir is None:
            raise ValueError("optimize: mask_source 'complete' needs the stage-0 masks (complete_masks)")
        return Path(complete_masks_dir)
    if cfg.mask_source == "ground_truth":
        if not seq.has_gt:
            raise ValueError(f"optimize: mask_source 'ground_truth' needs ground-truth full masks, and {seq.root} "
                             "has no gt/")
        return seq.gt_root / "full_masks"
    return None


@torch.no_grad()
def render_training_frames(model, frames: list[TrainingFrame], background, backend, out_dir,
                           view_frame: str = "canonical", body=None) -> None:
    """Write ``<name>.png`` (RGB over the background) and ``<name>_alpha.png`` for every frame, with
    the refined body parameters when ``body`` is given."""
    from ..gaussians.rendering import render_gaussians

    with atomic_dir(out_dir) as tmp:
        for frame in frames:
            poses, betas, trans = frame_body(frame, body)
            d = model.deform(poses, betas, trans)
            out = render_gaussians(d, frame.camera, background, backend, view_frame)
            write_image(tmp / f"{frame.name}.png", out.rgb.clamp(0, 1).cpu().numpy())
            write_image(tmp / f"{frame.name}_alpha.png", out.alpha[..., 0].clamp(0, 1).cpu().numpy())
