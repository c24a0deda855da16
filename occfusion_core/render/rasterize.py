"""The one Gaussian-splatting entry point: :func:`rasterize` (3D Gaussians + camera -> images).

Pipeline for pixel backends ("torch", "cpp"): :func:`~.projection.project_gaussians` and
:func:`~.sh.sh_to_rgb` run in torch, then the backend composites with
:func:`rasterize_to_pixels`. Full backends (gsplat, inria) replace the whole call. Backends are
picked by name through :mod:`occfusion_core.render.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends import get_backend
from .camera import Camera
from .projection import project_gaussians, quat_scale_to_covar
from .sh import MAX_SH_DEGREE, sh_to_rgb, view_directions


@dataclass
class RenderOutput:
    """What a render returns.

    Attributes:
        rgb: (H, W, 3) colour, background composited: rgb + (1 - alpha) * background.
        alpha: (H, W, 1) accumulated opacity 1 - T_final.
        depth: (H, W, 1) accumulated depth sum_i w_i z_i (w_i = alpha_i T_i, z_i camera-space depth
            of the mean); not normalised, divide by alpha for the expected depth of covered pixels.
        means2d: (N, 2) projected means; the very tensor the image was built from, so a trainer can
            call ``retain_grad()`` on it before backward for densification statistics (full
            backends return their own equivalent).
        radii: (N, 2) int32 box half-extents in pixels; 0 where not drawn.
        visible: (N,) bool, radii > 0 on both axes.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    visible: torch.Tensor


