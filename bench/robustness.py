"""Robustness to the error of the body estimate: the whole workflow on the default synthetic subject
at several pose-noise levels (and with the crate occluder), every variant with its ceiling and gap closed.

    .venv/bin/python bench/robustness.py                          # exact, 3, 6, 10 degrees + crate
    .venv/bin/python bench/robustness.py --noise 0 6 --no-crate --csv robustness.csv
    .venv/bin/python bench/robustness.py --set optimize.body_refine.enabled=false   # refinement off

Each setting is one Snakemake run of this repository's workflow (config.yaml with the subject's
``synthetic`` block changed) in its own folder under ``--workdir`` (default: a temporary folder):

- ``exact``: the estimate is the truth (pose, translation and shape error 0);
- ``N deg``: pose error N degrees per rotation-vector component, translation 2 cm (0.35 cm per
  degree above 6), shape error as configured, all as in config.yaml otherwise;
- ``crate``: the default error with the crate occluder instead of the ZJU band.

Prints one row per setting x variant (occluded-region, held-out and visible-pixel PSNR, gap closed,
and the held-out difference to the exact run of the same variant) and writes them as CSV. Held-out
PSNR comes twice: with the training frames' refined bodies (what a user's avatar shows from a new
view of a training frame) and with each frame's body first fitted to the held-out view
(``heldout_fitted``: the avatar's own quality, without the depth error of the body that the one
training camera cannot see; metrics.heldout_body_fit_steps, 40 here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from dag_runs import print_and_write, run_workflow, set_path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT_FIT_STEPS = 40
"""Steps of the held-out body fit (metrics.heldout_body_fit_steps; --set overrides it): on the
default subject's ceiling 40 steps come within 0.25 dB of 60."""


def run_setting(name: str, synthetic: dict, overrides: list[str], workdir: Path, cores: int) -> list[dict]:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    subject = next(iter(config["subjects"]))
    config["subjects"] = {subject: {"source": "synthetic",
                                    "synthetic": {**config["subjects"][subject].get("synthetic", {}), **synthetic}}}
    set_path(config, "metrics.heldout_body_fit_steps", HELDOUT_FIT_STEPS)
    for item in overrides:
        key, value = item.split("=", 1)
        set_path(config, key, yaml.safe_load(value))
    start = time.time()
    rows = run_workflow(config, workdir / name.replace(" ", "_"), cores, f"setting '{name}'")
    for row in rows:
        row["setting"] = name
        row["minutes"] = round((time.time() - start) / 60, 1)
    print(f"{name}: {len(rows)} rows in {rows[0]['minutes']} min", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 3.0, 6.0, 10.0],
                    help="pose errors in degrees (0 = the exact run: no pose, translation or shape error)")
    ap.add_argument("--no-crate", action="store_true", help="skip the crate-occluder setting")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run, dotted keys (e.g. optimize.iterations=1200)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--csv", type=Path, default=Path("robustness.csv"))
    args = ap.parse_args()

    settings = []
    for noise in args.noise:
        if noise == 0:
            settings.append(("exact", {"pose_noise_deg": 0.0, "trans_noise_m": 0.0, "betas_noise": 0.0}))
        else:
            settings.append((f"{noise:g} deg", {"pose_noise_deg": noise,
                                                "trans_noise_m": round(0.02 + 0.0035 * max(noise - 6.0, 0.0), 4)}))
    if not args.no_crate:
        settings.append(("crate", {"occlusion": "object"}))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for name, synthetic in settings:
            rows += run_setting(name, synthetic, args.set, workdir, args.cores)

    exact = {r["variant"]: r for r in rows if r["setting"] == "exact"}
    for r in rows:
        ref = exact.get(r["variant"])
        for key in ("heldout", "heldout_fitted"):
            r[f"{key}_vs_exact"] = (round(float(r[f"{key}_psnr"]) - float(ref[f"{key}_psnr"]), 2)
                                    if ref and r.get(f"{key}_psnr") and ref.get(f"{key}_psnr") else None)
    columns = ["setting", "variant", "role", "iterations", "occluded_psnr", "heldout_psnr", "heldout_fitted_psnr",
               "visible_psnr", "gap_closed", "heldout_vs_exact", "heldout_fitted_vs_exact", "silhouette_iou", "minutes"]
    print_and_write(rows, columns, args.csv)

if __name__ == "__main__":
    main()
