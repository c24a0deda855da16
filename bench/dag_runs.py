"""Helpers of the bench scripts that run this repository's whole workflow: run it on a config in a
folder, read the summary rows back, print them as a table and write them as CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def set_path(config: dict, dotted: str, value) -> None:
    """config["a"]["b"]["c"] = value for dotted "a.b.c", creating the dicts on the way."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def run_workflow(config: dict, folder: Path, cores: int, what: str) -> list[dict]:
    """Run the workflow on ``config`` in ``folder``; the rows of its ``results/summary.csv``.

    Raises:
        SystemExit: the run failed (naming ``what`` and the log folder, with the tail of the output).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(folder),
                           "--configfile", str(folder / "config.yaml"), "--cores", str(cores), "--resources", "gpu=1"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (see {folder}/.snakemake/log):\n{done.stdout[-4000:]}")
    with open(folder / "results" / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def print_and_write(rows: list[dict], columns: list[str], csv_path: Path, heading: str = "") -> None:
    """Print ``columns`` of ``rows`` as a Markdown table and write them (with the rows' body
    parameters and methods) as CSV."""
    print(f"\n{heading}" + " | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in columns))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["body_params", "methods"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
