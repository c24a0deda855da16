"""EWA projection of 3D Gaussians to the image plane (pure torch, differentiable).

The maths is gsplat's ``fully_fused_projection`` for a pinhole camera, so that every rasterizer
backend (torch reference, C++, gsplat, inria) sees the same 2D Gaussians:

- camera-space mean t = R mu + T and covariance Sigma_c = R Sigma R^T;
- the Jacobian of the perspective map is evaluated at t with x/z and y/z clamped to 1.3x the
  field of view, which keeps Gaussians far outside the frustum from exploding;
- the 2D covariance J Sigma_c J^T gets ``eps2d`` added on the diagonal (a low-pass filter so that
  every splat covers about a pixel);
- the screen-space extent is a per-axis box, radius = ceil(3.33 * sigma) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .camera import Camera

# Extent of a splat in standard deviations (gsplat's 3.33, about where opacity 1 falls below 1/255).
SPLAT_EXTENT_SIGMAS = 3.33


@dataclass
class Projection:
    """2D Gaussians in one camera, the input of every pixel rasterizer.

    Attributes:
        means2d: (N, 2) continuous pixel coordinates (x = column, y = row; pixel centres at +0.5).
        conics: (N, 3) the inverse 2D covariance [a, b, c] = [[a, b], [b, c]].
        depths: (N,) camera-space z of the means.
        radii: (N, 2) int32 box half-extents in pixels (x, y); (0, 0) for Gaussians that cannot be
            drawn (behind the near plane or beyond the far plane, degenerate, or off-image).
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor

    @property
    def visible(self) -> torch.Tensor:
        """(N,) bool: the Gaussian has a non-empty box in this view."""
        return (self.radii > 0).all(dim=-1)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rot.reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """3D covariances Sigma = R S S R^T.

    Args:
        quats: (N, 4) rotations as (w, x, y, z) quaternions; normalised here.
        scales: (N, 3) standard deviations along the rotated axes (already activated, e.g. exp'd).

    Returns:
        (N, 3, 3) covariances.
    """
    rs = quat_to_rotmat(quats) * scales[..., None, :]
    return rs @ rs.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,
    covars: torch.Tensor,
    camera: Camera,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
) -> Projection:
    """Project 3D Gaussians into ``camera`` (gsplat's pinhole EWA projection).

    Args:
        means: (N, 3) world-space means.
        covars: (N, 3, 3) world-space covariances.
        camera: the view; its K and w2c are moved to ``means``' device and dtype.
        eps2d: added to the diagonal of every 2D covariance (pixels^2).
        near, far: Gaussians whose camera depth is not strictly inside (near, far) get radii 0.

    Returns:
        A :class:`Projection`. means2d, conics and depths are differentiable; radii are not.
        For Gaussians within ``near`` of the camera plane (|z| < near, all invalid anyway) the
        Jacobian is evaluated at z = near so that their values, and the zero gradients flowing
        back through them, stay finite; everything else equals gsplat's output.
    """
    cam = camera.to(means.device, means.dtype)
    rot, trans = cam.w2c[:3, :3], cam.w2c[:3, 3]
    means_c = means @ rot.T + trans
    covars_c = rot @ covars @ rot.T
    tx, ty, tz = means_c.unbind(-1)
    # Dividing by z ~ 0 would put inf into the graph and 0 * inf = NaN into the gradients.
    tz_safe = torch.where(tz.abs() < near, torch.full_like(tz, near), tz)

    K = cam.K
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    width, height = cam.width, cam.height
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx_clamped = tz_safe * torch.minimum(torch.maximum(tx / tz_safe, -lim_x_neg), lim_x_pos)
    ty_clamped = tz_safe * torch.minimum(torch.maximum(ty / tz_safe, -lim_y_neg), lim_y_pos)

    zeros = torch.zeros_like(tz)
    jac = torch.stack(
        [fx / tz_safe, zeros, -fx * tx_clamped / tz_safe**2,
         zeros, fy / tz_safe, -fy * ty_clamped / tz_safe**2],
        dim=-1,
    ).reshape(-1, 2, 3)
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)
    # The projected mean uses the full K (including skew), like gsplat.
    means2d = (means_c / tz_safe[:, None]) @ K[:2, :3].T

    cov_xx = cov2d[:, 0, 0] + eps2d
    cov_yy = cov2d[:, 1, 1] + eps2d
    cov_xy = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    det = cov_xx * cov_yy - cov_xy * cov_xy
    det_clamped = det.clamp(min=1e-10)
    conics = torch.stack([cov_yy / det_clamped, -cov_xy / det_clamped, cov_xx / det_clamped], dim=-1)

    with torch.no_grad():
        radius = torch.ceil(SPLAT_EXTENT_SIGMAS * torch.stack([cov_xx, cov_yy], dim=-1).clamp(min=0).sqrt())
        valid = (det > 0) & (tz > near) & (tz < far)
        mx, my = means2d[:, 0], means2d[:, 1]
        inside = (
            (mx + radius[:, 0] > 0) & (mx - radius[:, 0] < width)
            & (my + radius[:, 1] > 0) & (my - radius[:, 1] < height)
        )
        radii = torch.where((valid & inside)[:, None], radius, torch.zeros_like(radius)).to(torch.int32)
    return Projection(means2d=means2d, conics=conics, depths=tz, radii=radii)


def polar_rotation(linear: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) matrices -> (..., 3, 3) the nearest rotations (the orthogonal factor of the polar
    decomposition, determinant +1)."""
    u, _, vh = torch.linalg.svd(linear)
    det = torch.linalg.det(u @ vh)
    fix = torch.ones_like(u[..., 0])
    fix[..., 2] = det.sign()
    return (u * fix[..., None, :]) @ vh


def quats_wxyz_from_rotations(rotations: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices -> (N, 4) unit quaternions (w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(rotations.detach().double().cpu().numpy()).as_quat()
    quats = torch.as_tensor(xyzw)
    return torch.cat([quats[:, 3:], quats[:, :3]], dim=1)
