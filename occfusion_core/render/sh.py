"""Real spherical harmonics up to degree 3, in the 3DGS / gsplat basis and sign convention.

Colours are stored as SH coefficients per channel; the 0th band holds (rgb - 0.5) / C0 so that a
degree-0 Gaussian shows ``rgb`` from every direction (see :func:`RGB2SH`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of coefficients of an SH expansion up to ``degree``: (degree + 1)^2."""
    return (degree + 1) ** 2


def RGB2SH(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) colours in [0, 1] -> (..., 3) degree-0 coefficients that reproduce them."""
    return (rgb - 0.5) / SH_C0


def SH2RGB(sh0: torch.Tensor) -> torch.Tensor:
    """(..., 3) degree-0 coefficients -> (..., 3) colours (inverse of :func:`RGB2SH`)."""
    return sh0 * SH_C0 + 0.5


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(N, 3) unit directions -> (N, (degree+1)^2) real SH basis values."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    basis = [torch.full_like(dirs[:, 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        basis += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(basis, dim=-1)


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate SH colours.

    Args:
        degree: bands to use, 0..3; only the first (degree+1)^2 coefficients are read, so a model
            stored at degree 3 can be rendered while its degree is still being ramped up.
        sh: (N, K, 3) coefficients, K >= (degree+1)^2.
        dirs: (N, 3) viewing directions (camera centre -> Gaussian); need not be normalised.

    Returns:
        (N, 3) the raw SH value (no +0.5 offset, no clamp; see :func:`sh_to_rgb`).
    """
    n_bases = num_sh_bases(degree)
    if sh.dim() != 3 or sh.shape[-1] != 3 or sh.shape[1] < n_bases:
        raise ValueError(f"sh must be (N, K>={n_bases}, 3) for degree {degree}, got {tuple(sh.shape)}")
    if dirs.shape != (sh.shape[0], 3):
        raise ValueError(f"dirs must be ({sh.shape[0]}, 3), got {tuple(dirs.shape)}")
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))
    return (basis[:, :, None] * sh[:, :n_bases]).sum(dim=1)


def sh_to_rgb(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(N, K, 3) coefficients, (N, 3) directions -> (N, 3) colours: eval + 0.5, clamped at 0."""
    return torch.clamp_min(eval_sh(degree, sh, dirs) + 0.5, 0.0)


def view_directions(means: torch.Tensor, center: torch.Tensor, transforms: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3) unit directions from the camera centre to each mean, constants for autograd.

    Args:
        means: (N, 3) world-space means; center: (3,) camera centre.
        transforms: (N, 3, 3) linear maps whose inverses turn each direction into the Gaussian's own
            frame (its canonical frame, for a skinned Gaussian), or None (world directions).
    """
    dirs = means.detach() - center.to(means)
    if transforms is not None:
        dirs = torch.linalg.solve(transforms.detach(), dirs[..., None])[..., 0]
    return dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sh_degree_of(num_coefficients: int) -> int:
    """The SH degree d with (d + 1)² = ``num_coefficients`` (0..3), or ValueError."""
    degree = round(num_coefficients**0.5) - 1
    if (degree + 1) ** 2 != num_coefficients or not 0 <= degree <= 3:
        raise ValueError(f"{num_coefficients} SH coefficients per channel is not (d + 1)² for a degree d in 0..3")
    return degree


def fibonacci_directions(count: int) -> torch.Tensor:
    """(count, 3) unit directions spread evenly over the sphere (float64)."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / count
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = (1.0 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


def rotate_sh(sh: torch.Tensor, rotations: torch.Tensor, samples: int = 64) -> torch.Tensor:
    """SH coefficients of each Gaussian's colour function turned by its rotation.

    The result c' satisfies ``eval_sh(c', d) == eval_sh(c, R^T d)`` for every direction d: a
    colour seen along R^T d before is seen along d after. Each band is a rotation-invariant space, so
    c' is found exactly by least squares on ``samples`` directions (any 16+ spread directions will do).

    Args:
        sh: (N, K, 3) coefficients, K = (degree + 1)², degree <= 3.
        rotations: (N, 3, 3) rotation matrices.

    Returns:
        (N, K, 3), the DC term unchanged (it is the same from every direction).
    """
    degree = sh_degree_of(sh.shape[1])
    if degree == 0:
        return sh.clone()
    dirs = fibonacci_directions(samples)  # (S, 3)
    basis = sh_basis(degree, dirs)[:, 1:]  # (S, K - 1)
    turned = torch.einsum("nji,sj->nsi", rotations.double(), dirs)  # R^T d: (N, S, 3)
    turned_basis = sh_basis(degree, turned.reshape(-1, 3)).reshape(sh.shape[0], samples, -1)[..., 1:]
    transfer = torch.linalg.pinv(basis) @ turned_basis  # (N, K - 1, K - 1)
    rest = transfer @ sh[:, 1:].double()
    return torch.cat([sh[:, :1], rest.to(sh.dtype)], dim=1)
