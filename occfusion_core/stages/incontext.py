"""Stage 2 (incontext_inpaint): fill the hidden person pixels of every frame (docs/method.md, "Stage 2:
in-context inpainting").

Hidden pixels = stage-1 alpha > ``alpha_threshold`` and not visible. Methods (``InpaintConfig.method``):

- ``diffusion`` (the paper's in-context inpainting): inside the padded box of the stage-1 person,
  the panel [stage-1 render | observed frame on white] is inpainted by Stable Diffusion with
  ControlNet openpose (the frame's OpenPose canvas twice), regenerating only the hidden pixels of the
  right panel; the render on the left is the in-context reference for the person's appearance.
- ``render_fill`` (weight-free): the stage-1 render fills the hidden pixels, blended in the gradient
  domain so that its colours meet the observed ones at the seam (Poisson image editing), or pasted as
  is with ``poisson_blend: false``. No generative model is involved and the report says so.

Writes ``<out_dir>/<name>.png`` (frame size, white where no person is) for every frame; frames with
nothing hidden are the input composited on white, and the report says so frame by frame.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..figures import pick_frames, write_image_grid
from ..imaging import resize
from ..io import InputError, atomic_dir, load_torch, read_image, write_image, write_json
from ..priors.configs import InpaintConfig
from .device import pick_device
from .trained_model import training_body_params

log = logging.getLogger(__name__)

METHODS = ("diffusion", "render_fill")
WEIGHT_FREE = "stage2 `method: render_fill`"
NOTHING_HIDDEN = "nothing hidden: the input composited on white"


def _describe(cfg: InpaintConfig, model_source: str | None) -> dict:
    if cfg.method == "render_fill":
        blend = "Poisson-blended (gradient domain) into" if cfg.poisson_blend else "pasted into"
        return {"method": "render_fill",
                "description": f"weight-free: the stage-1 render {blend} the hidden person pixels; "
                               "no generative model"}
    return {"method": "diffusion", "models": model_source,
            "description": "in-context inpainting: [stage-1 render | observed frame] panel, ControlNet-openpose "
                           "Stable Diffusion inpainting of the hidden person pixels of the right panel"}


def _read_render(renders_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 render of frame ``name``: (h, w, 3) uint8 RGB and (h, w) float alpha in [0, 1]."""
    rgb = read_image(renders_dir / f"{name}.png")
    alpha_path = renders_dir / f"{name}_alpha.png"
    alpha = read_image(alpha_path)[..., 0].astype(np.float32) / 255.0
    if alpha.shape != rgb.shape[:2]:
        raise InputError(alpha_path, f"alpha is {alpha.shape}, the render is {rgb.shape[:2]}")
    return rgb, alpha


