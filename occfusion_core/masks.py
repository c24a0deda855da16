"""Geometry of 2D masks: signed distances, oriented edges, the outline evidence that tells a
person's own outline from an occluder's edge, shifts, boxes and IoU, and a person mask from a
segmenter's probabilities.

Shared by stage 0's silhouette completion (:mod:`occfusion_core.priors.segment`) and the alignment
of a body estimate to a frame's visible evidence (:mod:`occfusion_core.body.align`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

    from .render.camera import Camera


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


def bounding_box(mask) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the true pixels of an (H, W) mask (numpy or torch);
    None if it has none."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    ys, xs = np.nonzero(np.asarray(mask))
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


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


def person_mask(probability: np.ndarray, threshold: float = 0.5, min_component_fraction: float = 0.05) -> np.ndarray:
    """(H, W) person probability -> (H, W) bool mask: above ``threshold``, without blobs smaller than
    ``min_component_fraction`` of the largest (8-connected)."""
    mask = np.asarray(probability) > threshold
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component_fraction * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return mask


def mask_box_heights(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T,) height in pixels of each mask's bounding box (0 for an empty mask)."""
    rows = masks.any(axis=2)
    heights = np.zeros(len(masks))
    for t, r in enumerate(rows):
        idx = np.flatnonzero(r)
        if idx.size:
            heights[t] = idx[-1] - idx[0] + 1
    return heights


def body_box_mask(vertices: "torch.Tensor", camera: "Camera", pad: float = 0.05) -> "torch.Tensor":
    """The projected 3D box of the posed body, grown by ``pad`` metres, filled (GauHuman's bound mask).

    Args:
        vertices: (V, 3) posed body vertices in world coordinates.
    Returns:
        (H, W) bool: pixels whose centre lies inside the convex hull of the 8 projected box corners.
    """
    import torch
    from scipy.spatial import ConvexHull

    lo, hi = vertices.min(0).values - pad, vertices.max(0).values + pad
    corners = torch.stack(torch.meshgrid(*[torch.stack([lo[i], hi[i]]) for i in range(3)], indexing="ij"), -1)
    uv, _ = camera.project(corners.reshape(8, 3))
    uv = uv.detach().cpu().double().numpy()
    hull = ConvexHull(uv)
    ys, xs = np.mgrid[0:camera.height, 0:camera.width]
    pts = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    # inside iff on the inner side of every hull facet: n . p + d <= 0
    inside = (pts @ hull.equations[:, :2].T + hull.equations[:, 2]).max(1) <= 1e-9
    return torch.from_numpy(inside.reshape(camera.height, camera.width))
