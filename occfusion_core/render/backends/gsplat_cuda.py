"""Full rasterizer backend "gsplat": the whole render by ``gsplat.rasterization`` on a CUDA device.

Install
    ``pip install gsplat "torch==<your torch>"``: loading the backend (first use of "gsplat" or
    "auto" on a CUDA device) JIT-compiles gsplat's CUDA kernels (a few minutes, once; needs the CUDA
    toolkit, ``nvcc``, of torch's CUDA version, i.e. a *devel* CUDA image, and ``TORCH_CUDA_ARCH_LIST``
    set to the GPU, e.g. "9.0" for an H100). Prebuilt wheels
    exist for some torch/CUDA pairs: ``pip install gsplat --index-url
    https://docs.gsplat.studio/whl/pt24cu124`` (pattern ``pt<torch>cu<cuda>``, list at
    https://docs.gsplat.studio/whl). Written against gsplat 1.5.3.

Mapping onto :func:`occfusion_core.render.rasterize.rasterize` (one camera, ``packed=False``):

- computed in float32 (gsplat's kernels are float32); float64 inputs are cast and the outputs cast
  back, gradients flow through both casts;
- ``quats`` + ``scales`` are passed as they are (gsplat normalises the quaternions); ``covars`` are
  symmetrised first, because gsplat reads only their upper triangle: the gradient then lands half
  on (i, j) and half on (j, i), as the torch backend's does;
- ``sh`` go in as gsplat's ``colors`` with ``sh_degree`` (gsplat evaluates them from the camera centre
  and applies the same ``+ 0.5, clamp >= 0`` as :func:`~occfusion_core.render.sh.sh_to_rgb`);
- ``render_mode="RGB+D"``: the fourth channel is gsplat's accumulated depth sum_i w_i z_i, our
  ``depth``; gsplat's alpha is our ``alpha``; the background is composited here,
  rgb + (1 - alpha) * background, with gsplat's ``backgrounds=None``;
- ``means2d`` holds the values of ``meta["means2d"][0]`` (pixel coordinates) in a leaf tensor that
  collects gradients: gsplat composites from ``meta["means2d"]`` itself, which no returned (N, 2)
  tensor could be on the backward path of, so a hook on ``meta["means2d"]`` adds each gradient it
  receives into the leaf's ``.grad``. ``out.means2d.retain_grad(); loss.backward();
  out.means2d.grad`` thus gives the pixel-space gradient exactly as with the torch backend (gsplat's
  own DefaultStrategy reads ``meta["means2d"].grad`` the same way). Unlike the torch backend's,
  this ``means2d`` is detached from ``means``: a loss on it reaches ``.grad`` but not the means
  (a view that stayed attached would count such a gradient twice in ``.grad``);
- ``radii`` are ``meta["radii"][0]`` (int32, (N, 2)), ``visible`` = both radii > 0.

Where gsplat departs from the contract of ``rasterize_to_pixels``, and why it does not matter:

- gsplat evaluates every Gaussian over all pixels of the 16x16 tiles its box touches instead of
  over the box only. Outside the box alpha < 1/255 (see the box size below), so those pixels are
  skipped by the alpha rule anyway: the images agree up to float rounding at the 1/255 threshold.
- its box is opacity-aware, radius = ceil(min(3.33, sqrt(2 ln(255 o))) * sigma) per axis, so radii
  are smaller than the torch backend's ceil(3.33 sigma) for o < 1, and Gaussians with o < 1/255
  get radii 0 (``visible`` False; the torch backend marks them visible but never draws them).
- exponentials use CUDA fast math (``__expf``): values differ from the torch backend by float32
  rounding (~1e-6 relative), except for the rare pixel where a Gaussian's alpha is within rounding
  of 1/255 and is drawn by one and skipped by the other (a change of ~1/255 of a colour there).
- near/far culling is z < near or z > far (the torch backend: z <= near or z >= far).
- gsplat's projection ignores the skew K[0, 1]; cameras with skew are refused (ValueError) rather
  than rendered differently from the torch backend.
"""

from __future__ import annotations

import weakref

import torch

from ..camera import Camera

# gsplat's kernels are float32 only.
COMPUTE_DTYPE = torch.float32


