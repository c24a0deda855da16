"""Align a body estimate to what each frame shows: the visible person mask, and 2D keypoints where
the source has them.

Stage 0 draws the hidden part of the person from the body, so a body that sits beside the person
draws the hidden part in the wrong place. Before drawing, the estimate is corrected frame by frame
(all frames at once, with :class:`~occfusion_core.body.refine.BodyRefinement`'s corrections,
prior and temporal smoothness) against three kinds of evidence, each in units of the frame's body
box height so that the weights do not depend on the resolution:

- **cover**: every pixel of the visible mask, eroded by the clothing allowance, should have a body
  vertex nearby (a chamfer term, robust so a stray blob cannot drag the body);
- **outside**: no body vertex should land on a pixel known to be background. The mask cannot say
  what hides the person, so only pixels just outside the person's *own* outline count: outside the
  visible mask, whose nearest visible-edge pixel is outline evidence
  (:func:`occfusion_core.masks.outline_evidence`: stepping out of the mask there also steps out of
  the body), within ``outside_reach`` of it. Pixels beyond an occluder's edge never count, so a limb
  hidden behind the occluder is left where the estimate and its neighbours put it;
- **keypoints** (optional): robust (Geman-McClure) reprojection of the detector's landmarks, weighted
  by their visibility, as in :mod:`occfusion_core.body.fit`.

The evidence is measured against the estimate's silhouette and measured again halfway, against the
aligned one.

A run of frames the detector missed (a person behind an occluder for a second or more) starts from
an estimate interpolated across the run, which can be far from the person. Where the caller says
which frames had detections, :func:`cross_gaps` first carries the aligned body across each run one
frame at a time, from both ends, and keeps for each frame the body that explains its mask best.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from ..masks import oriented_edges, outline_evidence, signed_distance
from .configs import BodyRefineConfig
from .refine import BodyRefinement, rotation_error_deg

if TYPE_CHECKING:
    from ..render.camera import Camera
    from .configs import BodyAlignConfig
    from .model import BodyModel

log = logging.getLogger(__name__)



@dataclass
class AlignResult:
    """Aligned bodies of T frames.

    Attributes:
        poses: (T, 72), betas: (T, 10), trans: (T, 3) float64 aligned parameters.
        summary: JSON-ready description (mean corrections, final terms, seconds).
    """

    poses: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    summary: dict


def _silhouettes(body: "BodyModel", poses, betas, trans, cameras) -> tuple[np.ndarray, np.ndarray]:
    """Mesh silhouettes (T, H, W) bool of the posed bodies, and their box heights (T,) in pixels."""
    from ..render.mesh import rasterize_mesh

    with torch.no_grad():
        vertices = body(poses, betas, trans).vertices
    sils = np.stack([rasterize_mesh(vertices[t], body.faces, cam).mask.cpu().numpy()
                     for t, cam in enumerate(cameras)])
    heights = np.array([np.ptp(np.nonzero(s.any(1))[0]) + 1 if s.any() else 1 for s in sils], dtype=np.float64)
    return sils, heights


def background_distance(visible: np.ndarray, body_silhouette: np.ndarray, reach_px: float,
                        band_px: float) -> np.ndarray:
    """(H, W) float: for pixels known to be background, their distance to the visible mask; 0 elsewhere.

    Known background: outside ``visible``, within ``reach_px`` of it, and nearest to a visible-edge
    pixel that is outline evidence against ``body_silhouette`` (so not beyond an occluder's edge).
    """
    visible = np.asarray(visible, dtype=bool)
    edges = np.zeros_like(visible)
    for edge in oriented_edges(visible):
        edges |= edge
    if not edges.any():
        return np.zeros(visible.shape)
    evidence = outline_evidence(visible, signed_distance(body_silhouette), band_px)
    distance, (iy, ix) = ndimage.distance_transform_edt(~edges, return_indices=True)
    known = ~visible & evidence[iy, ix] & (distance <= reach_px)
    return np.where(known, distance, 0.0)


def _sample(field: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of fields (T, H, W) at pixel positions uv (T, N, 2) (continuous coordinates,
    pixel (i, j) covering [j, j+1) x [i, i+1)); outside the image the border value."""
    T, H, W = field.shape
    gx = (uv[..., 0] / W) * 2.0 - 1.0
    gy = (uv[..., 1] / H) * 2.0 - 1.0
    grid = torch.stack([gx, gy], dim=-1)[:, :, None]  # (T, N, 1, 2)
    out = torch.nn.functional.grid_sample(field[:, None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[:, 0, :, 0]


def _nearest_points(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(T, S, 2) queries, (T, N, 2) points -> (T, S) index of each query's nearest point in its frame.

    A k-d tree per frame: the brute force (T x S x N distances, 51M for the default subject) took
    ~0.2 s per alignment round on one CPU core, the trees ~0.02 s.
    """
    q, p = queries.detach().cpu().double().numpy(), points.detach().cpu().double().numpy()
    nearest = np.stack([cKDTree(p[t]).query(q[t])[1] for t in range(q.shape[0])])
    return torch.as_tensor(nearest, dtype=torch.long, device=queries.device)


def _geman_mcclure(sq: torch.Tensor, sigma: float) -> torch.Tensor:
    s2 = sigma * sigma
    return s2 * sq / (s2 + sq)


def _cover_samples(visible: np.ndarray, erosion_px: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) pixel centres (x, y) drawn from the visible mask eroded by ``erosion_px`` (the mask
    itself where erosion empties it); repeats allowed when the mask is small."""
    eroded = ndimage.distance_transform_edt(visible) > erosion_px
    pool = np.argwhere(eroded if eroded.any() else visible)
    if len(pool) == 0:
        return np.zeros((0, 2))
    pick = rng.choice(len(pool), size=count, replace=len(pool) < count)
    return pool[pick][:, ::-1] + 0.5


def detection_runs(detected: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every maximal run of False in a (T,) bool array (of frames without a detection)."""
    runs, start = [], None
    for t, seen in enumerate(np.asarray(detected, dtype=bool)):
        if not seen and start is None:
            start = t
        elif seen and start is not None:
            runs.append((start, t))
            start = None
    if start is not None:
        runs.append((start, len(detected)))
    return runs


def anchor_frames(detected: np.ndarray, min_run: int) -> np.ndarray:
    """(T,) bool: the detected frames in runs of at least ``min_run``. A detection alone inside a long
    occlusion is often a partial, wrong one, so it does not anchor a crossing (its keypoints still
    count when the whole clip is aligned)."""
    anchored = np.asarray(detected, dtype=bool).copy()
    for start, stop in detection_runs(~anchored):
        if stop - start < min_run:
            anchored[start:stop] = False
    return anchored


def cross_gaps(body: "BodyModel", poses: np.ndarray, betas: np.ndarray, trans: np.ndarray,
               cameras: list["Camera"], visible: np.ndarray, detected: np.ndarray, cfg: "BodyAlignConfig",
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Carry the body across runs of frames without a detection, one frame at a time.

    Each run is entered from its detected neighbour on either side (one side at the ends of the
    clip): frame t starts from the body just aligned at t -/+ 1 and is aligned alone to its visible
    mask for ``cfg.gap_rounds`` rounds. Of these passes and the frame's own estimate aligned alone,
    each frame keeps the body that explains its mask best (lowest cover + outside terms).

    Args:
        poses (T, 72), betas (T, 10), trans (T, 3): estimates (detected frames are kept as they are).
        visible: (T, H, W) bool visible masks; detected: (T,) bool, frames with a detection.

    Returns:
        poses, trans (float64, changed only inside the runs) and a summary.
    """
    poses, trans = np.array(poses, dtype=np.float64), np.array(trans, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    detected = anchor_frames(detected, cfg.gap_anchor_frames)
    runs = detection_runs(detected)
    if cfg.gap_rounds <= 0 or detected.all() or not detected.any():
        return poses, trans, {"runs": len(runs), "frames": 0}
    step_cfg = replace(cfg, rounds=cfg.gap_rounds, gap_rounds=0)

    def align_one(t, pose, tr):
        r = align_to_evidence(body, pose[None], betas[t][None], tr[None], [cameras[t]], visible[t][None],
                              step_cfg, seed=seed + t)
        terms = r.summary["final_terms"]
        return r.poses[0], r.trans[0], terms.get("cover", 0.0) + terms.get("outside", 0.0)

    def walk(frames, pose, tr):
        out = {}
        for t in frames:
            out[t] = align_one(t, pose, tr)
            pose, tr = out[t][:2]
        return out

    crossed = 0
    for start, stop in runs:
        frames = list(range(start, stop))
        passes = [{t: align_one(t, poses[t], trans[t]) for t in frames}]  # the frame's own estimate
        if start > 0:
            passes.append(walk(frames, poses[start - 1], trans[start - 1]))
        if stop < len(detected):
            passes.append(walk(frames[::-1], poses[stop], trans[stop]))
        for t in frames:
            pose, tr, _ = min((p[t] for p in passes), key=lambda item: item[2])
            poses[t], trans[t] = pose, tr
        crossed += len(frames)
    return poses, trans, {"runs": len(runs), "frames": crossed, "rounds_per_frame": cfg.gap_rounds}


def align_to_evidence(body: "BodyModel", poses: np.ndarray, betas: np.ndarray, trans: np.ndarray,
                      cameras: list["Camera"], visible: np.ndarray, cfg: "BodyAlignConfig",
                      keypoints: np.ndarray | None = None, keypoint_visibility: np.ndarray | None = None,
                      seed: int = 0, detected: np.ndarray | None = None) -> AlignResult:
    """Correct T frames' body estimates to their visible masks (and keypoints).

    Args:
        body: the body model.
        poses (T, 72), betas (T, 10), trans (T, 3): the estimates.
        cameras: the T frames' cameras.
        visible: (T, H, W) bool visible-person masks.
        cfg: alignment settings (:class:`~occfusion_core.priors.configs.BodyAlignConfig`).
        keypoints: (T, 33, 2) MediaPipe landmark pixels, or None; keypoint_visibility: (T, 33).
        detected: (T,) bool frames with a detection, or None; runs of other frames are first
            crossed with :func:`cross_gaps`, and the whole clip is then aligned from there.

    Returns:
        :class:`AlignResult`.
    """
    from .landmarks import LANDMARK_FROM_JOINTS45, LANDMARK_WEIGHTS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small tensors: extra threads only add overhead
    try:
        start = time.perf_counter()
        T = len(cameras)
        f32 = dict(dtype=torch.float32)
        gaps, input_poses, input_trans = None, np.asarray(poses), np.asarray(trans)
        if detected is not None:
            visible = np.asarray(visible, dtype=bool)
            poses, trans, gaps = cross_gaps(body, poses, betas, trans, cameras, visible, detected, cfg, seed)
        est_poses, est_betas, est_trans = (torch.as_tensor(np.asarray(x), **f32) for x in (poses, betas, trans))
        refinement = BodyRefinement(est_poses, est_trans, [f"{t:05d}" for t in range(T)], est_betas)
        reg_cfg = BodyRefineConfig(prior_pose=cfg.prior_pose, prior_trans=cfg.prior_trans, smooth_pose=cfg.smooth_pose,
                                   smooth_trans=cfg.smooth_trans, refine_shape=cfg.refine_shape,
                                   prior_shape=cfg.prior_shape)
        visible = np.asarray(visible, dtype=bool)
        rng = np.random.default_rng(seed)

        def evidence(p, b, tr):
            sils, heights = _silhouettes(body, p, b, tr, cameras)
            fields = np.stack([background_distance(visible[t], sils[t], cfg.outside_reach * heights[t],
                                                   max(2.0, cfg.outline_band * heights[t])) for t in range(T)])
            return torch.as_tensor(fields, **f32), torch.as_tensor(heights, **f32)

        outside_field, heights = evidence(est_poses, est_betas, est_trans)
        cover = torch.as_tensor(np.stack([_cover_samples(visible[t], cfg.cover_erosion * float(heights[t]),
                                                         cfg.cover_samples, rng) for t in range(T)]), **f32)
        K = torch.stack([torch.as_tensor(c.K, **f32) for c in cameras])
        R = torch.stack([torch.as_tensor(c.w2c[:3, :3], **f32) for c in cameras])
        t_cam = torch.stack([torch.as_tensor(c.w2c[:3, 3], **f32) for c in cameras])
        use_keypoints = keypoints is not None and cfg.weight_keypoints > 0
        if use_keypoints:
            kp = torch.as_tensor(np.asarray(keypoints), **f32)
            vis = np.asarray(keypoint_visibility, np.float64)
            kp_w = torch.as_tensor(np.where(vis >= cfg.keypoint_min_visibility, vis, 0.0) * LANDMARK_WEIGHTS, **f32)
            landmark_matrix = torch.as_tensor(LANDMARK_FROM_JOINTS45, **f32)
        stride = max(1, body.num_vertices // cfg.max_vertices)

        def project(points):  # (T, N, 3) world -> (T, N, 2) pixels
            cam = torch.einsum("tij,tnj->tni", R, points) + t_cam[:, None]
            z = cam[..., 2:].clamp(min=1e-3)
            return torch.einsum("tij,tnj->tni", K[:, :2, :2], cam[..., :2] / z) + K[:, None, :2, 2]

        nearest = None

        def terms(step: int) -> dict[str, torch.Tensor]:
            nonlocal nearest
            p, b, tr = refinement.all_frames()
            out = body(p, b, tr)
            uv = project(out.vertices[:, ::stride])  # (T, N, 2)
            h = heights[:, None]
            result = {}
            outside = _sample(outside_field, uv) / h
            result["outside"] = cfg.weight_outside * outside.square().mean()
            if nearest is None or step == 0:
                nearest = _nearest_points(cover, uv.detach())  # the assignment only, no gradient
            matched = torch.gather(uv, 1, nearest[..., None].expand(-1, -1, 2))
            d2 = (cover - matched).square().sum(-1) / h.square()  # (T, S)
            result["cover"] = cfg.weight_cover * _geman_mcclure(d2, cfg.robust_sigma).mean()
            if use_keypoints:
                landmarks = project(landmark_matrix @ out.joints45)
                sq = ((landmarks - kp) ** 2).sum(-1) / h.square()
                robust = _geman_mcclure(sq, cfg.robust_sigma)
                result["keypoints"] = cfg.weight_keypoints * (kp_w * robust).sum() / kp_w.sum().clamp(min=1e-9)
            for name, value in refinement.regularizer(reg_cfg).items():
                result[name] = value
            return result

        # A deterministic least-squares problem with priors: L-BFGS weighs every direction by its
        # curvature, where Adam's per-coordinate normalisation would random-walk the directions the
        # evidence barely sees. The nearest-vertex assignments and the evidence are refreshed between
        # rounds (they are piecewise constant, so each round's objective is smooth).
        params = ([refinement.delta_pose, refinement.delta_trans]
                  + ([refinement.delta_betas] if cfg.refine_shape else []))
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=cfg.iterations_per_round, history_size=20,
                                      line_search_fn="strong_wolfe")
        final = {}
        for round_index in range(cfg.rounds):
            if round_index > 0:
                with torch.no_grad():
                    outside_field, _ = evidence(*refinement.all_frames())
            nearest = None
            assign = True

            def closure():
                nonlocal assign
                optimizer.zero_grad(set_to_none=True)
                current = terms(0 if assign else 1)
                assign = False
                loss = sum(current.values())
                loss.backward()
                final.update({k: round(float(v.detach()), 6) for k, v in current.items()})
                return loss

            optimizer.step(closure)
        aligned_poses, aligned_betas, aligned_trans = refinement.refined_numpy()
        summary = {
            "rounds": cfg.rounds, "keypoints": bool(use_keypoints), "final_terms": final,
            "mean_pose_change_deg": round(float(rotation_error_deg(input_poses, aligned_poses).mean()), 3),
            "mean_translation_change_cm": round(float(100 * np.linalg.norm(aligned_trans - input_trans,
                                                                             axis=-1).mean()), 3),
            "shape_change": [round(float(v), 4) for v in refinement.delta_betas.detach()],
            **({"gaps_crossed": gaps} if gaps is not None else {}),
            "seconds": round(time.perf_counter() - start, 2),
        }
        log.info("body aligned to the visible evidence: %s", summary)
        return AlignResult(aligned_poses, aligned_betas, aligned_trans, summary)
    finally:
        torch.set_num_threads(threads)
