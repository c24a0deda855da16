"""Wall time and peak memory per workflow stage, from Snakemake ``benchmark:`` files.

Every rule of the workflow writes a TSV with Snakemake's columns (s, h:m:s, max_rss, max_vms, max_uss,
max_pss, io_in, io_out, mean_load, cpu_time; memory in MB, times in seconds; "NA" where Snakemake
collected nothing; the extended format adds rule_name and more). This script reads all of them under
one or more folders and prints, per stage, the number of jobs, their summed and longest wall time, the
largest peak RSS of any one job and the summed CPU time, sorted by cost, then the totals.

A stage is the file's ``rule_name`` column when present, else its first folder below the root
(``render/S1.full.tsv`` -> render), else the file name (``build_body_model.tsv`` -> build_body_model).
Several rows in one file are repeats of one job (``repeat("x.tsv", n)``): the job counts once, with
the mean of its repeats' times and the largest of their memory peaks.

Usage:
    .venv/bin/python bench/stage_costs.py                       # results/benchmarks and benchmarks/
    .venv/bin/python bench/stage_costs.py path/to/benchmarks --sort rss --jobs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_FOLDERS = ("results/benchmarks", "benchmarks")
REQUIRED_COLUMNS = ("s", "max_rss", "cpu_time")
SORT_KEYS = {"wall": "wall_s", "rss": "peak_rss_mb", "cpu": "cpu_s"}


@dataclass
class JobCost:
    """One benchmark file: one job, averaged over its repeats.

    Attributes:
        stage: rule name (see the module docstring).
        job: the file's path below its root, without ".tsv".
        wall_s: mean wall time of the repeats.
        peak_rss_mb: largest max_rss of the repeats; NaN when Snakemake recorded none.
        cpu_s: mean CPU time of the repeats; NaN when none recorded.
        repeats: number of data rows.
    """

    stage: str
    job: str
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    repeats: int


@dataclass
class StageCost:
    """All jobs of one stage: summed wall and CPU time, longest job, largest single-job peak RSS."""

    stage: str
    jobs: int = 0
    wall_s: float = 0.0
    max_job_wall_s: float = 0.0
    peak_rss_mb: float = math.nan
    cpu_s: float = math.nan
    job_names: list[str] = field(default_factory=list)


def _number(value: str | None) -> float:
    """A TSV cell as a float; NaN for "NA", "-", empty or missing."""
    if value is None or value.strip() in ("", "NA", "-"):
        return math.nan
    return float(value)


def _nan_max(values) -> float:
    present = [v for v in values if not math.isnan(v)]
    return max(present) if present else math.nan


def _nan_sum(values) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) if present else math.nan


def _nan_mean(values) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def read_job(path: Path, root: Path) -> JobCost:
    """Parse one benchmark TSV.

    Raises:
        ValueError: the file has no data row or lacks a required column (the message names the file).
    """
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no benchmark rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: not a Snakemake benchmark file, missing column(s) {missing}")
    relative = path.relative_to(root).with_suffix("")
    rule_name = (rows[0].get("rule_name") or "").strip()
    if rule_name and rule_name != "-":
        stage = rule_name
    else:
        stage = relative.parts[0] if len(relative.parts) > 1 else relative.name
    try:
        walls = [_number(row["s"]) for row in rows]
        rss = [_number(row["max_rss"]) for row in rows]
        cpu = [_number(row["cpu_time"]) for row in rows]
    except ValueError as error:
        raise ValueError(f"{path}: unreadable number ({error})") from None
    if any(math.isnan(w) for w in walls):
        raise ValueError(f"{path}: a row has no wall time 's'")
    return JobCost(stage=stage, job=relative.as_posix(), wall_s=sum(walls) / len(walls), peak_rss_mb=_nan_max(rss),
                   cpu_s=_nan_mean(cpu), repeats=len(rows))


def read_benchmarks(folders) -> list[JobCost]:
    """Every ``*.tsv`` below the given folders (those that do not exist are skipped), sorted by path."""
    jobs = []
    for folder in map(Path, folders):
        if folder.is_dir():
            jobs += [read_job(path, folder) for path in sorted(folder.rglob("*.tsv"))]
    return jobs


def summarize(jobs: list[JobCost], sort_by: str = "wall") -> list[StageCost]:
    """Per-stage costs, most expensive first by ``sort_by`` ("wall", "rss" or "cpu"; ties by name)."""
    stages: dict[str, StageCost] = {}
    for job in jobs:
        stage = stages.setdefault(job.stage, StageCost(job.stage))
        stage.jobs += 1
        stage.wall_s += job.wall_s
        stage.max_job_wall_s = max(stage.max_job_wall_s, job.wall_s)
        stage.peak_rss_mb = _nan_max([stage.peak_rss_mb, job.peak_rss_mb])
        stage.cpu_s = _nan_sum([stage.cpu_s, job.cpu_s])
        stage.job_names.append(job.job)
    key = SORT_KEYS[sort_by]

    def cost(stage: StageCost) -> tuple[float, str]:
        value = getattr(stage, key)
        return (-value if not math.isnan(value) else math.inf, stage.stage)

    return sorted(stages.values(), key=cost)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt(value: float, digits: int = 1) -> str:
    return "NA" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(stages: list[StageCost], jobs: list[JobCost] | None = None) -> str:
    """Text table, one line per stage (and per job below it when ``jobs`` is given), then the total.

    The total's peak RSS is the largest of any one job (jobs may run one after another or side by
    side, so their peaks do not add up)."""
    total_wall = sum(s.wall_s for s in stages)
    header = (f"{'stage':<28} {'jobs':>5} {'wall h:m:s':>11} {'wall s':>10} {'share':>6} {'longest s':>10} "
              f"{'peak RSS MB':>12} {'CPU s':>10}")
    lines = [header, "-" * len(header)]
    by_stage: dict[str, list[JobCost]] = {}
    for job in jobs or []:
        by_stage.setdefault(job.stage, []).append(job)
    for s in stages:
        share = 100.0 * s.wall_s / total_wall if total_wall > 0 else 0.0
        lines.append(f"{s.stage:<28} {s.jobs:>5} {_hms(s.wall_s):>11} {s.wall_s:>10.1f} {share:>5.1f}% "
                     f"{s.max_job_wall_s:>10.1f} {_fmt(s.peak_rss_mb):>12} {_fmt(s.cpu_s):>10}")
        for job in sorted(by_stage.get(s.stage, []), key=lambda j: -j.wall_s):
            lines.append(f"  {job.job:<26} {'':>5} {_hms(job.wall_s):>11} {job.wall_s:>10.1f} {'':>6} {'':>10} "
                         f"{_fmt(job.peak_rss_mb):>12} {_fmt(job.cpu_s):>10}")
    lines.append("-" * len(header))
    lines.append(f"{'total':<28} {sum(s.jobs for s in stages):>5} {_hms(total_wall):>11} {total_wall:>10.1f} "
                 f"{'100.0%' if total_wall > 0 else '':>6} "
                 f"{max((s.max_job_wall_s for s in stages), default=0.0):>10.1f} "
                 f"{_fmt(_nan_max([s.peak_rss_mb for s in stages])):>12} "
                 f"{_fmt(_nan_sum([s.cpu_s for s in stages])):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=list(DEFAULT_FOLDERS),
                        help=f"folders searched for *.tsv (default: {' and '.join(DEFAULT_FOLDERS)})")
    parser.add_argument("--sort", choices=sorted(SORT_KEYS), default="wall", help="order of the stages")
    parser.add_argument("--jobs", action="store_true", help="also list every job under its stage")
    parser.add_argument("--json", action="store_true", help="print the stages as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        jobs = read_benchmarks(args.folders)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not jobs:
        print(f"error: no benchmark files (*.tsv) under {', '.join(args.folders)}", file=sys.stderr)
        return 1
    stages = summarize(jobs, args.sort)
    if args.json:
        def no_nan(record: dict) -> dict:
            return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}

        print(json.dumps([no_nan(asdict(s)) for s in stages], indent=1))
    else:
        print(format_table(stages, jobs if args.jobs else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
