"""Pinhole cameras in OpenCV convention.

Conventions used everywhere in the project:
- ``w2c`` is a 4x4 world-to-camera matrix with OpenCV axes (x right, y down, z forward).
- ``K`` is the 3x3 intrinsic matrix; a camera-space point (X, Y, Z) lands at continuous image
  coordinates u = fx X / Z + cx, v = fy Y / Z + cy.
- Pixel (row i, column j) covers [j, j+1) x [i, i+1): its centre is at (j + 0.5, i + 0.5). This is
  the convention of gsplat and of diff-gaussian-rasterization, and the mesh rasterizer follows it too,
  so ground truth drawn by the mesh rasterizer and Gaussian renders line up to the sub-pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Camera:
    """One view.

    Attributes:
        K: (3, 3) intrinsics.
        w2c: (4, 4) world-to-camera transform, OpenCV axes.
        width, height: image size in pixels.
    """

    K: torch.Tensor
    w2c: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = torch.as_tensor(self.K, dtype=torch.float32)
        self.w2c = torch.as_tensor(self.w2c, dtype=torch.float32)
        if self.K.shape != (3, 3) or self.w2c.shape != (4, 4):
            raise ValueError(f"Camera wants K (3,3) and w2c (4,4), got {tuple(self.K.shape)}, {tuple(self.w2c.shape)}")
        self.width, self.height = int(self.width), int(self.height)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Camera":
        dtype = dtype or self.K.dtype
        cam = Camera.__new__(Camera)
        cam.K, cam.w2c = self.K.to(device, dtype), self.w2c.to(device, dtype)
        cam.width, cam.height = self.width, self.height
        return cam

    @property
    def R(self) -> torch.Tensor:
        """(3, 3) world-to-camera rotation."""
        return self.w2c[:3, :3]

    @property
    def t(self) -> torch.Tensor:
        """(3,) world-to-camera translation."""
        return self.w2c[:3, 3]

    @property
    def center(self) -> torch.Tensor:
        """(3,) camera centre in world coordinates."""
        return -self.R.T @ self.t

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) world points -> (..., 3) camera-space points."""
        return points @ self.R.T + self.t

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3) world points -> ((..., 2) continuous pixel coordinates, (...,) depth z)."""
        pc = self.world_to_camera(points)
        z = pc[..., 2]
        zs = torch.where(z.abs() < 1e-8, torch.full_like(z, 1e-8), z)
        uv = torch.stack(
            [self.K[0, 0] * pc[..., 0] / zs + self.K[0, 1] * pc[..., 1] / zs + self.K[0, 2],
             self.K[1, 1] * pc[..., 1] / zs + self.K[1, 2]],
            dim=-1,
        )
        return uv, z

    def scaled(self, factor: float) -> "Camera":
        """The same view at ``factor`` times the resolution (intrinsics scaled, pixel corners kept)."""
        K = self.K.clone()
        K[:2] *= factor
        return Camera(K, self.w2c.clone(), round(self.width * factor), round(self.height * factor))

    def to_dict(self) -> dict:
        return {"K": self.K.tolist(), "w2c": self.w2c.tolist(), "width": self.width, "height": self.height}

    @staticmethod
    def from_dict(d: dict) -> "Camera":
        return Camera(torch.tensor(d["K"]), torch.tensor(d["w2c"]), d["width"], d["height"])


def intrinsics_from_fov(width: int, height: int, fov_y_deg: float) -> torch.Tensor:
    """(3, 3) K with square pixels, principal point at the image centre, vertical field of view."""
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """(4, 4) OpenCV world-to-camera matrix of a camera at ``eye`` looking at ``target``.

    ``up`` is the world's up direction (SMPL world: +y); it maps to the image's -y (rows go down).
    """
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:
        raise ValueError("look_at: viewing direction is parallel to up")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return torch.tensor(w2c, dtype=torch.float32)


def orbit_cameras(
    target, radius: float, height: float, azimuths_deg, K: torch.Tensor, width: int, height_px: int,
    elevation_target: float | None = None,
) -> list[Camera]:
    """Cameras on a horizontal circle around ``target`` (SMPL world: y up, azimuth 0 on +z).

    Args:
        target: (3,) point looked at.
        radius: distance in the x-z plane.
        height: camera y coordinate.
        azimuths_deg: iterable of azimuths; azimuth a puts the camera at
            target + radius * (sin a, 0, cos a) (+ height in y).
    """
    target = np.asarray(target, dtype=np.float64)
    look = target.copy()
    if elevation_target is not None:
        look[1] = elevation_target
    cams = []
    for a in azimuths_deg:
        r = math.radians(a)
        eye = np.array([target[0] + radius * math.sin(r), height, target[2] + radius * math.cos(r)])
        cams.append(Camera(K.clone(), look_at(eye, look), width, height_px))
    return cams


def is_rotation(R: np.ndarray, tol: float = 1e-3) -> bool:
    """True when R (3, 3) is orthonormal with determinant +1 (within ``tol``)."""
    R = np.asarray(R, dtype=np.float64)
    return bool(np.allclose(R @ R.T, np.eye(3), atol=tol) and abs(np.linalg.det(R) - 1.0) < tol)
