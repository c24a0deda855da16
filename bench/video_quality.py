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
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

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
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        start = time.time()
        done = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
                               "--configfile", str(work / "config.yaml"), "--cores", str(args.cores),
                               "--resources", "gpu=1"], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the run failed (see {work}/.snakemake/log):\n{done.stdout[-4000:]}")
        minutes = (time.time() - start) / 60
        with open(work / "results" / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for subject in config["subjects"]:
            report = yaml.safe_load((work / "results" / subject / "data_report.json").read_text())
            for row in rows:
                if row["subject"] == subject:
                    row["frames"] = report["frames"]
                    row["dropped"] = len(report.get("dropped_frames") or [])
    columns = ["subject", "variant", "role", "iterations", "frames", "dropped", "occluded_psnr", "heldout_psnr",
               "visible_psnr", "gap_closed", "silhouette_iou"]
    print(f"\n{len(rows)} rows in {minutes:.1f} min\n" + " | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in columns))
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["body_params", "methods"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