def _diffusion_panel(pipe, render: np.ndarray, observed: np.ndarray, hidden: np.ndarray, canvas: np.ndarray,
                     cfg: InpaintConfig, seed: int) -> np.ndarray:
    """Inpaint the right half of [render | observed]; returns the (h, w, 3) uint8 right panel.

    All inputs are one box crop: render/observed/canvas (h, w, 3) uint8, hidden (h, w) bool.
    """
    from ..priors.inpaint import run_inpaint

    h, w = hidden.shape
    image = np.concatenate([render, observed], axis=1)
    mask = np.concatenate([np.zeros_like(hidden), hidden], axis=1)
    control = np.concatenate([canvas, canvas], axis=1)
    # the pipeline works on multiples of 8: resize down to one and back (released)
    size = (max(8, (2 * w) // 8 * 8), max(8, h // 8 * 8))
    generated = run_inpaint(
        pipe, resize(image, size), resize(mask.astype(bool), size, "nearest"),
        resize(control, size), prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        controlnet_conditioning_scale=cfg.controlnet_conditioning_scale, guess_mode=cfg.guess_mode, seed=seed)
    return resize(generated, (2 * w, h))[:, w:]


def incontext_inpaint(data_dir, stage1_renders_dir, body_model_path, cfg: InpaintConfig, out_dir,
                      report_path, stage1_model=None, panel_path=None) -> dict:
    """Run stage 2 on a sequence.

    Args:
        data_dir: the sequence folder.
        stage1_renders_dir: stage-1 renders, ``<name>.png`` (RGB over white) and ``<name>_alpha.png``.
        body_model_path: SMPL-format body file (None: the proxy body), for the OpenPose canvases.
        cfg: stage-2 config.
        out_dir: folder for ``<name>.png`` (replaced as a whole when done).
        report_path: the report JSON.
        stage1_model: stage 1's ``model.pt``; its per-frame refined body parameters (when it has
            them) place the OpenPose canvases. None: the input estimates.
        panel_path: where to write a PNG grid for the report, a few frames with hidden pixels, one
            per row: occluded input | filled frame | unoccluded frame (where the sequence has it);
            None writes none.

    Returns:
        the report dict.

    Raises:
        ModelWeightsMissing: method 'diffusion' without its weights.
    """
    from ..body.model import load_body_model
    from ..body.openpose import draw_openpose, openpose18, project_openpose
    from ..data.sequence import read_sequence
    from ..priors.inpaint import padded_roi, poisson_fill

    if cfg.method not in METHODS:
        raise ValueError(f"stage2 method {cfg.method!r} is not one of {', '.join(METHODS)}")
    started = time.perf_counter()
    seq = read_sequence(data_dir)
    renders_dir = Path(stage1_renders_dir)
    device = pick_device(cfg.device)
    pipe, model_source = None, None
    if cfg.method == "diffusion":
        from ..priors.diffusion import inpaint_pipeline_from_config

        pipe, model_source = inpaint_pipeline_from_config(cfg, device, WEIGHT_FREE)
        body = load_body_model(body_model_path)
        params = seq.body_params()
        if stage1_model is not None:
            params, _ = training_body_params(seq, load_torch(stage1_model))
        with torch.no_grad():
            joints18 = openpose18(body(params["poses"], params["betas"], params["trans"]).joints45)
    load_seconds = time.perf_counter() - started

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as partial:
        has_gt = seq.has_gt
        frames = []
        for k, name in enumerate(seq.frames):
            t0 = time.perf_counter()
            render, alpha = _read_render(renders_dir, name)
            h, w = alpha.shape
            image = seq.image(name)
            H, W = image.shape[:2]
            # work at the render's resolution (the released stage 2 works at the half-size of stage 1)
            observed = resize(image, (w, h))
            visible = resize(seq.mask(name), (w, h), "bilinear")
            person = alpha > cfg.alpha_threshold
            hidden = person & ~visible
            out = np.where(visible[..., None], observed, 255).astype(np.uint8)
            row: dict = {"name": name, "hidden_pixels": int(hidden.sum())}
            if not hidden.any():
                row["status"] = NOTHING_HIDDEN
            elif cfg.method == "render_fill":
                if cfg.poisson_blend:
                    filled = poisson_fill(render / 255.0, out / 255.0, hidden, visible)
                    out = (filled * 255.0 + 0.5).astype(np.uint8)
                else:
                    out[hidden] = render[hidden]
                row["status"] = "filled from the stage-1 render"
            else:
                x0, y0, x1, y1 = padded_roi(person, cfg.roi_padding)
                camera = seq.camera(name).scaled(w / W) if (h, w) != (H, W) else seq.camera(name)
                uv, _ = project_openpose(joints18[k], camera)
                canvas = draw_openpose(uv, np.ones(len(uv), dtype=bool), w, h)  # all joints, no z-test (released)
                crop = np.s_[y0:y1, x0:x1]
                panel = _diffusion_panel(pipe, render[crop], out[crop], hidden[crop], canvas[crop], cfg, cfg.seed + k)
                if cfg.keep_observed:
                    panel = np.where(visible[crop][..., None], out[crop], panel)
                out[crop] = panel
                row.update(status="inpainted", roi_xyxy=[x0, y0, x1, y1])
            out = resize(out, (W, H))
            if has_gt and hidden.any():
                # scored where the person really is hidden (ground-truth full mask), at frame size
                truly_hidden = seq.gt_full_mask(name) & ~seq.mask(name)
                if truly_hidden.any():
                    error = np.abs(out.astype(np.float64) - seq.gt_image(name).astype(np.float64))[truly_hidden]
                    row["hidden_mae_vs_gt"] = round(float(error.mean() / 255.0), 5)
            write_image(partial / f"{name}.png", out)
            row["seconds"] = round(time.perf_counter() - t0, 4)
            frames.append(row)
            log.info("stage 2 frame %s: %s", name, row)
        if panel_path is not None and frames:
            picked = [frames[i]["name"] for i in pick_frames([f["hidden_pixels"] for f in frames])]
            write_image_grid(panel_path, [[seq.image(n), read_image(partial / f"{n}.png")]
                                          + ([seq.gt_image(n)] if has_gt else []) for n in picked])

    report = {**_describe(cfg, model_source), "config": to_dict(cfg), "device": str(device), "frames": frames,
              "frames_with_hidden_pixels": sum(f["status"] != NOTHING_HIDDEN for f in frames),
              "model_load_seconds": round(load_seconds, 3), "seconds": round(time.perf_counter() - started, 3)}
    maes = [f["hidden_mae_vs_gt"] for f in frames if "hidden_mae_vs_gt" in f]
    if maes:
        report["hidden_mae_vs_gt_mean"] = round(float(np.mean(maes)), 5)
    write_json(report_path, report)
    return report
