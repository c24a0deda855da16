"""Stage 3 (refine): continue the stage-1 model on the stage-2 in-context inpainted frames.

Losses (:func:`stage3_losses`), per frame with G the complete mask (stage 0), V the visible mask,
B the projected body box and the hidden region H = G·(1 − V):
- L1 (``lambda_l1``) and 1 - SSIM (``lambda_ssim``) against the input on the visible pixels V, as in
  stage 1 (``l1_region: visible``, the default); the released stage 3 takes L1 over B outside H
  (``l1_region: box``) and no SSIM;
- squared alpha − G on B (``lambda_mask``);
- L1 against the stage-2 frame on H (``gen_region: hidden``, the default; released: over the whole
  box crop, ``box``), and LPIPS against it on the box crop where computable (``lambda_gen_lpips``).

Why the default departs from the release: the released L1 is a mean over the body box, which under an
occluder is mostly background, so the observed person pixels get a small share of it and no SSIM; on
the synthetic subject (900 iterations, render_fill) it cost 3 dB of visible-pixel and 1.8 dB of
hidden-pixel PSNR against stage 1. (The released run hides this: its Adam moments come from stage 1's
x10000 loss, so its stage 3 hardly moves the Gaussians it inherits.)
KL densification every 200 iterations between 200 and 1000 (``RefineConfig.densify``). The
optimiser state, the learning-rate schedule and the per-frame body corrections continue from stage 1
(its model.pt holds them).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from ..config import OptimizeConfig, RefineConfig, from_dict, to_dict
from ..io import load_torch, read_image, save_torch
from ..losses import LPIPSLoss, box_crop, masked_mean, region_ssim_loss
from .checkpoint import file_digest
from .device import pick_device
from .frames import load_training_frames
from .optimize import body_refinement_record, input_signature, render_training_frames
from .training import TrainSchedule, build_optimizer, train_gaussians

log = logging.getLogger(__name__)


def load_generated_frames(frames, inpainted_dir, background, device) -> dict[str, torch.Tensor]:
    """Stage-2 frames as (H, W, 3) tensors, composited on the background outside the complete mask."""
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    out = {}
    for f in frames:
        img = torch.from_numpy(np.array(read_image(Path(inpainted_dir) / f"{f.name}.png"))).float().to(device) / 255
        if img.shape != f.image.shape:
            raise ValueError(f"{inpainted_dir}/{f.name}.png: size {tuple(img.shape)} differs from the frame "
                             f"{tuple(f.image.shape)}")
        out[f.name] = torch.where(f.target_mask > 0.5, img, bg)
    return out


def stage3_losses(render, frame, generated: torch.Tensor, cfg: RefineConfig, lpips: LPIPSLoss | None,
                  background: torch.Tensor) -> dict:
    """Loss terms of one stage-3 frame.

    Args:
        render: RenderOutput (rgb (H, W, 3) over the background, alpha (H, W, 1)).
        frame: the :class:`TrainingFrame` (its target_mask is the stage-0 complete mask G).
        generated: (H, W, 3) the stage-2 frame composited on the background outside G.
        background: (3,) the training background (the input's non-person pixels).
    Returns:
        dict of scalar tensors: l1, mask, ssim (visible region only), gen_l1, gen_lpips (where
        computable), total.
    """
    rgb, alpha = render.rgb, render.alpha
    hidden = (frame.target_mask > 0.5) & ~frame.visible
    box = frame.box_xyxy
    if cfg.l1_region == "box":  # released: the whole body box but the hidden pixels
        region = frame.box & ~hidden
    elif cfg.l1_region == "visible":  # as stage 1: the observed person pixels
        region = frame.visible
    else:
        raise ValueError(f"refine.l1_region {cfg.l1_region!r} is not 'visible' or 'box'")
    terms = {"l1": masked_mean((rgb - frame.image).abs(), region),
             "mask": masked_mean((alpha - frame.target_mask) ** 2, frame.box)}
    total = cfg.lambda_l1 * terms["l1"] + cfg.lambda_mask * terms["mask"]
    if cfg.lambda_ssim > 0:
        terms["ssim"] = region_ssim_loss(rgb, frame.image, region, box, background)
        total = total + cfg.lambda_ssim * terms["ssim"]
    if cfg.gen_region == "box":  # released: the whole box crop, visible pixels included
        terms["gen_l1"] = (box_crop(rgb, box) - box_crop(generated, box)).abs().mean()
    elif cfg.gen_region == "hidden":  # the generated frame only where the input shows nothing
        terms["gen_l1"] = masked_mean((rgb - generated).abs(), hidden)
    else:
        raise ValueError(f"refine.gen_region {cfg.gen_region!r} is not 'hidden' or 'box'")
    total = total + cfg.lambda_gen_l1 * terms["gen_l1"]
    if lpips is not None and lpips.available and cfg.lambda_gen_lpips > 0:
        terms["gen_lpips"] = lpips(box_crop(rgb, box), box_crop(generated, box))
        total = total + cfg.lambda_gen_lpips * terms["gen_lpips"]
    terms["total"] = total
    return terms


def refine(data_dir, body_model_path, stage1_model, complete_masks_dir, inpainted_dir, cfg: RefineConfig,
           out_model, out_renders, checkpoint_dir, progress: bool = True) -> dict:
    """Run stage 3 from ``stage1_model`` and write ``out_model`` and ``out_renders``."""
    from ..body.model import load_body_model
    from ..body.refine import BodyRefinement
    from ..data.sequence import read_sequence
    from ..gaussians.human import HumanGaussians
    from ..render.backends import resolve_backend

    device = pick_device(cfg.device)
    backend = resolve_backend(cfg.backend)
    seq = read_sequence(data_dir)
    body_model = load_body_model(body_model_path).to(device)
    saved = load_torch(stage1_model, map_location=str(device))
    stage1_cfg = from_dict(OptimizeConfig, saved["config"], "stage-1 model config")
    frames = load_training_frames(seq, body_model, stage1_cfg.background, device, complete_masks_dir)
    generated = load_generated_frames(frames, inpainted_dir, stage1_cfg.background, device)
    model = HumanGaussians.from_capture(body_model, saved["model"]).to(device)
    body = None
    if saved.get("body_refinement"):
        body = BodyRefinement.from_capture(saved["body_refinement"]).to(device)
        if [f.name for f in frames] != body.names:
            raise ValueError(f"{stage1_model}: its refined body parameters are of other frames than {data_dir}")
    optimizer = build_optimizer(model, stage1_cfg, body)
    optimizer.load_state_dict(saved["optimizer"])
    learning_body = body is not None and cfg.refine_body
    lpips = LPIPSLoss(device) if cfg.lambda_gen_lpips > 0 else None
    if lpips is not None and not lpips.available:
        log.warning("stage-3 LPIPS term skipped: %s", lpips.reason)
    background = torch.tensor(stage1_cfg.background, device=device)

    def loss_fn(render, frame, iteration):
        return stage3_losses(render, frame, generated[frame.name], cfg, lpips, background)

    first = int(saved["iteration"]) + 1
    # the stage-1 loss scale again: the Adam moments carried over from stage 1 were accumulated under
    # it (the released stage 3 drops the x10000 but keeps the moments, which damps its steps ~1e-4-fold)
    schedule = TrainSchedule(first=first, last=first + cfg.iterations - 1, lr=stage1_cfg, densify=cfg.densify,
                             sh_increase_every=stage1_cfg.sh_increase_every,
                             checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                             loss_scale=stage1_cfg.pixel_loss_scale, body_start=first,
                             body_progress=(1.0, 1.0), learn_body=cfg.refine_body)
    signature = input_signature({"refine": to_dict(cfg), "stage1": file_digest(stage1_model)}, data_dir,
                                body_model_path, complete_masks_dir, inpainted_dir)
    model, optimizer, history, seconds, resumed = train_gaussians(
        model, optimizer, frames, loss_fn, schedule, background, backend, checkpoint_dir, signature,
        cfg.seed, label="stage 3", progress=progress, body=body)

    methods = dict(saved.get("methods", {}))
    methods["stage3"] = "refinement on stage-2 frames" + ("" if lpips and lpips.available else " (no LPIPS term)")
    record = saved.get("body_refinement")
    if body is not None:
        record = body_refinement_record(body, "stages 1 and 3" if learning_body else "stage 1")
    save_torch(out_model, {
        "model": model.capture(), "optimizer": optimizer.state_dict(), "iteration": schedule.last,
        "config": to_dict(stage1_cfg), "refine_config": to_dict(cfg), "history": saved.get("history", []) + history,
        "backend": backend, "device": str(device), "stage": "refine",
        "seconds": float(saved.get("seconds", 0.0)) + seconds, "stage3_seconds": seconds,
        "resumed_from": resumed, "methods": methods, "body_refinement": record,
    })
    render_training_frames(model, frames, background, backend, out_renders, stage1_cfg.sh_view_frame, body)
    if Path(checkpoint_dir).exists():
        shutil.rmtree(checkpoint_dir)
    summary = {"iterations": cfg.iterations, "resumed_from": resumed, "seconds": round(seconds, 1),
               "gaussians": model.num_gaussians, "final": history[-1] if history else None}
    log.info("stage 3 done: %s", summary)
    return summary
