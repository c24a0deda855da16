"""The whole DAG on tiny inputs: every declared output, and several subjects run side by side.

One run, shared by the module, in a temporary folder: tests/configs/tiny.yaml plus a second subject
(another seed, the crate occlusion, restricted to one variant) and a second variant, with
``--cores 2 --resources gpu=1``. So 2 subjects x their variants = 3 (subject, variant) pairs.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_killable

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CORES = 2
RUN_TIMEOUT = 1200

SECOND_SUBJECT = {
    "source": "synthetic",
    "variants": ["occgauhuman"],
    "synthetic": {"frames": 12, "width": 64, "height": 64, "occlusion": "object", "seed": 3,
                  "heldout_views": 1, "heldout_every": 6},
}
SECOND_VARIANT = {
    "description": "GauHuman: whole-frame losses (no occlusion handling)",
    "role": "baseline",
    "optimize": {"loss_region": "full", "mask_source": "visible", "lambda_mask": 0.1,
                 "lambda_ssim": 0.01, "lambda_lpips": 0.0},
}
# the references every subject with ground truth gets (the crate subject lists its own variants)
REFERENCE_VARIANTS = {
    "ceiling": {"description": "occgauhuman trained on the unoccluded frames", "role": "ceiling",
                "training_frames": "unoccluded",
                "optimize": {"loss_region": "visible", "lambda_mask": 2.0, "lambda_lpips": 0.0}},
    "control": {"description": "occgauhuman with the true full masks", "role": "control",
                "optimize": {"loss_region": "visible", "mask_source": "ground_truth", "lambda_mask": 2.0,
                             "lambda_lpips": 0.0}},
}
EXPECTED_PAIRS = {("tiny", "occgauhuman"), ("tiny", "gauhuman"), ("tiny", "ceiling"), ("tiny", "control"),
                  ("crate", "occgauhuman")}
GPU_RULES = {"complete_masks", "optimize", "incontext_inpaint", "refine", "render", "metrics", "animate"}


def run(cmd: list[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return run_killable(cmd, timeout)


def snakemake_cmd(workdir: Path, config: Path, *extra: str) -> list[str]:
    return [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config), "--cores", str(CORES), "--resources", "gpu=1", *extra]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load(TINY.read_text())
    config["subjects"]["crate"] = SECOND_SUBJECT
    config["variants"]["gauhuman"] = SECOND_VARIANT
    config["variants"].update(REFERENCE_VARIANTS)
    config_path = base / "subjects.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    workdir = base / "run"
    workdir.mkdir()
    out = run(snakemake_cmd(workdir, config_path))
    assert out.returncode == 0, out.stdout[-8000:]
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    assert len(logs) == 1
    return {"workdir": workdir, "config": config_path, "stdout": out.stdout, "log": logs[0].read_text()}


def test_every_declared_output_log_and_benchmark_exists(multi_run):
    """Snakemake's own list of the DAG's outputs (--summary): every one exists and is not empty."""
    workdir = multi_run["workdir"]
    out = run(snakemake_cmd(workdir, multi_run["config"], "--summary"), timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.startswith("results/")]
    rules = {row[2] for row in rows}
    assert rules >= {"build_body_model", "prepare_subject", "validate_subject", "overlay", "optimize",
                     "render", "metrics", "summary"}, rules
    for output, _date, rule, logs, status, *_ in rows:
        path = workdir / output
        assert path.exists() and status != "missing", f"{rule}: {output} missing"
        assert path.stat().st_size > 0 if path.is_file() else any(path.iterdir()), f"{output} is empty"
        for log in filter(None, logs.split(",")):
            assert (workdir / log.strip()).is_file(), f"{rule}: log {log} missing"
    benchmarks = {p.relative_to(workdir / "results" / "benchmarks").parts[0]
                  for p in (workdir / "results" / "benchmarks").rglob("*.tsv")}
    assert {b.removesuffix(".tsv") for b in benchmarks} >= rules
    for pair in EXPECTED_PAIRS:
        renders = workdir / "results" / pair[0] / pair[1] / "renders"
        for kind in ("train", "heldout", "orbit", "novel_pose"):
            assert any((renders / kind).rglob("*.png")), f"{renders}/{kind} has no frames"
        assert any(renders.glob("*.mp4")), f"{renders} has no videos"


def test_summary_covers_every_subject_and_variant(multi_run):
    workdir = multi_run["workdir"]
    with open(workdir / "results" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = {(row["subject"], row["variant"]) for row in rows}
    assert pairs == EXPECTED_PAIRS, pairs
    assert len(rows) == len(EXPECTED_PAIRS), "one row per subject x variant"
    # the subject restricted to one variant has no folder for the other
    assert not (workdir / "results" / "crate" / "gauhuman").exists()
    for subject, variant in EXPECTED_PAIRS:
        metrics = json.loads((workdir / "results" / subject / variant / "metrics.json").read_text())
        assert metrics, f"{subject}/{variant}: empty metrics.json"
    assert (workdir / "results" / "summary.png").stat().st_size > 0


def test_summary_has_ceiling_control_gap_closed_and_matched_budgets(multi_run):
    """Every variant of a subject trains the same number of iterations (30 + 10: stage 1 for the
    sum where there is no stage 3); gap_closed is (variant - baseline) / (ceiling - baseline) on
    occluded-region PSNR; the ceiling trained on the unoccluded frames, the control on the true masks."""
    workdir = multi_run["workdir"]
    with open(workdir / "results" / "summary.csv", newline="") as f:
        rows = {(r["subject"], r["variant"]): r for r in csv.DictReader(f)}
    assert {rows[("tiny", v)]["role"] for v in ("gauhuman", "ceiling", "control", "occgauhuman")} == \
        {"baseline", "ceiling", "control", "method"}
    assert {int(r["iterations"]) for r in rows.values()} == {40}
    base, ceiling = (float(rows[("tiny", v)]["occluded_psnr"]) for v in ("gauhuman", "ceiling"))
    for variant in ("occgauhuman", "control", "ceiling", "gauhuman"):
        value = rows[("tiny", variant)]["gap_closed"]
        if ceiling > base:
            expected = (float(rows[("tiny", variant)]["occluded_psnr"]) - base) / (ceiling - base)
            assert float(value) == pytest.approx(expected, abs=1e-3)
        else:
            assert value == ""
    assert rows[("crate", "occgauhuman")]["gap_closed"] == ""  # no baseline or ceiling there
    ceiling_metrics = json.loads((workdir / "results" / "tiny" / "ceiling" / "metrics.json").read_text())
    assert ceiling_metrics["training_frames"] == "unoccluded" and ceiling_metrics["role"] == "ceiling"
    assert (workdir / "results" / "tiny" / "unoccluded_data" / "images").is_dir()
    assert not (workdir / "results" / "crate" / "unoccluded_data").exists()
    control = json.loads((workdir / "results" / "tiny" / "control" / "metrics.json").read_text())
    assert "true full masks" in control["methods"]["stage1_masks"]
    # held-out views scored twice: with the training bodies, and with each body fitted to the view
    fitted = control["heldout_body_fitted"]
    assert fitted["count"] == control["heldout_full_body"]["count"] > 0
    assert "3 Adam steps" in fitted["protocol"]["body"]
    assert float(rows[("tiny", "control")]["heldout_fitted_psnr"]) == pytest.approx(fitted["psnr"])
    assert control["body_params"].startswith("refined per frame")


def job_intervals(log: str) -> dict[int, dict]:
    """jobid -> {rule, subject, threads, gpu, start, end}; start and end are positions in Snakemake's
    log, which records every job start and finish in the order the scheduler saw them."""
    jobs = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", log, re.M):
        body = m.group(2)
        jobid = int(re.search(r"^\s+jobid: (\d+)", body, re.M).group(1))
        threads = re.search(r"^\s+threads: (\d+)", body, re.M)
        resources = re.search(r"^\s+resources: (.*)$", body, re.M)
        subject = re.search(r"^\s+wildcards: .*?\bsubject=([\w.-]+)", body, re.M)
        jobs[jobid] = {"rule": m.group(1), "subject": subject.group(1) if subject else None,
                       "threads": int(threads.group(1)) if threads else 1,
                       "gpu": bool(resources and re.search(r"\bgpu=1\b", resources.group(1))),
                       "start": m.start(), "end": None}
    for m in re.finditer(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", log, re.M):
        jobs[int(m.group(1))]["end"] = m.start()
    return {jobid: job for jobid, job in jobs.items() if job["rule"] != "all"}


def test_subjects_run_in_parallel_up_to_cores(multi_run):
    jobs = job_intervals(multi_run["log"])
    assert jobs and all(job["end"] is not None for job in jobs.values())
    max_threads = max_jobs = max_gpu = 0
    for job in jobs.values():  # what was running right after each job started
        running = [j for j in jobs.values() if j["start"] <= job["start"] < j["end"]]
        max_threads = max(max_threads, sum(j["threads"] for j in running))
        max_jobs = max(max_jobs, len(running))
        max_gpu = max(max_gpu, sum(j["gpu"] for j in running))
    assert max_jobs >= 2, "no two jobs ever ran at the same time"
    assert max_threads <= CORES, f"{max_threads} threads at once with --cores {CORES}"
    assert max_gpu <= 1, "two GPU jobs ran at once with --resources gpu=1"
    assert {job["rule"] for job in jobs.values() if job["gpu"]} <= GPU_RULES
    # jobs of different subjects ran side by side (not only one subject's jobs beside each other)
    overlapped = {
        (a["subject"], a["rule"], b["subject"], b["rule"])
        for a in jobs.values() for b in jobs.values()
        if a["subject"] and b["subject"] and a["subject"] < b["subject"]
        and a["start"] < b["end"] and b["start"] < a["end"]
    }
    assert overlapped, "jobs of different subjects never ran side by side"