def rasterize_to_pixels(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    width: int,
    height: int,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians front to back. Every pixel backend implements exactly this:

    - Gaussian i may touch pixel (row r, col c) only if radii_i > 0 on both axes and the pixel centre
      (px, py) = (c + 0.5, r + 0.5) lies in its box: |px - mu_x| <= r_x and |py - mu_y| <= r_y.
    - Gaussians are taken in ascending depth (ties: lower index first).
    - With (dx, dy) = (mu_x - px, mu_y - py): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy; skip if
      sigma < 0; alpha = min(0.999, o exp(-sigma)); skip if alpha < 1/255; next_T = T (1 - alpha);
      if next_T <= 1e-4 the pixel stops (without this Gaussian); else add alpha T colour, T = next_T.
      T starts at 1 and the returned alpha is 1 - T_final. No background.

    Args:
        means2d: (N, 2) pixel-space means (x = column, y = row).
        conics: (N, 3) inverse 2D covariances [a, b, c].
        colors: (N, C) any number of channels (callers append depth to get it for free).
        opacities: (N,) opacities in [0, 1].
        depths: (N,) compositing order keys.
        radii: (N, 2) integer box half-extents (x, y).
        width, height: image size in pixels.
        backend: a pixel backend name, or "auto".

    Returns:
        (H, W, C) composited colours, (H, W, 1) alpha.
    """
    n = means2d.shape[0] if means2d.dim() == 2 else -1
    expected = {"means2d": (n, 2), "conics": (n, 3), "opacities": (n,), "depths": (n,), "radii": (n, 2)}
    for name, tensor in zip(expected, (means2d, conics, opacities, depths, radii)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} (N from means2d), got {tuple(tensor.shape)}")
    if colors.dim() != 2 or colors.shape[0] != n:
        raise ValueError(f"colors must have shape ({n}, C), got {tuple(colors.shape)}")
    if radii.dtype.is_floating_point:
        raise ValueError(f"radii must be an integer tensor, got {radii.dtype}")
    for name, tensor in (("conics", conics), ("colors", colors), ("opacities", opacities)):
        if tensor.dtype != means2d.dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype}, means2d has {means2d.dtype}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    chosen = get_backend(backend, device=means2d.device)
    if chosen.kind != "pixel":
        raise ValueError(f"backend {chosen.name!r} renders whole scenes only; use rasterize()")
    return chosen.fn(means2d, conics, colors, opacities, depths, radii, int(width), int(height))


def rasterize_with_sh(
    means: torch.Tensor,
    opacities: torch.Tensor,
    camera: Camera,
    covars: torch.Tensor,
    sh: torch.Tensor,
    sh_degree: int,
    *,
    view_transforms: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    backend: str = "torch",
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
) -> RenderOutput:
    """Render Gaussians with SH colours seen along constant viewing directions (the training renders).

    The colours are :func:`~.sh.sh_to_rgb` of :func:`~.sh.view_directions` (camera centre -> mean,
    turned by the inverse of ``view_transforms`` when given; no gradient flows through them), then
    :func:`rasterize`. With the compiled CPU backend the projection and the colours run as one
    compiled pass (:func:`occfusion_core.render.backends.cpp.project_and_shade`), held to this torch
    path by tests/test_project_cpu.py.

    Args:
        means (N, 3), opacities (N,), covars (N, 3, 3), sh (N, K, 3); view_transforms (N, 3, 3) or None.
    """
    chosen = get_backend(backend, device=means.device)
    if _fused_projection(chosen, means):
        return _project_shade_composite(chosen, means, opacities, camera, covars, sh, int(sh_degree), view_transforms,
                                        background, eps2d, near, far)
    colors = sh_to_rgb(int(sh_degree), sh, view_directions(means, camera.center, view_transforms))
    return rasterize(means, opacities, camera, covars=covars, colors=colors, background=background,
                     backend=backend, eps2d=eps2d, near=near, far=far)


def _fused_projection(chosen, means: torch.Tensor) -> bool:
    """Projection and colours run compiled (one pass) where the compiled CPU compositing runs."""
    return chosen.name == "cpp" and means.device.type == "cpu"


def _covariances(chosen, quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) covariances; compiled beside the compiled projection (held to the torch code by
    tests/test_project_cpu.py)."""
    if _fused_projection(chosen, quats):
        from .backends.cpp import quat_scale_to_covar as compiled_quat_scale_to_covar

        return compiled_quat_scale_to_covar(quats, scales)
    return quat_scale_to_covar(quats, scales)


def _project_shade_composite(chosen, means, opacities, camera, covars, sh, sh_degree, view_transforms, background,
                             eps2d, near, far, colors=None) -> RenderOutput:
    """:func:`occfusion_core.render.backends.cpp.project_and_shade`, then the compositing; given
    ``colors`` replace the SH colours (then ``sh`` is a zero degree-0 stand-in)."""
    from .backends.cpp import project_and_shade

    means2d, conics, depths, radii, shaded = project_and_shade(
        means, covars, sh, sh_degree, camera.to(means.device, means.dtype), view_transforms, eps2d, near, far)
    return _composite(chosen, means2d, conics, shaded if colors is None else colors, opacities, depths, radii, camera,
                      background)


def _composite(chosen, means2d, conics, colors, opacities, depths, radii, camera, background) -> RenderOutput:
    # Depth rides along as a fourth channel: the same weights, no second pass.
    features = torch.cat([colors, depths[:, None]], dim=1)
    image, alpha = chosen.fn(means2d, conics, features, opacities, depths, radii, camera.width, camera.height)
    rgb, depth = image[..., :3], image[..., 3:]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii,
                        visible=(radii > 0).all(dim=-1))


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor``. A finite sum proves it in one reduction (NaN and inf propagate
    through sums); only a sum that overflowed or met one needs the element-wise test."""
    with torch.no_grad():
        return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _check_tensor(name: str, tensor: torch.Tensor, shape: tuple, reference: torch.Tensor) -> None:
    """Shape (-1 = any), dtype/device agreement with ``reference`` and finiteness, or ValueError."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != len(shape) or any(s != -1 and s != t for s, t in zip(shape, tensor.shape)):
        wanted = "(" + ", ".join("*" if s == -1 else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(tensor.shape)}")
    if tensor.dtype != reference.dtype or tensor.device != reference.device:
        raise ValueError(
            f"{name} is {tensor.dtype} on {tensor.device}; means is {reference.dtype} on {reference.device}"
        )
    if not _all_finite(tensor):
        raise ValueError(f"{name} contains NaN or inf")


