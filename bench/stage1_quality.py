"""Stage-1 quality against image size, iterations and occlusion on the synthetic subject.

Runs the core functions directly (no Snakemake): generate the subject, fit each variant, score it
with the metrics stage, print one row per run. Used for the figures in issue notes, e.g.

    .venv/bin/python bench/stage1_quality.py --occlusion none --sizes 128 --iterations 300 600 1200
    .venv/bin/python bench/stage1_quality.py --occlusion zju_band --variants gauhuman occgauhuman
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from occfusion_core.body.model import load_body_model  # noqa: E402
from occfusion_core.body.proxy import write_proxy_smpl  # noqa: E402
from occfusion_core.config import MetricsConfig, OptimizeConfig, SyntheticConfig, from_dict, merge  # noqa: E402
from occfusion_core.data.synthetic import generate_synthetic_subject  # noqa: E402
from occfusion_core.stages.metrics import compute_metrics  # noqa: E402
from occfusion_core.stages.optimize import optimize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--occlusion", default="none", choices=["none", "zju_band", "object"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--iterations", type=int, nargs="+", default=[600])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--variants", nargs="+", default=["occgauhuman"])
    ap.add_argument("--grid-mm", type=float, default=20.0, help="proxy body resolution")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="optimize settings to override, e.g. sh_view_frame=world (YAML values)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        body_path = write_proxy_smpl(tmp / "body.pkl", grid_mm=args.grid_mm)
        body = load_body_model(body_path)
        for size in args.sizes:
            data = tmp / f"data{size}"
            generate_synthetic_subject(data, SyntheticConfig(frames=args.frames, width=size, height=size,
                                                             occlusion=args.occlusion), body)
            for variant in args.variants:
                for iters in args.iterations:
                    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
                    opt = merge(config.get("optimize"), config["variants"][variant].get("optimize"),
                                {"iterations": iters, "backend": args.backend, "checkpoint_every": 10**6},
                                overrides)
                    cfg = from_dict(OptimizeConfig, opt)
                    run = tmp / f"{size}_{variant}_{iters}"
                    t = time.time()
                    optimize(data, body_path, cfg, run / "model.pt", run / "renders", run / "ckpt", progress=False)
                    seconds = time.time() - t
                    m = compute_metrics(data, run / "model.pt", body_path, MetricsConfig(lpips=False),
                                        run / "metrics.json", variant=variant)
                    row = {"size": size, "variant": variant, "iterations": iters, "set": " ".join(args.set),
                           "gaussians": m["model"]["gaussians"],
                           "stage1_s": round(seconds, 1),
                           "heldout_psnr": m["heldout_full_body"]["psnr"],
                           "heldout_ssim": m["heldout_full_body"]["ssim"],
                           "visible_psnr": m["visible_train"]["psnr"],
                           "occluded_psnr": (m["occluded_region"] or {}).get("psnr"),
                           "silhouette_iou": m["silhouette"]["iou_vs_full_mask"]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    keys = list(rows[0])
    print("\n" + " | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
