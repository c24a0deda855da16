"""CUDA rasterizer backends: "gsplat" (occfusion_core.render.backends.gsplat_cuda) and "inria"
(occfusion_core.render.backends.inria_cuda).

Runs on any machine:

- the pure helpers: inria's projection matrix built from K against ``Camera.project`` under inria's
  pixel convention, its view matrix and camera centre, the NDC -> pixel scale of the means2D
  gradient, settings built from whichever fields the installed version declares;
- registration: a clear ImportError reason without CUDA or without the package;
- both wrappers end to end, on the CPU, against stand-ins for the CUDA libraries written from their
  sources (gsplat 1.5.3 ``rendering.py`` and kernels; 3DGS ``forward.cu``/``backward.cu``). The gsplat
  stand-in binds its arguments to the signature of the *installed* ``gsplat.rasterization``, so every
  keyword the wrapper passes must exist there, and composites from ``meta["means2d"]`` as gsplat does.
  The inria stand-in reads the camera from ``viewmatrix``/``projmatrix`` as the CUDA code does (row
  vectors), puts pixel centres at integer coordinates, does not normalise quaternions, clamps alpha
  at 0.99, evaluates whole tiles of a 3-sigma square, wants (N, 3) means2D and (N, 1) opacities, and
  returns the means2D gradient in NDC units. These check the glue (names, layouts, conventions,
  gradient routing, version handling), not the kernels.

Needs CUDA and the package (skipped otherwise, with the reason): the real libraries against the torch
reference backend, forward and gradients, and the means2d gradient against finite differences.

Tolerances. The torch reference runs in float64 on CPU copies; the backends compute in float32.
Scenes are built so that the footprint rules of all backends draw the same (Gaussian, pixel) pairs:
means project inside the image (no Jacobian clamping, principal point within 0.35-0.65 of the image)
and opacities are at most 0.3. Outside inria's square of half-side 3 sqrt(lambda_max) a Gaussian has
alpha <= o exp(-4.5) = 0.0111 o, below 1/255 = 0.00392 only for o < 0.353; outside the torch
backend's 3.33-sigma box alpha <= o exp(-5.54) < 1/255 for any o <= 1, and outside gsplat's
opacity-aware box alpha < 1/255 by construction; so gsplat's and inria's whole-tile evaluation adds
nothing. o <= 0.3 also keeps inria's 0.99 alpha clamp out of reach, and these scenes never reach the
T <= 1e-4 stop where inria's strict test would differ. inria's tile rectangle can also end one pixel
row or column short of its square (``getRect``, see inria_cuda), at alpha up to ~0.1 o, so scenes
for inria leave out the ~1/8 of Gaussians where that happens (:func:`without_inria_tile_edge_cases`).

- stand-ins (float32, exact exp): images within 1e-5 and gradients within 5e-5 of their scale
  (max |reference|, at least 1): float32 rounding of the projection and of sums over a few layers
  (observed: ~1e-6 and ~6e-6).
- CUDA: images within 2e-4 of their scale except at most 0.2 % of the pixels, which may be off by
  up to 1.2e-2: gsplat uses fast-math ``__expf`` and both use float32 atomics, and where a Gaussian's
  alpha lies within rounding of 1/255 one backend draws it and the other does not, changing that
  pixel by about alpha (c + everything behind) <= 2/255 of the scale. Gradients within 2e-3 of their
  scale: such a flip moves a Gaussian's gradient by a fraction of one pixel's share.
- means2d gradient of a single Gaussian: within 3 % of central differences (step 0.05 px; the shift
  of the 3D mean also changes the projected covariance by ~0.2 %) and within 2e-3 (CUDA) or 1e-4
  (stand-ins) of the reference backend's, relative.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import math
import sys
import types

import pytest
import torch

from occfusion_core.render import backends
from occfusion_core.render.backends import gsplat_cuda, inria_cuda
from occfusion_core.render.camera import Camera, look_at
from occfusion_core.render.projection import project_gaussians, quat_scale_to_covar
from occfusion_core.render.rasterize import RenderOutput, rasterize
from occfusion_core.render.sh import eval_sh

ALPHA_MIN = 1.0 / 255.0
TILE = 16
FAKE_TOL = {"image": 1e-5, "outlier": 1e-5, "max_outlier_fraction": 0.0, "grad": 5e-5}
CUDA_TOL = {"image": 2e-4, "outlier": 1.2e-2, "max_outlier_fraction": 2e-3, "grad": 2e-3}
# The fields of GaussianRasterizationSettings in graphdeco's original release, in the 3DGS release
# most forks (ashawkey's included) are based on, and in graphdeco's current one.
FIELDS_FIRST = ("image_height", "image_width", "bg", "scale_modifier", "viewmatrix", "projmatrix", "sh_degree",
                "campos", "prefiltered", "debug")
FIELDS_3DGS = ("image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier", "viewmatrix",
               "projmatrix", "sh_degree", "campos", "prefiltered", "debug")
FIELDS_LATEST = FIELDS_3DGS + ("antialiasing",)


# ---------------------------------------------------------------- scenes, reference, comparison


def make_camera(width: int = 64, height: int = 48) -> Camera:
    """Off-centre principal point (within 0.35-0.65, see the module docstring) and fx != fy."""
    K = torch.tensor([[1.1 * width, 0.0, 0.45 * width], [0.0, 1.0 * width, 0.55 * height], [0.0, 0.0, 1.0]])
    return Camera(K, look_at((0.4, -0.3, -4.0), (0.0, 0.0, 0.0)), width, height)


def frustum_scene(n: int, seed: int, camera: Camera, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Gaussians whose means project at least 6 px inside the image, 3.2-4.8 m deep, opacities
    0.05-0.3, quaternions of random norm, degree-3 SH. All (N, ...) tensors in ``dtype`` on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    cam = camera.to("cpu", torch.float64)
    u = 6 + torch.rand(n, generator=gen, dtype=torch.float64) * (cam.width - 12)
    v = 6 + torch.rand(n, generator=gen, dtype=torch.float64) * (cam.height - 12)
    z = 3.2 + 1.6 * torch.rand(n, generator=gen, dtype=torch.float64)
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    points_cam = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=1)
    means = (points_cam - cam.t) @ cam.R  # inverse of p_cam = R p + t
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=gen, dtype=torch.float64),
        "scales": torch.exp(torch.empty(n, 3, dtype=torch.float64).uniform_(math.log(0.015), math.log(0.15),
                                                                           generator=gen)),
        "opacities": 0.05 + 0.25 * torch.rand(n, generator=gen, dtype=torch.float64),
        "colors": torch.rand(n, 3, generator=gen, dtype=torch.float64),
        "sh": 0.4 * torch.randn(n, 16, 3, generator=gen, dtype=torch.float64),
    }
    return {k: t.to(dtype) for k, t in scene.items()}


def without_inria_tile_edge_cases(scene: dict[str, torch.Tensor], camera: Camera) -> dict[str, torch.Tensor]:
    """``scene`` less the Gaussians that inria's ``getRect`` cuts short (see the inria_cuda docstring):
    those whose square's far edge q = mean - 0.5 + ceil(3 sqrt(lambda_max)) (inria pixels, lambda_max
    with inria's max(0.1, .) guard) lies within [16 k, 16 k + 1) of a tile boundary k >= 1, with a
    0.02 px margin for float32 rounding. About 2/16 of a random scene."""
    cam = camera.to("cpu", torch.float64)
    covars = quat_scale_to_covar(scene["quats"].double(), scene["scales"].double())
    proj = project_gaussians(scene["means"].double(), covars, cam)
    a, b, c = proj.conics.unbind(-1)
    det_conic = a * c - b * b
    cov_xx, cov_xy, cov_yy = c / det_conic, -b / det_conic, a / det_conic
    mid = 0.5 * (cov_xx + cov_yy)
    lambda_max = mid + torch.sqrt(torch.clamp(mid * mid - (cov_xx * cov_yy - cov_xy * cov_xy), min=0.1))
    far_edge = proj.means2d - 0.5 + torch.ceil(3.0 * torch.sqrt(lambda_max))[:, None]
    into_tile = far_edge - TILE * torch.floor(far_edge / TILE)
    cut = ((far_edge > TILE - 0.02) & ((into_tile < 1.02) | (into_tile > TILE - 0.02))).any(dim=-1)
    keep = torch.nonzero(~cut).squeeze(1)
    return {k: v.index_select(0, keep) for k, v in scene.items()}


def render_kwargs(scene: dict[str, torch.Tensor], variant: str) -> dict:
    """Keyword arguments of a full render for ``variant``: "quats+colors" or "covars+sh" (SH stored
    at degree 3, rendered at degree 2, so the unused band must get zero gradient)."""
    if variant == "quats+colors":
        return {"quats": scene["quats"], "scales": scene["scales"], "colors": scene["colors"]}
    if variant == "covars+sh":
        return {"covars": scene["covars"], "sh": scene["sh"], "sh_degree": 2}
    raise ValueError(variant)


def with_covars(scene: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    covars = quat_scale_to_covar(scene["quats"].double(), scene["scales"].double())
    return {**scene, "covars": covars.to(scene["means"].dtype)}


def render_with_grads(render, scene: dict, camera: Camera, variant: str, *, background=None, near=0.01, far=1e10,
                      seed: int = 11) -> dict[str, torch.Tensor]:
    """Render ``scene`` with ``render`` (the full-backend signature), backpropagate a random linear
    function of rgb, alpha and depth; return the outputs and every gradient (CPU float64)."""
    names = ["means", "opacities", *(k for k, v in render_kwargs(scene, variant).items() if torch.is_tensor(v))]
    leaves = {k: scene[k].detach().clone().requires_grad_(True) for k in names}
    kwargs = {"quats": None, "scales": None, "covars": None, "colors": None, "sh": None, "sh_degree": None,
              **{k: leaves.get(k, v) for k, v in render_kwargs(scene, variant).items()}}
    bg = None if background is None else background.to(scene["means"])
    out = render(leaves["means"], leaves["opacities"], camera.to(scene["means"].device), background=bg, eps2d=0.3,
                 near=near, far=far, **kwargs)
    assert isinstance(out, RenderOutput)
    height, width = camera.height, camera.width
    assert out.rgb.shape == (height, width, 3) and out.alpha.shape == (height, width, 1)
    assert out.depth.shape == (height, width, 1) and out.means2d.shape == (len(scene["means"]), 2)
    assert out.radii.shape == (len(scene["means"]), 2) and out.radii.dtype == torch.int32
    assert out.rgb.dtype == scene["means"].dtype and out.means2d.dtype == scene["means"].dtype
    out.means2d.retain_grad()
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) for t in (out.rgb, out.alpha, out.depth)]
    loss = sum((t * g).sum() for t, g in zip((out.rgb, out.alpha, out.depth), upstream))
    loss.backward()
    result = {"rgb": out.rgb, "alpha": out.alpha, "depth": out.depth, "means2d": out.means2d,
              "d/d means2d": out.means2d.grad, "radii": out.radii, "visible": out.visible}
    result.update({f"d/d {k}": leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                   for k, leaf in leaves.items()})
    return {k: v.detach().cpu().double() if v.is_floating_point() else v.cpu() for k, v in result.items()}


def reference_render(scene: dict, camera: Camera, variant: str, **kwargs) -> dict[str, torch.Tensor]:
    """The torch backend in float64 on CPU copies of ``scene``."""
    scene64 = {k: v.detach().cpu().double() for k, v in scene.items()}
    return render_with_grads(lambda *a, **k: rasterize(*a, backend="torch", **k), scene64, camera, variant, **kwargs)


def scale_of(expected: torch.Tensor) -> float:
    return max(1.0, float(expected.abs().max())) if expected.numel() else 1.0


def assert_image_close(actual, expected, name: str, *, image, outlier, max_outlier_fraction, **_) -> None:
    """|actual - expected| <= image * scale everywhere but at most ``max_outlier_fraction`` of the
    pixels, which stay within outlier * scale (scale = max(1, max |expected|))."""
    scale = scale_of(expected)
    error = (actual - expected).abs().amax(dim=-1)  # per pixel
    outliers = int((error > image * scale).sum())
    worst = float(error.max())
    assert worst <= outlier * scale, f"{name}: max abs error {worst:.3g} > {outlier:.1g} * {scale:.3g}"
    assert outliers <= max_outlier_fraction * error.numel(), (
        f"{name}: {outliers} pixels off by more than {image:.1g} * {scale:.3g} (worst {worst:.3g})")


def assert_grad_close(actual, expected, name: str, *, grad, **_) -> None:
    scale = scale_of(expected)
    worst = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert worst <= grad * scale, f"{name}: max abs error {worst:.3g} > {grad:.1g} * {scale:.3g}"


def assert_matches_reference(result: dict, reference: dict, tol: dict) -> None:
    assert reference["visible"].all(), "scene meant to be fully visible"
    assert torch.equal(result["visible"], reference["visible"])
    assert reference["alpha"].max() > 0.4, "scene meant to overlap (o <= 0.3: at least two layers)"
    for name in ("rgb", "alpha", "depth"):
        assert_image_close(result[name], reference[name], name, **tol)
    torch.testing.assert_close(result["means2d"], reference["means2d"], rtol=0, atol=1e-3)
    for name in reference:
        if name.startswith("d/d "):
            assert_grad_close(result[name], reference[name], name, **tol)


# ---------------------------------------------------------------- compositing of the stand-ins


def dense_composite(means2d, conics, features, opacities, depths, footprint, *, pixel_offset: float,
                    alpha_max: float, stop_inclusive: bool):
    """Front-to-back compositing over every pixel of each Gaussian's ``footprint``, differentiable.

    Args:
        means2d (N, 2), conics (N, 3), features (N, C), opacities (N,), depths (N,): projected Gaussians.
        footprint: (N, H, W) bool, the pixels a Gaussian is evaluated at (its tiles).
        pixel_offset: pixel (row i, col j) sits at (j + offset, i + offset).
        alpha_max: alpha clamp; stop_inclusive: stop at T <= 1e-4 (gsplat) or T < 1e-4 (inria).

    Returns:
        (H, W, C) features, (H, W, 1) alpha = 1 - T_final.
    """
    n, height, width = footprint.shape
    dtype = means2d.dtype
    px = torch.arange(width, dtype=dtype) + pixel_offset
    py = torch.arange(height, dtype=dtype)[:, None] + pixel_offset
    transmittance = torch.ones(height, width, dtype=dtype)
    stopped = torch.zeros(height, width, dtype=torch.bool)
    image = torch.zeros(height, width, features.shape[1], dtype=dtype)
    order_keys = depths.detach().tolist()
    for i in sorted(range(n), key=lambda k: (order_keys[k], k)):
        if not bool(footprint[i].any()):
            continue
        dx, dy = means2d[i, 0] - px, means2d[i, 1] - py
        sigma = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
        alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), alpha_max)
        with torch.no_grad():
            drawn = footprint[i] & ~stopped & (sigma >= 0) & (alpha >= ALPHA_MIN)
            next_t = transmittance * (1 - alpha)
            stop = drawn & ((next_t <= 1e-4) if stop_inclusive else (next_t < 1e-4))
            take = drawn & ~stop
            stopped |= stop
        image = image + torch.where(take, alpha * transmittance, 0.0)[..., None] * features[i]
        transmittance = torch.where(take, transmittance * (1 - alpha), transmittance)
    return image, (1 - transmittance)[..., None]


def tile_footprint(tile_min: torch.Tensor, tile_max: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(N, 2) first and (N, 2) past-the-end tile (x, y) -> (N, H, W) bool pixels of those tiles."""
    cols = torch.arange(width) // TILE
    rows = torch.arange(height) // TILE
    in_x = (cols[None] >= tile_min[:, :1]) & (cols[None] < tile_max[:, :1])
    in_y = (rows[None] >= tile_min[:, 1:]) & (rows[None] < tile_max[:, 1:])
    return in_y[:, :, None] & in_x[:, None, :]


