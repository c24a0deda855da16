"""The `device` setting, as the scheduler sees it (`snakemake -n`): which rules hold a GPU and how
many threads the GPU stages get, locally on this GPU-less host and under the SLURM profile.

Snakemake's dry run caps every job's threads at --cores (1 when it is not given), so each case
passes --cores; the real SLURM submission is checked in tests/test_slurm.py.
"""

import re
import subprocess

import pytest

from tests.conftest import ROOT, snakemake_bin

TINY = ROOT / "tests" / "configs" / "tiny.yaml"
GPU_STAGES = {"optimize", "render", "metrics", "animate"}


def planned_jobs(tmp_path, *extra) -> dict[str, list[dict]]:
    """rule -> [{"gpu": int, "threads": int}] of every job a dry run plans."""
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    proc = subprocess.run(
        [snakemake_bin(), "-n", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(TINY),
         "--directory", str(workdir), *extra],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs: dict[str, list[dict]] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", proc.stdout, re.M):
        body = match.group(2)
        gpu = re.search(r"resources:.*\bgpu=(\d+)", body)
        threads = re.search(r"^\s+threads: (\d+)", body, re.M)
        jobs.setdefault(match.group(1), []).append(
            {"gpu": int(gpu.group(1)) if gpu else 0, "threads": int(threads.group(1)) if threads else 1})
    assert GPU_STAGES <= set(jobs), sorted(jobs)
    return jobs


def gpu_stage_jobs(jobs):
    return [job for rule in GPU_STAGES for job in jobs[rule]]


def test_cpu_host_auto_runs_the_gpu_stages_side_by_side_on_one_thread_each(tmp_path):
    jobs = planned_jobs(tmp_path, "--cores", "2", "--resources", "gpu=1", "--workflow-profile", "none")
    assert all(job == {"gpu": 0, "threads": 1} for job in gpu_stage_jobs(jobs)), jobs
    assert all(job["gpu"] == 0 for rule in jobs for job in jobs[rule])


@pytest.mark.parametrize("cores,threads", [("4", 4), ("16", 8)])
def test_device_cuda_holds_a_gpu_and_up_to_8_threads(tmp_path, cores, threads):
    jobs = planned_jobs(tmp_path, "--cores", cores, "--config", "device=cuda", "--workflow-profile", "none")
    assert all(job == {"gpu": 1, "threads": threads} for job in gpu_stage_jobs(jobs)), jobs
    cpu_rules = set(jobs) - GPU_STAGES - {"complete_masks", "incontext_inpaint", "refine"}
    assert all(job["gpu"] == 0 for rule in cpu_rules for job in jobs[rule])


def test_slurm_profile_asks_for_gpus_from_a_gpu_less_submit_host(tmp_path):
    # the profile sets device: cuda, so this host's missing GPU does not matter
    jobs = planned_jobs(tmp_path, "--profile", str(ROOT / "profiles" / "slurm"), "--cores", "64")
    assert all(job == {"gpu": 1, "threads": 8} for job in gpu_stage_jobs(jobs)), jobs
    assert all(job["gpu"] == 0 for job in jobs["export"] + jobs["prepare_subject"])
