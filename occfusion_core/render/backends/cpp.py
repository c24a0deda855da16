"""Compiled CPU pixel backend: tile-based forward and backward in C++ (``csrc/rasterize_cpu.cpp``).

Nothing is compiled at import time. The extension is built on first use (or ahead of time with
``python -m occfusion_core.render.backends.cpp --build``) by ``torch.utils.cpp_extension.load`` into a
project-local cache:

- ``$OCCFUSION_EXT_DIR`` when set, else
- ``build/torch_extensions/`` under the repository root when that root is writable, else
- ``~/.cache/occfusion/torch_extensions``,

with one sub-folder per torch and Python version, since a build is tied to both ABIs. Later loads reuse
the build unless the source changed. When the compiler is missing or the build fails,
:func:`is_available` returns False and one warning says why and that the torch reference is used.

Semantics are those of ``occfusion_core.render.backends.torch_ref`` (gsplat's rule); see the header of
the C++ source. Results are deterministic: gradients are summed in a fixed order whatever the thread
count.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EXTENSION_NAME = "occfusion_rasterize_cpu"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCE = CSRC / "rasterize_cpu.cpp"  # includes csrc/tile_kernels.h
SOURCES = [SOURCE, CSRC / "project_cpu.cpp", CSRC / "skin_cpu.cpp", CSRC / "covar_cpu.cpp"]
"""The extension's sources: the tile rasterizer, the fused projection + SH colours, the fused skinning,
the covariances from rotations and scales (the last two share ``csrc/quat_math.h``)."""
# No -march=native: the build must run on any x86-64 host that shares the cache folder (the source
# carries an AVX2 variant of its hot loops, picked at run time). No -ffast-math: it would change the
# skip/stop comparisons that the semantics define exactly. -ffp-contract=off: no fused multiply-adds,
# so every instruction set rounds like the torch reference, operation for operation.
# -fno-trapping-math -fno-math-errno (as torch itself is built): they change no result, but let the
# compiler turn the branch-free lane loops into SIMD selects.
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
LD_FLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded = False
_load_error: str | None = None  # why the build failed; a failed build is not retried in this process
_warned = False


def _repo_root() -> Path | None:
    """The source checkout holding this file, or None when installed into site-packages."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "occfusion_core").is_dir() else None


def extension_dir() -> Path:
    """Folder the extension is built into (see the module docstring for the order of choices)."""
    override = os.environ.get("OCCFUSION_EXT_DIR")
    if override:
        base = Path(override).expanduser()
    else:
        root = _repo_root()
        if root is not None and os.access(root, os.W_OK):
            base = root / "build" / "torch_extensions"
        else:
            base = Path.home() / ".cache" / "occfusion" / "torch_extensions"
    torch_version = torch.__version__.replace("+", "_")
    return base / f"torch{torch_version}-py{sys.version_info.major}{sys.version_info.minor}"


