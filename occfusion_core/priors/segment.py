"""Person segmentation for stage 0: SAM-HQ prompted with body joints, and the weight-free
silhouette completion.

SAM-HQ (``segment_anything_hq``) is imported lazily and only here: it needs torchvision and timm,
which cannot be installed on every machine, and its weights (``sam_hq_vit_h.pth``) come from the
user. Where either is missing, :class:`SamHQSegmenter` raises an error that says so and names the
weight-free alternative.

:func:`complete_with_silhouette` needs no weights. It completes a visible-person mask with the body
model's silhouette fitted to the visible outline:

1. Shift: the body silhouette is translated (within ``max_shift``, and only when enough of the
   outline supports it) so that the visible mask's outline, edge pixel by edge pixel and with the
   same outward direction, lies on the body's outline, the body being grown or shrunk during the
   search so that uniformly wider clothing does not pull it sideways (oriented chamfer matching by
   FFT correlation). A translation absorbs most of the error of a fitted body's position.
2. Local margins: on the visible outline, where stepping out of the visible mask also steps out of
   the body (so the edge is the person's outline, not an occluder's edge crossing the body), the
   signed distance to the shifted body silhouette measures how much wider (> 0) or narrower (< 0)
   the person is than the body there: loose clothing, hair, or a fatter body model. A margin more
   than a pixel off the median of its outline neighbourhood is replaced by that median.
3. The margin field: each pixel takes the margin of its nearest outline evidence, faded into the
   frame's median margin with distance (``margin_radius``), and the body region is the level set
   {signed distance <= margin}. The complete mask is the visible mask united with that region.

What it cannot know: where a hidden limb really is when the body fit is off there, and whether a
pixel outside the visible mask is background or occluder; on an unoccluded frame with a poor body
fit it therefore adds the misplaced limbs (measured in the stage-0 report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..masks import bounding_box, mask_iou, oriented_edges, outline_evidence, shift_mask, signed_distance
from .models import ModelWeightsMissing

__all__ = ["SamHQSegmenter", "SegmenterUnavailable", "SilhouetteCompletion", "best_shift", "complete_with_silhouette",
           "mask_iou", "oriented_edges", "outline_evidence", "shift_mask", "signed_distance"]

SAM_HQ_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_tiny")


class SegmenterUnavailable(RuntimeError):
    """The segmenter's package cannot be imported on this machine."""


