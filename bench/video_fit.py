"""Video source benchmark: a real clip through ``prepare_video`` (frames, MediaPipe masks and keypoints,
body fit), timed per frame, and the fitted body's 2D reprojection error against the detected keypoints.

The error is recomputed here from the written ``metadata.json`` and ``keypoints.json`` (the body's
landmarks through :data:`~occfusion_core.data.keypoints.LANDMARK_FROM_JOINTS45`, projected with the
written camera), over the landmarks the fit uses that MediaPipe sees (visibility >= the fit's
threshold). It is reported in pixels and as a percentage of two box heights: the person mask's
bounding box (the person's box; the target is <= 4 %) and the box around the visible keypoints
(smaller: no head top, no soles).

Usage:
    .venv/bin/python bench/video_fit.py                        # taiji.mp4, every 4th frame, 512 px
    .venv/bin/python bench/video_fit.py --video ../shared/data/single_person_basketball.mp4 --stride 1
    .venv/bin/python bench/video_fit.py --max-frames 20 --json results/benchmarks/video_fit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from occfusion_core.body.fit import JointsFK, project_points  # noqa: E402
from occfusion_core.body.landmarks import LANDMARK_FROM_JOINTS45, LANDMARK_NAMES, LANDMARK_WEIGHTS  # noqa: E402
from occfusion_core.body.model import load_body_model  # noqa: E402
from occfusion_core.data.sequence import read_sequence  # noqa: E402
from occfusion_core.data.source_configs import FitConfig, VideoConfig  # noqa: E402
from occfusion_core.data.video import prepare_video  # noqa: E402
from occfusion_core.masks import mask_box_heights  # noqa: E402

DEFAULT_VIDEO = REPO_ROOT.parent / "shared" / "data" / "taiji.mp4"
TARGET_PERCENT = 4.0


def reprojection_errors(root: Path, body, min_visibility: float) -> dict:
    """Per frame: mean error (px) of the used, visible landmarks; mask and keypoint box heights."""
    seq = read_sequence(root)
    detections = json.loads((root / "keypoints.json").read_text())["frames"]
    names = seq.frames
    params = seq.body_params(names)
    with torch.no_grad():
        joints45, _ = JointsFK(body)(params["poses"], params["betas"], params["trans"])
        landmarks = torch.as_tensor(LANDMARK_FROM_JOINTS45, dtype=torch.float32) @ joints45
    errors, mask_h, kp_h, per_landmark = [], [], [], []
    for t, name in enumerate(names):
        cam = seq.camera(name)
        uv = project_points(landmarks[t], cam.K, cam.w2c).double().numpy()
        det = np.asarray(detections[name]["keypoints"])  # (33, 3): u, v, visibility
        used = (LANDMARK_WEIGHTS > 0) & (det[:, 2] >= min_visibility)
        err = np.linalg.norm(uv - det[:, :2], axis=1)
        errors.append(err[used].mean() if used.any() else np.nan)
        per_landmark.append(np.where(used, err, np.nan))
        kp_h.append(np.ptp(det[used, 1]) if used.sum() > 1 else np.nan)
        mask_h.append(mask_box_heights(seq.mask(name)[None])[0])
    per_landmark = np.array(per_landmark)
    seen = np.isfinite(per_landmark)
    landmark_mean = np.where(seen.any(0), np.nansum(per_landmark, 0) / np.maximum(seen.sum(0), 1), np.nan)
    return {"error_px": np.array(errors), "mask_box_px": np.array(mask_h), "keypoint_box_px": np.array(kp_h),
            "per_landmark_px": landmark_mean}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--stride", type=int, default=4, help="use every k-th frame (default 4)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--smpl", type=Path, default=None, help="an SMPL model file (default: the proxy body)")
    parser.add_argument("--out", type=Path, default=None, help="keep the sequence folder here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"video not found: {args.video}", file=sys.stderr)
        return 2

    body = load_body_model(args.smpl)
    cfg = VideoConfig(path=str(args.video), start_frame=args.start, frame_stride=args.stride,
                      max_frames=args.max_frames, max_side=args.max_side, fit=FitConfig(progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "data"
        start = time.time()
        summary = prepare_video(args.video, out, cfg, body)
        total_s = time.time() - start
        errs = reprojection_errors(out, body, cfg.fit.min_visibility)
        info = json.loads((out / "info.json").read_text())

    T = summary["frames"]
    timings = summary["timings_s"]
    pct_mask = 100.0 * errs["error_px"] / errs["mask_box_px"]
    pct_kp = 100.0 * errs["error_px"] / errs["keypoint_box_px"]
    err_px = errs["error_px"]
    met = "met" if np.nanmean(pct_mask) <= TARGET_PERCENT else "NOT met"
    rows = [
        ("clip", f"{args.video.name}: {T} frames (stride {args.stride}), "
                 f"{summary['width']}x{summary['height']} px"),
        ("detector", f"{info['detector']}, {info['detector_mode']}"),
        ("body model", info["body_model"]),
        ("decode (s / frame)", f"{timings['decode_s'] / T:.3f}"),
        ("masks + keypoints (s / frame)", f"{timings['detect_s'] / T:.3f}"),
        ("body fit (s / frame)", f"{timings['fit_s'] / T:.3f}  ({timings['fit_s']:.1f} s for all frames at once)"),
        ("whole prepare_video (s)", f"{total_s:.1f}"),
        ("2D error (px), mean / median / p90",
         f"{np.nanmean(err_px):.2f} / {np.nanmedian(err_px):.2f} / {np.nanpercentile(err_px, 90):.2f}"),
        ("2D error, % of person (mask) box height",
         f"mean {np.nanmean(pct_mask):.2f} %, max {np.nanmax(pct_mask):.2f} % (target <= {TARGET_PERCENT:g} %: {met})"),
        ("2D error, % of keypoint box height", f"mean {np.nanmean(pct_kp):.2f} %, max {np.nanmax(pct_kp):.2f} %"),
        ("mean box heights (px): mask / keypoints",
         f"{np.nanmean(errs['mask_box_px']):.0f} / {np.nanmean(errs['keypoint_box_px']):.0f}"),
    ]
    worst = np.argsort(-np.nan_to_num(errs["per_landmark_px"], nan=-1.0))[:4]
    rows.append(("worst landmarks (px)",
                 ", ".join(f"{LANDMARK_NAMES[i]} {errs['per_landmark_px'][i]:.1f}" for i in worst)))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)} | value")
    print(f"{'-' * width}-|-{'-' * 60}")
    for key, value in rows:
        print(f"{key.ljust(width)} | {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "video": str(args.video), "frames": T, "stride": args.stride, "size": [summary["width"], summary["height"]],
            "timings_s": timings, "seconds_per_frame": {"detect": timings["detect_s"] / T, "fit": timings["fit_s"] / T},
            "error_px_mean": float(np.nanmean(errs["error_px"])),
            "error_percent_mask_box_mean": float(np.nanmean(pct_mask)),
            "error_percent_mask_box_max": float(np.nanmax(pct_mask)),
            "error_percent_keypoint_box_mean": float(np.nanmean(pct_kp)),
            "target_percent": TARGET_PERCENT, "body_model": info["body_model"], "detector": info["detector"],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
