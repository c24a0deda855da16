"""Stage 1 (optimize): fit animatable human Gaussians to the frames.

Losses (occfusion-reference.md §3.3): L1 on the colour, a squared alpha-vs-mask loss inside the
projected body box, 1 - SSIM, and LPIPS where it can really be computed. ``loss_region`` says which
pixels the photometric losses see: ``visible`` (OccGauHuman: only the person pixels the input
shows) or ``full`` (GauHuman: the whole frame, hidden person pixels included as background).

The job is resumable: a checkpoint (model, optimiser, RNG states, loss history) is written
atomically every ``checkpoint_every`` iterations and picked up when the job is started again with the
same settings and inputs (a changed config or input starts afresh rather than resuming a different
run).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..config import OptimizeConfig, to_dict
from ..io import load_torch, save_torch, write_image, write_json
from ..losses import LPIPSLoss, box_crop, masked_mean, ssim_map
from .common import TrainingFrame, config_digest, file_digest, load_training_frames, pick_device

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


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


def _signature(cfg: OptimizeConfig, data_dir: Path, body_model_path: str, complete_masks_dir) -> str:
    """What a checkpoint must match to be resumed: the settings and the inputs' contents."""
    parts = {"cfg": to_dict(cfg), "metadata": file_digest(data_dir / "metadata.json"),
             "body": file_digest(body_model_path)}
    if complete_masks_dir:
        parts["masks"] = sorted(os.listdir(complete_masks_dir))
    return config_digest(parts)


class FrameSampler:
    """GauHuman's camera sampling: pop frames from a reshuffled stack of all training frames."""

    def __init__(self, count: int, rng: np.random.Generator):
        self.count, self.rng, self.stack = count, rng, []

    def next(self) -> int:
        if not self.stack:
            self.stack = list(self.rng.permutation(self.count))
        return int(self.stack.pop())