class SamHQSegmenter:
    """SAM-HQ point-prompted segmentation (released stage0_oc.py: ``SamPredictor``, all points
    positive, no box, one mask, ``hq_token_only=False``).

    Args:
        checkpoint: SAM-HQ weights file.
        model_type: registry key matching the checkpoint.
        device: torch device name.

    Raises:
        SegmenterUnavailable: ``segment_anything_hq`` (or torchvision/timm, which it imports) is missing.
        ModelWeightsMissing: no checkpoint given, or the file does not exist.
    """

    def __init__(self, checkpoint: str | Path | None, model_type: str = "vit_h", device: str = "cpu"):
        fallback = "stage0 `segmenter: silhouette` (or `method: silhouette`)"
        try:
            from segment_anything_hq import SamPredictor, sam_model_registry
        except ImportError as err:  # ModuleNotFoundError for the package or for torchvision/timm
            raise SegmenterUnavailable(
                f"SAM-HQ cannot be imported here ({type(err).__name__}: {err}). It needs the packages "
                "segment-anything-hq, torchvision and timm; install them where torchvision works (a CUDA "
                f"machine), or set {fallback}.") from err
        if model_type not in SAM_HQ_MODEL_TYPES:
            raise ValueError(f"sam_model_type {model_type!r} is not one of {', '.join(SAM_HQ_MODEL_TYPES)}")
        if checkpoint is None or not Path(checkpoint).is_file():
            where = "no path given (`sam_checkpoint` is null)" if checkpoint is None else \
                f"'{Path(checkpoint).resolve()}' does not exist"
            raise ModelWeightsMissing(
                f"SAM-HQ {model_type} weights not found: {where}. Download sam_hq_{model_type}.pth from the "
                f"SAM-HQ project (github.com/SysCV/sam-hq) and set `sam_checkpoint` to it, or set {fallback}.")
        sam = sam_model_registry[model_type](checkpoint=str(checkpoint))
        sam.to(device)
        sam.eval()
        self.predictor = SamPredictor(sam)
        self.model_type = model_type

    def segment(self, image: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
        """Mask of the object under the positive points.

        Args:
            image: (h, w, 3) uint8 RGB.
            points_xy: (N, 2) float pixel coordinates (x = column, y = row) of positive prompts.

        Returns:
            (h, w) bool mask.
        """
        self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        points = np.asarray(points_xy, dtype=np.float32).reshape(-1, 2)
        masks, _, _ = self.predictor.predict(point_coords=points, point_labels=np.ones(len(points), dtype=np.int64),
                                             box=None, multimask_output=False, hq_token_only=False)
        return np.asarray(masks[0]).astype(bool)


# ---------------------------------------------------------------------------------------------
# Weight-free: visible mask + body silhouette fitted to the visible outline
# ---------------------------------------------------------------------------------------------

@dataclass
class SilhouetteCompletion:
    """Result of :func:`complete_with_silhouette`.

    Attributes:
        mask: (H, W) bool complete person mask.
        shift: (dy, dx) pixels the body silhouette was moved by.
        median_margin: the frame's median outline margin in pixels (> 0: person wider than the body).
        outline_evidence: number of visible-outline pixels that measured a margin.
    """

    mask: np.ndarray
    shift: tuple[int, int]
    median_margin: float
    outline_evidence: int


def _correlate_shifts(source: np.ndarray, score: np.ndarray, max_shift: int) -> np.ndarray:
    """(2m+1, 2m+1) array g[dy+m, dx+m] = sum_p source[p] score[p - (dy, dx)], zero outside."""
    from scipy.signal import fftconvolve

    h, w = score.shape
    m = max_shift
    conv = fftconvolve(source.astype(np.float64), score[::-1, ::-1].astype(np.float64), mode="full")
    return conv[h - 1 - m:h + m, w - 1 - m:w + m]  # g(s) = conv[N - 1 + s]


def best_shift(visible: np.ndarray, body: np.ndarray, max_shift: int, max_margin: int = 0,
               min_gain: float = 0.1, min_support: float = 0.05) -> tuple[int, int]:
    """The (dy, dx), |dy|, |dx| <= max_shift, that lays most of the visible outline onto the body's
    outline with the same orientation (oriented chamfer matching, one pixel of tolerance).

    The body is also grown or shrunk by up to ``max_margin`` pixels during the search, so that a
    person uniformly wider than the body (clothing) does not pull the body towards one side. Edges
    of the visible mask along an occluder rarely coincide with a body outline of the same
    orientation, so they hardly vote. The best shift must beat no shift by ``min_gain`` (fraction of
    the matched outline) and by ``min_support`` of the body's outline length to be taken: the fitted
    body's position is trusted unless enough of the outline disagrees (a visible foot alone does not
    move the whole body).
    """
    x0a, y0a, x1a, y1a = bounding_box(visible | body)
    H, W = body.shape
    pad = max_shift + max_margin + 2
    y0, x0, y1, x1 = max(0, y0a - pad), max(0, x0a - pad), min(H, y1a + pad), min(W, x1a + pad)
    vis, sd = visible[y0:y1, x0:x1], signed_distance(body[y0:y1, x0:x1])
    vis_edges = oriented_edges(vis)
    m = max_shift
    dys, dxs = np.mgrid[-m:m + 1, -m:m + 1]
    best, best_votes, unshifted = (0, 0), -np.inf, -np.inf
    for grow in range(-max_margin, max_margin + 1):
        grown = sd <= (grow if grow > 0 else grow - 1)  # sd is >= 1 outside, <= -1 inside
        votes = np.zeros((2 * m + 1,) * 2)
        for vis_edge, body_edge in zip(vis_edges, oriented_edges(grown)):
            if vis_edge.any() and body_edge.any():
                tolerant = ndimage.gaussian_filter(body_edge.astype(np.float64), 0.7, truncate=2.0)
                votes += _correlate_shifts(vis_edge, np.minimum(1.0, tolerant * 2.5), m)
        votes -= 1e-6 * (dys ** 2 + dxs ** 2 + grow ** 2)  # ties go to the smallest change
        k = np.unravel_index(int(np.argmax(votes)), votes.shape)
        if votes[k] > best_votes:
            best, best_votes = (int(dys[k]), int(dxs[k])), float(votes[k])
        unshifted = max(unshifted, float(votes[m, m]))
    outline_length = sum(int(edge.sum()) for edge in oriented_edges(body))
    if best_votes <= max(unshifted * (1.0 + min_gain), unshifted + min_support * outline_length):
        return 0, 0
    return best


def _local_median(points: np.ndarray, values: np.ndarray, radius: float) -> np.ndarray:
    """(N,) median of ``values`` over the points within ``radius`` of each of the (N, 2) ``points``."""
    from scipy.spatial import cKDTree

    neighbours = cKDTree(points).query_ball_point(points, radius)
    return np.array([np.median(values[idx]) for idx in neighbours])


def complete_with_silhouette(visible: np.ndarray, body: np.ndarray, max_shift: float = 0.1, band: float = 0.04,
                             margin_radius: float = 0.15) -> SilhouetteCompletion:
    """Complete a visible-person mask with the body silhouette fitted to the visible outline.

    Args:
        visible: (H, W) bool visible-person mask.
        body: (H, W) bool silhouette of the posed body model in this camera.
        max_shift: largest shift of the body silhouette, fraction of the body box diagonal.
        band: largest |margin| between person and body outline, fraction of the box diagonal.
        margin_radius: fade distance of outline margins into the median margin, fraction of the diagonal.

    Returns:
        :class:`SilhouetteCompletion` (mask = visible | fitted body region).
    """
    visible = np.asarray(visible, dtype=bool)
    body = np.asarray(body, dtype=bool)
    if visible.shape != body.shape:
        raise ValueError(f"visible {visible.shape} and body {body.shape} masks differ in size")
    if not body.any():
        return SilhouetteCompletion(visible.copy(), (0, 0), 0.0, 0)
    x0, y0, x1, y1 = bounding_box(body)
    diagonal = math.hypot(y1 - y0, x1 - x0)
    band_px = max(2.0, band * diagonal)
    shift = (0, 0)
    if visible.any() and max_shift > 0:
        shift = best_shift(visible, body, max(1, round(max_shift * diagonal)), int(band_px))
    fitted = shift_mask(body, *shift)
    sd = signed_distance(fitted)

    evidence = outline_evidence(visible, sd, band_px)
    margins = sd[evidence]
    if margins.size:
        median = float(np.median(margins))
        # a margin more than a pixel off the median of its outline neighbourhood is replaced by that
        # median: a few pixels of an occluder's edge that passed the test cannot carve alone
        local_median = _local_median(np.argwhere(evidence), margins, max(2.0, 0.03 * diagonal))
        local = np.zeros_like(sd)
        local[evidence] = np.where(np.abs(margins - local_median) > 1.0, local_median, margins)
        distance, (iy, ix) = ndimage.distance_transform_edt(~evidence, return_indices=True)
        fade = np.exp(-distance / max(1.0, margin_radius * diagonal))
        margin = fade * local[iy, ix] + (1.0 - fade) * median
    else:
        median = -1.0
        margin = np.full_like(sd, -1.0)  # no outline seen: the body silhouette itself (sd <= -1)
    region = sd <= margin
    return SilhouetteCompletion(visible | region, shift, median, int(margins.size))
