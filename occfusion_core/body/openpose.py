"""OpenPose-18 body joints from SMPL, the self-occlusion test, and OpenPose-style canvases.

The canvases are ControlNet-openpose conditions: the OpenPose drawing style of ``controlnet_aux``
(black canvas, limbs as filled ellipses at 0.6 of the colour, joints as filled circles of radius 4).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..render.camera import Camera, look_at
from .model import BodyModel, big_pose

# OpenPose-18 order: nose, neck, R-sho, R-elb, R-wri, L-sho, L-elb, L-wri, R-hip, R-knee, R-ank,
# L-hip, L-knee, L-ank, R-eye, L-eye, R-ear, L-ear. Indices into smplx's 45 joints (24-28 are the
# nose, eye and ear vertex joints).
SMPL_TO_OPENPOSE = [24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28]
OPENPOSE_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
                  "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
                  "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
# the 17 limbs drawn (0-based OpenPose indices; OpenPose's list without the two ear-shoulder links)
OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
                  (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
OPENPOSE_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                   (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
                   (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
LIMB_HALF_WIDTH_PX = 4
JOINT_RADIUS_PX = 4
LIMB_COLOR_SCALE = 0.6

CANONICAL_HORS = (0, 20, 40, 60, 80, 100, 120, 140, 160, 180, -20, -40, -60, -80, -100, -120, -140, -160)
"""The 18 azimuths (degrees) of OccFusion's canonical-space SDS views (assets/daposesv2/<hor>.png)."""
CANONICAL_SIZE = 512
CANONICAL_FOCAL = 1000.0
CANONICAL_RADIUS = 4.5


def openpose18(joints45: torch.Tensor) -> torch.Tensor:
    """(B, 45, 3) smplx joints -> (B, 18, 3) OpenPose-18 joints."""
    return joints45[:, SMPL_TO_OPENPOSE]


def project_openpose(joints18: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """(18, 3) world joints -> ((18, 2) continuous pixel coordinates (u, v), (18,) camera depth z)."""
    return camera.project(joints18.to(camera.K.dtype))


def self_occlusion_valid(uv: torch.Tensor, depth: torch.Tensor, depth_map: torch.Tensor,
                         tol: float = 0.3) -> torch.Tensor:
    """OccFusion's self-occlusion z-test for the OpenPose condition (OccFusion's released code,
    ``stage0_oc.py``; docs/method.md, "Stage 0: mask completion").

    Args:
        uv: (18, 2) pixel coordinates; pixel (row i, col j) covers [j, j+1) x [i, i+1).
        depth: (18,) joint depth (camera z).
        depth_map: (H, W) rendered body depth, inf or 0 where no body is.
        tol: largest |surface depth - joint depth| (m) of a visible joint.

    Returns:
        (18,) bool: False for joints off the image, behind the camera, or whose pixel's surface
        differs from the joint's depth by more than ``tol`` (hidden behind another body part).
    """
    height, width = depth_map.shape
    col, row = torch.floor(uv[:, 0]).long(), torch.floor(uv[:, 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (depth > 0)
    surface = depth_map[row.clamp(0, height - 1), col.clamp(0, width - 1)].to(depth.dtype)
    close = torch.isfinite(surface) & ((surface - depth).abs() <= tol)
    return inside & close


def _ellipse_polygon(centre: np.ndarray, half_length: float, half_width: float, angle_deg: float) -> list:
    """Points (one per degree) of a rotated ellipse, like ``cv2.ellipse2Poly``."""
    t = np.radians(np.arange(0, 360))
    a = math.radians(angle_deg)
    x, y = half_length * np.cos(t), half_width * np.sin(t)
    px = centre[0] + x * math.cos(a) - y * math.sin(a)
    py = centre[1] + x * math.sin(a) + y * math.cos(a)
    return list(zip(np.round(px).tolist(), np.round(py).tolist()))


def draw_openpose(uv: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray, width: int,
                  height: int) -> np.ndarray:
    """Draw OpenPose-18 joints in OpenPose's style on a black canvas.

    Args:
        uv: (18, 2) pixel coordinates (continuous; a joint is drawn at the pixel that contains it).
        valid: (18,) bool; invalid joints and the limbs touching them are not drawn.
        width, height: canvas size.

    Returns:
        (height, width, 3) uint8 RGB canvas.
    """
    # the drawing works in pixel indices: OpenCV draws the pixel whose centre is at (x, y)
    pix = np.floor(np.asarray(uv, dtype=np.float64))
    valid = np.asarray(valid, dtype=bool)
    canvas = Image.new("RGB", (int(width), int(height)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for (a, b), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        if not (valid[a] and valid[b]):
            continue
        delta = pix[a] - pix[b]
        polygon = _ellipse_polygon((pix[a] + pix[b]) / 2, float(np.hypot(*delta)) / 2, LIMB_HALF_WIDTH_PX,
                                   math.degrees(math.atan2(delta[1], delta[0])))
        draw.polygon(polygon, fill=tuple(int(c * LIMB_COLOR_SCALE) for c in color))
    r = JOINT_RADIUS_PX
    for (x, y), ok, color in zip(pix, valid, OPENPOSE_COLORS):
        if ok:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    return np.asarray(canvas).copy()


def canonical_camera(hor_deg: float) -> Camera:
    """OccFusion's canonical SDS camera (OccFusion's released code, ``stage1.py`` with
    ``scene/cameras.py: orbit_camera``): 512x512, f=1000, c=256, orbit radius 4.5, elevation 0, azimuth
    ``hor_deg`` (0: camera on +z, facing the body's front), looking at the origin."""
    a = math.radians(hor_deg)
    eye = (CANONICAL_RADIUS * math.sin(a), 0.0, CANONICAL_RADIUS * math.cos(a))
    K = torch.tensor([[CANONICAL_FOCAL, 0.0, CANONICAL_SIZE / 2],
                      [0.0, CANONICAL_FOCAL, CANONICAL_SIZE / 2],
                      [0.0, 0.0, 1.0]])
    return Camera(K, look_at(eye, (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)), CANONICAL_SIZE, CANONICAL_SIZE)


@torch.no_grad()
def canonical_openpose_joints(body: BodyModel) -> torch.Tensor:
    """(18, 3) OpenPose joints of the mean-shape big pose, centred like the canonical Gaussians
    (minus the mean of the big-pose vertices)."""
    device = body.v_template.device
    zeros = torch.zeros(1, 10, device=device)
    out = body(big_pose()[None].to(device), zeros, zeros[:, :3])
    return (openpose18(out.joints45)[0] - out.vertices[0].mean(dim=0)).cpu()


def canonical_openpose_canvases(body: BodyModel, hors=CANONICAL_HORS) -> dict[int, np.ndarray]:
    """The canonical-space SDS conditions, drawn here in place of the released code's downloaded
    ``assets/daposesv2/<hor>.png`` (docs/method.md, "Score distillation (SDS)").

    Returns:
        {hor: (512, 512, 3) uint8 canvas}: the big-pose body seen from each azimuth, all joints
        drawn (no self-occlusion test, as in the released canvases).
    """
    joints = canonical_openpose_joints(body)
    canvases = {}
    for hor in hors:
        camera = canonical_camera(hor)
        uv, _ = project_openpose(joints, camera)
        canvases[int(hor)] = draw_openpose(uv, np.ones(len(joints), dtype=bool), camera.width, camera.height)
    return canvases