def _copy_grad_into(target_ref: "weakref.ReferenceType[torch.Tensor]"):
    """A tensor hook for meta["means2d"] (1, N, 2) that adds its gradient into the ``.grad`` of the
    (N, 2) leaf ``target_ref`` points to (see the module docstring). A weak reference, so that the
    graph holding the hook does not keep the render output alive."""

    def hook(grad: torch.Tensor) -> None:
        target = target_ref()
        if target is None:  # the render output was dropped; nobody reads the gradient
            return
        row = grad[0].detach().to(target.dtype)
        target.grad = row.clone() if target.grad is None else target.grad + row

    return hook


def rasterize_gsplat(
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
    ``gsplat.rasterization`` on CUDA.

    Raises:
        ValueError: the camera has skew (K[0, 1] != 0), which gsplat's projection ignores.
    """
    import gsplat  # imported here: the registry only loads this module where gsplat imports

    from ..rasterize import RenderOutput

    if float(camera.K[0, 1]) != 0.0:
        raise ValueError(
            f"gsplat ignores the camera skew K[0,1] = {float(camera.K[0, 1])}; use backend='torch' for skewed cameras"
        )
    out_dtype = means.dtype
    cam = camera.to(means.device, COMPUTE_DTYPE)
    width, height = cam.width, cam.height

    def f32(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(COMPUTE_DTYPE).contiguous()

    if covars is not None:
        covars = 0.5 * (covars + covars.transpose(-1, -2))
    render_colors, render_alphas, meta = gsplat.rasterization(
        means=f32(means),
        quats=f32(quats),
        scales=f32(scales),
        opacities=f32(opacities),
        colors=f32(colors if sh is None else sh),
        viewmats=cam.w2c[None].contiguous(),
        Ks=cam.K[None].contiguous(),
        width=width,
        height=height,
        near_plane=float(near),
        far_plane=float(far),
        eps2d=float(eps2d),
        sh_degree=None if sh is None else int(sh_degree),
        packed=False,
        backgrounds=None,
        render_mode="RGB+D",
        rasterize_mode="classic",
        camera_model="pinhole",
        covars=f32(covars),
    )
    # (1, H, W, 4) = rgb, accumulated depth; (1, H, W, 1) alpha.
    rgb = render_colors[0, ..., :3].to(out_dtype)
    depth = render_colors[0, ..., 3:4].to(out_dtype)
    alpha = render_alphas[0].to(out_dtype)
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background

    means2d_all = meta["means2d"]  # (1, N, 2), what gsplat composited from
    means2d = means2d_all[0].detach().to(out_dtype)
    if means2d_all.requires_grad:
        means2d.requires_grad_(True)
        means2d_all.register_hook(_copy_grad_into(weakref.ref(means2d)))
    radii = meta["radii"][0].to(torch.int32)  # (N, 2)
    visible = (radii > 0).all(dim=-1)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii, visible=visible)


def register_backend() -> None:
    """Register :func:`rasterize_gsplat` as full backend "gsplat" for CUDA devices.

    Loads gsplat's CUDA extension now (JIT-compiling it on first use), so that a machine where it
    cannot load falls back at selection time instead of failing in the middle of a render.

    Raises:
        ImportError: gsplat is not installed, CUDA is unavailable, or gsplat found no compiled
            extension and no CUDA toolkit to build one; the message says which and how to fix it.
    """
    try:
        import gsplat
    except ImportError as err:
        raise ImportError(
            f"the gsplat backend needs the 'gsplat' package ({err}); install with `pip install gsplat` "
            "(CUDA kernels JIT-compile on first use) or a wheel from https://docs.gsplat.studio/whl"
        ) from err
    if not torch.cuda.is_available():
        raise ImportError(
            f"the gsplat backend needs CUDA, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    from gsplat.cuda._backend import _C

    if _C is None:
        raise ImportError(
            f"gsplat {getattr(gsplat, '__version__', '?')} has no compiled CUDA extension and found no CUDA "
            "toolkit to JIT-build one: use a devel CUDA image (nvcc on PATH, CUDA_HOME set) or a prebuilt "
            "wheel from https://docs.gsplat.studio/whl"
        )
    from . import register_full_backend

    register_full_backend("gsplat", rasterize_gsplat, devices=("cuda",))