def load_extension(verbose: bool = False) -> None:
    """Build (if needed) and load the extension, registering ``torch.ops.occfusion_cpu``.

    Raises:
        RuntimeError: the build or load failed; the message holds the compiler's output.
    """
    global _loaded, _load_error
    with _lock:
        if _loaded:
            return
        if _load_error is not None:
            raise RuntimeError(_load_error)
        try:
            from torch.utils.cpp_extension import load

            build_dir = extension_dir()
            build_dir.mkdir(parents=True, exist_ok=True)
            load(
                name=EXTENSION_NAME,
                sources=[str(p) for p in SOURCES],
                extra_cflags=CXX_FLAGS,
                extra_ldflags=LD_FLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as error:  # compiler missing, compile error, ninja missing, unwritable folder...
            _load_error = f"building the C++ rasterizer ({SOURCE.name}) failed: {type(error).__name__}: {error}"
            raise RuntimeError(_load_error) from error
        _loaded = True


def is_available() -> bool:
    """True when the extension builds and loads (builds it on the first call, which takes a while).

    On failure logs one warning with the reason; callers then use the torch reference backend.
    """
    global _warned
    try:
        load_extension()
    except RuntimeError:
        if not _warned:
            _warned = True
            log.warning("C++ rasterizer unavailable, the torch reference rasterizer will be used instead. %s",
                        _load_error)
        return False
    return True


class RasterizeToPixelsCpp(torch.autograd.Function):
    """Autograd wrapper around ``torch.ops.occfusion_cpu.rasterize_forward/backward``."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, width, height):
        load_extension()
        outputs = torch.ops.occfusion_cpu.rasterize_forward(
            means2d, conics, colors, opacities, depths, radii, int(width), int(height))
        image, alpha, final_T, n_walked, tile_offsets, tile_ranks, sorted_ids, rects = outputs
        ctx.save_for_backward(means2d, conics, colors, opacities, final_T, n_walked, tile_offsets, tile_ranks,
                              sorted_ids, rects)
        return image, alpha

    @staticmethod
    def backward(ctx, grad_image, grad_alpha):
        saved = ctx.saved_tensors
        grad_means2d, grad_conics, grad_colors, grad_opacities = torch.ops.occfusion_cpu.rasterize_backward(
            *saved, grad_image.contiguous(), grad_alpha.contiguous())
        return grad_means2d, grad_conics, grad_colors, grad_opacities, None, None, None, None


class ProjectShadeCpp(torch.autograd.Function):
    """Autograd wrapper around ``torch.ops.occfusion_cpu.project_forward/backward``."""

    @staticmethod
    def forward(ctx, means, covars, sh, transforms, sh_degree, K, w2c, width, height, eps2d, near, far):
        load_extension()
        args = (int(sh_degree), K, w2c, int(width), int(height), float(eps2d), float(near), float(far))
        means2d, conics, depths, radii, colors = torch.ops.occfusion_cpu.project_forward(
            means, covars, sh, transforms, *args)
        ctx.save_for_backward(means, covars, sh, transforms, colors)
        ctx.args = args
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, colors

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _grad_radii, grad_colors):
        means, covars, sh, transforms, colors = ctx.saved_tensors
        grads = [torch.zeros_like(t) if g is None else g.contiguous()
                 for g, t in ((grad_means2d, colors[:, :2]), (grad_conics, colors), (grad_depths, colors[:, 0]),
                              (grad_colors, colors))]
        g_means, g_covars, g_sh = torch.ops.occfusion_cpu.project_backward(means, covars, sh, transforms, *ctx.args,
                                                                          colors, *grads)
        return g_means, g_covars, g_sh, None, None, None, None, None, None, None, None, None


def project_and_shade(means: torch.Tensor, covars: torch.Tensor, sh: torch.Tensor, sh_degree: int, camera,
                      transforms: torch.Tensor | None = None, eps2d: float = 0.3, near: float = 0.01,
                      far: float = 1e10) -> tuple[torch.Tensor, ...]:
    """Projection and SH colours of 3D Gaussians in one compiled pass (``csrc/project_cpu.cpp``).

    The same maths as :func:`occfusion_core.render.projection.project_gaussians` followed by
    :func:`occfusion_core.render.sh.sh_to_rgb` of :func:`occfusion_core.render.sh.view_directions`
    (constant directions: no gradient flows through them).

    Args:
        means: (N, 3); covars: (N, 3, 3); sh: (N, K, 3), one dtype (float32/64), CPU.
        transforms: (N, 3, 3) whose inverses turn each viewing direction, or None.

    Returns:
        means2d (N, 2), conics (N, 3), depths (N,), radii (N, 2) int32, colors (N, 3).
    """
    empty = means.new_zeros(0)
    return ProjectShadeCpp.apply(means.contiguous(), covars.contiguous(), sh.contiguous(),
                                 empty if transforms is None else transforms.detach().contiguous(), sh_degree,
                                 camera.K.detach().cpu(), camera.w2c.detach().cpu(), camera.width, camera.height,
                                 eps2d, near, far)


class CovarianceCpp(torch.autograd.Function):
    """Autograd wrapper around ``torch.ops.occfusion_cpu.covar_forward/backward``."""

    @staticmethod
    def forward(ctx, quats, scales):
        load_extension()
        ctx.save_for_backward(quats, scales)
        return torch.ops.occfusion_cpu.covar_forward(quats, scales)

    @staticmethod
    def backward(ctx, grad_covars):
        g_quats, g_scales = torch.ops.occfusion_cpu.covar_backward(*ctx.saved_tensors, grad_covars.contiguous())
        return g_quats, g_scales


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """:func:`occfusion_core.render.projection.quat_scale_to_covar` in one compiled pass
    (``csrc/covar_cpu.cpp``).

    Args:
        quats: (N, 4) rotations (w, x, y, z), any norm; scales: (N, 3) standard deviations (already
            activated). One dtype (float32/64), CPU.

    Returns:
        (N, 3, 3) covariances R diag(scales)^2 R^T.
    """
    return CovarianceCpp.apply(quats.contiguous(), scales.contiguous())


class SkinCpp(torch.autograd.Function):
    """Autograd wrapper around ``torch.ops.occfusion_cpu.skin_forward/backward``."""

    @staticmethod
    def forward(ctx, weights, big, target, xyz, offsets, trans, log_scales, quats):
        load_extension()
        inputs = (weights, big, target, xyz, offsets, trans, log_scales, quats)
        means, covars, linear = torch.ops.occfusion_cpu.skin_forward(*inputs)
        ctx.save_for_backward(*inputs)
        return means, covars, linear

    @staticmethod
    def backward(ctx, grad_means, grad_covars, grad_linear):
        inputs = ctx.saved_tensors
        xyz = inputs[3]
        grads = [torch.zeros(shape, dtype=xyz.dtype) if g is None else g.contiguous()
                 for g, shape in ((grad_means, (xyz.shape[0], 3)), (grad_covars, (xyz.shape[0], 3, 3)),
                                  (grad_linear, (xyz.shape[0], 3, 3)))]
        weight_grad = ctx.needs_input_grad[0]
        g_w, g_target, g_x, g_d, g_t, g_s, g_q = torch.ops.occfusion_cpu.skin_backward(*inputs, *grads, weight_grad)
        return g_w if weight_grad else None, None, g_target, g_x, g_d, g_t, g_s, g_q


def skin_gaussians(weights: torch.Tensor, big: torch.Tensor, target: torch.Tensor, xyz: torch.Tensor,
                   offsets: torch.Tensor, trans: torch.Tensor, log_scales: torch.Tensor,
                   quats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Big pose -> target pose skinning of Gaussians in one compiled pass (``csrc/skin_cpu.cpp``).

    Args:
        weights: (N, J) skinning weights; big: (J, 4, 4) big-pose bone transforms (constant);
        target: (J, 4, 4) the target pose's bone transforms; xyz: (N, 3) canonical centres;
        offsets: (N, 3) blend-shape offsets minus the big pose's; trans: (3,); log_scales: (N, 3);
        quats: (N, 4) (w, x, y, z), any norm. One dtype, CPU.

    Returns:
        means (N, 3), covars (N, 3, 3), linear (N, 3, 3): as
        :meth:`occfusion_core.gaussians.human.HumanGaussians.deform` computes them in torch.
    """
    args = [t.contiguous() for t in (weights, big.detach(), target, xyz, offsets, trans.reshape(3), log_scales, quats)]
    return SkinCpp.apply(*args)


def rasterize_to_pixels(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel-backend contract (:class:`~occfusion_core.render.backends.PixelBackendFn`) in the
    compiled C++/OpenMP extension: CPU tensors, one float dtype (float32 or float64) for all inputs;
    non-contiguous inputs are copied and int64 radii converted.

    Raises:
        RuntimeError: the extension is unavailable (message says why), or the inputs are malformed.
    """
    if radii.dtype == torch.int64:
        radii = radii.to(torch.int32)
    return RasterizeToPixelsCpp.apply(means2d.contiguous(), conics.contiguous(), colors.contiguous(),
                                      opacities.contiguous(), depths.contiguous(), radii.contiguous(),
                                      int(width), int(height))


def register_backend() -> None:
    """Build/load the extension and register :func:`rasterize_to_pixels` as pixel backend "cpp" (CPU only).

    Meant for the registry's lazy loader, so that importing this module never compiles.

    Raises:
        RuntimeError: the extension is unavailable; the message holds the compiler's output.
    """
    load_extension()
    from . import register_pixel_backend

    register_pixel_backend("cpp", rasterize_to_pixels, devices=("cpu",))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build (or reuse) the extension and report where")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    if not args.build:
        parser.print_help()
        return 2
    start = time.perf_counter()
    try:
        load_extension(verbose=args.verbose)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"built {EXTENSION_NAME} in {extension_dir()} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