# ---------------------------------------------------------------- gsplat stand-in


def fake_gsplat_rasterization(signature: inspect.Signature, *args, **kwargs):
    """``gsplat.rasterization`` for one camera, unpacked, "RGB+D", in torch (see the module docstring);
    ``signature`` is the installed ``gsplat.rasterization``'s."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    bound = signature.bind(*args, **kwargs)  # TypeError on a name the installed gsplat does not have
    bound.apply_defaults()
    a = bound.arguments
    assert a["packed"] is False and a["render_mode"] == "RGB+D" and a["backgrounds"] is None
    assert a["rasterize_mode"] == "classic" and a["camera_model"] == "pinhole" and not a["absgrad"]
    means, opacities, colors = a["means"], a["opacities"], a["colors"]
    n, width, height = means.shape[0], a["width"], a["height"]
    assert a["viewmats"].shape == (1, 4, 4) and a["Ks"].shape == (1, 3, 3) and opacities.shape == (n,)
    for name in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "covars"):
        assert a[name] is None or a[name].dtype == torch.float32, f"gsplat's kernels are float32: {name}"
    if a["covars"] is not None:
        upper = a["covars"][..., [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]  # all gsplat reads
        xx, xy, xz, yy, yz, zz = upper.unbind(-1)
        covars = torch.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], dim=-1).reshape(n, 3, 3)
    else:
        covars, _ = _quat_scale_to_covar_preci(a["quats"], a["scales"], compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, a["viewmats"], a["Ks"], width, height, eps2d=a["eps2d"], near_plane=a["near_plane"],
        far_plane=a["far_plane"])
    with torch.no_grad():  # the kernel's opacity-aware box (ProjectionEWA3DGSFused.cu)
        ca, cb, cc = conics[0].unbind(-1)
        det = ca * cc - cb * cb
        sigma_xy = torch.stack([cc / det, ca / det], dim=-1).sqrt()
        keep = (radii[0] > 0).all(dim=-1) & (opacities >= ALPHA_MIN)
        extend = torch.sqrt(2.0 * torch.log((opacities * 255.0).clamp(min=1.0))).clamp(max=3.33)
        box = torch.ceil(extend[:, None] * sigma_xy)
        centre = means2d[0]
        keep &= ((centre + box > 0) & (centre - box < torch.tensor([width, height]))).all(dim=-1)
        tight_radii = torch.where(keep[:, None], box, 0.0).to(torch.int32)[None]
    if a["sh_degree"] is not None:
        campos = torch.inverse(a["viewmats"])[0, :3, 3]
        colors = torch.clamp_min(_spherical_harmonics(a["sh_degree"], means - campos, colors) + 0.5, 0.0)
    features = torch.cat([colors, depths[0][:, None]], dim=1)
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    with torch.no_grad():
        tile_min = torch.floor((means2d[0] - tight_radii[0]) / TILE).long()
        tile_max = torch.ceil((means2d[0] + tight_radii[0]) / TILE).long()
        limit = torch.tensor([tiles_x, tiles_y])
        tile_min, tile_max = tile_min.clamp(min=0).minimum(limit), tile_max.clamp(min=0).minimum(limit)
        footprint = tile_footprint(tile_min, tile_max, width, height) & keep[:, None, None]
    image, alpha = dense_composite(means2d[0], conics[0], features, opacities, depths[0], footprint, pixel_offset=0.5,
                                   alpha_max=0.999, stop_inclusive=True)
    return image[None], alpha[None], {"means2d": means2d, "radii": tight_radii, "depths": depths, "conics": conics}


@pytest.fixture
def fake_gsplat(monkeypatch):
    gsplat = pytest.importorskip("gsplat")
    signature = inspect.signature(gsplat.rasterization)
    monkeypatch.setattr(gsplat, "rasterization", functools.partial(fake_gsplat_rasterization, signature))
    return gsplat_cuda.rasterize_gsplat


# ---------------------------------------------------------------- inria stand-in


def make_fake_inria(n_outputs: int = 4, fields: tuple[str, ...] = FIELDS_LATEST, extras_without_z_grad: bool = False):
    """A ``diff_gaussian_rasterization`` module in torch. ``n_outputs``: 2 (color, radii), 3 (+ inverse
    depth), 4 (+ depth, alpha as ashawkey's fork). ``extras_without_z_grad``: the fork's depth carries
    no gradient to the Gaussians' z, as in its early builds."""
    settings_cls = collections.namedtuple("GaussianRasterizationSettings", fields)

    class GaussianRasterizer(torch.nn.Module):
        calls = 0

        def __init__(self, raster_settings):
            super().__init__()
            self.raster_settings = raster_settings

        def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None, rotations=None,
                    cov3D_precomp=None):
            type(self).calls += 1
            s = self.raster_settings
            n, width, height = means3D.shape[0], s.image_width, s.image_height
            assert (shs is None) != (colors_precomp is None)
            assert (cov3D_precomp is None) == (scales is not None and rotations is not None)
            assert means2D.shape == (n, 3) and opacities.shape == (n, 1), "inria's backward returns these shapes"
            for t in (means3D, means2D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp, s.bg,
                      s.viewmatrix, s.projmatrix, s.campos):
                assert t is None or (t.dtype == torch.float32 and t.is_contiguous()), "inria's kernels read float32"
            ones = means3D.new_ones(n, 1)
            points = torch.cat([means3D, ones], dim=1)
            p_view = (points @ s.viewmatrix)[:, :3]  # row vectors, as transformPoint4x3
            clip = points @ s.projmatrix
            ndc = clip[:, :2] / (clip[:, 3:] + 1e-7)
            size = torch.tensor([float(width), float(height)])
            xy = ((ndc + 1.0) * size - 1.0) * 0.5  # ndc2Pix: pixel centres at integer coordinates
            # The screen-space gradient lands on means2D in NDC units (ddelx_dx = 0.5 W).
            xy = xy + (means2D[:, :2] - means2D[:, :2].detach()) * (0.5 * size)
            if cov3D_precomp is not None:
                xx, xy_, xz, yy, yz, zz = cov3D_precomp.unbind(-1)
                cov3d = torch.stack([xx, xy_, xz, xy_, yy, yz, xz, yz, zz], dim=-1).reshape(n, 3, 3)
            else:  # computeCov3D: the quaternion is used as given, not normalised
                r, x, y, z = rotations.unbind(-1)
                rot = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
                                   2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
                                   2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y)], -1)
                rot = rot.reshape(n, 3, 3)
                m = rot * scales[:, None, :]
                cov3d = m @ m.transpose(1, 2)
            w_rot = s.viewmatrix[:3, :3].T
            focal_x, focal_y = width / (2 * s.tanfovx), height / (2 * s.tanfovy)
            tz = p_view[:, 2]
            tx = (p_view[:, 0] / tz).clamp(-1.3 * s.tanfovx, 1.3 * s.tanfovx) * tz
            ty = (p_view[:, 1] / tz).clamp(-1.3 * s.tanfovy, 1.3 * s.tanfovy) * tz
            zeros = torch.zeros_like(tz)
            jac = torch.stack([focal_x / tz, zeros, -focal_x * tx / tz**2,
                               zeros, focal_y / tz, -focal_y * ty / tz**2], -1).reshape(n, 2, 3)
            cov2d = jac @ w_rot @ cov3d @ w_rot.T @ jac.transpose(1, 2) + 0.3 * torch.eye(2)
            a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
            det = a * c - b * b
            conics = torch.stack([c / det, -b / det, a / det], dim=-1)
            with torch.no_grad():  # preprocessCUDA: radius, in_frustum, getRect
                mid = 0.5 * (a + c)
                lambda_max = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
                radius = torch.ceil(3.0 * torch.sqrt(lambda_max))
                grid = torch.tensor([math.ceil(width / TILE), math.ceil(height / TILE)])
                rect_min = torch.trunc((xy - radius[:, None]) / TILE).long().clamp(min=0).minimum(grid)
                rect_max = torch.trunc((xy + radius[:, None] + TILE - 1) / TILE).long().clamp(min=0).minimum(grid)
                keep = (tz > 0.2) & (det != 0) & ((rect_max - rect_min).prod(dim=-1) > 0)
                radii = torch.where(keep, radius, 0.0).to(torch.int32)
                footprint = tile_footprint(rect_min, rect_max, width, height) & keep[:, None, None]
            if shs is not None:
                colors = torch.clamp_min(eval_sh(s.sh_degree, shs, means3D - s.campos) + 0.5, 0.0)
            else:
                colors = colors_precomp
            depth = tz.detach() if extras_without_z_grad else tz
            features = torch.cat([colors, depth[:, None], 1.0 / tz.detach()[:, None]], dim=1)
            image, alpha = dense_composite(xy, conics, features, opacities[:, 0], tz, footprint, pixel_offset=0.0,
                                           alpha_max=0.99, stop_inclusive=False)
            color = (image[..., :3] + (1 - alpha) * s.bg).permute(2, 0, 1)
            extras = {2: (), 3: (image[..., 4:5].permute(2, 0, 1),),
                      4: (image[..., 3:4].permute(2, 0, 1), alpha.permute(2, 0, 1))}[n_outputs]
            return (color, radii, *extras)

    module = types.ModuleType("diff_gaussian_rasterization")
    module.GaussianRasterizationSettings = settings_cls
    module.GaussianRasterizer = GaussianRasterizer
    return module


