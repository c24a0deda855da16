"""Geometry of 2D masks: signed distances, oriented edges, the outline evidence that tells a
person's own outline from an occluder's edge, shifts, boxes and IoU.

Shared by stage 0's silhouette completion (:mod:`occfusion_core.priors.segment`) and the alignment
of a body estimate to a frame's visible evidence (:mod:`occfusion_core.body.align`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) float: distance to the nearest pixel of the other kind, negative inside ``mask``
    (a pixel on the inner edge is -1, one just outside +1)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask) if not mask.all() else np.full(mask.shape, np.inf)
    return np.where(mask, -inside, outside)


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(mask)
    H, W = mask.shape
    src = mask[max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def bounding_box_yx(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive, of the true pixels of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""The four outward directions (dy, dx) of an edge pixel: up, down, left, right."""


def oriented_edges(mask: np.ndarray) -> list[np.ndarray]:
    """For each direction of :data:`STEPS`, the (H, W) bool pixels of ``mask`` whose neighbour
    that way is outside it. The image border is not an edge (a person may continue beyond it)."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1, mode="edge")
    H, W = mask.shape
    return [mask & ~padded[1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy, dx in STEPS]


def outline_evidence(visible: np.ndarray, sd: np.ndarray, band: float) -> np.ndarray:
    """(H, W) bool edge pixels of ``visible`` that lie on the person's own outline.

    A step from edge pixel p to its outside neighbour q must climb the body's signed distance
    ``sd`` by most of a pixel (q lies further out of the body, so the edge runs along the body's
    outline, not across it as an occluder's edge does), and |sd(p)| <= ``band``.
    """
    evidence = np.zeros_like(visible)
    padded = np.pad(sd, 1, mode="edge")
    H, W = sd.shape
    for (dy, dx), edge in zip(STEPS, oriented_edges(visible)):
        climb = padded[1 + dy:1 + dy + H, 1 + dx:1 + dx + W] - sd
        evidence |= edge & (climb > 0.6)
    return evidence & (np.abs(sd) <= band)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
