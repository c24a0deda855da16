"""Quality on real clips: the whole workflow on ../shared/data's taiji (ZJU band and crate simulated,
so the hidden pixels have ground truth) and basketball (a real occluder: visible-pixel protocol).

    .venv/bin/python bench/video_quality.py                       # all three, config.yaml's settings
    .venv/bin/python bench/video_quality.py --subjects taiji_band --workdir /tmp/vq --csv vq.csv
    .venv/bin/python bench/video_quality.py --set video.crop=none   # compare the whole-frame path

One Snakemake run of this repository's workflow with config.yaml's variants and stage settings and
these subjects (every 4th taiji frame and every basketball frame, 256 px on the longer side, the
person crop); subjects with ground truth also get the ceiling and the control. Prints every subject x
variant (occluded-region, held-out and visible-pixel PSNR, gap closed) and writes the rows as CSV.
Skips a clip that is absent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from dag_runs import print_and_write, run_workflow, set_path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

SUBJECTS = {
    "taiji_band": ("taiji.mp4", {"frame_stride": 4, "max_side": 256, "occlusion": {"kind": "zju_band"}}),
    "taiji_crate": ("taiji.mp4", {"frame_stride": 4, "max_side": 256, "occlusion": {"kind": "object"}}),
    "basketball": ("single_person_basketball.mp4", {"frame_stride": 1, "max_side": 256}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=list(SUBJECTS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides: video.<key>=... for every clip, or a dotted config key (optimize.iterations=1200)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--csv", type=Path, default=Path("video_quality.csv"))
    args = ap.parse_args()

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    video_overrides, config_overrides = {}, []
    for item in args.set:
        key, value = item.split("=", 1)
        if key.startswith("video."):
            video_overrides[key[len("video."):]] = yaml.safe_load(value)
        else:
            config_overrides.append((key, yaml.safe_load(value)))
    config["subjects"] = {}
    for name in args.subjects:
        clip, options = SUBJECTS[name]
        if not (DATA / clip).is_file():
            print(f"skipping {name}: {DATA / clip} is absent")
            continue
        config["subjects"][name] = {"source": "video", "video": {"path": str(DATA / clip), **options,
                                                                 **video_overrides}}
    if not config["subjects"]:
        raise SystemExit("no clip to run")
    for key, value in config_overrides:
        set_path(config, key, value)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.time()
        rows = run_workflow(config, work, args.cores, "the run")
        minutes = (time.time() - start) / 60
        for subject in config["subjects"]:
            report = yaml.safe_load((work / "results" / subject / "data_report.json").read_text())
            for row in rows:
                if row["subject"] == subject:
                    row["frames"] = report["frames"]
                    row["dropped"] = len(report.get("dropped_frames") or [])
    columns = ["subject", "variant", "role", "iterations", "frames", "dropped", "occluded_psnr", "heldout_psnr",
               "visible_psnr", "gap_closed", "silhouette_iou"]
    print_and_write(rows, columns, args.csv, heading=f"{len(rows)} rows in {minutes:.1f} min\n")


if __name__ == "__main__":
    main()