@pytest.fixture
def install_fake_inria(monkeypatch):
    """Returns a function that installs a stand-in module (see :func:`make_fake_inria`) and returns it."""
    monkeypatch.setattr(inria_cuda, "_FORK_EXTRAS_CHECKED", {})

    def install(**kwargs):
        module = make_fake_inria(**kwargs)
        monkeypatch.setitem(sys.modules, "diff_gaussian_rasterization", module)
        return module

    return install


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_inria_projection_matrix_maps_points_like_camera_project(skew):
    camera = make_camera(80, 60).to("cpu", torch.float64)
    camera.K[0, 1] = skew
    gen = torch.Generator().manual_seed(0)
    points_cam = (torch.rand(200, 3, generator=gen, dtype=torch.float64) * torch.tensor([4.0, 3.0, 6.0])
                  - torch.tensor([2.0, 1.5, -0.5]))
    points = (points_cam - camera.t) @ camera.R
    view = inria_cuda.inria_view(camera)
    homogeneous = torch.cat([points, torch.ones(200, 1, dtype=torch.float64)], dim=1)
    clip = homogeneous @ view.projmatrix  # row vectors, as inria's transformPoint4x4
    ndc = clip[:, :2] / clip[:, 3:]
    size = torch.tensor([80.0, 60.0], dtype=torch.float64)
    inria_pixels = ((ndc + 1.0) * size - 1.0) * 0.5  # ndc2Pix; pixel (j, i) centred at (j, i)
    expected, depth = camera.project(points)  # pixel (j, i) centred at (j + 0.5, i + 0.5)
    torch.testing.assert_close(inria_pixels + 0.5, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(clip[:, 3], depth, rtol=0, atol=1e-12)  # w = camera z
    torch.testing.assert_close((homogeneous @ view.viewmatrix)[:, :3], camera.world_to_camera(points),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(view.campos, camera.center)
    # inria's focal lengths, W / (2 tanfovx) and H / (2 tanfovy), are K's.
    assert 80 / (2 * view.tanfovx) == pytest.approx(float(camera.K[0, 0]), rel=1e-12)
    assert 60 / (2 * view.tanfovy) == pytest.approx(float(camera.K[1, 1]), rel=1e-12)


def test_projection_matrix_entries_follow_the_reference():
    """GauHuman's released code, utils/graphics_utils.py: getProjectionMatrix_refine: P00 = 2fx/W,
    P02 = -1 + 2cx/W, P11 = 2fy/H, P12 = -1 + 2cy/H, P22 = (f+n)/(f-n), P23 = -2fn/(f-n), P32 = 1
    with n = 0.001, f = 1000."""
    K = torch.tensor([[500.0, 0.0, 300.0], [0.0, 520.0, 200.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    P = inria_cuda.projection_matrix_from_K(K, 640, 480)
    n, f = 0.001, 1000.0
    expected = torch.tensor([[1000 / 640, 0, -1 + 600 / 640, 0], [0, 1040 / 480, -1 + 400 / 480, 0],
                             [0, 0, (f + n) / (f - n), -2 * f * n / (f - n)], [0, 0, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(P, expected, rtol=1e-12, atol=0)


def test_screen_space_sink_turns_inria_ndc_gradient_into_pixel_gradient():
    width, height = 64, 48
    gen = torch.Generator().manual_seed(1)
    means2d = (torch.rand(10, 2, generator=gen, dtype=torch.float64) * 50).requires_grad_(True)
    sink = inria_cuda.screen_space_sink(means2d, width, height)
    assert sink.shape == (10, 3) and sink.dtype == torch.float32
    to_ndc = torch.tensor([2 / width, 2 / height], dtype=torch.float64)
    torch.testing.assert_close(sink[:, :2].double(), means2d.detach() * to_ndc)
    assert torch.equal(sink[:, 2], torch.zeros(10))
    pixel_grad = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    # What inria's backward hands to means2D: dL/dpixel * (W/2, H/2), and 0 in the third column.
    ndc_grad = torch.cat([pixel_grad * torch.tensor([width / 2, height / 2], dtype=torch.float64),
                          torch.zeros(10, 1, dtype=torch.float64)], dim=1).float()
    sink.backward(ndc_grad)
    torch.testing.assert_close(means2d.grad, pixel_grad, rtol=1e-6, atol=1e-6)
    assert torch.equal(inria_cuda.ndc_per_pixel(width, height), torch.tensor([2 / width, 2 / height]))


@pytest.mark.parametrize("fields", [FIELDS_FIRST, FIELDS_3DGS, FIELDS_LATEST])
def test_settings_get_exactly_the_declared_fields(fields):
    settings_cls = collections.namedtuple("GaussianRasterizationSettings", fields)
    view = inria_cuda.InriaView(torch.eye(4), 2 * torch.eye(4), torch.ones(3), 0.4, 0.3)
    settings = inria_cuda.make_settings(settings_cls, inria_cuda._settings_values(view, 64, 48, 2, "cpu"))
    assert settings._fields == fields
    assert settings.image_width == 64 and settings.image_height == 48 and settings.sh_degree == 2
    assert settings.scale_modifier == 1.0 and settings.prefiltered is False and settings.debug is False
    assert torch.equal(settings.bg, torch.zeros(3)) and torch.equal(settings.projmatrix, 2 * torch.eye(4))
    if "tanfovx" in fields:
        assert (settings.tanfovx, settings.tanfovy) == (0.4, 0.3)
    if "antialiasing" in fields:
        assert settings.antialiasing is False


def test_settings_with_an_unknown_field():
    view = inria_cuda.InriaView(torch.eye(4), torch.eye(4), torch.zeros(3), 1.0, 1.0)
    values = inria_cuda._settings_values(view, 8, 8, 0, "cpu")
    unknown = collections.namedtuple("GaussianRasterizationSettings", FIELDS_LATEST + ("kernel_size",))
    with pytest.raises(RuntimeError, match="kernel_size"):
        inria_cuda.make_settings(unknown, values)
    # One with a default is left to it.
    defaulted = collections.namedtuple("GaussianRasterizationSettings", FIELDS_LATEST + ("kernel_size",),
                                       defaults=(0.1,))
    assert inria_cuda.make_settings(defaulted, values).kernel_size == 0.1


# ---------------------------------------------------------------- registration


def test_gsplat_registration_reasons(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ImportError, match="needs CUDA|needs the 'gsplat' package"):
        gsplat_cuda.register_backend()
    monkeypatch.setitem(sys.modules, "gsplat", None)  # import gsplat -> ImportError
    with pytest.raises(ImportError, match=r"needs the 'gsplat' package.*pip install gsplat"):
        gsplat_cuda.register_backend()


def test_inria_registration_reasons(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setitem(sys.modules, "diff_gaussian_rasterization", None)
    with pytest.raises(ImportError, match=r"diff_gaussian_rasterization.*TORCH_CUDA_ARCH_LIST.*ashawkey"):
        inria_cuda.register_backend()
    monkeypatch.setitem(sys.modules, "diff_gaussian_rasterization", make_fake_inria())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ImportError, match="needs CUDA"):
        inria_cuda.register_backend()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "diff_gaussian_rasterization",
                        make_fake_inria(fields=FIELDS_LATEST + ("kernel_size",)))
    with pytest.raises(ImportError, match="kernel_size"):
        inria_cuda.register_backend()
    monkeypatch.setitem(sys.modules, "diff_gaussian_rasterization", make_fake_inria(fields=FIELDS_3DGS))
    inria_cuda.register_backend()
    registered = backends._REGISTRY["inria"]
    assert registered.kind == "full" and registered.devices == ("cuda",) and registered.fn is inria_cuda.rasterize_inria


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given where CUDA is missing")
@pytest.mark.parametrize("name", ["gsplat", "inria"])
def test_registry_reports_why_a_cuda_backend_is_unavailable(monkeypatch, name):
    monkeypatch.setattr(backends, "_LOAD_FAILURES", {})
    reason = rf"'{name}' is unavailable: ImportError: .*(CUDA|diff_gaussian_rasterization)"
    with pytest.raises(RuntimeError, match=reason):
        backends.resolve_backend(name)
    assert name not in backends._REGISTRY and name in backends._LOAD_FAILURES


# ---------------------------------------------------------------- wrappers on the stand-ins (CPU)


@pytest.mark.parametrize("variant,dtype", [("quats+colors", torch.float32), ("covars+sh", torch.float32),
                                           ("quats+colors", torch.float64)])
def test_gsplat_wrapper_matches_reference(fake_gsplat, variant, dtype):
    camera = make_camera()
    scene = with_covars(frustum_scene(170, seed=3, camera=camera, dtype=dtype))
    background = torch.tensor([0.2, 0.5, 0.9])
    result = render_with_grads(fake_gsplat, scene, camera, variant, background=background)
    reference = reference_render(scene, camera, variant, background=background)
    assert_matches_reference(result, reference, FAKE_TOL)
    assert (result["radii"] <= reference["radii"]).all()  # gsplat's box is opacity-aware
    if variant == "covars+sh":
        assert torch.equal(result["d/d sh"][:, 9:], torch.zeros_like(result["d/d sh"][:, 9:]))  # degree 3 unused


@pytest.mark.parametrize("n_outputs,variant,fields", [
    (2, "quats+colors", FIELDS_3DGS), (3, "covars+sh", FIELDS_LATEST), (4, "quats+colors", FIELDS_LATEST),
    (4, "covars+sh", FIELDS_3DGS)])
def test_inria_wrapper_matches_reference(install_fake_inria, n_outputs, variant, fields):
    module = install_fake_inria(n_outputs=n_outputs, fields=fields)
    camera = make_camera()
    scene = frustum_scene(170, seed=4, camera=camera, dtype=torch.float32)
    scene = with_covars(without_inria_tile_edge_cases(scene, camera))
    background = torch.tensor([0.9, 0.1, 0.4])
    reference = reference_render(scene, camera, variant, background=background)
    if n_outputs == 4:
        assert inria_cuda._fork_extras_problem(module, "cpu") is None  # the self-check, done here to count calls
    module.GaussianRasterizer.calls = 0
    result = render_with_grads(inria_cuda.rasterize_inria, scene, camera, variant, background=background)
    # The fork's own alpha and depth save the second pass.
    assert module.GaussianRasterizer.calls == (1 if n_outputs == 4 else 2)
    assert_matches_reference(result, reference, FAKE_TOL)
    assert torch.equal(result["radii"][:, 0], result["radii"][:, 1])  # inria's square


def test_inria_near_far_and_float64(install_fake_inria):
    install_fake_inria(n_outputs=2)
    camera = make_camera()
    scene = frustum_scene(170, seed=5, camera=camera, dtype=torch.float64)
    scene = with_covars(without_inria_tile_edge_cases(scene, camera))
    far = 4.2  # cuts off about a third of the scene
    result = render_with_grads(inria_cuda.rasterize_inria, scene, camera, "quats+colors", far=far)
    reference = reference_render(scene, camera, "quats+colors", far=far)
    beyond = ~reference["visible"]
    assert 40 < int(beyond.sum()) < 150
    assert torch.equal(result["radii"][beyond], torch.zeros_like(result["radii"][beyond]))
    assert torch.equal(result["d/d opacities"][beyond], torch.zeros_like(result["d/d opacities"][beyond]))
    reference["visible"] = torch.ones_like(reference["visible"])  # compare the rest as usual
    result["visible"] = torch.ones_like(result["visible"])
    assert_matches_reference(result, reference, FAKE_TOL)


def test_inria_fork_extras_without_z_gradient_fall_back(install_fake_inria, caplog):
    module = install_fake_inria(n_outputs=4, extras_without_z_grad=True)
    camera = make_camera()
    scene = without_inria_tile_edge_cases(frustum_scene(170, seed=6, camera=camera, dtype=torch.float32), camera)
    with caplog.at_level(logging.WARNING, logger=inria_cuda.__name__):
        result = render_with_grads(inria_cuda.rasterize_inria, scene, camera, "quats+colors")
        module.GaussianRasterizer.calls = 0
        render_with_grads(inria_cuda.rasterize_inria, scene, camera, "quats+colors")
    assert module.GaussianRasterizer.calls == 2  # colour pass + second pass, no new self-check
    warnings = [r for r in caplog.records if "disagree with a second colour pass" in r.getMessage()]
    assert len(warnings) == 1 and "d/d means" in warnings[0].getMessage()
    assert_matches_reference(result, reference_render(scene, camera, "quats+colors"), FAKE_TOL)


def test_wrappers_refuse_what_their_kernels_cannot_do(fake_gsplat, install_fake_inria):
    install_fake_inria()
    camera = make_camera()
    scene = frustum_scene(5, seed=7, camera=camera, dtype=torch.float32)
    skewed = make_camera()
    skewed.K[0, 1] = 2.0
    common = {"quats": scene["quats"], "scales": scene["scales"], "covars": None, "colors": scene["colors"],
              "sh": None, "sh_degree": None, "background": None, "near": 0.01, "far": 1e10}
    for render in (fake_gsplat, inria_cuda.rasterize_inria):
        with pytest.raises(ValueError, match="skew"):
            render(scene["means"], scene["opacities"], skewed, eps2d=0.3, **common)
    with pytest.raises(ValueError, match="eps2d fixed at 0.3"):
        inria_cuda.rasterize_inria(scene["means"], scene["opacities"], camera, eps2d=0.1, **common)


def check_means2d_gradient(render, device: str, tol: float) -> None:
    """One Gaussian 4.2 px left of and 0.8 px above the centre of pixel (row 16, col 24), loss = that
    pixel's colour: moving the Gaussian right or down brightens it, so both components of the
    pixel-space gradient are positive; their size must match central differences of the render
    under pixel shifts of the 3D mean, and the reference backend's means2d gradient."""
    K = torch.tensor([[60.0, 0.0, 22.0], [0.0, 60.0, 21.0], [0.0, 0.0, 1.0]])
    camera = Camera(K, torch.eye(4), 48, 40)
    depth = 3.0
    target_pixel = torch.tensor([20.3, 15.7], dtype=torch.float64)

    def scene_at(pixel: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = torch.cat([(pixel - K[:2, 2].double()) / K[0, 0].double() * depth,
                          torch.tensor([depth], dtype=torch.float64)])
        return {"means": mean[None], "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
                "scales": torch.full((1, 3), 0.1, dtype=torch.float64),
                "opacities": torch.tensor([0.3], dtype=torch.float64), "colors": torch.ones(1, 3, dtype=torch.float64)}

    def pixel_value(render_fn, scene, dtype, grad: bool):
        s = {k: v.to(device, dtype).requires_grad_(grad) for k, v in scene.items()}
        out = render_fn(s["means"], s["opacities"], camera.to(device), quats=s["quats"], scales=s["scales"],
                        covars=None, colors=s["colors"], sh=None, sh_degree=None, background=None, eps2d=0.3,
                        near=0.01, far=1e10)
        if grad:
            out.means2d.retain_grad()
        return out, out.rgb[16, 24].sum()

    out, value = pixel_value(render, scene_at(target_pixel), torch.float32, True)
    value.backward()
    grad = out.means2d.grad[0].double().cpu()
    assert (grad > 0).all(), grad
    step = 0.05
    for axis in (0, 1):
        shift = torch.zeros(2, dtype=torch.float64)
        shift[axis] = step
        with torch.no_grad():
            plus = pixel_value(render, scene_at(target_pixel + shift), torch.float32, False)[1]
            minus = pixel_value(render, scene_at(target_pixel - shift), torch.float32, False)[1]
        finite_difference = float(plus - minus) / (2 * step)
        assert float(grad[axis]) == pytest.approx(finite_difference, rel=0.03), (axis, grad, finite_difference)
    reference_fn = lambda *a, **k: rasterize(*a, backend="torch", **k)  # noqa: E731
    ref_out, ref_value = pixel_value(reference_fn, scene_at(target_pixel), torch.float64, True)
    ref_value.backward()
    torch.testing.assert_close(grad, ref_out.means2d.grad[0], rtol=tol, atol=0)


def test_means2d_gradient_on_stand_ins(fake_gsplat, install_fake_inria):
    check_means2d_gradient(fake_gsplat, "cpu", tol=1e-4)
    for n_outputs in (2, 4):
        install_fake_inria(n_outputs=n_outputs)
        check_means2d_gradient(inria_cuda.rasterize_inria, "cpu", tol=1e-4)


def test_gsplat_means2d_grad_accumulates_and_ignores_dropped_outputs(fake_gsplat):
    camera = make_camera(32, 24)
    scene = frustum_scene(30, seed=8, camera=camera, dtype=torch.float32)
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out = fake_gsplat(leaves["means"], leaves["opacities"], camera, quats=leaves["quats"], scales=leaves["scales"],
                      covars=None, colors=leaves["colors"], sh=None, sh_degree=None, background=None, eps2d=0.3,
                      near=0.01, far=1e10)
    assert out.means2d.is_leaf and out.means2d.requires_grad
    out.rgb.sum().backward(retain_graph=True)
    first = out.means2d.grad.clone()
    assert first.abs().sum() > 0
    out.rgb.sum().backward(retain_graph=True)
    torch.testing.assert_close(out.means2d.grad, 2 * first)
    rgb = out.rgb
    del out  # the hook holds the output weakly: a later backward must not fail
    rgb.sum().backward()
    with torch.no_grad():
        plain = fake_gsplat(scene["means"], scene["opacities"], camera, quats=scene["quats"], scales=scene["scales"],
                            covars=None, colors=scene["colors"], sh=None, sh_degree=None, background=None, eps2d=0.3,
                            near=0.01, far=1e10)
    assert not plain.means2d.requires_grad


# ---------------------------------------------------------------- the real CUDA libraries


def require_cuda_backend(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: torch.cuda.is_available() is False")
    try:
        backends.resolve_backend(name, device="cuda")
    except RuntimeError as err:
        pytest.skip(str(err))


def cuda_render(name: str):
    return lambda *a, **k: rasterize(*a, backend=name, **k)


@pytest.mark.parametrize("name", ["gsplat", "inria"])
@pytest.mark.parametrize("variant,dtype", [("quats+colors", torch.float32), ("covars+sh", torch.float32),
                                           ("quats+colors", torch.float64)])
def test_cuda_backend_matches_reference(name, variant, dtype):
    require_cuda_backend(name)
    camera = make_camera(96, 72)
    scene = frustum_scene(600, seed=9, camera=camera, dtype=dtype)
    if name == "inria":
        scene = without_inria_tile_edge_cases(scene, camera)
    scene = with_covars(scene)
    cuda_scene = {k: v.cuda() for k, v in scene.items()}
    background = torch.tensor([0.2, 0.5, 0.9])
    result = render_with_grads(cuda_render(name), cuda_scene, camera, variant, background=background)
    reference = reference_render(scene, camera, variant, background=background)
    assert_matches_reference(result, reference, CUDA_TOL)


@pytest.mark.parametrize("name", ["gsplat", "inria"])
def test_cuda_backend_means2d_gradient(name):
    require_cuda_backend(name)
    check_means2d_gradient(cuda_render(name), "cuda", tol=CUDA_TOL["grad"])


def test_installed_inria_fork_alpha_and_depth_are_exact():
    """With a fork that returns its own alpha and depth, they must agree with the second pass;
    otherwise every render pays for the second pass (and its first render logs why)."""
    require_cuda_backend("inria")
    import diff_gaussian_rasterization as dgr

    problem = inria_cuda._compare_fork_extras(dgr, torch.device("cuda"))
    if problem is not None and "outputs, not (color, radii, depth" in problem:
        pytest.skip(f"the installed build returns no alpha/depth of its own: {problem}")
    assert problem is None, f"upgrade diff_gaussian_rasterization (ashawkey's fork): {problem}"
