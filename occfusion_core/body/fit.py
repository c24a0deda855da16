"""Fit the body model to a monocular video's keypoints, in the spirit of SMPLify.

Camera convention: the camera sits at the world origin and looks down world -z, with world y up and
x right (``w2c = diag(1, -1, -1, 1)``, :data:`CAMERA_W2C`). A person standing upright in front of a
level camera therefore stands upright in the world, along +y, facing the camera with zero global
orientation (SMPL's body faces +z) -- so a later orbit about the world y axis circles the person.
The camera's tilt cannot be told from one view: it is level unless the user gives its pitch
(:func:`camera_w2c`), e.g. a phone looking down at a person.

Unknowns: per frame the global orientation and body pose (T, 72) and the translation (T, 3), and one
shape (10,) shared by all frames. Objective:

- 2D: robust (Geman-McClure) reprojection error of the body's landmarks (MediaPipe's 33, mapped onto
  the body by :data:`~occfusion_core.data.keypoints.LANDMARK_FROM_JOINTS45`), in units of the
  person's box height, weighted by detector visibility;
- 3D: MediaPipe's metric world landmarks as a prior on the body's bone directions (limbs, feet,
  shoulder/hip/ear lines, spine, head). MediaPipe sees the person in a crop, i.e. along the ray
  through the hips, so its axes are the camera's turned onto that ray (:func:`ray_rotation`), up to
  one small rotation for the whole clip (fitted, with a quadratic prior; about 3 degrees on real
  clips). Directions rather than root-relative positions, because
  MediaPipe's hips and shoulders are defined differently from SMPL's joints and its bone lengths are
  its own;
- pose prior: a quadratic pull of every joint angle towards a relaxed standing pose
  (:data:`RELAXED_BODY_POSE`: arms down, elbows and knees slightly bent; stiffer for the joints no
  keypoint sees: spine, collars, neck, hands, toes) plus soft per-joint angle limits (no knee or elbow
  hyper-extension, bounded spine, neck and wrist angles) -- no learned prior (VPoser) is available;
- shape prior ||betas||^2; temporal smoothness of joint rotations and of the translation.

Optimised with Adam on all frames at once, in three stages: global orientation + translation on the
torso, then + body pose, then + shape. Only the body's joints are evaluated (not the mesh), which is
what makes a 100-frame fit take seconds on a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rodrigues

from .configs import FitConfig
from .kinematics import rest_joint_basis, rigid_transforms
from .landmarks import BONE_LANDMARKS, BONES, LANDMARK_FROM_JOINTS45, LANDMARK_WEIGHTS, TORSO_LANDMARKS
from .model import BodyModel

CAMERA_W2C = np.diag([1.0, -1.0, -1.0, 1.0])
"""(4, 4) world-to-camera of the fitted video: camera at the origin, world y up, looking down -z."""



def camera_w2c(pitch_deg: float = 0.0) -> np.ndarray:
    """(4, 4) world-to-camera of a camera at the world origin, facing -z, pitched down by
    ``pitch_deg`` (negative: looking up); world y stays up. 0 gives :data:`CAMERA_W2C`."""
    from ..render.camera import look_at

    a = math.radians(pitch_deg)
    w2c = look_at((0.0, 0.0, 0.0), (0.0, -math.sin(a), -math.cos(a)), up=(0.0, 1.0, 0.0)).double().numpy()
    return np.where(np.abs(w2c) < 1e-12, 0.0, w2c)


_HIP_LANDMARKS = (23, 24)
MIN_KEYPOINTS_PER_FRAME = 4
"""A frame with fewer usable keypoints than this is placed from its neighbours at the start of the fit."""
MIN_TORSO_KEYPOINTS = 2
"""...and so is one with fewer usable torso landmarks (shoulders, hips) than this: a hand and a foot do
not fix where the trunk is or how it turns (the fit places the trunk on these landmarks alone), and a
detection on an occluded frame that sees no trunk is often a wrong one (both hands put on one spot)."""


def frames_seen(usable: np.ndarray) -> np.ndarray:
    """(T,) bool: frames whose (T, 33) landmark weights (> 0: usable) fix the body, as
    :data:`MIN_KEYPOINTS_PER_FRAME` and :data:`MIN_TORSO_KEYPOINTS` say; the others are placed from
    their neighbours."""
    usable = np.asarray(usable) > 0
    return (usable.sum(axis=1) >= MIN_KEYPOINTS_PER_FRAME) & (
        usable[:, list(TORSO_LANDMARKS)].sum(axis=1) >= MIN_TORSO_KEYPOINTS)

RELAXED_BODY_POSE = np.zeros(72)
"""(72,) pose the fit starts from, and the mean of its pose prior: arms relaxed at the sides (about
20 degrees out from the body), elbows and knees slightly bent. A limb no keypoint sees (behind an
occluder, or dropped by the detector) keeps this pose: with SMPL's T-pose there, hidden arms stood
straight out sideways (on an occluded real clip, across the wall in most frames). The bends matter
too: from a straight limb, the twist that turns a bend towards a keypoint has no gradient (a forearm
raised above a horizontal upper arm would stay stuck straight)."""
RELAXED_BODY_POSE[[50, 53]] = (-1.2, 1.2)  # left / right shoulder, about z: arms down from the T-pose
RELAXED_BODY_POSE[[55, 58]] = (-0.35, 0.35)  # left / right elbow flexion (about y)
RELAXED_BODY_POSE[[12, 15]] = 0.15  # knee flexion (about x)
REFERENCE_FRAME_INTERVAL_S = 1.0 / 30.0
"""Frame interval the smoothness weights of :class:`FitConfig` are meant for."""

# Soft limits of each joint's local axis-angle components (x, y, z), radians. SMPL's rest pose is a
# T-pose (arms along +-x, palms down); knee flexion is +x, left/right elbow flexion is -y/+y, a
# forward bend of the spine is +x. Joint 0 (global orientation) is free.
_INF = math.inf
_LIMITS = {
    1: ((-2.4, -0.9, -0.6), (0.7, 0.9, 1.4)),      # left hip
    2: ((-2.4, -0.9, -1.4), (0.7, 0.9, 0.6)),      # right hip
    3: ((-0.5, -0.5, -0.4), (0.9, 0.5, 0.4)),      # spine1
    4: ((-0.05, -0.25, -0.25), (2.6, 0.25, 0.25)),  # left knee
    5: ((-0.05, -0.25, -0.25), (2.6, 0.25, 0.25)),  # right knee
    6: ((-0.4, -0.4, -0.3), (0.6, 0.4, 0.3)),      # spine2
    7: ((-0.8, -0.6, -0.5), (0.8, 0.6, 0.5)),      # left ankle
    8: ((-0.8, -0.6, -0.5), (0.8, 0.6, 0.5)),      # right ankle
    9: ((-0.4, -0.4, -0.3), (0.6, 0.4, 0.3)),      # spine3
    10: ((-0.4, -0.4, -0.4), (0.4, 0.4, 0.4)),     # left foot (toes)
    11: ((-0.4, -0.4, -0.4), (0.4, 0.4, 0.4)),     # right foot
    12: ((-0.6, -0.8, -0.5), (0.8, 0.8, 0.5)),     # neck
    13: ((-0.4, -0.4, -0.4), (0.4, 0.4, 0.4)),     # left collar
    14: ((-0.4, -0.4, -0.4), (0.4, 0.4, 0.4)),     # right collar
    15: ((-0.6, -0.8, -0.5), (0.8, 0.8, 0.5)),     # head
    16: ((-2.0, -2.6, -1.7), (2.0, 1.0, 1.7)),     # left shoulder (+y: arm backwards)
    17: ((-2.0, -1.0, -1.7), (2.0, 2.6, 1.7)),     # right shoulder (-y: arm backwards)
    18: ((-1.5, -2.7, -0.25), (1.5, 0.1, 0.25)),   # left elbow
    19: ((-1.5, -0.1, -0.25), (1.5, 2.7, 0.25)),   # right elbow
    20: ((-1.2, -1.0, -1.3), (1.2, 1.0, 1.3)),     # left wrist
    21: ((-1.2, -1.0, -1.3), (1.2, 1.0, 1.3)),     # right wrist
    22: ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)),     # left hand
    23: ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)),     # right hand
}
JOINT_LIMITS_LOW = np.array([_LIMITS.get(j, ((-_INF,) * 3, (_INF,) * 3))[0] for j in range(24)])
"""(24, 3) lower limits of the local axis-angle components (-inf for the root)."""
JOINT_LIMITS_HIGH = np.array([_LIMITS.get(j, ((-_INF,) * 3, (_INF,) * 3))[1] for j in range(24)])
"""(24, 3) upper limits of the local axis-angle components (+inf for the root)."""

# Multiplier of the quadratic pull per joint and axis-angle component. Joints no keypoint constrains
# are stiff (the spine's split over three joints, collars, neck/head split, hands, toes), and so are
# the rotations keypoints cannot tell from others: a forearm's roll about its own axis (elbow x,
# wrist) and the off-hinge axes of elbows and knees (which trade against the shoulder's or hip's
# twist). Seen limb rotations get only a faint pull, which settles e.g. the twist of a straight limb
# without biasing what the keypoints show.
_STIFF = {3: 10.0, 6: 10.0, 9: 10.0, 10: 10.0, 11: 10.0, 12: 5.0, 13: 10.0, 14: 10.0, 15: 5.0,
          20: 1.0, 21: 1.0, 22: 10.0, 23: 10.0}
_STIFF_COMPONENTS = {(18, 0): 10.0, (19, 0): 10.0, (18, 2): 10.0, (19, 2): 10.0,  # elbows: hinges about y
                     (4, 1): 10.0, (4, 2): 10.0, (5, 1): 10.0, (5, 2): 10.0}  # knees: hinges about x
POSE_PULL_WEIGHTS = np.array([[0.0] * 3] + [[_STIFF_COMPONENTS.get((j, c), _STIFF.get(j, 0.1)) for c in range(3)]
                                            for j in range(1, 24)])
"""(24, 3) multiplier of the quadratic pose prior per joint and component (0 for the global orientation)."""


class JointsFK(torch.nn.Module):
    """The body model's ``joints45`` without the mesh: SMPL joints by forward kinematics and the vertex
    joints (nose, eyes, ears, toes, heels, fingertips) by skinning just those vertices (pose blend
    shapes included), so it matches :meth:`BodyModel.forward` exactly at a fraction of the cost."""

    def __init__(self, body: BodyModel):
        super().__init__()
        smpl = body.smpl
        ids = smpl.vertex_joint_selector.extra_joints_idxs.long()
        shapedirs = smpl.shapedirs  # (V, 3, 10)
        J_template, J_dirs = rest_joint_basis(smpl.J_regressor, smpl.v_template, shapedirs)
        self.register_buffer("J_template", J_template)  # (24, 3)
        self.register_buffer("J_dirs", J_dirs)  # (24, 3, 10)
        self.register_buffer("v_template", smpl.v_template[ids])  # (E, 3)
        self.register_buffer("v_dirs", shapedirs[ids])  # (E, 3, 10)
        cols = (ids[:, None] * 3 + torch.arange(3)).reshape(-1)
        self.register_buffer("posedirs", smpl.posedirs[:, cols])  # (207, E*3)
        self.register_buffer("weights", smpl.lbs_weights[ids])  # (E, 24)
        self.register_buffer("parents", smpl.parents.clone())

    def forward(self, poses: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: poses (B, 72), betas (B, 10), trans (B, 3).

        Returns:
            joints45 (B, 45, 3) in world coordinates, rotations (B, 24, 3, 3) local joint rotations.
        """
        batch = poses.shape[0]
        rot = batch_rodrigues(poses.reshape(-1, 3)).reshape(batch, 24, 3, 3)
        rest_joints = self.J_template + torch.einsum("jcb,nb->njc", self.J_dirs, betas)
        posed_joints, A = rigid_transforms(rot, rest_joints, self.parents)
        pose_feature = (rot[:, 1:] - torch.eye(3, dtype=poses.dtype)).reshape(batch, -1)
        v = (self.v_template + torch.einsum("ecb,nb->nec", self.v_dirs, betas)
             + (pose_feature @ self.posedirs).reshape(batch, -1, 3))
        T = torch.einsum("ej,njab->neab", self.weights, A)
        v = torch.einsum("neab,neb->nea", T[..., :3, :3], v) + T[..., :3, 3]
        return torch.cat([posed_joints, v], dim=1) + trans[:, None], rot


