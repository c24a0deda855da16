"""Rasterizer benchmark: time and peak memory of every available backend on random human-sized scenes.

Each case (backend, Gaussian count, image size) runs in a fresh subprocess so that its peak memory
is its own. "fwd" (under no_grad) and "fwd+bwd" go through the full entry point
``occfusion_core.render.rasterize.rasterize`` (projection + colours + compositing, loss on rgb, alpha
and depth); "pix fwd" and "pix f+b" time the backend's compositing step alone
(``rasterize_to_pixels`` on the same projected Gaussians), so the difference is what projection and
the torch glue cost. Medians of --repeats runs after one warm-up. "peak MiB" is the first full-size
forward + backward's peak resident memory above what the process held before it (CPU, via
/proc/self/status VmHWM reset through /proc/self/clear_refs), or torch.cuda.max_memory_allocated
above the allocation before it (CUDA-only backends). "x ref" = torch reference time / backend time.

Usage:
    .venv/bin/python bench/rasterizer.py                 # N in {2k, 10k, 50k} x {128, 256, 512}^2
    .venv/bin/python bench/rasterizer.py --quick         # N=10k at 256^2 only, 3 repeats
    .venv/bin/python bench/rasterizer.py --backends cpp torch --counts 10000 --sizes 256 --repeats 9 --threads 1
    .venv/bin/python bench/rasterizer.py --backends cpp --no-reference --counts 10000 --sizes 256 --against main

With ``--against REV`` every case also runs in a git worktree of REV, with REV's own copy of this
script (so each revision is timed by its own code), alternating with this tree case by case; the
table gains a "revision" column and "x REV" = REV's fwd+bwd time / this tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import revisions  # noqa: E402

from occfusion_core.render.backends import available_backends, get_backend  # noqa: E402
from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at  # noqa: E402
from occfusion_core.render.projection import project_gaussians, quat_scale_to_covar  # noqa: E402
from occfusion_core.render.rasterize import rasterize  # noqa: E402

DEFAULT_COUNTS = (2_000, 10_000, 50_000)
DEFAULT_SIZES = (128, 256, 512)
REFERENCE_BACKEND = "torch"
# The 1.8 m cube around the body, its centre 3 m in front of the camera, fills a 40 degree view.
BOX_SIDE_M, BOX_DISTANCE_M, FOV_Y_DEG = 1.8, 3.0, 40.0


def make_scene(n_gaussians: int, size: int, seed: int = 0,
               device: str = "cpu") -> tuple[dict[str, torch.Tensor], Camera]:
    """Random Gaussians in a 1.8 m cube 3 m in front of a size x size camera.

    Returns:
        (tensors for :func:`rasterize`: means (N,3), quats (N,4), scales (N,3) in 1-3 cm,
        opacities (N,) in 0.1-0.9, colors (N,3); all float32 on ``device`` and requiring grad),
        the camera.
    """
    gen = torch.Generator().manual_seed(seed)
    centre = torch.tensor([0.0, 0.0, BOX_DISTANCE_M])
    params = {
        "means": centre + (torch.rand(n_gaussians, 3, generator=gen) - 0.5) * BOX_SIDE_M,
        "quats": torch.randn(n_gaussians, 4, generator=gen),
        "scales": 0.01 + 0.02 * torch.rand(n_gaussians, 3, generator=gen),
        "opacities": 0.1 + 0.8 * torch.rand(n_gaussians, generator=gen),
        "colors": torch.rand(n_gaussians, 3, generator=gen),
    }
    params = {name: tensor.to(device).requires_grad_(True) for name, tensor in params.items()}
    camera = Camera(
        K=intrinsics_from_fov(size, size, FOV_Y_DEG),
        w2c=look_at(eye=(0.0, 0.0, 0.0), target=(0.0, 0.0, 1.0), up=(0.0, -1.0, 0.0)),
        width=size,
        height=size,
    )
    return params, camera


def _render_loss(params: dict[str, torch.Tensor], camera: Camera, backend: str) -> torch.Tensor:
    out = rasterize(params["means"], params["opacities"], camera, quats=params["quats"], scales=params["scales"],
                    colors=params["colors"], backend=backend)
    # Touch every output so every path of the backward runs.
    return out.rgb.sum() + out.alpha.sum() + out.depth.mean()


def _clear_grads(tensors) -> None:
    for tensor in tensors:
        tensor.grad = None


def _median_ms(fn, repeats: int, device: str, warmup: int = 1) -> float:
    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        samples.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(samples)


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def backend_device(backend: str) -> str | None:
    """Where a backend is benchmarked: the CPU when it runs there, else CUDA if present, else None.

    Raises:
        RuntimeError, ValueError: the backend does not load here (see resolve_backend).
    """
    chosen = get_backend(backend)
    if chosen.supports("cpu"):
        return "cpu"
    return "cuda" if torch.cuda.is_available() and chosen.supports("cuda") else None


def run_case(backend: str, n_gaussians: int, size: int, repeats: int) -> dict:
    """Measure one case in this process (meant to be a fresh one). Times in ms, memory in MiB."""
    import gc
    import resource

    device = backend_device(backend)
    params, camera = make_scene(n_gaussians, size, device=device)
    # Load (and for cpp, build) the backend on a tiny scene so that one-time costs stay out.
    tiny_params, tiny_camera = make_scene(16, 32, seed=1, device=device)
    _render_loss(tiny_params, tiny_camera, backend).backward()
    gc.collect()

    # Peak memory of the first forward + backward at full size, above what was in use before it.
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_bytes = torch.cuda.memory_allocated()
        _render_loss(params, camera, backend).backward()
        peak_mib = (torch.cuda.max_memory_allocated() - before_bytes) / 2**20
    elif _reset_peak_rss():
        before_kb = _read_status_kb("VmRSS")
        _render_loss(params, camera, backend).backward()
        peak_mib = (_read_status_kb("VmHWM") - before_kb) / 1024.0
    else:  # ru_maxrss never decreases, so it only sees this case if the case sets a new maximum
        before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _render_loss(params, camera, backend).backward()
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024.0
    _clear_grads(params.values())

    def forward() -> None:
        with torch.no_grad():
            _render_loss(params, camera, backend)

    def forward_backward() -> None:
        _render_loss(params, camera, backend).backward()
        _clear_grads(params.values())

    # The compositing step alone, on the same projected Gaussians (features = rgb + depth).
    with torch.no_grad():
        covars = quat_scale_to_covar(params["quats"], params["scales"])
        proj = project_gaussians(params["means"], covars, camera)
        features = torch.cat([params["colors"], proj.depths[:, None]], dim=1)
    pixel_inputs = [t.detach().clone().requires_grad_(True) for t in (proj.means2d, proj.conics, features,
                                                                      params["opacities"])]
    pixel_fn = get_backend(backend).fn

    def pixels_forward() -> None:
        with torch.no_grad():
            pixel_fn(*pixel_inputs, proj.depths, proj.radii, size, size)

    def pixels_forward_backward() -> None:
        image, alpha = pixel_fn(*pixel_inputs, proj.depths, proj.radii, size, size)
        (image.sum() + alpha.sum()).backward()
        _clear_grads(pixel_inputs)

    n_visible = int((proj.radii > 0).all(dim=1).sum())
    return {
        "backend": backend,
        "n": n_gaussians,
        "size": size,
        "visible": n_visible,
        "device": device,
        "threads": torch.get_num_threads(),
        "fwd_ms": _median_ms(forward, repeats, device),
        "fwd_bwd_ms": _median_ms(forward_backward, repeats, device),
        "pixels_fwd_ms": _median_ms(pixels_forward, repeats, device),
        "pixels_fwd_bwd_ms": _median_ms(pixels_forward_backward, repeats, device),
        "peak_mib": peak_mib,
    }


def run_case_in_subprocess(backend: str, n_gaussians: int, size: int, repeats: int, threads: int | None,
                           repo: Path = REPO_ROOT) -> dict:
    """One case in a fresh process, run by ``repo``'s copy of this script on ``repo``'s code."""
    command = [sys.executable, str(repo / "bench" / "rasterizer.py"), "--_case", backend, str(n_gaussians),
               str(size), "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))
    if done.returncode != 0:
        return {"backend": backend, "n": n_gaussians, "size": size, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: list[dict], against: str | None = None) -> str:
    """Text table; "x ref" columns are the torch reference's time divided by the backend's (same
    revision); with ``against``, "x REV" is REV's fwd+bwd time divided by this tree's."""
    def key(r):
        return r.get("revision", "this"), r["n"], r["size"]

    reference = {key(r): r for r in results if r["backend"] == REFERENCE_BACKEND and "error" not in r}
    timed = {(key(r), r["backend"]): r for r in results if "error" not in r}
    against_col = f" {'x ' + against:>10}" if against else ""
    header = (f"{'revision':<10} {'backend':<8} {'device':<6} {'N':>7} {'size':>5} {'visible':>8} {'fwd ms':>9} "
              f"{'fwd+bwd ms':>11} {'pix fwd ms':>11} {'pix f+b ms':>11} {'peak MiB':>9} {'fwd x ref':>10} "
              f"{'f+b x ref':>10}" + against_col)
    lines = [header, "-" * len(header)]
    for r in results:
        revision = r.get("revision", "this")
        if "error" in r:
            lines.append(f"{revision:<10} {r['backend']:<8} {'':<6} {r['n']:>7} {r['size']:>5}  failed: "
                         f"{' '.join(r['error'])}")
            continue
        ref = reference.get(key(r))
        fwd_ratio = f"{ref['fwd_ms'] / r['fwd_ms']:.1f}" if ref else "-"
        fb_ratio = f"{ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f}" if ref else "-"
        other = timed.get(((against, r["n"], r["size"]), r["backend"])) if against and revision == "this" else None
        speedup = (f" {other['fwd_bwd_ms'] / r['fwd_bwd_ms']:>9.2f}x" if other else f" {'':>10}") if against else ""
        lines.append(
            f"{revision:<10} {r['backend']:<8} {r['device']:<6} {r['n']:>7} {r['size']:>5} {r['visible']:>8} "
            f"{r['fwd_ms']:>9.1f} {r['fwd_bwd_ms']:>11.1f} {r['pixels_fwd_ms']:>11.1f} {r['pixels_fwd_bwd_ms']:>11.1f} "
            f"{r['peak_mib']:>9.1f} {fwd_ratio:>10} {fb_ratio:>10}" + speedup
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="square image sizes")
    parser.add_argument("--counts", type=int, nargs="+", default=list(DEFAULT_COUNTS), help="Gaussian counts")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="backend names (default: every one in available_backends())")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="N=10k at 256^2 only, 3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every case")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not add the torch reference (no ratios); for sizes where it takes minutes")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--against", help="a git revision timed side by side, case by case (e.g. main, HEAD~3)")
    parser.add_argument("--_case", nargs=3, metavar=("BACKEND", "N", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._case:
        if args.threads:
            torch.set_num_threads(args.threads)
        backend, n_gaussians, size = args._case[0], int(args._case[1]), int(args._case[2])
        print(json.dumps(run_case(backend, n_gaussians, size, args.repeats)))
        return 0

    if args.quick:
        args.sizes, args.counts, args.repeats = [256], [10_000], 3
    # Loading the backends here builds the C++ extension (if needed) before anything is timed.
    backends = list(args.backends or available_backends())
    if args.no_reference:
        backends = [b for b in backends if b != REFERENCE_BACKEND]
    elif REFERENCE_BACKEND not in backends:
        backends.append(REFERENCE_BACKEND)
    runnable = []
    for backend in backends:
        try:
            device = backend_device(backend)  # loads (builds) the backend
        except (RuntimeError, ValueError) as error:
            print(f"skipped {backend}: {error}")
            continue
        if device is None:
            print(f"skipped {backend}: no device it runs on here")
        else:
            runnable.append(backend)
    backends = runnable
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    simd = f" (SIMD {torch.ops.occfusion_cpu.simd_level()})" if "cpp" in backends else ""
    print(f"backends {backends}{simd}; torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"median of {args.repeats} after 1 warm-up")
    results = []
    with contextlib.ExitStack() as stack:
        repos = [("this", REPO_ROOT)]
        if args.against:
            repos.append((args.against, stack.enter_context(revisions.worktree(args.against))))
        for size in args.sizes:
            for n_gaussians in args.counts:
                for backend in backends:
                    for label, repo in repos:  # alternate revisions case by case
                        result = run_case_in_subprocess(backend, n_gaussians, size, args.repeats, args.threads, repo)
                        results.append(dict(result, revision=label))
                        print(f"  done: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    print(format_table(results, args.against))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
