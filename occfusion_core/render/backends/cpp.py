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
SOURCE = Path(__file__).resolve().parent / "csrc" / "rasterize_cpu.cpp"  # includes csrc/tile_kernels.h
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
                sources=[str(SOURCE)],
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
    """Composite projected Gaussians front to back into an image (the pixel-backend contract).

    Args:
        means2d: (N, 2) pixel-space centres (x, y).
        conics: (N, 3) inverse 2D covariance (a, b, c), i.e. [[a, b], [b, c]].
        colors: (N, C) any number of channels.
        opacities: (N,) in [0, 1].
        depths: (N,) only orders the Gaussians (ascending, ties by index); gets no gradient.
        radii: (N, 2) integer pixel half-extents; a Gaussian with a radius <= 0 is culled.
        width, height: image size in pixels.

    All float inputs share one dtype (float32 or float64) and live on the CPU; non-contiguous inputs
    are copied and int64 radii are converted.

    Returns:
        image (H, W, C) and alpha (H, W, 1), differentiable w.r.t. means2d, conics, colors, opacities.

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
