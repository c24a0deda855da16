"""Stage 1 (optimize): fit animatable human Gaussians to the frames.

Losses (occfusion-reference.md §3.3): L1 on the colour, a squared alpha-vs-mask loss inside the
projected body box, 1 - SSIM, and LPIPS where it can really be computed. ``loss_region`` says which
pixels the photometric losses see: ``visible`` (OccGauHuman: only the person pixels the input
shows) or ``full`` (GauHuman: the whole frame, hidden person pixels included as background).
The released code multiplies the stage-1 loss by 10000; with Adam (eps 1e-15) that only rescales
the moments, so it is left out here.

The job is resumable (see :mod:`occfusion_core.stages.training`): a changed config or input starts
afresh rather than resuming a different run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..config import OptimizeConfig, to_dict
from ..io import atomic_dir, save_torch, write_image
from ..losses import LPIPSLoss, box_crop, masked_mean, ssim_map
from .common import TrainingFrame, config_digest, file_digest, load_training_frames, pick_device
from .training import TrainSchedule, train_gaussians

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
    crop_r = box_crop(rgb, box).permute(2, 0, 1)[None]
    crop_g = box_crop(frame.image, box).permute(2, 0, 1)[None]
    smap = ssim_map(crop_r, crop_g)[0].permute(1, 2, 0)
    terms["ssim"] = 1.0 - masked_mean(smap, box_crop(region, box))
    total = cfg.lambda_l1 * terms["l1"] + cfg.lambda_mask * terms["mask"] + cfg.lambda_ssim * terms["ssim"]
    if lpips is not None and lpips.available and cfg.lambda_lpips > 0:
        bg = frame.image.new_tensor(cfg.background)
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


def optimize(data_dir, body_model_path, cfg: OptimizeConfig, out_model, out_renders, checkpoint_dir,
             complete_masks_dir=None, progress: bool = True) -> dict:
    """Run stage 1 and write ``out_model`` (model.pt) and ``out_renders`` (training-frame renders).

    Args:
        complete_masks_dir: stage-0 masks; required when ``cfg.mask_source == 'complete'``.
    Returns:
        a summary dict (iterations, resumed-from, seconds, final losses).
    """
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence
    from ..gaussians.human import HumanGaussians
    from ..render.backends import resolve_backend

    if cfg.mask_source == "complete" and complete_masks_dir is None:
        raise ValueError("optimize: mask_source 'complete' needs the stage-0 masks (complete_masks)")
    masks_dir = complete_masks_dir if cfg.mask_source == "complete" else None
    device = pick_device(cfg.device)
    backend = resolve_backend(cfg.backend)
    torch.manual_seed(cfg.seed)
    log.info("stage 1 on %s with the '%s' rasterizer, %d iterations", device, backend, cfg.iterations)

    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path).to(device)
    frames = load_training_frames(seq, body, cfg.background, device, masks_dir)
    model = HumanGaussians(body, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                           pose_refiner=cfg.pose_refiner, lbs_offsets=cfg.lbs_offsets).to(device)
    optimizer = model.make_optimizer(cfg)
    lpips = LPIPSLoss(device) if cfg.lambda_lpips > 0 else None
    if lpips is not None and not lpips.available:
        log.warning("LPIPS term skipped: %s", lpips.reason)
    background = torch.tensor(cfg.background, device=device)
    guidance = None
    if cfg.sds.enabled:
        from .guidance import build_stage1_guidance

        guidance = build_stage1_guidance(cfg.sds, model, body, frames, device)

    def loss_fn(render, frame, iteration):
        terms = stage1_losses(render, frame, cfg, lpips)
        if guidance is not None:
            terms = guidance.add_terms(terms, render, frame, iteration, cfg.iterations, backend)
        return terms

    schedule = TrainSchedule(first=1, last=cfg.iterations, lr=cfg, densify=cfg.densify,
                             sh_increase_every=cfg.sh_increase_every,
                             checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every)
    signature = input_signature(to_dict(cfg), data_dir, body_model_path, masks_dir)
    model, optimizer, history, seconds, resumed = train_gaussians(
        model, optimizer, frames, loss_fn, schedule, background, backend, checkpoint_dir,
        signature, cfg.seed, label="stage 1", progress=progress)

    methods = {"stage1": "gaussian optimisation, " + (f"SDS ({guidance.describe()})" if guidance else "no SDS"),
               "stage1_masks": "stage-0 complete masks" if masks_dir else "visible input masks"}
    save_torch(out_model, {
        "model": model.capture(), "optimizer": optimizer.state_dict(), "iteration": cfg.iterations,
        "config": to_dict(cfg), "history": history, "backend": backend, "device": str(device),
        "stage": "optimize", "seconds": seconds, "resumed_from": resumed, "methods": methods,
        "lpips_in_loss": bool(lpips is not None and lpips.available),
    })
    render_training_frames(model, frames, background, backend, out_renders, cfg.sh_view_frame)
    if Path(checkpoint_dir).exists():
        shutil.rmtree(checkpoint_dir)  # model.pt supersedes it (it holds the optimiser state too)
    summary = {"iterations": cfg.iterations, "resumed_from": resumed, "seconds": round(seconds, 1),
               "its_per_second": round((cfg.iterations - resumed) / max(seconds, 1e-9), 2),
               "final": history[-1] if history else None}
    log.info("stage 1 done: %s", summary)
    return summary


@torch.no_grad()
def render_training_frames(model, frames: list[TrainingFrame], background, backend, out_dir,
                           view_frame: str = "canonical") -> None:
    """Write ``<name>.png`` (RGB over the background) and ``<name>_alpha.png`` for every frame."""
    from .common import render_gaussians

    with atomic_dir(out_dir) as tmp:
        for frame in frames:
            d = model.deform(frame.poses, frame.betas, frame.trans)
            out = render_gaussians(d, frame.camera, background, backend, view_frame)
            write_image(tmp / f"{frame.name}.png", out.rgb.clamp(0, 1).cpu().numpy())
            write_image(tmp / f"{frame.name}_alpha.png", out.alpha[..., 0].clamp(0, 1).cpu().numpy())
