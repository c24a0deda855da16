"""Stage metrics: PSNR / SSIM / LPIPS of the final avatar under four protocols.

(a) ``heldout_full_body`` — the ZJU-MoCap protocol of OccNeRF (docs/method.md, "Evaluation
    protocols"): held-out cameras, occlusion off, the whole image, ground truth composited on the
    background outside the true person mask.
(a') ``heldout_body_fitted`` — the same images, each frame's pose and translation first fitted to
    the held-out view with the avatar fixed (test-time pose optimisation): the avatar's quality
    without the depth error of the training body, which one camera cannot see.
(b) ``occluded_region`` — pixels of the training frames inside the true full person mask that the
    input hides: what the method had to recover (needs ground truth; synthetic or simulated).
(c) ``visible_train`` — visible person pixels of the training frames (the OcMotion protocol,
    OccNeRF issues #6/#8).
Every number sits beside the protocol that produced it; LPIPS is ``null`` with a reason wherever
it cannot really be computed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..config import MetricsConfig
from ..io import write_json
from ..losses import LPIPSLoss, ssim_map
from ..masks import body_box_mask
from .device import pick_device
from .render import AvatarRenderer
from .trained_model import load_trained_model, training_body_params

log = logging.getLogger(__name__)


def psnr(pred: np.ndarray | torch.Tensor, gt, mask=None) -> float:
    """PSNR (dB) of (H, W, 3) images in [0, 1] over all pixels or the pixels of an (H, W) mask."""
    pred, gt = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(gt, dtype=torch.float64)
    err = (pred - gt) ** 2
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.bool)
        err = err[m]
    mse = float(err.mean()) if err.numel() else float("nan")
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim_full(pred, gt) -> float:
    """torchmetrics' SSIM (Gaussian 11x11, sigma 1.5, data range 1, reflected border) of (H, W, 3)
    images, as the mean of :func:`ssim_map` with ``padding="reflect"`` (tests hold the two equal)."""
    p = torch.as_tensor(pred, dtype=torch.float32).permute(2, 0, 1)[None]
    g = torch.as_tensor(gt, dtype=torch.float32).permute(2, 0, 1)[None]
    return float(ssim_map(p, g, padding="reflect").mean())


def ssim_masked(pred, gt, mask) -> float:
    """Mean of the per-pixel SSIM map over the pixels of an (H, W) mask (OccNeRF's SSIM_vis)."""
    p = torch.as_tensor(pred, dtype=torch.float32).permute(2, 0, 1)[None]
    g = torch.as_tensor(gt, dtype=torch.float32).permute(2, 0, 1)[None]
    smap = ssim_map(p, g)[0].mean(0)
    m = torch.as_tensor(mask, dtype=torch.bool)
    return float(smap[m].mean()) if m.any() else float("nan")


class _Scores:
    """Collects per-image scores and reports their means with the protocol."""

    def __init__(self, protocol: dict):
        self.protocol, self.rows = protocol, []

    def add(self, **scores) -> None:
        self.rows.append(scores)

    def result(self, lpips_reason: str | None) -> dict:
        out = {"count": len(self.rows)}
        for key in ("psnr", "ssim", "lpips"):
            vals = [r[key] for r in self.rows if r.get(key) is not None and math.isfinite(r[key])]
            out[key] = round(float(np.mean(vals)), 4) if vals else None
        if out.get("lpips") is not None:
            out["lpips"] = round(out["lpips"] * 1000.0, 2)  # LPIPS* = LPIPS x 1000, as the papers print it
        else:
            out["lpips_note"] = lpips_reason or "no image to score"
        out["protocol"] = self.protocol
        return out


def stage_methods(saved: dict, stage_reports=()) -> dict:
    """Which method each stage ran: the model's own record plus stage 0 and 2 from their reports."""
    from ..io import read_json

    methods = dict(saved.get("methods", {}))
    for path in stage_reports:
        report = read_json(path)
        stage = "stage0" if "stage0" in str(path) else "stage2"
        methods[stage] = f"{report['method']}: {report.get('description', '')}".rstrip(": ")
    return methods


def _fitted_view(renderer, params: dict, index: int, camera, image: np.ndarray, mask: np.ndarray,
                 steps: int) -> np.ndarray:
    """(H, W, 3) render of training frame ``index`` from ``camera`` after fitting its pose and
    translation to ``image`` (:func:`occfusion_core.body.refine.fit_pose_to_view`)."""
    from ..body.refine import fit_pose_to_view

    dev = renderer.background.device
    betas = params["betas"][index]

    def render(poses, trans):
        out = renderer.render(poses, betas, trans, camera)
        return out.rgb, out.alpha[..., 0]

    poses, trans = fit_pose_to_view(render, params["poses"][index].to(dev), params["trans"][index].to(dev),
                                    torch.as_tensor(image, dtype=torch.float32, device=dev),
                                    torch.as_tensor(mask, dtype=torch.float32, device=dev), steps)
    return renderer.image(poses, betas, trans, camera)


def compute_metrics(data_dir, model_path, body_model_path, cfg: MetricsConfig, out_path,
                    subject: str = "", variant: str = "", variant_config: dict | None = None,
                    stage_reports=(), role: str = "method") -> dict:
    """Score a trained model against its subject's frames (and ground truth where it exists).

    Args:
        stage_reports: the variant's stage-0 / stage-2 ``report.json`` files (their methods are recorded).
        role: the variant's role in the summary: 'method', 'baseline', 'ceiling' or 'control'.
    """
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence
    from ..render.backends import resolve_backend

    device = pick_device(cfg.device)
    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path).to(device)
    model, saved = load_trained_model(model_path, body, device)
    bg = np.asarray(saved["config"]["background"], dtype=np.float32)
    renderer = AvatarRenderer(model, bg, resolve_backend("auto"), saved["config"].get("sh_view_frame", "world"))
    lpips = LPIPSLoss(device) if cfg.lpips else None
    lpips_reason = (lpips.reason if lpips is not None else "disabled in config (metrics.lpips: false)")

    def lp(pred, gt):
        if lpips is None or not lpips.available:
            return None
        with torch.no_grad():
            return float(lpips(torch.as_tensor(pred, device=device), torch.as_tensor(gt, device=device)))

    params, body_source = training_body_params(seq, saved)
    bg_name = "white" if np.allclose(bg, 1) else f"rgb{tuple(float(x) for x in bg)}"
    lpips_desc = "LPIPS-VGG (lpips package), inputs in [-1, 1], x1000" if cfg.lpips else "off"

    def composite(img_u8, mask):
        return np.where(mask[..., None], img_u8.astype(np.float32) / 255.0, bg)

    def body_box(i, cam):
        with torch.no_grad():
            v = body(params["poses"][i:i + 1].to(device), params["betas"][i:i + 1].to(device),
                     params["trans"][i:i + 1].to(device)).vertices[0]
        return body_box_mask(v, cam.to(device)).cpu().numpy()

    heldout = _Scores({
        "views": "held-out cameras (gt/heldout), occlusion off", "pixels": "whole image"
        + (" with pixels outside the projected body box set to background" if cfg.crop_to_body_box else ""),
        "ground_truth": f"held-out frame composited on {bg_name} outside the true person mask",
        "render_background": bg_name, "psnr": "per image, mean over images",
        "ssim": "SSIM as torchmetrics computes it (Gaussian 11x11 sigma 1.5, reflected border), whole image",
        "lpips": lpips_desc})
    fitted = _Scores({
        **heldout.protocol, "body": f"each held-out image: the frame's pose and translation fitted to it first, the "
        f"avatar held fixed ({cfg.heldout_body_fit_steps} Adam steps on L1 colour + silhouette error; test-time "
        "pose optimisation as Anim-NeRF and InstantAvatar evaluate PeopleSnapshot): the avatar's quality "
        "without the depth error of the body that the training camera cannot see"})

    def on_training_frames(pixels: str, ground_truth: str, frames: str, mask: str) -> _Scores:
        return _Scores({
            "views": "training camera", "pixels": pixels, "ground_truth": ground_truth, "render_background": bg_name,
            "psnr": f"per frame over the masked pixels, mean over {frames}",
            "ssim": "SSIM map (Gaussian 11x11 sigma 1.5) averaged over the masked pixels, both images set to "
                    f"background outside the {mask}",
            "lpips": lpips_desc + ", on the frame with non-masked pixels set to background in both images"})

    occluded = on_training_frames("inside the true full person mask and hidden in the input",
                                  "unoccluded frame (gt/images)", "frames with hidden pixels", "true person mask")
    visible = on_training_frames("visible person pixels of the input (OcMotion protocol)", "input frame", "frames",
                                 "visible mask")
    ious, coverage = [], []

    for i, name in enumerate(seq.frames):
        cam = seq.camera(name)
        out = renderer(params["poses"][i], params["betas"][i], params["trans"][i], cam)
        pred = out.rgb.clamp(0, 1).cpu().numpy()
        alpha = out.alpha[..., 0].cpu().numpy()
        vis = seq.mask(name)
        gt_vis = composite(seq.image(name), vis)
        # the render is composited exactly like its ground truth (background outside the mask), so
        # the SSIM windows that straddle the mask's edge compare like with like
        pred_vis = np.where(vis[..., None], pred, bg)
        visible.add(psnr=psnr(pred, gt_vis, vis), ssim=ssim_masked(pred_vis, gt_vis, vis), lpips=lp(pred_vis, gt_vis))
        if seq.has_gt:
            full = seq.gt_full_mask(name)
            hidden = full & ~vis
            union = (alpha > 0.5) | full
            ious.append(float(((alpha > 0.5) & full).sum() / max(union.sum(), 1)))
            if hidden.any():
                gt_full = composite(seq.gt_image(name), full)
                pred_full = np.where(full[..., None], pred, bg)
                coverage.append(float((alpha[hidden] > 0.5).mean()))
                occluded.add(psnr=psnr(pred, gt_full, hidden), ssim=ssim_masked(pred_full, gt_full, hidden),
                             lpips=lp(np.where(hidden[..., None], pred, bg), np.where(hidden[..., None], gt_full, bg)))

    if seq.has_gt:
        index = {n: i for i, n in enumerate(seq.frames)}
        for view, cam in seq.heldout_views().items():
            for name in seq.heldout_frames(view):
                i = index[name]
                mask = seq.heldout_mask(view, name)
                gt = composite(seq.heldout_image(view, name), mask)
                renders = [(heldout, renderer.image(params["poses"][i], params["betas"][i], params["trans"][i], cam))]
                if cfg.heldout_body_fit_steps > 0:
                    renders.append((fitted, _fitted_view(renderer, params, i, cam, gt, mask,
                                                         cfg.heldout_body_fit_steps)))
                if cfg.crop_to_body_box:
                    box = body_box(i, cam)[..., None]
                    gt, renders = np.where(box, gt, bg), [(s, np.where(box, pred, bg)) for s, pred in renders]
                for scores, pred in renders:
                    scores.add(psnr=psnr(pred, gt), ssim=ssim_full(pred, gt), lpips=lp(pred, gt))

    result = {
        "subject": subject, "variant": variant,
        "variant_description": (variant_config or {}).get("description", ""),
        "role": role,
        "iterations": saved.get("iteration"),
        "training_frames": (variant_config or {}).get("training_frames", "input"),
        "methods": stage_methods(saved, stage_reports),
        "body_params": body_source,
        "heldout_full_body": heldout.result(lpips_reason) if seq.has_gt else None,
        "heldout_body_fitted": (fitted.result(lpips_reason) if seq.has_gt and cfg.heldout_body_fit_steps > 0
                                else None),
        "occluded_region": occluded.result(lpips_reason) if seq.has_gt else None,
        "visible_train": visible.result(lpips_reason),
        "silhouette": {
            "iou_vs_full_mask": round(float(np.mean(ious)), 4) if ious else None,
            "hidden_pixels_covered": round(float(np.mean(coverage)), 4) if coverage else None,
            "protocol": "rendered alpha > 0.5 vs the true full person mask on the training frames; "
                        "covered = fraction of hidden person pixels with alpha > 0.5",
        },
        "model": {"gaussians": int(model.num_gaussians), "stage1_seconds": round(saved.get("seconds", 0), 1),
                  "iterations": saved.get("iteration"), "backend": saved.get("backend"),
                  "device": saved.get("device")},
        "ground_truth": "available" if seq.has_gt else "none: only the visible-pixel protocol applies",
    }
    write_json(out_path, result)
    log.info("metrics %s/%s: heldout %s occluded %s visible %s", subject, variant,
             result["heldout_full_body"] and result["heldout_full_body"]["psnr"],
             result["occluded_region"] and result["occluded_region"]["psnr"], result["visible_train"]["psnr"])
    return result