def rasterize(
    means: torch.Tensor,
    opacities: torch.Tensor,
    camera: Camera,
    *,
    quats: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    covars: torch.Tensor | None = None,
    colors: torch.Tensor | None = None,
    sh: torch.Tensor | None = None,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    backend: str = "torch",
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
) -> RenderOutput:
    """Render 3D Gaussians into ``camera``.

    Args:
        means: (N, 3) world-space means (float32 or float64; every tensor must match it).
        opacities: (N,) opacities in [0, 1] (already activated).
        camera: the view (moved to the means' device and dtype here).
        quats: (N, 4) rotations (w, x, y, z), any norm; with ``scales``. Or give ``covars``.
        scales: (N, 3) per-axis standard deviations (already activated).
        covars: (N, 3, 3) world-space covariances instead of quats + scales.
        colors: (N, 3) view-independent colours. Or give ``sh``.
        sh: (N, K, 3) SH coefficients, K a square <= 16; viewed from the camera centre.
        sh_degree: SH bands to use (<= sqrt(K) - 1); default all stored.
        background: (3,) colour behind the Gaussians; None = black.
        backend: "torch", "cpp", "gsplat", "inria", or "auto" (fastest available for the device).
        eps2d: added to each 2D covariance's diagonal (pixels^2).
        near, far: Gaussians with camera depth outside (near, far) are not drawn.

    Returns:
        :class:`RenderOutput`.

    Raises:
        ValueError: bad shapes, dtypes, NaN/inf inputs (the message names the tensor), bad
            argument combinations, or an unknown backend.
    """
    if not isinstance(means, torch.Tensor) or means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be an (N, 3) tensor, got {getattr(means, 'shape', type(means))}")
    if not means.dtype.is_floating_point:
        raise ValueError(f"means must be floating point, got {means.dtype}")
    n = means.shape[0]
    _check_tensor("means", means, (n, 3), means)
    _check_tensor("opacities", opacities, (n,), means)
    gave_rotation_scale = quats is not None or scales is not None
    if (covars is not None and gave_rotation_scale) or (covars is None and (quats is None or scales is None)):
        raise ValueError("give either quats and scales, or covars")
    if covars is not None:
        _check_tensor("covars", covars, (n, 3, 3), means)
    else:
        _check_tensor("quats", quats, (n, 4), means)
        _check_tensor("scales", scales, (n, 3), means)
    if (colors is None) == (sh is None):
        raise ValueError("give either colors or sh")
    if colors is not None:
        _check_tensor("colors", colors, (n, 3), means)
        if sh_degree is not None:
            raise ValueError("sh_degree is only meaningful with sh")
    else:
        _check_tensor("sh", sh, (n, -1, 3), means)
        stored_degree = round(sh.shape[1] ** 0.5) - 1
        if (stored_degree + 1) ** 2 != sh.shape[1] or stored_degree > MAX_SH_DEGREE:
            raise ValueError(f"sh must hold (d+1)^2 <= 16 coefficients per channel, got {sh.shape[1]}")
        sh_degree = stored_degree if sh_degree is None else int(sh_degree)
        if not 0 <= sh_degree <= stored_degree:
            raise ValueError(f"sh_degree must be in [0, {stored_degree}] for sh of shape {tuple(sh.shape)}")
    if background is not None:
        _check_tensor("background", background, (3,), means)
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a Camera, got {type(camera).__name__}")
    for name, tensor in (("camera.K", camera.K), ("camera.w2c", camera.w2c)):
        if not _all_finite(tensor):
            raise ValueError(f"{name} contains NaN or inf")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")

    chosen = get_backend(backend, device=means.device)
    if chosen.kind == "full":
        return chosen.fn(
            means, opacities, camera, quats=quats, scales=scales, covars=covars, colors=colors, sh=sh,
            sh_degree=sh_degree, background=background, eps2d=eps2d, near=near, far=far,
        )

    if covars is None:
        covars = _covariances(chosen, quats, scales)
    if _fused_projection(chosen, means) and (colors is None and sh_degree == 0):
        # degree 0 has no viewing direction, so no gradient is lost by the compiled pass's constant ones
        return _project_shade_composite(chosen, means, opacities, camera, covars, sh, 0, None, background, eps2d,
                                        near, far)
    if _fused_projection(chosen, means) and colors is not None:
        return _project_shade_composite(chosen, means, opacities, camera, covars, means.new_zeros(n, 1, 3), 0, None,
                                        background, eps2d, near, far, colors=colors)
    proj = project_gaussians(means, covars, camera, eps2d=eps2d, near=near, far=far)
    if colors is None:
        view_dirs = means - camera.center.to(means.device, means.dtype)
        colors = sh_to_rgb(sh_degree, sh, view_dirs)
    return _composite(chosen, proj.means2d, proj.conics, colors, opacities, proj.depths, proj.radii, camera, background)
