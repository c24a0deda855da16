"""One person, chosen and followed through a clip, whoever else walks by.

MediaPipe Pose finds one person per image, the most prominent one, so a crowd or a painted figure
can take over a frame. The tracker keeps the identity by looking only where the subject should be:

1. **Choice** (:func:`choose_subject`), in the first frame where anyone is found: proposals from
   the whole frame and from overlapping windows (each window can surface a different person), then
   ``largest`` (box area), ``center`` (box centre nearest the frame centre) or a box given in pixels
   (best overlap).
2. **Following** (:class:`SubjectTracker`): each frame, detection runs in a square region around
   the box predicted from the last two boxes; the region grows (``search_scales``) until a detection
   agrees with the track: its box overlaps the prediction (IoU), its keypoints moved a plausible
   distance, and its colours (a hue-saturation-value histogram inside its mask) match the subject's.
   A frame where nothing agrees is dropped, and the reason kept.

Coordinates are pixels of the frames given (continuous: pixel (i, j) covers [j, j+1) x [i, i+1)).
A detection's mask lives in its square region, resampled to ``region_size`` pixels; :func:`paste_mask`
draws it into any other pixel grid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .source_configs import TrackingConfig

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels, x1 > x0, y1 > y0."""


@dataclass
class PersonDetection:
    """One person found in one frame.

    Attributes:
        keypoints: (33, 2) landmark pixels of the frame; visibility: (33,); world: (33, 3) metres.
        mask: (S, S) bool person mask over ``region``.
        region: the square (x0, y0, x1, y1) the mask covers, in frame pixels (may extend past the frame).
        box: the person's box in frame pixels (the mask's extent).
    """

    keypoints: np.ndarray
    visibility: np.ndarray
    world: np.ndarray
    mask: np.ndarray
    region: Box
    box: Box


@dataclass
class TrackStep:
    """The tracker's answer for one frame: a detection that agrees with the track, or None and why."""

    detection: PersonDetection | None
    status: str
    scale: float | None = None


# ------------------------------------------------------------------------------------------ boxes


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def square_around(box: Box, scale: float) -> Box:
    """The square centred on ``box`` whose side is ``scale`` times the box's longer side."""
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    half = 0.5 * scale * max(box[2] - box[0], box[3] - box[1])
    return cx - half, cy - half, cx + half, cy + half


