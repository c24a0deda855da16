"""Person-centric frames: crop a clip to where its person is before scaling it down.

Scaling a whole 1080p frame to 256 pixels leaves a standing person 40-80 pixels tall; cropping first
spends the pixels on the person. With a static camera one crop serves every frame (the background
stays put, which simulated occlusion's background estimate and the rasterised cameras rely on): the
square around the person's boxes over the whole clip, grown by a margin (a rectangle when that square
does not fit the frame). Two cases get a crop per frame instead, of one size, centred on the person
(smoothed over time), each frame with its own intrinsics:

- the camera moves (the pixels away from the person change between frames), or
- the person crosses most of the frame, so that one crop covering the whole walk would hardly crop.

Crops are in original video pixels; :func:`crop_intrinsics` turns a crop and the output size into the
intrinsics of the cropped, scaled frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tracking import Box

CROP_MODES = ("person", "none")


@dataclass
class Framing:
    """Where each frame is cut from its video frame.

    Attributes:
        mode: 'fixed' (one crop), 'per_frame' (one crop per frame, same size) or 'none' (whole frame).
        regions: per kept frame, its crop (x0, y0, x1, y1) in original pixels (may extend past the
            frame only in per-frame mode, where the outside is black).
        size: (width, height) of the output frames.
        reason: why this mode (for info.json and the report).
    """

    mode: str
    regions: list[Box]
    size: tuple[int, int]
    reason: str

    def to_json(self) -> dict:
        rounded = [[round(v, 2) for v in r] for r in self.regions]
        out = {"mode": self.mode, "reason": self.reason, "output_size": list(self.size)}
        if self.mode == "per_frame":
            out["crops_xyxy"] = rounded
        else:
            out["crop_xyxy"] = rounded[0] if rounded else None
        return out


def crop_intrinsics(K: np.ndarray, region: Box, size: tuple[int, int]) -> np.ndarray:
    """(3, 3) intrinsics of the frame cut to ``region`` (original pixels) and resampled to ``size``
    (width, height): the principal point shifts by the crop's corner, everything scales by the
    resampling factor of each axis."""
    x0, y0, x1, y1 = region
    sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)
    S = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])
    return S @ np.asarray(K, np.float64)


def _output_size(width: float, height: float, max_side: int | None) -> tuple[int, int]:
    if max_side is None:
        return max(1, round(width)), max(1, round(height))
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def background_motion(frames: np.ndarray, boxes: list[Box | None], margin: float = 0.15) -> float:
    """Median over consecutive frame pairs of the median absolute grey-level change (0-255) of the
    pixels outside both frames' person boxes (grown by ``margin``): about the noise level (a level or
    two) for a static camera, even with other people walking by (they cover a minority of the
    pixels), several levels when the whole view moves.

    Args:
        frames: (T, H, W, 3) uint8 at the resolution of ``boxes``.
    """
    T, H, W = frames.shape[:3]
    grey = frames.astype(np.float32).mean(-1)
    changes = []
    for t in range(1, T):
        keep = np.ones((H, W), dtype=bool)
        for box in (boxes[t - 1], boxes[t]):
            if box is None:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            x0, y0 = max(0, int(box[0] - margin * w)), max(0, int(box[1] - margin * h))
            x1, y1 = min(W, int(math.ceil(box[2] + margin * w))), min(H, int(math.ceil(box[3] + margin * h)))
            keep[y0:y1, x0:x1] = False
        if keep.mean() > 0.1:
            changes.append(float(np.median(np.abs(grey[t] - grey[t - 1])[keep])))
    return float(np.median(changes)) if changes else 0.0


def plan_framing(boxes: list[Box], frame_size: tuple[int, int], crop: str, max_side: int | None,
                 margin: float = 0.15, camera_motion: float = 0.0, max_camera_motion: float = 3.0,
                 max_cross_fraction: float = 0.7) -> Framing:
    """Choose the crops of a clip's kept frames.

    Args:
        boxes: the person's box in each kept frame, original pixels.
        frame_size: (width, height) of the video.
        crop: 'person' or 'none'.
        max_side: longer side of the output frames (None: the crop's own size).
        margin: fraction of the person's extent added on every side.
        camera_motion: :func:`background_motion` of the clip; above ``max_camera_motion`` the camera
            counts as moving.
        max_cross_fraction: a person whose boxes span more than this fraction of the frame's width
            (or height), and more than twice their own median width (height), crosses the frame.
    """
    W, H = frame_size
    if crop not in CROP_MODES:
        raise ValueError(f"video.crop: {crop!r} is not one of {', '.join(CROP_MODES)}")
    if crop == "none" or not boxes:
        return Framing("none", [(0.0, 0.0, float(W), float(H))] * len(boxes), _output_size(W, H, max_side),
                       "video.crop: none" if crop == "none" else "no person box")
    b = np.asarray(boxes, np.float64)
    ux0, uy0, ux1, uy1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    moving = camera_motion > max_camera_motion
    # crossing: the path spans most of the frame along an axis, and much more than the person does
    widths, heights = np.median(b[:, 2] - b[:, 0]), np.median(b[:, 3] - b[:, 1])
    crossing = ((ux1 - ux0) > max_cross_fraction * W and (ux1 - ux0) > 2.0 * widths) or \
        ((uy1 - uy0) > max_cross_fraction * H and (uy1 - uy0) > 2.0 * heights)
    if moving or crossing:
        sides = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1 + 2 * margin)
        side = float(np.percentile(sides, 90))
        centres = 0.5 * (b[:, :2] + b[:, 2:])
        # smooth the centres over time (a moving crop that jitters makes the frames jitter)
        k = min(len(centres), 5)
        kernel = np.ones(k) / k
        padded = np.pad(centres, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
        smooth = np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(2)], 1)
        regions = [(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2) for cx, cy in smooth]
        why = (f"the camera moves (background change {camera_motion:.1f} grey levels per frame > "
               f"{max_camera_motion})" if moving else
               f"the person crosses the frame (boxes span {(ux1 - ux0) / W:.0%} of the width, "
               f"{(uy1 - uy0) / H:.0%} of the height)")
        return Framing("per_frame", regions, _output_size(side, side, max_side),
                       f"one crop per frame, {side:.0f} px square, each with its own intrinsics: {why}")
    w, h = ux1 - ux0, uy1 - uy0
    side = max(w, h) + 2 * margin * max(w, h)
    cw, ch = min(side, W), min(side, H)
    cx = min(max(0.5 * (ux0 + ux1), cw / 2), W - cw / 2)
    cy = min(max(0.5 * (uy0 + uy1), ch / 2), H - ch / 2)
    size = _output_size(cw, ch, max_side)
    # the output's whole pixels round its aspect: the crop takes that aspect (square pixels), inside the frame
    if ch * size[0] / size[1] <= W:
        cw = ch * size[0] / size[1]
    else:
        ch = cw * size[1] / size[0]
    cx = min(max(cx, cw / 2), W - cw / 2)
    cy = min(max(cy, ch / 2), H - ch / 2)
    region = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
    shape = "square" if size[0] == size[1] else "rectangle (the square would leave the frame)"
    return Framing("fixed", [region] * len(boxes), size,
                   f"one {shape} crop around the person's whole path plus {margin:.0%} margin "
                   f"(static camera: background change {camera_motion:.1f} grey levels per frame)")