def optimize(data_dir, body_model_path, cfg: OptimizeConfig, out_model, out_renders, checkpoint_dir,
             complete_masks_dir=None, progress: bool = True) -> dict:
    """Run stage 1 and write ``out_model`` (model.pt) and ``out_renders`` (training-frame renders).

    Returns:
        a summary dict (iterations run, resumed-from, seconds, final losses).
    """
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence
    from ..gaussians.densify import DensifyState, densify_and_prune
    from ..gaussians.human import HumanGaussians
    from ..render.backends import resolve_backend
    from ..render.rasterize import rasterize

    data_dir, checkpoint_dir = Path(data_dir), Path(checkpoint_dir)
    device = pick_device(cfg.device)
    backend = resolve_backend(cfg.backend)
    torch.manual_seed(cfg.seed)
    log.info("stage 1 on %s with the '%s' rasterizer, %d iterations", device, backend, cfg.iterations)

    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path).to(device)
    frames = load_training_frames(seq, body, cfg.background, device, complete_masks_dir)
    model = HumanGaussians(body, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                           pose_refiner=cfg.pose_refiner, lbs_offsets=cfg.lbs_offsets).to(device)
    optimizer = torch.optim.Adam(model.param_groups(cfg), lr=0.0, eps=1e-15)
    densify = DensifyState(model.num_gaussians, device=device)
    lpips = LPIPSLoss(device) if cfg.lambda_lpips > 0 else None
    if lpips is not None and not lpips.available:
        log.warning("LPIPS term skipped: %s", lpips.reason)
    background = torch.tensor(cfg.background, device=device)

    signature = _signature(cfg, data_dir, str(body_model_path), complete_masks_dir)
    rng = np.random.default_rng(cfg.seed)
    sampler = FrameSampler(len(frames), rng)
    history: list[dict] = []
    start_iter = 0
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME
    if ckpt_path.exists():
        ckpt = load_torch(ckpt_path, map_location=str(device))
        if ckpt.get("signature") == signature:
            model = HumanGaussians.from_capture(body, ckpt["model"]).to(device)
            optimizer = torch.optim.Adam(model.param_groups(cfg), lr=0.0, eps=1e-15)
            optimizer.load_state_dict(ckpt["optimizer"])
            densify = DensifyState(model.num_gaussians, device=device)
            densify.load_state_dict(ckpt["densify"])
            rng.bit_generator.state = ckpt["numpy_rng"]
            sampler.stack = list(ckpt["sampler_stack"])
            torch.set_rng_state(ckpt["torch_rng"])
            history = ckpt["history"]
            start_iter = ckpt["iteration"]
            log.info("resuming from %s at iteration %d", ckpt_path, start_iter)
        else:
            log.info("ignoring %s: it was written with other settings or inputs", ckpt_path)

    def save_checkpoint(iteration: int) -> None:
        save_torch(ckpt_path, {
            "signature": signature, "iteration": iteration, "model": model.capture(),
            "optimizer": optimizer.state_dict(), "densify": densify.state_dict(),
            "numpy_rng": rng.bit_generator.state, "sampler_stack": list(sampler.stack),
            "torch_rng": torch.get_rng_state(), "history": history,
        })

    from tqdm import tqdm

    t0 = time.time()
    bar = tqdm(range(start_iter + 1, cfg.iterations + 1), desc="stage 1", disable=not progress,
               initial=start_iter, total=cfg.iterations, mininterval=5.0, ascii=True)
    for it in bar:
        for group in optimizer.param_groups:
            if group["name"] == "xyz":
                group["lr"] = model.position_lr(it, cfg)
        if it > 1 and (it - 1) % cfg.sh_increase_every == 0:
            model.oneup_sh_degree()
        frame = frames[sampler.next()]
        deformed = model.deform(frame.poses, frame.betas, frame.trans)
        out = rasterize(deformed.means, deformed.opacities, frame.camera, covars=deformed.covars,
                        sh=deformed.sh, sh_degree=deformed.sh_degree, background=background,
                        backend=backend)
        if cfg.densify.enabled:
            out.means2d.retain_grad()
        terms = stage1_losses(out, frame, cfg, lpips)
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(f"stage 1: loss is {terms['total'].item()} at iteration {it} "
                                     f"(frame {frame.name}); lower the learning rates")
        terms["total"].backward()
        if cfg.densify.enabled and cfg.densify.start_iter < it < cfg.densify.stop_iter:
            densify.add_stats(out.means2d.grad, out.visible)
            if it % cfg.densify.interval == 0:
                counts = densify_and_prune(model, optimizer, densify, cfg.densify)
                log.info("iteration %d densify: %s", it, counts)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % cfg.log_every == 0 or it == cfg.iterations:
            row = {"iteration": it, **{k: round(float(v), 6) for k, v in terms.items()},
                   "gaussians": model.num_gaussians, "seconds": round(time.time() - t0, 2)}
            history.append(row)
            log.info("loss %s", row)
        if it % cfg.checkpoint_every == 0 and it < cfg.iterations:
            save_checkpoint(it)
    bar.close()
    seconds = time.time() - t0

    save_torch(out_model, {
        "model": model.capture(), "optimizer": optimizer.state_dict(), "iteration": cfg.iterations,
        "config": to_dict(cfg), "history": history, "backend": backend, "device": str(device),
        "stage": "optimize", "seconds": seconds, "resumed_from": start_iter,
        "methods": {"stage1": "gaussian optimisation" + (" + SDS" if cfg.sds.enabled else "")},
    })
    render_training_frames(model, frames, background, backend, out_renders)
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)  # model.pt supersedes it (it holds the optimiser state too)
    summary = {"iterations": cfg.iterations, "resumed_from": start_iter, "seconds": round(seconds, 1),
               "its_per_second": round((cfg.iterations - start_iter) / max(seconds, 1e-9), 2),
               "final": history[-1] if history else None}
    log.info("stage 1 done: %s", summary)
    return summary


@torch.no_grad()
def render_training_frames(model, frames: list[TrainingFrame], background, backend, out_dir) -> None:
    """Write ``<name>.png`` (RGB over the background) and ``<name>_alpha.png`` for every frame."""
    from ..render.rasterize import rasterize

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for frame in frames:
        d = model.deform(frame.poses, frame.betas, frame.trans)
        out = rasterize(d.means, d.opacities, frame.camera, covars=d.covars, sh=d.sh,
                        sh_degree=d.sh_degree, background=background, backend=backend)
        write_image(tmp / f"{frame.name}.png", out.rgb.clamp(0, 1).cpu().numpy())
        write_image(tmp / f"{frame.name}_alpha.png", out.alpha[..., 0].clamp(0, 1).cpu().numpy())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