def crop_square(frame: np.ndarray, region: Box, size: int) -> np.ndarray:
    """The pixels of ``region`` (any square, even past the frame's edge: black there) resampled to
    (size, size, 3) uint8."""
    from PIL import Image

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = region
    # integer-aligned crop of the covered part, then an exact affine resample into size x size
    scale = size / (x1 - x0)
    out = Image.fromarray(np.ascontiguousarray(frame)).transform(
        (size, size), Image.Transform.AFFINE, (1.0 / scale, 0.0, x0, 0.0, 1.0 / scale, y0),
        resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    del h, w, x1, y1
    return np.asarray(out)


def paste_mask(mask: np.ndarray, region: Box, shape: tuple[int, int], origin=(0.0, 0.0),
               scale: float = 1.0) -> np.ndarray:
    """Draw a region's (S, S) mask into an (H, W) grid whose pixel (i, j) covers frame pixels
    [origin + j / scale, origin + (j + 1) / scale) (nearest sample at each pixel centre)."""
    H, W = shape
    S = mask.shape[0]
    x0, y0, x1, y1 = region
    xs = origin[0] + (np.arange(W) + 0.5) / scale
    ys = origin[1] + (np.arange(H) + 0.5) / scale
    u = np.floor((xs - x0) / (x1 - x0) * S).astype(np.int64)
    v = np.floor((ys - y0) / (y1 - y0) * S).astype(np.int64)
    okx, oky = (u >= 0) & (u < S), (v >= 0) & (v < S)
    out = np.zeros((H, W), dtype=bool)
    sub = mask[np.clip(v, 0, S - 1)][:, np.clip(u, 0, S - 1)]
    out[np.ix_(oky, okx)] = sub[np.ix_(oky, okx)]
    return out


def mask_box_in_frame(mask: np.ndarray, region: Box) -> Box | None:
    """The extent, in frame pixels, of the true pixels of a region's mask (None when empty)."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if rows.size == 0:
        return None
    S = mask.shape[0]
    k = (region[2] - region[0]) / S
    return (region[0] + cols[0] * k, region[1] + rows[0] * k, region[0] + (cols[-1] + 1) * k,
            region[1] + (rows[-1] + 1) * k)


# ------------------------------------------------------------------------------------------ detection


def detect_in_region(detector, frame: np.ndarray, region: Box, size: int, mask_threshold: float = 0.5,
                     min_component_fraction: float = 0.05) -> PersonDetection | None:
    """Run the pose detector on one square region of the frame; results in frame pixels."""
    from ..masks import person_mask

    crop = crop_square(frame, region, size)
    det = detector(crop)
    if det is None or det.segmentation is None:
        return None
    mask = person_mask(det.segmentation, mask_threshold, min_component_fraction)
    box = mask_box_in_frame(mask, region)
    if box is None:
        return None
    k = (region[2] - region[0]) / size
    keypoints = det.keypoints * k + np.array([region[0], region[1]])
    return PersonDetection(keypoints, det.visibility, det.world, mask, region, box)


def proposals(detector, frame: np.ndarray, cfg: TrackingConfig) -> list[PersonDetection]:
    """People found in the whole frame and in overlapping windows, one per person (boxes overlapping
    by more than half are the same person: the larger box is kept)."""
    h, w = frame.shape[:2]
    side = max(h, w)
    regions = [((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)]
    for fraction in cfg.proposal_windows:
        s = fraction * min(h, w)
        xs = np.linspace(0, w - s, max(2, math.ceil((w - s) / (0.5 * s)) + 1))
        ys = np.linspace(0, h - s, max(2, math.ceil((h - s) / (0.5 * s)) + 1))
        regions += [(x, y, x + s, y + s) for y in ys for x in xs]
    found: list[PersonDetection] = []
    for region in regions:
        det = detect_in_region(detector, frame, region, cfg.region_size)
        if det is None:
            continue
        same = [i for i, other in enumerate(found) if box_iou(det.box, other.box) > 0.5]
        if not same:
            found.append(det)
        elif _area(det.box) > _area(found[same[0]].box):
            found[same[0]] = det
    return found


def mask_area(detection: PersonDetection) -> float:
    """Pixels of the frame the detection's mask covers."""
    k = (detection.region[2] - detection.region[0]) / detection.mask.shape[0]
    return float(detection.mask.sum()) * k * k


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def choose_subject(candidates: list[PersonDetection], rule, frame_shape: tuple[int, int],
                   scale: float = 1.0) -> PersonDetection | None:
    """The subject among ``candidates`` by ``rule``: 'largest', 'center' or [x0, y0, x1, y1] in
    original pixels (``scale`` = these frames' pixels per original pixel). None when nothing fits."""
    if not candidates:
        return None
    if rule == "largest":
        return max(candidates, key=lambda d: _area(d.box))
    if rule == "center":
        h, w = frame_shape
        return min(candidates, key=lambda d: math.hypot(0.5 * (d.box[0] + d.box[2]) - w / 2,
                                                        0.5 * (d.box[1] + d.box[3]) - h / 2))
    given = tuple(float(v) * scale for v in rule)
    best = max(candidates, key=lambda d: box_iou(d.box, given))
    return best if box_iou(best.box, given) > 0.1 else None


# ------------------------------------------------------------------------------------------ appearance


def colour_bins(frame: np.ndarray, detection: PersonDetection, bins: int = 8) -> np.ndarray:
    """(P,) hue-saturation-value bin (of bins^3) of every pixel under the detection's mask."""
    from PIL import Image

    crop = crop_square(frame, detection.region, detection.mask.shape[0])
    hsv = np.asarray(Image.fromarray(crop).convert("HSV"))[detection.mask]
    idx = (hsv.astype(np.int64) * bins // 256)
    return (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]


def colour_histogram(frame: np.ndarray, detection: PersonDetection, bins: int = 8) -> np.ndarray:
    """(bins^3,) normalised hue-saturation-value histogram of the frame under the detection's mask."""
    flat = colour_bins(frame, detection, bins)
    if flat.size == 0:
        return np.full(bins ** 3, 1.0 / bins ** 3)
    hist = np.bincount(flat, minlength=bins ** 3).astype(np.float64)
    return hist / hist.sum()


def mask_outside_keypoints(detection: PersonDetection, grow: float = 0.15) -> float:
    """Share of the mask outside the box of the detection's visible keypoints grown by ``grow`` of
    its height on every side: a mask that took in a second person spreads beyond the keypoints of
    the one the detector found."""
    seen = detection.visibility > 0.5
    if seen.sum() < 4:
        return 0.0
    pts = detection.keypoints[seen]
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    g = grow * max(y1 - y0, x1 - x0)
    keep = paste_mask(np.ones((1, 1), bool), (x0 - g, y0 - g, x1 + g, y1 + g), detection.mask.shape,
                      origin=detection.region[:2],
                      scale=detection.mask.shape[0] / (detection.region[2] - detection.region[0]))
    total = detection.mask.sum()
    return float((detection.mask & ~keep).sum() / total) if total else 0.0


FOREIGN_BIN_SHARE = 1e-3
"""A colour bin that holds less than this share of the subject's pixels is foreign to the subject."""


def foreign_fraction(frame: np.ndarray, detection: PersonDetection, reference: np.ndarray) -> float:
    """Share of the detection's mask pixels whose colour is foreign to the subject (``reference``
    histogram): a mask that took in part of someone else has a patch of their colours, which the
    histogram distance alone dilutes."""
    flat = colour_bins(frame, detection, round(len(reference) ** (1 / 3)))
    return float((reference[flat] < FOREIGN_BIN_SHARE).mean()) if flat.size else 0.0


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance of two normalised histograms, in [0, 1]."""
    return float(math.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(p * q))))))


# ------------------------------------------------------------------------------------------ tracking


REIDENTIFY_STRICTNESS = 0.5
"""A person found anywhere after the track was lost must be this much nearer the subject's colours
than the limits of an ordinary frame."""
SIZE_SMOOTHING = 0.3
"""Each kept frame moves the subject's expected box size and mask area this fraction of the way to
its own."""


class SubjectTracker:
    """Follows one person from frame to frame (see the module docstring)."""

    def __init__(self, detector, cfg: TrackingConfig, first_frame: np.ndarray, subject: PersonDetection):
        self.detector, self.cfg = detector, cfg
        self.boxes: list[Box] = [subject.box]
        self.size = (subject.box[2] - subject.box[0], subject.box[3] - subject.box[1])
        self.area = mask_area(subject)
        self.last: PersonDetection = subject
        self.gap = 1
        self.histogram = colour_histogram(first_frame, subject)

    def predicted_box(self) -> Box:
        """The subject's usual box size (averaged over the kept frames: a walker's box breathes with
        the stride) around the last centre moved on by the last frame-to-frame motion (for at most
        two frames: a track lost for longer is looked for where it was last seen)."""
        last = self.boxes[-1]
        cx, cy = 0.5 * (last[0] + last[2]), 0.5 * (last[1] + last[3])
        if len(self.boxes) >= 2:
            prev = self.boxes[-2]
            steps = min(self.gap, 2)
            cx += steps * (cx - 0.5 * (prev[0] + prev[2]))
            cy += steps * (cy - 0.5 * (prev[1] + prev[3]))
        w, h = self.size
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    def _disagreement(self, frame: np.ndarray, det: PersonDetection,
                      predicted: Box | None) -> tuple[str | None, np.ndarray]:
        """Why a detection does not agree with the track (None: it does), and its histogram. Without
        ``predicted`` (re-identification after a loss) the box is not checked."""
        if predicted is not None:
            iou = box_iou(det.box, predicted)
            min_iou = self.cfg.min_box_iou / self.gap  # the longer the track was lost, the less it knows
            if iou < min_iou:
                return f"box overlap {iou:.2f} < {min_iou:.2f}", None
        growth = mask_area(det) / max(self.area, 1e-9)
        if growth > self.cfg.max_mask_growth:
            return f"mask {growth:.2f}x the subject's usual area (someone else in it?)", None
        if growth < 1.0 / self.cfg.max_mask_growth ** 2:
            return f"mask {growth:.2f}x the subject's usual area (the detector saw part of the subject)", None
        outside = mask_outside_keypoints(det)
        if outside > self.cfg.max_mask_outside_keypoints:
            return f"{outside:.0%} of the mask lies away from the person's keypoints (someone else in it?)", None
        seen = (det.visibility > 0.5) & (self.last.visibility > 0.5)
        if seen.sum() >= 4:
            height = self.last.box[3] - self.last.box[1]
            motion = float(np.median(np.linalg.norm(det.keypoints[seen] - self.last.keypoints[seen], axis=1)))
            if motion > self.cfg.max_keypoint_motion * height * self.gap:
                return f"keypoints moved {motion / height:.2f} box heights", None
        hist = colour_histogram(frame, det)
        distance = hellinger(hist, self.histogram)
        if distance > self.cfg.max_appearance_distance:
            return f"colours differ (distance {distance:.2f} > {self.cfg.max_appearance_distance})", hist
        foreign = foreign_fraction(frame, det, self.histogram)
        if foreign > self.cfg.max_foreign_colours:
            return f"{foreign:.0%} of the mask in colours the subject does not wear", hist
        return None, hist

    def _accept(self, det: PersonDetection, hist: np.ndarray, scale: float | None, how: str) -> TrackStep:
        self.boxes.append(det.box)
        self.boxes = self.boxes[-2:]
        a = SIZE_SMOOTHING
        self.size = ((1 - a) * self.size[0] + a * (det.box[2] - det.box[0]),
                     (1 - a) * self.size[1] + a * (det.box[3] - det.box[1]))
        self.area = (1 - a) * self.area + a * mask_area(det)
        self.last, self.gap = det, 1
        if hellinger(hist, self.histogram) < 2.0 / 3.0 * self.cfg.max_appearance_distance:
            a = self.cfg.appearance_update
            self.histogram = (1 - a) * self.histogram + a * hist
        return TrackStep(det, how, scale)

    def _reidentify(self, frame: np.ndarray) -> tuple[PersonDetection, np.ndarray] | None:
        """After a lost frame: the person anywhere in the frame who looks like the subject (every test
        but the box overlap), nearest the last box; None if nobody does."""
        best, best_hist, best_distance = None, None, math.inf
        last = self.boxes[-1]
        for det in proposals(self.detector, frame, self.cfg):
            why, hist = self._disagreement(frame, det, None)
            # with no box to go by, only a clear likeness counts: colours well within the limits and
            # the usual size (a window can hold parts of two people)
            if (why is not None
                    or hellinger(hist, self.histogram) > REIDENTIFY_STRICTNESS * self.cfg.max_appearance_distance
                    or (foreign_fraction(frame, det, self.histogram)
                        > REIDENTIFY_STRICTNESS * self.cfg.max_foreign_colours)
                    or not 0.7 <= mask_area(det) / max(self.area, 1e-9) <= self.cfg.max_mask_growth):
                continue
            distance = math.hypot(0.5 * (det.box[0] + det.box[2] - last[0] - last[2]),
                                  0.5 * (det.box[1] + det.box[3] - last[1] - last[3]))
            if distance < best_distance:
                best, best_hist, best_distance = det, hist, distance
        return None if best is None else (best, best_hist)

    def step(self, frame: np.ndarray) -> TrackStep:
        """Look for the subject in the next frame."""
        predicted = self.predicted_box()
        reasons = []
        for scale in self.cfg.search_scales:
            region = square_around(predicted, scale)
            det = detect_in_region(self.detector, frame, region, self.cfg.region_size)
            if det is None:
                reasons.append(f"x{scale:g}: nobody")
                continue
            why, hist = self._disagreement(frame, det, predicted)
            if why is None:
                return self._accept(det, hist, scale, "kept")
            reasons.append(f"x{scale:g}: {why}")
        if self.gap > 1:  # lost since the last frame too: look everywhere, by appearance
            found = self._reidentify(frame)
            if found is not None:
                return self._accept(found[0], found[1], None, "kept (found again by appearance)")
        self.gap += 1
        nobody = all(r.endswith("nobody") for r in reasons)
        status = ("lost: nobody found near the predicted box" if nobody
                  else "disagrees: " + "; ".join(r for r in reasons if not r.endswith("nobody")))
        return TrackStep(None, status)