@dataclass
class FitResult:
    """Fitted body and camera of T frames, with residuals.

    Attributes:
        poses: (T, 72) float64 axis-angle (poses[:, :3] = global orientation).
        betas: (10,) float64 shared shape.
        trans: (T, 3) float64 SMPL translation, metres.
        K: (3, 3) float64 intrinsics (as given).
        w2c: (4, 4) float64 world-to-camera (:func:`camera_w2c`; :data:`CAMERA_W2C` when level).
        residual_px: (T,) mean 2D distance (pixels) between the fitted body's landmarks and the
            detected ones, over landmarks used by the fit and visible (NaN where none is).
        residual_fraction: (T,) residual_px / box_height_px.
        box_height_px: (T,) the person's box height the residuals are normalised by.
        landmark_error_px: (33,) mean 2D distance per landmark over the frames where it is visible
            (NaN where never visible or unused).
        stage_losses: {stage: {term: final weighted value}}.
        seconds: wall time of the fit.
        detector_frame_offset_deg: angle of the clip-wide rotation between MediaPipe's skeleton frame
            and the camera turned onto the hip ray (0 when no world landmarks were given).
    """

    poses: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    K: np.ndarray
    w2c: np.ndarray
    residual_px: np.ndarray
    residual_fraction: np.ndarray
    box_height_px: np.ndarray
    landmark_error_px: np.ndarray
    stage_losses: dict = field(default_factory=dict)
    seconds: float = 0.0
    detector_frame_offset_deg: float = 0.0

    def summary(self) -> dict:
        """JSON-ready residual summary."""
        frac = self.residual_fraction[np.isfinite(self.residual_fraction)]
        px = self.residual_px[np.isfinite(self.residual_px)]
        return {
            "reprojection_error_px_mean": float(px.mean()) if px.size else None,
            "reprojection_error_box_fraction_mean": float(frac.mean()) if frac.size else None,
            "reprojection_error_box_fraction_max": float(frac.max()) if frac.size else None,
            "stage_losses": self.stage_losses,
            "detector_frame_offset_deg": round(self.detector_frame_offset_deg, 2),
            "seconds": round(self.seconds, 2),
        }


