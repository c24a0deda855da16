"""Stage 0 (complete_masks): a complete person mask for every frame (docs/method.md, "Stage 0: mask completion").

Methods (``MaskCompletionConfig.method``):

- ``diffusion`` (the paper's): per frame, the body-model silhouette (united with the visible mask,
  so that a person outside a poor body fit stays in) gives a padded box; inside it,
  Stable Diffusion inpainting with ControlNet openpose regenerates everything but the visible person
  (input composited on white), conditioned on the frame's OpenPose canvas with self-occluded joints
  left out; the generated box is then segmented by SAM-HQ prompted with the joints
  (``segmenter: sam_hq``), or the mask is taken from the weight-free silhouette completion
  (``segmenter: silhouette``; the report says so and the generated image only goes to
  ``generations_dir``).
- ``silhouette`` (weight-free): the visible mask united with the body silhouette fitted to the
  visible outline (:func:`occfusion_core.priors.segment.complete_with_silhouette`).

Writes ``<out_dir>/<name>.png`` (single channel 0/255) for every frame, and a report JSON with the
method, per-frame timing and, where the sequence has ``gt/full_masks``, the IoU of the produced masks
against them next to the IoU of the visible masks against them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..figures import pick_frames, write_image_grid
from ..io import atomic_dir, read_mask, write_image, write_json, write_mask
from ..priors.configs import MaskCompletionConfig
from .device import pick_device

log = logging.getLogger(__name__)

METHODS = ("diffusion", "silhouette")
SEGMENTERS = ("sam_hq", "silhouette")
WEIGHT_FREE = "stage0 `method: silhouette`"


def _describe(cfg: MaskCompletionConfig, model_source: str | None) -> dict:
    if cfg.method == "silhouette":
        return {"method": "silhouette",
                "description": "weight-free: visible mask united with the body-model silhouette, shifted and "
                               "grown or shrunk to fit the visible outline; no generative model, no segmenter"}
    segmenter = (f"SAM-HQ {cfg.sam_model_type} prompted with the body joints" if cfg.segmenter == "sam_hq" else
                 "none: the masks are the weight-free silhouette completion (visible mask united with the fitted "
                 "body silhouette); the generated images were not segmented and do not shape the masks")
    return {"method": "diffusion", "models": model_source, "segmenter": cfg.segmenter,
            "description": "ControlNet-openpose Stable Diffusion inpainting of everything but the visible person "
                           f"inside the padded body box; masks from: {segmenter}"}


def _check(cfg: MaskCompletionConfig) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"stage0 method {cfg.method!r} is not one of {', '.join(METHODS)}")
    if cfg.segmenter not in SEGMENTERS:
        raise ValueError(f"stage0 segmenter {cfg.segmenter!r} is not one of {', '.join(SEGMENTERS)}")


def _silhouette(visible: np.ndarray, body_silhouette: np.ndarray, cfg: MaskCompletionConfig):
    from ..priors.segment import complete_with_silhouette

    return complete_with_silhouette(visible, body_silhouette, max_shift=cfg.silhouette_max_shift,
                                    band=cfg.silhouette_band, margin_radius=cfg.silhouette_margin_radius)


def align_body(seq, body, params: dict, cfg: MaskCompletionConfig) -> tuple[dict, dict]:
    """The sequence's body estimates aligned to each frame's visible mask (and keypoints, where the
    sequence has them); returns (params as float32 tensors, a report entry)."""
    from ..body.align import align_to_evidence

    keypoints = seq.keypoints()
    masks = np.stack([seq.mask(n) for n in seq.frames])
    result = align_to_evidence(
        body, params["poses"].double().numpy(), params["betas"].double().numpy(), params["trans"].double().numpy(),
        [seq.camera(n) for n in seq.frames], masks, cfg.align,
        keypoints=None if keypoints is None else keypoints[0],
        keypoint_visibility=None if keypoints is None else keypoints[1], seed=cfg.seed)
    aligned = {k: torch.as_tensor(v, dtype=torch.float32)
               for k, v in (("poses", result.poses), ("betas", result.betas), ("trans", result.trans))}
    entry = {"aligned": True, "evidence": "visible masks" + (" and keypoints.json" if keypoints is not None else ""),
             **result.summary}
    return aligned, entry


def complete_masks(data_dir, body_model_path, cfg: MaskCompletionConfig, out_dir, report_path,
                   generations_dir=None, panel_path=None) -> dict:
    """Run stage 0 on a sequence.

    Args:
        data_dir: the sequence folder (``images/``, ``masks/``, ``metadata.json``).
        body_model_path: SMPL-format body file (None: the proxy body).
        cfg: stage-0 config.
        out_dir: folder for ``<name>.png`` complete masks (replaced as a whole when done).
        report_path: the report JSON.
        generations_dir: method 'diffusion' only: where to also write the generated images
            (``<name>.png``, white outside the box); None writes none.
        panel_path: where to write a PNG grid for the report, a few frames where the mask grew, one
            per row: input | visible mask | completed mask | true full mask (where the sequence has
            it); None writes none.

    Returns:
        the report dict.

    Raises:
        ModelWeightsMissing / SegmenterUnavailable: method 'diffusion' without its weights or SAM-HQ.
    """
    from ..body.model import load_body_model
    from ..body.openpose import draw_openpose, openpose18, project_openpose, self_occlusion_valid
    from ..data.sequence import read_sequence
    from ..priors.inpaint import padded_roi, run_inpaint
    from ..priors.segment import mask_iou
    from ..render.mesh import rasterize_mesh

    _check(cfg)
    started = time.perf_counter()
    seq = read_sequence(data_dir)
    device = pick_device(cfg.device)

    # Models first, so that missing weights fail before any frame is processed.
    pipe, segmenter, model_source = None, None, None
    if cfg.method == "diffusion":
        if cfg.segmenter == "sam_hq":
            from ..priors.segment import SamHQSegmenter

            segmenter = SamHQSegmenter(cfg.sam_checkpoint, cfg.sam_model_type, str(device))
        from ..priors.diffusion import inpaint_pipeline_from_config

        pipe, model_source = inpaint_pipeline_from_config(cfg, device, WEIGHT_FREE)
    load_seconds = time.perf_counter() - started

    body = load_body_model(body_model_path)
    params = seq.body_params()
    alignment = None
    if cfg.align.enabled:
        params, alignment = align_body(seq, body, params, cfg)
    with torch.no_grad():
        posed = body(params["poses"], params["betas"], params["trans"])
    joints18 = openpose18(posed.joints45)

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as partial:
        has_gt = seq.has_gt
        frames = []
        for k, name in enumerate(seq.frames):
            t0 = time.perf_counter()
            camera = seq.camera(name)
            visible = seq.mask(name)
            fragments = rasterize_mesh(posed.vertices[k], body.faces, camera)
            body_silhouette = fragments.mask.numpy()
            row: dict = {"name": name}
            if cfg.method == "silhouette" or cfg.segmenter == "silhouette":
                fit = _silhouette(visible, body_silhouette, cfg)
                mask = fit.mask
                row.update(shift_px=list(fit.shift), median_margin_px=round(fit.median_margin, 2),
                           outline_evidence_px=fit.outline_evidence)
            if cfg.method == "diffusion":
                image = seq.image(name)
                white = np.where(visible[..., None], image, 255).astype(np.uint8)
                x0, y0, x1, y1 = padded_roi(body_silhouette | visible, cfg.roi_padding)
                uv, depth = project_openpose(joints18[k], camera)
                valid = self_occlusion_valid(uv, depth, fragments.depth, cfg.self_occlusion_tolerance)
                canvas = draw_openpose(uv, valid, camera.width, camera.height)
                generated = run_inpaint(
                    pipe, white[y0:y1, x0:x1], ~visible[y0:y1, x0:x1], canvas[y0:y1, x0:x1],
                    prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, num_inference_steps=cfg.num_inference_steps,
                    guidance_scale=cfg.guidance_scale, controlnet_conditioning_scale=cfg.controlnet_conditioning_scale,
                    seed=cfg.seed + k)
                if segmenter is not None:
                    # every joint inside the box prompts (a self-occluded joint still lies on the person's
                    # 2D outline); the released code negated them, which put them off the image
                    points = uv.numpy() - np.array([x0, y0])
                    inside = ((points >= 0) & (points < np.array([x1 - x0, y1 - y0]))).all(axis=1)
                    mask = np.zeros_like(visible)
                    if inside.any():
                        mask[y0:y1, x0:x1] = segmenter.segment(generated, points[inside])
                    row["sam_points"] = int(inside.sum())
                if generations_dir is not None:
                    full = np.full_like(image, 255)
                    full[y0:y1, x0:x1] = generated
                    write_image(Path(generations_dir) / f"{name}.png", full)
                row.update(roi_xyxy=[x0, y0, x1, y1], joints_drawn=int(valid.sum()))
            write_mask(partial / f"{name}.png", mask)
            row["seconds"] = round(time.perf_counter() - t0, 4)
            row["mask_pixels"], row["visible_pixels"] = int(mask.sum()), int(visible.sum())
            if has_gt:
                gt = seq.gt_full_mask(name)
                row["iou"], row["iou_visible"] = round(mask_iou(mask, gt), 5), round(mask_iou(visible, gt), 5)
                row["iou_body"] = round(mask_iou(body_silhouette, gt), 5)
            frames.append(row)
            log.info("stage 0 frame %s: %s", name, row)
        if panel_path is not None and frames:
            picked = [frames[i]["name"] for i in pick_frames([f["mask_pixels"] - f["visible_pixels"] for f in frames])]
            write_image_grid(panel_path, [[seq.image(n), seq.mask(n), read_mask(partial / f"{n}.png")]
                                          + ([seq.gt_full_mask(n)] if has_gt else []) for n in picked])

    report = {**_describe(cfg, model_source), "config": to_dict(cfg), "device": str(device),
              "body": alignment or {"aligned": False, "note": "the input body estimates, as given"},
              "frames": frames, "model_load_seconds": round(load_seconds, 3),
              "seconds": round(time.perf_counter() - started, 3),
              "seconds_per_frame": round(float(np.mean([f["seconds"] for f in frames])), 4) if frames else 0.0}
    if has_gt and frames:
        report["iou_mean"] = round(float(np.mean([f["iou"] for f in frames])), 5)
        report["iou_visible_mean"] = round(float(np.mean([f["iou_visible"] for f in frames])), 5)
        report["iou_body_mean"] = round(float(np.mean([f["iou_body"] for f in frames])), 5)
    write_json(report_path, report)
    return report
