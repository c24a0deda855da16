"""One stage-1 iteration of the default model, broken into parts, at several image sizes and thread
counts; optionally side by side with another git revision (a speed-up is a ratio measured in one run).

    .venv/bin/python bench/iteration.py                                  # 128^2 and 256^2, 1 and 2 threads
    .venv/bin/python bench/iteration.py --against main --csv iteration.csv
    .venv/bin/python bench/iteration.py --device cuda --backends gsplat inria --sizes 512

Each case runs in a fresh subprocess: the real stage-1 function (``optimize``) on a small synthetic
subject made with the default settings, with timers wrapped around the functions an iteration calls
(looked up by name, so an older revision is timed the same way; a part its code lacks shows as -).
Parts: deformation (LBS, pose refiner, body refinement), projection, SH, rasterize forward, losses,
backward, optimiser step, densification (amortised over its interval, where it runs), other (the
rest of the loop: sampling, learning-rate schedules, logging). ms per iteration, the mean over the
iterations after a warm-up (parts that run every k-th iteration, the skinning-offset decoder and
densification, count at their share; a median hid them), with the median of the total beside it.
With ``--against REV`` the revision is checked out into a temporary git
worktree and timed in the same run, alternating with this tree case by case.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import revisions

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["deformation", "projection", "sh", "rasterize_fwd", "losses", "backward", "optimizer", "densify", "other"]


# --------------------------------------------------------------------------------------- worker


class Timers:
    """Per-iteration sums of wrapped calls."""

    def __init__(self, sync):
        self.sync = sync
        self.current: dict[str, float] = {}
        self.iterations: list[dict[str, float]] = []
        self.started: float | None = None
        self.nesting = 0

    def wrap(self, owner, name: str, part: str) -> bool:
        fn = getattr(owner, name, None)
        if fn is None:
            return False
        timers = self

        def timed(*args, **kwargs):
            if timers.nesting:  # a wrapped call inside another counts for the outer one
                return fn(*args, **kwargs)
            timers.nesting += 1
            timers.sync()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.sync()
                timers.current[part] = timers.current.get(part, 0.0) + time.perf_counter() - t
                timers.nesting -= 1

        setattr(owner, name, timed)
        return True

    def tick(self) -> None:
        """Called at the start of every iteration (the frame sampler's draw)."""
        self.sync()
        now = time.perf_counter()
        if self.started is not None:
            self.current["total"] = now - self.started
            self.iterations.append(self.current)
        self.current = {}
        self.started = now


def worker(args) -> dict:
    sys.path.insert(0, str(args.repo))
    import torch

    torch.set_num_threads(args.threads)
    import yaml

    from occfusion_core.body.model import load_body_model
    from occfusion_core.body.proxy import write_proxy_smpl
    from occfusion_core.config import OptimizeConfig, SyntheticConfig, merge
    from occfusion_core.data.synthetic import generate_synthetic_subject
    from occfusion_core.stages import optimize as optimize_module
    from occfusion_core.stages import training
    try:  # revisions from before stages/common.py was split
        from occfusion_core.stages import common as view_module
    except ImportError:
        view_module = None
    from occfusion_core.gaussians import densify as densify_module
    from occfusion_core.gaussians.human import HumanGaussians
    from occfusion_core.render import rasterize as rasterize_module
    from occfusion_core.render import sh as sh_module

    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    work = Path(args.workdir)
    body_path = work / "body.pkl"
    if not body_path.exists():
        write_proxy_smpl(body_path, grid_mm=args.grid_mm)
    data = work / f"data{args.size}"
    if not data.exists():
        generate_synthetic_subject(data, SyntheticConfig(frames=args.frames, width=args.size, height=args.size,
                                                         heldout_views=0), load_body_model(body_path))
    config = yaml.safe_load((Path(args.repo) / "config.yaml").read_text())
    known = set(OptimizeConfig.__dataclass_fields__)
    settings = merge(config.get("optimize"), config["variants"][args.variant].get("optimize"),
                     {"iterations": args.warmup + args.iterations, "checkpoint_every": 10**9, "log_every": 10**9,
                      "backend": args.backend, "device": args.device})
    if args.densify:
        settings["densify"] = {"enabled": True, "start_iter": 0, "stop_iter": 10**9, "interval": args.densify}
    cfg = OptimizeConfig(**{k: v for k, v in settings.items() if k in known and not isinstance(v, dict)})
    if args.densify:
        from occfusion_core.config import DensifyConfig

        cfg.densify = DensifyConfig(**settings["densify"])

    timers = Timers(sync)
    timers.wrap(HumanGaussians, "deform", "deformation")
    if view_module is not None:
        timers.wrap(view_module, "view_directions", "sh")
    timers.wrap(sh_module, "sh_to_rgb", "sh")
    timers.wrap(rasterize_module, "project_gaussians", "projection")
    timers.wrap(rasterize_module, "quat_scale_to_covar", "projection")
    for name in ("project_and_shade", "project_gaussians_fused"):  # compiled paths, where a revision has them
        timers.wrap(rasterize_module, name, "projection")
    original_get_backend = rasterize_module.get_backend

    def get_backend(name, device=None):
        import dataclasses

        chosen = original_get_backend(name, device=device)
        part = "rasterize_fwd" if chosen.kind == "pixel" else "projection"  # a full backend projects too
        holder = type("Holder", (), {"fn": staticmethod(chosen.fn)})
        timers.wrap(holder, "fn", part)
        return dataclasses.replace(chosen, fn=holder.fn)

    rasterize_module.get_backend = get_backend
    timers.wrap(optimize_module, "stage1_losses", "losses")
    try:
        from occfusion_core.body.refine import BodyRefinement

        timers.wrap(BodyRefinement, "regularizer", "losses")
    except ImportError:
        pass
    timers.wrap(torch.Tensor, "backward", "backward")
    timers.wrap(torch.optim.Adam, "step", "optimizer")
    timers.wrap(densify_module, "densify_and_prune", "densify")
    timers.wrap(densify_module.DensifyState, "add_stats", "densify")
    original_next = training.FrameSampler.next

    def next_frame(self):
        timers.tick()
        return original_next(self)

    training.FrameSampler.next = next_frame
    out = work / f"run_{os.getpid()}"
    optimize_module.optimize(data, body_path, cfg, out / "model.pt", out / "renders", out / "ckpt", progress=False)
    rows = timers.iterations[args.warmup:]
    result = {"size": args.size, "threads": args.threads, "device": args.device, "backend": args.backend,
              "iterations": len(rows), "gaussians": None}
    for part in PARTS[:-1] + ["total"]:
        values = [r.get(part, 0.0) for r in rows]
        present = any(part in r for r in timers.iterations)
        result[part] = 1e3 * statistics.fmean(values) if present else None
    result["total_median"] = 1e3 * statistics.median(r.get("total", 0.0) for r in rows)
    known_sum = sum(result[p] or 0.0 for p in PARTS[:-1])
    result["other"] = max(result["total"] - known_sum, 0.0)
    import torch as _torch

    saved = _torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    result["gaussians"] = int(saved["model"]["num_gaussians"])
    result["backend"] = saved.get("backend", args.backend)
    return result


# --------------------------------------------------------------------------------------- driver


def run_case(repo: Path, label: str, size: int, threads: int, args, workdir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--repo", str(repo), "--size", str(size),
           "--threads", str(threads), "--iterations", str(args.iterations), "--warmup", str(args.warmup),
           "--frames", str(args.frames), "--variant", args.variant, "--device", args.device,
           "--backend", args.backend, "--grid-mm", str(args.grid_mm), "--workdir", str(workdir),
           "--densify", str(args.densify)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(repo))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    if done.returncode != 0:
        raise SystemExit(f"{label} {size}px {threads} thread(s) failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["revision"] = label
    return result


def fmt(v) -> str:
    return "-" if v is None else f"{v:7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=80,
                    help="timed iterations per case (a multiple of 8: the decoder's period, lbs_offset_every)")
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--variant", default="occgauhuman", help="variant of config.yaml whose stage-1 settings are timed")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backends", nargs="+", default=["auto"], help="rasterizer backends (cuda: gsplat inria)")
    ap.add_argument("--grid-mm", type=float, default=25.0, help="proxy body grid (config.yaml's default: 25)")
    ap.add_argument("--densify", type=int, default=0, help="densify every N iterations (0: off, as in stage 1)")
    ap.add_argument("--against", help="a git revision timed side by side (e.g. main, HEAD~3)")
    ap.add_argument("--csv", type=Path, help="write the rows here")
    # worker mode (one case, JSON on stdout)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repo", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        print(json.dumps(worker(args)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repos = [("this", ROOT)]
        if args.against:
            repos.append((args.against, revisions.checkout(args.against, tmp)))
        try:
            for backend in args.backends:
                args.backend = backend
                for size in args.sizes:
                    for threads in args.threads:
                        for label, repo in repos:  # alternate revisions case by case
                            work = tmp / f"work_{label.replace('/', '_')}"
                            work.mkdir(exist_ok=True)
                            row = run_case(repo, label, size, threads, args, work)
                            rows.append(row)
                            print(f"{label:>10} {size:4d}px {threads}t {row['backend']:>6}: "
                                  + " ".join(f"{p} {fmt(row[p]).strip()}" for p in PARTS)
                                  + f" | total {row['total']:.2f} ms",
                                  flush=True)
        finally:
            if args.against:
                revisions.remove(repos[1][1])

    print("\nms per stage-1 iteration (mean over iterations; the total's median beside it)")
    header = f"{'revision':>10} {'size':>5} {'thr':>3} {'backend':>7} {'N':>6} " \
        + " ".join(f"{p[:9]:>9}" for p in PARTS) \
        + f" {'total':>8} {'median':>8}" + ("  speed-up" if args.against else "")
    print(header)
    for row in rows:
        line = (f"{row['revision']:>10} {row['size']:5d} {row['threads']:3d} {row['backend']:>7} {row['gaussians']:6d} "
                + " ".join(f"{fmt(row[p]):>9}" for p in PARTS) + f" {row['total']:8.2f}"
                + f" {fmt(row.get('total_median')):>8}")
        if args.against and row["revision"] == "this":
            other = next((r for r in rows if r["revision"] == args.against and r["size"] == row["size"]
                          and r["threads"] == row["threads"] and r["device"] == row["device"]), None)
            if other:
                line += f"  {other['total'] / row['total']:6.2f}x"
        print(line)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["revision", "size", "threads", "device", "backend", "gaussians",
                                                   "iterations"] + PARTS + ["total", "total_median"])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k) for k in writer.fieldnames})
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