def keypoint_box_height(keypoints: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(T, 33, 2) keypoints, (T, 33) weights -> (T,) height of the box around keypoints with weight > 0
    (at least 1 pixel)."""
    ys = np.where(weights > 0, keypoints[..., 1], np.nan)
    with np.errstate(all="ignore"):
        h = np.nanmax(ys, axis=1) - np.nanmin(ys, axis=1)
    return np.maximum(np.nan_to_num(h, nan=1.0), 1.0)


def _kabsch(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rotations R (T, 3, 3) minimising sum_i w_i |R (src_i - src_c) - (dst_i - dst_c)|^2 per frame.

    Args: src, dst (T, N, 3); weights (T, N) (a frame with fewer than 3 weighted points gets I).
    """
    w = weights[..., None]
    wsum = w.sum(1, keepdim=True).clamp(min=1e-9)
    a = src - (w * src).sum(1, keepdim=True) / wsum
    b = dst - (w * dst).sum(1, keepdim=True) / wsum
    H = torch.einsum("tni,tnj->tij", w * a, b)  # (T, 3, 3)
    U, _, Vh = torch.linalg.svd(H)
    V = Vh.transpose(1, 2)
    M = V @ U.transpose(1, 2)
    # det of a batch of 3x3 by the triple product (torch.det pays a LAPACK call per batch)
    d = torch.sign((torch.linalg.cross(M[:, 0], M[:, 1]) * M[:, 2]).sum(-1))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = V @ D @ U.transpose(1, 2)
    few = (weights > 0).sum(1) < 3
    return torch.where(few[:, None, None], torch.eye(3, dtype=R.dtype).expand_as(R), R)


def ray_rotation(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Rotations (T, 3, 3) whose columns are the axes of a camera turned (minimally) from the optical
    axis to look along the ray through pixel ``uv`` (T, 2): a crop-based detector such as MediaPipe
    sees the person along that ray, so its camera-like axes are these, not the camera's."""
    rays = np.linalg.solve(np.asarray(K, np.float64), np.concatenate([uv, np.ones((len(uv), 1))], 1).T).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, rays)
    sin = np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.arctan2(sin[:, 0], rays @ z)
    rotvec = np.where(sin > 1e-12, axis / np.maximum(sin, 1e-12), 0.0) * angle[:, None]
    return Rotation.from_rotvec(rotvec).as_matrix()


def project_points(points_world: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """(..., 3) world points -> (..., 2) pixels; depth clamped at 5 cm so points never flip."""
    pc = points_world @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[..., 2:].clamp(min=0.05)
    return torch.cat([K[0, 0] * pc[..., :1] / z + K[0, 2], K[1, 1] * pc[..., 1:2] / z + K[1, 2]], -1)


def _second_difference(x: torch.Tensor) -> torch.Tensor:
    """(T, ...) -> (T - 2, ...): x[t+1] - 2 x[t] + x[t-1]."""
    return x[2:] - 2.0 * x[1:-1] + x[:-2]


def _geman_mcclure(sq: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure of squared residuals: sigma^2 r^2 / (sigma^2 + r^2) (quadratic near 0, saturating)."""
    s2 = sigma * sigma
    return s2 * sq / (s2 + sq)


@torch.no_grad()
def initial_guess(fk: JointsFK, keypoints: np.ndarray, weights: np.ndarray, K: np.ndarray,
                  world: np.ndarray | None, w2c: np.ndarray = CAMERA_W2C) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame global orientation and translation of the mean-shape rest-pose body.

    Orientation: the rotation aligning the body's torso (shoulder and hip landmarks) with MediaPipe's
    world landmarks, which are in camera-like axes (facing the camera when ``world`` is None). Depth
    from similar triangles, depth = f * height_m / height_px, with the height of the same visible
    landmarks in the world landmarks (metres) and in the image (pixels); the visible landmarks'
    centroid goes on the ray through their image centroid at that depth, the hip centre at its offset
    from them.

    Args:
        keypoints: (T, 33, 2) pixels; weights (T, 33) (> 0: usable); K (3, 3); world (T, 33, 3) or None;
        w2c: (4, 4) the camera, its centre at the world origin.

    Returns:
        global_orient (T, 3) axis-angle, trans (T, 3), world coordinates of ``w2c``.
    """
    T = keypoints.shape[0]
    R_wc = np.asarray(w2c, np.float64)[:3, :3]
    zeros = torch.zeros(1, 72)
    rest_joints45, _ = fk(zeros, torch.zeros(1, 10), torch.zeros(1, 3))
    rest = (torch.as_tensor(LANDMARK_FROM_JOINTS45, dtype=torch.float32) @ rest_joints45[0]).double().numpy()
    pelvis = rest_joints45[0, 0].double().numpy()
    hip_mid_rest = rest[list(_HIP_LANDMARKS)].mean(0)
    torso = list(TORSO_LANDMARKS)
    if world is not None:
        # MediaPipe's world landmarks, turned from the hip ray's frame into the camera's
        world = np.einsum("tij,tnj->tni", ray_rotation(keypoints[:, list(_HIP_LANDMARKS)].mean(1), K), world)
        w_torso = torch.as_tensor(weights[:, torso] > 0, dtype=torch.float64)
        R_cam = _kabsch(torch.as_tensor(rest[torso]).expand(T, -1, -1),
                        torch.as_tensor(world[:, torso], dtype=torch.float64), w_torso).numpy()
        # too few torso points: face the camera
        R_cam[(weights[:, torso] > 0).sum(1) < 3] = R_wc
    else:
        R_cam = np.broadcast_to(R_wc, (T, 3, 3)).copy()
    R_world = np.einsum("ij,tjk->tik", R_wc.T, R_cam)

    global_orient = Rotation.from_matrix(R_world).as_rotvec()
    trans = np.zeros((T, 3))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for t in range(T):
        vis = weights[t] > 0
        if vis.sum() < 2:
            vis = LANDMARK_WEIGHTS > 0  # nothing usable: any guess, the fit will report the frame
        if world is not None:
            rel = world[t]  # hip-centred already
        else:
            rel = (rest - hip_mid_rest) @ R_cam[t].T
        height_m = np.ptp(rel[vis, 1])
        height_px = np.ptp(keypoints[t, vis, 1])
        if height_px <= 1.0 or height_m <= 0.05:  # degenerate detection: a 1.7 m person's size
            height_m = 1.7
        depth = float(np.clip(fy * height_m / max(height_px, 1.0), 0.3, 100.0))
        u, v = keypoints[t, vis].mean(0)
        # centroid of the visible landmarks, minus their offset from the hip centre
        centroid_cam = np.array([(u - cx) * depth / fx, (v - cy) * depth / fy, depth])
        hip_mid_cam = centroid_cam - rel[vis].mean(0)
        hip_mid_world = R_wc.T @ hip_mid_cam
        trans[t] = hip_mid_world - pelvis - R_world[t] @ (hip_mid_rest - pelvis)
    # frames with (almost) no keypoints, e.g. where an occluder hid the person from the detector: take
    # their neighbours' placement (translation interpolated in time, orientation of the nearest frame)
    seen = frames_seen(weights)
    if seen.any() and not seen.all():
        frames, known = np.arange(T), np.flatnonzero(seen)
        for axis in range(3):
            trans[~seen, axis] = np.interp(frames[~seen], known, trans[seen, axis])
        nearest = known[np.abs(frames[~seen, None] - known[None]).argmin(axis=1)]
        global_orient[~seen] = global_orient[nearest]
    return global_orient, trans


def _interpolate_unseen(params: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(T, 75) [axis-angle (72), translation (3)] with the rows of unseen frames replaced: rotations
    slerped and translations interpolated linearly between the nearest seen frames before and after
    (the nearest one's at the ends)."""
    from scipy.spatial.transform import Rotation, Slerp

    out = params.copy()
    frames, known = np.arange(len(params)), np.flatnonzero(seen)
    unseen = frames[~seen]
    clipped = np.clip(unseen, known[0], known[-1])
    for joint in range(24):
        rotations = Rotation.from_rotvec(params[known, 3 * joint:3 * joint + 3])
        out[unseen, 3 * joint:3 * joint + 3] = (Slerp(known, rotations)(clipped).as_rotvec() if len(known) > 1
                                                 else rotations.as_rotvec()[np.zeros(len(unseen), int)])
    for axis in range(72, 75):
        out[unseen, axis] = np.interp(unseen, known, params[known, axis])
    return out


def fit_body(
    body: BodyModel,
    keypoints: np.ndarray,
    visibility: np.ndarray,
    K: np.ndarray,
    world: np.ndarray | None = None,
    cfg: FitConfig | None = None,
    box_height_px: np.ndarray | None = None,
    init: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    frame_interval_s: float | None = None,
    w2c: np.ndarray = CAMERA_W2C,
) -> FitResult:
    """Fit pose, shape and translation of T frames seen by one static camera.

    Args:
        body: the body model (proxy or SMPL).
        keypoints: (T, 33, 2) MediaPipe landmark pixels (u, v) in the image the intrinsics belong to.
        visibility: (T, 33) in [0, 1]; below ``cfg.min_visibility`` a landmark is ignored.
        K: (3, 3) intrinsics.
        world: (T, 33, 3) MediaPipe world landmarks (metres, hip-centred, camera-like axes), or None
            (no 3D prior; the initial orientation faces the camera).
        cfg: fit settings.
        box_height_px: (T,) the person's box height for normalising residuals (e.g. from the person
            mask); None: the height of the box around the visible landmarks.
        init: (poses (T, 72), betas (10,), trans (T, 3)) to start from (e.g. an earlier fit) instead
            of :func:`initial_guess`'s rest pose.
        frame_interval_s: time between consecutive frames. The smoothness weights are meant for
            frames 1/30 s apart; as the terms are squared accelerations summed over frames they scale
            by (1/30 s / interval)^3, so sparse sampling is not over-smoothed. None: 1/30 s.
        w2c: (4, 4) the static camera, centred at the world origin (:func:`camera_w2c`).

    Returns:
        :class:`FitResult` in the world of ``w2c``.
    """
    threads = torch.get_num_threads()
    # The fit runs hundreds of steps on tiny tensors: intra-op threads only add overhead (and on a
    # shared machine oversubscription makes it several times slower), so it runs on one thread.
    torch.set_num_threads(1)
    try:
        return _fit_body(body, keypoints, visibility, K, world, cfg or FitConfig(), box_height_px, init,
                         frame_interval_s, np.asarray(w2c, np.float64))
    finally:
        torch.set_num_threads(threads)


def _fit_body(body, keypoints, visibility, K, world, cfg, box_height_px, init, frame_interval_s, w2c_np) -> FitResult:
    start = time.time()
    smooth_scale = 1.0 if frame_interval_s is None else (REFERENCE_FRAME_INTERVAL_S / frame_interval_s) ** 3
    keypoints = np.asarray(keypoints, dtype=np.float64)
    visibility = np.asarray(visibility, dtype=np.float64)
    T = keypoints.shape[0]
    if keypoints.shape != (T, 33, 2) or visibility.shape != (T, 33):
        raise ValueError(f"fit_body wants keypoints (T, 33, 2) and visibility (T, 33), got "
                         f"{keypoints.shape}, {visibility.shape}")
    if world is not None and np.shape(world) != (T, 33, 3):
        raise ValueError(f"fit_body wants world landmarks (T, 33, 3), got {np.shape(world)}")
    usable = np.where(visibility >= cfg.min_visibility, visibility, 0.0) * LANDMARK_WEIGHTS  # (T, 33)
    if box_height_px is None:
        box_height_px = keypoint_box_height(keypoints, usable)
    box_height_px = np.maximum(np.asarray(box_height_px, dtype=np.float64), 1.0)

    fk = JointsFK(body).to(torch.float32)
    orient0, trans0 = initial_guess(fk, keypoints, usable, np.asarray(K, np.float64),
                                    None if world is None else np.asarray(world, np.float64), w2c_np)

    f32 = dict(dtype=torch.float32)
    kp = torch.as_tensor(keypoints, **f32)
    w2d = torch.as_tensor(usable, **f32)
    box = torch.as_tensor(box_height_px, **f32)
    Kt = torch.as_tensor(np.asarray(K), **f32)
    w2c = torch.as_tensor(w2c_np, **f32)
    lm_matrix = torch.as_tensor(LANDMARK_FROM_JOINTS45, **f32)
    torso_mask = torch.zeros(33)
    torso_mask[list(TORSO_LANDMARKS)] = 1.0
    low = torch.as_tensor(JOINT_LIMITS_LOW[1:], **f32)
    high = torch.as_tensor(JOINT_LIMITS_HIGH[1:], **f32)
    pull = torch.as_tensor(POSE_PULL_WEIGHTS[1:], **f32)
    prior_mean = torch.as_tensor(RELAXED_BODY_POSE[3:].reshape(23, 3), **f32)
    bones = torch.as_tensor(BONES, **f32)
    if world is not None:
        world_t = torch.as_tensor(np.asarray(world), **f32)
        world_bones = bones @ world_t  # (T, nb, 3)
        bone_w = torch.stack([w2d[:, list(ids)].min(1).values for ids in BONE_LANDMARKS], 1)  # (T, nb)
        bone_w = bone_w * (world_bones.norm(dim=-1) > 1e-4)
        world_dirs = torch.nn.functional.normalize(world_bones, dim=-1)

    pose0, betas0 = np.tile(RELAXED_BODY_POSE[3:], (T, 1)), np.zeros(10)
    if init is not None:
        pose0, betas0, trans0 = init[0][:, 3:], init[1], init[2]
        orient0 = init[0][:, :3]
    global_orient = torch.nn.Parameter(torch.as_tensor(np.array(orient0), **f32))
    body_pose = torch.nn.Parameter(torch.as_tensor(np.array(pose0), **f32))
    betas = torch.nn.Parameter(torch.as_tensor(np.array(betas0), **f32))
    trans = torch.nn.Parameter(torch.as_tensor(np.array(trans0), **f32))
    mp_align = torch.nn.Parameter(torch.zeros(3))
    ray_rot_t = torch.as_tensor(ray_rotation(keypoints[:, list(_HIP_LANDMARKS)].mean(1), K).transpose(0, 2, 1), **f32)

    def losses(stage: int) -> dict[str, torch.Tensor]:
        poses = torch.cat([global_orient, body_pose], 1)
        joints45, rot = fk(poses, betas.expand(T, 10), trans)
        landmarks = lm_matrix @ joints45  # (T, 33, 3) world
        uv = project_points(landmarks, Kt, w2c)
        sq = (((uv - kp) / box[:, None, None]) ** 2).sum(-1)
        w = w2d * torso_mask if stage == 1 else w2d
        robust = _geman_mcclure(sq, cfg.robust_sigma)
        out = {"2d": cfg.weight_2d * (w * robust).sum() / w.sum().clamp(min=1e-9)}
        if T > 2:  # second differences: constant motion is free, jitter is not
            jitter = (_second_difference(trans) ** 2).sum(-1).mean()
            out["smooth_trans"] = smooth_scale * cfg.weight_smooth_trans * jitter
        if stage == 1:
            return out
        body_angles = body_pose.reshape(T, 23, 3)
        out["pose"] = cfg.weight_pose * (pull * (body_angles - prior_mean) ** 2).sum((1, 2)).mean()
        out["limits"] = cfg.weight_limits * (torch.relu(low - body_angles) ** 2
                                             + torch.relu(body_angles - high) ** 2).sum((1, 2)).mean()
        if T > 2:
            jitter = (_second_difference(rot) ** 2).sum((1, 2, 3)).mean()
            out["smooth_pose"] = smooth_scale * cfg.weight_smooth_pose * jitter
        if world is not None and cfg.weight_3d > 0:
            # MediaPipe's skeleton is seen along the ray through the hips (ray_rot) and may be offset
            # from it by one rotation for the whole clip (mp_align); only relative pose is compared.
            align = batch_rodrigues(mp_align[None])[0] @ ray_rot_t  # (T, 3, 3) camera -> MediaPipe
            body_bones = (bones @ landmarks) @ w2c[:3, :3].T @ align.transpose(1, 2)
            err = ((torch.nn.functional.normalize(body_bones, dim=-1) - world_dirs) ** 2).sum(-1)
            out["3d"] = cfg.weight_3d * (bone_w * err).sum() / bone_w.sum().clamp(min=1e-9)
            out["detector_frame"] = cfg.weight_detector_frame * (mp_align ** 2).sum()
        if stage == 3:
            out["shape"] = cfg.weight_shape * (betas ** 2).sum()
        return out

    stages = [
        (1, cfg.iterations_global, [global_orient, trans], cfg.learning_rate),
        (2, cfg.iterations_pose, [global_orient, trans, body_pose, mp_align], cfg.learning_rate),
        (3, cfg.iterations_all, [global_orient, trans, body_pose, mp_align, betas], 0.5 * cfg.learning_rate),
    ]
    total = sum(n for _, n, _, _ in stages)
    bar = None
    if cfg.progress and total > 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="body fit", unit="step", leave=False)
    stage_losses = {}
    for stage, steps, params, lr in stages:
        if steps <= 0:
            continue
        opt = torch.optim.Adam(params, lr=lr)
        # exponential decay to 5 % of the rate: Adam's steps (about lr per parameter) must shrink
        # below the accuracy wanted, or the fit jitters around the minimum
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.05 ** (1.0 / steps))
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            terms = losses(stage)
            loss = sum(terms.values())
            loss.backward()
            opt.step()
            decay.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(stage=stage, loss=f"{loss.item():.2e}")
        stage_losses[f"stage{stage}"] = {k: float(v.detach()) for k, v in terms.items()}
    if bar is not None:
        bar.close()

    with torch.no_grad():
        seen = frames_seen(usable)
        if seen.any() and not seen.all():
            # frames no keypoint constrains (the detector found nobody behind an occluder): their pose
            # drifted to the prior's relaxed pose; take it, and the placement, from the nearest frames
            # that have keypoints, interpolated in time
            filled = _interpolate_unseen(torch.cat([global_orient, body_pose, trans], 1).double().numpy(), seen)
            global_orient.copy_(torch.as_tensor(filled[:, :3]))
            body_pose.copy_(torch.as_tensor(filled[:, 3:72]))
            trans.copy_(torch.as_tensor(filled[:, 72:]))
        poses = torch.cat([global_orient, body_pose], 1)
        joints45, _ = fk(poses, betas.expand(T, 10), trans)
        uv = project_points(lm_matrix @ joints45, Kt, w2c).double().numpy()
    err = np.linalg.norm(uv - keypoints, axis=-1)  # (T, 33)
    used = usable > 0
    with np.errstate(invalid="ignore"):
        residual_px = np.where(used.any(1), (err * used).sum(1) / used.sum(1), np.nan)
        landmark_error = np.where(used.any(0), (err * used).sum(0) / used.sum(0), np.nan)
    return FitResult(
        poses=poses.double().numpy(), betas=betas.detach().double().numpy(),
        trans=trans.detach().double().numpy(), K=np.asarray(K, np.float64), w2c=w2c_np.copy(),
        residual_px=residual_px, residual_fraction=residual_px / box_height_px,
        box_height_px=box_height_px, landmark_error_px=landmark_error, stage_losses=stage_losses,
        seconds=time.time() - start,
        detector_frame_offset_deg=math.degrees(float(mp_align.detach().norm())),
    )


def synthesize_detections(body: BodyModel, poses: np.ndarray, betas: np.ndarray, trans: np.ndarray,
                          K: np.ndarray, w2c: np.ndarray = CAMERA_W2C) -> tuple[np.ndarray, np.ndarray]:
    """What an ideal MediaPipe would report for known bodies (tests, sanity checks).

    Args:
        poses (T, 72), betas (10,) or (T, 10), trans (T, 3), K (3, 3), w2c (4, 4).

    Returns:
        keypoints (T, 33, 2) pixels, world (T, 33, 3) hip-centred landmarks in camera axes (metres).
    """
    T = len(poses)
    with torch.no_grad():
        out = body(torch.as_tensor(poses, dtype=torch.float32),
                   torch.as_tensor(np.broadcast_to(betas, (T, 10)).copy(), dtype=torch.float32),
                   torch.as_tensor(trans, dtype=torch.float32))
        landmarks = torch.as_tensor(LANDMARK_FROM_JOINTS45, dtype=torch.float32) @ out.joints45
        w2c_t = torch.as_tensor(np.asarray(w2c), dtype=torch.float32)
        uv = project_points(landmarks, torch.as_tensor(np.asarray(K), dtype=torch.float32), w2c_t)
        cam = (landmarks @ w2c_t[:3, :3].T).double().numpy()
    uv = uv.double().numpy()
    world = cam - cam[:, list(_HIP_LANDMARKS)].mean(1, keepdims=True)
    # seen along the ray through the hips, as a crop-based detector sees it
    world = np.einsum("tji,tnj->tni", ray_rotation(uv[:, list(_HIP_LANDMARKS)].mean(1), K), world)
    return uv, world
