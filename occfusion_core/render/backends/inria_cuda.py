"""Full rasterizer backend "inria": the whole render by ``diff_gaussian_rasterization`` (3DGS's CUDA
rasterizer, graphdeco-inria's official build or ashawkey's fork with depth and alpha) on a CUDA device.

Install (needs a *devel* CUDA image: nvcc of torch's CUDA version, CUDA_HOME set)::

    TORCH_CUDA_ARCH_LIST="9.0" pip install --no-build-isolation \\
        git+https://github.com/ashawkey/diff-gaussian-rasterization

with ``TORCH_CUDA_ARCH_LIST`` set to your GPU ("8.0" A100, "8.6" RTX 30xx, "8.9" RTX 40xx/L4,
"9.0" H100/H200). ashawkey's fork is what OccFusion/GauHuman ship ("alpha mask loss version");
``git+https://github.com/graphdeco-inria/diff-gaussian-rasterization`` works too (one more pass, below).

Versions, told apart by the number of outputs of ``GaussianRasterizer.forward``:

- 2, ``(color, radii)``: graphdeco's original release;
- 3, ``(color, radii, x)``: graphdeco's newer builds (x = inverse depth sum_i w_i / z_i) or early
  depth forks (x = sum_i w_i z_i, in some without a backward): x is never used;
- 4, ``(color, radii, depth, alpha)``: ashawkey's fork, depth = sum_i w_i z_i and alpha = 1 - T_final
  (its ``renderCUDA``). Early builds of that fork had a wrong alpha gradient and no gradient from
  depth to the Gaussians' z, so on first use a self-check renders a small scene both ways (below)
  and compares values and gradients; these outputs are used only when it passes, otherwise one
  warning is logged and the second pass is used.

Alpha and depth by a second pass: ``colors_precomp`` = (1, z, 0) per Gaussian (z its camera depth,
differentiable), background 0, same geometry. Its colour output is exactly sum_i w_i (1, z_i, 0):
channel 0 is alpha (sum_i alpha_i T_i = 1 - T_final) and channel 1 the accumulated depth
sum_i w_i z_i of the contract; gradients reach the Gaussians through both passes. It costs one
more rasterization, forward and backward.

Camera (GauHuman's released code, ``utils/graphics_utils.py: getProjectionMatrix_refine``; inria
uses row vectors): ``viewmatrix`` = w2c^T, ``projmatrix`` = (P w2c)^T with P from K by
:func:`projection_matrix_from_K` (principal point included), znear 0.001, zfar 1000, ``tanfovx`` = W / (2 fx),
``tanfovy`` = H / (2 fy) (which gives inria's focal lengths back exactly), ``campos`` = camera centre.
Inria puts pixel (j, i) at integer coordinates and a point at ndc2Pix(ndc) = u - 0.5 for our continuous
coordinate u, so both conventions place every Gaussian at the same offset from every pixel centre.

``means2d``: inria returns its screen-space gradient through a ``means2D`` (N, 3) input whose values
it ignores, and that gradient is taken w.r.t. normalised device coordinates: dL/dndc =
dL/dpixel * (W/2, H/2) (``ddelx_dx = 0.5 * W`` in its backward; why 3DGS's densification threshold
is 2e-4). ``RenderOutput.means2d`` is a leaf (N, 2) holding the projected centres in pixels, and
inria receives it as ``means2d * (2/W, 2/H)`` (plus a zero third column), so the chain rule leaves
the pixel-space gradient in ``means2d.grad``, the same quantity as every other backend gives.
This ``means2d`` is detached from ``means`` (inria already turns the screen-space gradient into a
means gradient itself; an attached one would count it twice).

Other inputs: quaternions are normalised here (inria's CUDA code does not); ``covars`` are
symmetrised and passed as inria's 6 upper-triangle entries; ``opacities`` go in as (N, 1) (inria
returns an (N, 1) gradient); everything is computed in float32 and cast back to the input dtype.

Where inria departs from the contract of ``rasterize_to_pixels``:

- eps2d is fixed at 0.3 px^2 in its kernel: other values raise ValueError.
- it culls z <= 0.2 itself, so the effective near plane is max(near, 0.2); ``near`` and ``far`` are
  applied on top by zeroing the opacity of Gaussians outside (near, far) (their radii are set to 0).
- alpha is clamped at 0.99 (not 0.999), and a pixel stops at T < 1e-4 (not <= 1e-4).
- each Gaussian covers the 16x16 tiles touched by a square of half-side ceil(3 sqrt(lambda_max))
  (not the box of ceil(3.33 sigma) per axis), and ``radii`` repeat that square's half-side on both
  axes. Outside the square alpha <= o exp(-4.5) = 0.0111 o, below 1/255 only for o < 0.353: opaque
  Gaussians lose a faint fringe (alpha < 0.011) that the torch backend draws.
- its tile rectangle (``getRect``) ends at tile (int)((q + 15) / 16) for the square's far edge q =
  mean + radius (inria pixels): when q lies less than a pixel past a tile boundary, the first
  row or column of the next tile, at distance (radius - 1, radius] from the mean, is not drawn even
  though it is inside the square, where alpha can reach ~0.1 o for small Gaussians.
- the projection Jacobian clamps x/z to +-1.3 tanfovx (symmetric), the torch backend to the image
  bounds +- 0.3 tanfovx; they differ only for Gaussians outside the image when the principal point
  is off-centre. Camera skew is refused (ValueError): the covariance would ignore it.
- exponentials are float32 CUDA ``exp``; values differ from the torch backend by rounding, except
  where a Gaussian's alpha is within rounding of 1/255.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..camera import Camera

log = logging.getLogger(__name__)

COMPUTE_DTYPE = torch.float32
# The low-pass filter inria adds to every 2D covariance (its computeCov2D), pixels^2.
INRIA_EPS2D = 0.3
# GauHuman's released code, utils/graphics_utils.py: getProjectionMatrix_refine.
ZNEAR, ZFAR = 0.001, 1000.0
# Upper-triangle order of inria's cov3D_precomp: xx, xy, xz, yy, yz, zz.
_TRIU_ROWS, _TRIU_COLS = [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]
# Self-check of a fork's own alpha and depth against the second pass: gradients may differ by the
# order of float32 atomic additions (~1e-6 relative); a wrong or missing gradient term is O(1).
SELF_CHECK_RTOL = 1e-3
# (id of the module's GaussianRasterizer, device type) -> None when the fork's alpha and depth passed
# the self-check, else the reason they did not.
_FORK_EXTRAS_CHECKED: dict[tuple[int, str], str | None] = {}


@dataclass(frozen=True)
class InriaView:
    """The camera as ``GaussianRasterizationSettings`` wants it (float32, on the render device).

    Attributes:
        viewmatrix: (4, 4) w2c^T (row-vector convention: p_cam = [p, 1] @ viewmatrix).
        projmatrix: (4, 4) (P w2c)^T: [p, 1] @ projmatrix is the clip-space point.
        campos: (3,) camera centre in world coordinates (SH viewing directions start here).
        tanfovx, tanfovy: W / (2 fx) and H / (2 fy).
    """

    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    campos: torch.Tensor
    tanfovx: float
    tanfovy: float


def projection_matrix_from_K(K: torch.Tensor, width: int, height: int,
                             znear: float = ZNEAR, zfar: float = ZFAR) -> torch.Tensor:
    """(4, 4) OpenGL-style projection P (column vectors) from OpenCV intrinsics.

    A camera-space point (x, y, z) maps to clip coordinates P [x, y, z, 1] with w = z and
    ndc_x = 2 u / W - 1, ndc_y = 2 v / H - 1 for its pixel coordinates (u, v) = K (x/z, y/z, 1).

    Args:
        K: (3, 3) intrinsics (skew K[0, 1] kept).
        width, height: image size in pixels.
        znear, zfar: clip planes (only the unused clip z depends on them).
    """
    fx, skew, cx = K[0, 0], K[0, 1], K[0, 2]
    fy, cy = K[1, 1], K[1, 2]
    P = torch.zeros(4, 4, dtype=K.dtype, device=K.device)
    P[0, 0] = 2.0 * fx / width
    P[0, 1] = 2.0 * skew / width
    P[0, 2] = -1.0 + 2.0 * cx / width
    P[1, 1] = 2.0 * fy / height
    P[1, 2] = -1.0 + 2.0 * cy / height
    P[2, 2] = (zfar + znear) / (zfar - znear)
    P[2, 3] = -2.0 * zfar * znear / (zfar - znear)
    P[3, 2] = 1.0
    return P


def inria_view(camera: Camera) -> InriaView:
    """The settings-side description of ``camera`` (kept in the camera's device and dtype)."""
    w2c = camera.w2c
    P = projection_matrix_from_K(camera.K, camera.width, camera.height)
    return InriaView(
        viewmatrix=w2c.T.contiguous(),
        projmatrix=(P @ w2c).T.contiguous(),
        campos=camera.center.contiguous(),
        tanfovx=float(camera.width / (2.0 * camera.K[0, 0])),
        tanfovy=float(camera.height / (2.0 * camera.K[1, 1])),
    )


def ndc_per_pixel(width: int, height: int, *, dtype=COMPUTE_DTYPE, device=None) -> torch.Tensor:
    """(2,) (2/W, 2/H): normalised device units per pixel. inria's means2D gradient is
    dL/dpixel divided by this factor."""
    return torch.tensor([2.0 / width, 2.0 / height], dtype=dtype, device=device)


def screen_space_sink(means2d: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The ``means2D`` argument for inria: (N, 2) pixel coordinates -> (N, 3) float32
    [means2d * (2/W, 2/H), 0].

    inria ignores the values and returns dL/dndc = dL/dpixel * (W/2, H/2) as this tensor's
    gradient; the scale here turns it back into dL/dpixel on ``means2d``.
    """
    scaled = means2d.to(COMPUTE_DTYPE) * ndc_per_pixel(width, height, device=means2d.device)
    return torch.cat([scaled, scaled.new_zeros(scaled.shape[0], 1)], dim=1)


def make_settings(settings_cls, values: dict):
    """Build ``settings_cls`` (a ``GaussianRasterizationSettings`` NamedTuple) from the fields it has.

    Versions differ in their fields (``debug`` and ``antialiasing`` were added over time, the first
    release had no ``tanfovx``/``tanfovy``): ``values`` holds every field we know, and only those
    the installed class declares are passed.

    Raises:
        RuntimeError: the class declares a field without default that we do not know.
    """
    fields = getattr(settings_cls, "_fields", None)
    if fields is None:
        raise RuntimeError(f"{settings_cls!r} is not a NamedTuple; unsupported diff_gaussian_rasterization")
    defaults = getattr(settings_cls, "_field_defaults", {})
    unknown = [name for name in fields if name not in values and name not in defaults]
    if unknown:
        raise RuntimeError(
            f"unsupported diff_gaussian_rasterization: GaussianRasterizationSettings wants {unknown}, "
            f"which this backend does not know how to fill (known: {sorted(values)})"
        )
    return settings_cls(**{name: values[name] for name in fields if name in values})


def _settings_values(view: InriaView, width: int, height: int, sh_degree: int, device) -> dict:
    """Every settings field of any known version, for :func:`make_settings`."""
    return {
        "image_height": int(height),
        "image_width": int(width),
        "tanfovx": view.tanfovx,
        "tanfovy": view.tanfovy,
        # Black: the background is composited outside, where alpha is known in every mode.
        "bg": torch.zeros(3, dtype=COMPUTE_DTYPE, device=device),
        "scale_modifier": 1.0,
        "viewmatrix": view.viewmatrix,
        "projmatrix": view.projmatrix,
        "sh_degree": int(sh_degree),
        "campos": view.campos,
        "prefiltered": False,
        "debug": False,
        "antialiasing": False,
    }


def _render(
    dgr,
    means: torch.Tensor,
    opacities: torch.Tensor,
    camera: Camera,
    *,
    quats: torch.Tensor | None,
    scales: torch.Tensor | None,
    covars: torch.Tensor | None,
    colors: torch.Tensor | None,
    sh: torch.Tensor | None,
    sh_degree: int | None,
    near: float,
    far: float,
    extras: str,
) -> dict[str, torch.Tensor]:
    """One render with module ``dgr``; no validation, no background.

    Args:
        extras: where alpha and depth come from: "fork" (the third and fourth outputs of a
            4-output build), "second_pass", or "auto" (the fork's when it has them and they passed
            :func:`_fork_extras_problem`, else the second pass).

    Returns:
        {"rgb" (H, W, 3), "alpha" (H, W, 1), "depth" (H, W, 1), "means2d" (N, 2) leaf,
        "radii" (N, 2) int32} in the dtype of ``means`` (radii int32).
    """
    out_dtype = means.dtype
    cam = camera.to(means.device, COMPUTE_DTYPE)
    width, height = cam.width, cam.height
    view = inria_view(cam)
    inputs = (means, opacities, quats, scales, covars, colors, sh)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)

    means32 = means.to(COMPUTE_DTYPE).contiguous()
    depths = means32 @ cam.w2c[2, :3] + cam.w2c[2, 3]  # (N,) camera z, differentiable
    in_range = (depths > near) & (depths < far)
    # Zero opacity: never drawn (alpha < 1/255) and zero gradients, without a gather or a sync.
    opacities32 = (opacities.to(COMPUTE_DTYPE) * in_range)[:, None].contiguous()  # (N, 1) as inria wants
    if covars is not None:
        symmetric = 0.5 * (covars + covars.transpose(-1, -2))
        geometry = {"cov3D_precomp": symmetric[:, _TRIU_ROWS, _TRIU_COLS].to(COMPUTE_DTYPE).contiguous()}
    else:
        geometry = {"scales": scales.to(COMPUTE_DTYPE).contiguous(),
                    "rotations": F.normalize(quats.to(COMPUTE_DTYPE), dim=-1).contiguous()}

    with torch.no_grad():
        pixels, _ = cam.project(means32)  # (N, 2), our pixel convention
    means2d = pixels.to(out_dtype).requires_grad_(needs_grad)
    sink = screen_space_sink(means2d, width, height)

    settings = make_settings(
        dgr.GaussianRasterizationSettings,
        _settings_values(view, width, height, 0 if sh is None else sh_degree, means.device),
    )
    rasterizer = dgr.GaussianRasterizer(raster_settings=settings)

    def draw(*, colors_precomp=None, shs=None):
        return rasterizer(means3D=means32, means2D=sink, opacities=opacities32, shs=shs,
                          colors_precomp=colors_precomp, **geometry)

    device_guard = torch.cuda.device(means.device) if means.is_cuda else contextlib.nullcontext()
    with device_guard:
        if sh is not None:
            outputs = draw(shs=sh.to(COMPUTE_DTYPE).contiguous())
        else:
            outputs = draw(colors_precomp=colors.to(COMPUTE_DTYPE).contiguous())
        color, radius = outputs[0], outputs[1]  # (3, H, W), (N,)
        if extras == "auto":
            use_fork = _fork_has_extras(outputs, height, width) and _fork_extras_problem(dgr, means.device) is None
        elif extras == "fork":
            if not _fork_has_extras(outputs, height, width):
                raise RuntimeError(f"diff_gaussian_rasterization returned {len(outputs)} outputs, not (color, radii, "
                                   "depth (1,H,W), alpha (1,H,W))")
            use_fork = True
        else:
            use_fork = False
        if use_fork:
            depth_image, alpha_image = outputs[2], outputs[3]
        else:
            ones = torch.ones_like(depths)
            # (1, z, 0) composites to (alpha, accumulated depth, 0).
            weights = draw(colors_precomp=torch.stack([ones, depths, torch.zeros_like(depths)], dim=1).contiguous())[0]
            alpha_image, depth_image = weights[0:1], weights[1:2]

    radius = torch.where(in_range, radius.to(torch.int32), torch.zeros_like(radius, dtype=torch.int32))
    return {
        "rgb": color.permute(1, 2, 0).to(out_dtype),
        "alpha": alpha_image.permute(1, 2, 0).to(out_dtype),
        "depth": depth_image.permute(1, 2, 0).to(out_dtype),
        "means2d": means2d,
        "radii": torch.stack([radius, radius], dim=-1),
    }


def _fork_has_extras(outputs, height: int, width: int) -> bool:
    """True when ``outputs`` look like ashawkey's (color, radii, depth (1,H,W), alpha (1,H,W), ...)."""
    return len(outputs) >= 4 and all(
        isinstance(t, torch.Tensor) and tuple(t.shape) == (1, height, width) for t in outputs[2:4]
    )


def _fork_extras_problem(dgr, device: torch.device) -> str | None:
    """None when the fork's own alpha and depth match the second pass in values and gradients on a
    small scene, else why not (checked once per module and device type; a warning when not)."""
    key = (id(dgr.GaussianRasterizer), torch.device(device).type)
    if key not in _FORK_EXTRAS_CHECKED:
        problem = _compare_fork_extras(dgr, torch.device(device))
        if problem is not None:
            log.warning("diff_gaussian_rasterization's own alpha/depth disagree with a second colour pass (%s); "
                        "using the second pass for alpha and depth", problem)
        _FORK_EXTRAS_CHECKED[key] = problem
    return _FORK_EXTRAS_CHECKED[key]


def _compare_fork_extras(dgr, device: torch.device) -> str | None:
    """Render a fixed 24-Gaussian scene with the fork's alpha/depth and with the second pass; compare
    alpha, depth and the gradients of a random linear function of both w.r.t. means, opacities,
    scales and quats. Returns None when all agree within SELF_CHECK_RTOL of their scale."""
    gen = torch.Generator().manual_seed(0)
    n, width, height = 24, 48, 40
    w2c = torch.eye(4)
    w2c[2, 3] = 3.0
    camera = Camera(torch.tensor([[50.0, 0.0, 24.0], [0.0, 50.0, 20.0], [0.0, 0.0, 1.0]]), w2c, width, height)
    scene = {
        "means": (torch.rand(n, 3, generator=gen) - 0.5) * torch.tensor([1.4, 1.2, 0.6]),
        "opacities": 0.2 + 0.6 * torch.rand(n, generator=gen),
        "scales": 0.04 + 0.1 * torch.rand(n, 3, generator=gen),
        "quats": torch.randn(n, 4, generator=gen),
    }
    colors = torch.rand(n, 3, generator=gen).to(device)
    upstream_alpha = torch.randn(height, width, 1, generator=gen).to(device)
    upstream_depth = torch.randn(height, width, 1, generator=gen).to(device)
    results = []
    # The first render may happen under no_grad or inference_mode; the check needs gradients.
    with torch.inference_mode(False), torch.enable_grad():
        for extras in ("fork", "second_pass"):
            leaves = {k: v.to(device).requires_grad_(True) for k, v in scene.items()}
            try:
                out = _render(dgr, leaves["means"], leaves["opacities"], camera, quats=leaves["quats"],
                              scales=leaves["scales"], covars=None, colors=colors, sh=None, sh_degree=None,
                              near=0.01, far=1e10, extras=extras)
            except RuntimeError as err:
                return f"{extras} render failed: {err}"
            loss = (out["alpha"] * upstream_alpha).sum() + (out["depth"] * upstream_depth).sum()
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            named = {"alpha": out["alpha"], "depth": out["depth"]}
            named.update({f"d/d {k}": g if g is not None else torch.zeros_like(leaves[k])
                          for k, g in zip(leaves, grads)})
            results.append({k: v.detach() for k, v in named.items()})
    fork, second = results
    for name, expected in second.items():
        error = float((fork[name] - expected).abs().max())
        scale = float(expected.abs().max())
        if error > SELF_CHECK_RTOL * scale + 1e-6:
            return f"{name}: max abs difference {error:.3g} at scale {scale:.3g}"
    return None


def rasterize_inria(
    means: torch.Tensor,
    opacities: torch.Tensor,
    camera: Camera,
    *,
    quats: torch.Tensor | None,
    scales: torch.Tensor | None,
    covars: torch.Tensor | None,
    colors: torch.Tensor | None,
    sh: torch.Tensor | None,
    sh_degree: int | None,
    background: torch.Tensor | None,
    eps2d: float,
    near: float,
    far: float,
):
    """The full-backend contract (:class:`~occfusion_core.render.backends.FullBackendFn`) with
    ``diff_gaussian_rasterization`` (3DGS's rasterizer, the alpha/depth fork) on CUDA: ``eps2d`` is
    fixed at 0.3 by that code, the effective near plane is max(near, 0.2), and the returned
    ``means2d`` is a leaf whose ``.grad`` receives the pixel-space gradient.

    Raises:
        ValueError: eps2d other than 0.3, or a camera with skew.
    """
    from ..rasterize import RenderOutput

    if abs(float(eps2d) - INRIA_EPS2D) > 1e-9:
        raise ValueError(f"the inria rasterizer has eps2d fixed at {INRIA_EPS2D}, got {eps2d}; use backend='gsplat' "
                         "or 'torch' for another value")
    if float(camera.K[0, 1]) != 0.0:
        raise ValueError(f"the inria rasterizer ignores the camera skew K[0,1] = {float(camera.K[0, 1])} in its "
                         "covariance projection; use backend='torch' for skewed cameras")
    dgr = importlib.import_module("diff_gaussian_rasterization")
    out = _render(dgr, means, opacities, camera, quats=quats, scales=scales, covars=covars, colors=colors, sh=sh,
                  sh_degree=sh_degree, near=near, far=far, extras="auto")
    rgb = out["rgb"]
    if background is not None:
        rgb = rgb + (1.0 - out["alpha"]) * background
    radii = out["radii"]
    return RenderOutput(rgb=rgb, alpha=out["alpha"], depth=out["depth"], means2d=out["means2d"], radii=radii,
                        visible=(radii > 0).all(dim=-1))


def register_backend() -> None:
    """Register :func:`rasterize_inria` as full backend "inria" for CUDA devices.

    Raises:
        ImportError: ``diff_gaussian_rasterization`` is not importable, CUDA is unavailable, or the
            installed version's settings carry fields this backend cannot fill; the message says
            which and how to install.
    """
    try:
        dgr = importlib.import_module("diff_gaussian_rasterization")
    except ImportError as err:
        raise ImportError(
            f"the inria backend needs the 'diff_gaussian_rasterization' CUDA extension ({err}); install with "
            "TORCH_CUDA_ARCH_LIST=<your GPU, e.g. 9.0> pip install --no-build-isolation "
            "git+https://github.com/ashawkey/diff-gaussian-rasterization (needs nvcc, a devel CUDA image)"
        ) from err
    if not torch.cuda.is_available():
        raise ImportError(
            f"the inria backend needs CUDA, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    for name in ("GaussianRasterizationSettings", "GaussianRasterizer"):
        if not hasattr(dgr, name):
            raise ImportError(f"diff_gaussian_rasterization has no {name}; unsupported version or fork")
    probe_view = InriaView(torch.eye(4), torch.eye(4), torch.zeros(3), 1.0, 1.0)
    try:
        make_settings(dgr.GaussianRasterizationSettings, _settings_values(probe_view, 1, 1, 0, "cpu"))
    except RuntimeError as err:
        raise ImportError(str(err)) from err
    from . import register_full_backend

    register_full_backend("inria", rasterize_inria, devices=("cuda",))
