"""The workflow on a real SLURM cluster through profiles/slurm, compared with a local run.

Needs a running cluster whose node declares a GPU GRES: CI starts a single-node one with
.ci/slurm/setup-slurm.sh (and stops it with .ci/slurm/stop-slurm.sh); this test never starts one.
Without `sbatch` it skips. With `sbatch` but no reachable controller it skips too, except under CI
(CI=true), where a missing cluster is a failure.

The tiny config runs to its metrics and renders twice at the same time: once with
`--profile profiles/slurm` (every rule an sbatch job; the jobs re-run this venv's python by absolute
path on the shared filesystem) and once locally. Then:
* the GPU rules reached SLURM with a GPU request (squeue, polled during the run, shows
  `gres:gpu:1` as the job's TRES request, i.e. the plugin's `--gpus=1`), and the CPU rules without;
* the subject's data folder is byte-for-byte the same, and metrics.json has the same numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))  # absolute: the jobs run it too
SUBJECT, VARIANT = "tiny", "occgauhuman"
TARGETS = [f"results/{SUBJECT}/{VARIANT}/metrics.json", f"results/{SUBJECT}/{VARIANT}/renders"]
GPU_RULES = {"complete_masks", "optimize", "incontext_inpaint", "refine", "render", "metrics"}
SLURM_TIMEOUT = 900  # about 15 s per sequential SLURM job + the work; generous for a busy machine
# Numbers may differ between the runs at all because the two processes need not reduce in the same
# order: torch picks kernels by CPU features and splits sums by thread count, which a SLURM node may
# set differently (cpus-per-task); metrics.json rounds to 4 decimals, so a difference in the 7th
# digit can still move the last one. Timings are not compared.
REL_TOL, ABS_TOL = 1e-3, 2e-4


def _cluster_problem() -> str | None:
    """None when a SLURM controller answers and a node offers a GPU GRES, else what is wrong."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol ping failed: {err}"
    if "UP" not in ping.stdout:
        said = (ping.stdout.strip() or ping.stderr.strip() or "no output").splitlines()[0]
        return f"no SLURM controller answers (scontrol ping: {said})"
    gres = subprocess.run(["sinfo", "-h", "-o", "%G %t"], capture_output=True, text=True, timeout=20)
    if not re.search(r"gpu:\d+\S* (idle|mix|alloc)", gres.stdout):
        return f"no usable node offers a 'gpu' GRES (sinfo: {gres.stdout.strip()!r})"
    return None


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed here (no sbatch); CI starts it with .ci/slurm/setup-slurm.sh")
    problem = _cluster_problem()
    if problem:
        message = f"{problem}; start one with: sudo bash .ci/slurm/setup-slurm.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class SqueuePoller(threading.Thread):
    """Records every job squeue shows (finished ones included) while the run goes on."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.jobs, self._done = interval, {}, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.poll()
            self._done.wait(self.interval)

    def poll(self):
        out = subprocess.run(
            ["squeue", "-h", "--states=all", "-O", "JobID:|,Comment:|,tres-per-job:|,NumCPUs:|,State"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        for line in out.stdout.splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) >= 5 and fields[0].isdigit():
                self.jobs[fields[0]] = {"comment": fields[1], "tres": fields[2], "cpus": fields[3], "state": fields[4]}

    def stop(self):
        self._done.set()
        if self.is_alive():
            self.join(timeout=60)
        self.poll()


def _start(cmd):
    """Start a command in its own process group (so a timeout can end all of it)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait(proc, timeout):
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0] + f"\n[killed after {timeout} s]"


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    local_dir, slurm_dir = base / "local", base / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()
    common = ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(TINY), "--cores", "2"]

    local = slurm = None
    poller = SqueuePoller()
    try:
        # targets first: --resources and --configfile take several values
        local = _start([SNAKEMAKE, *TARGETS, *common, "--directory", str(local_dir), "--resources", "gpu=1"])
        poller.start()
        start = time.time()
        slurm = _start(
            [
                "timeout",
                "-s",
                "KILL",
                str(SLURM_TIMEOUT),
                SNAKEMAKE,
                *TARGETS,
                "--profile",
                str(ROOT / "profiles" / "slurm"),
                *common,
                "--directory",
                str(slurm_dir),
                # the test cluster's GPUs are fake (/dev/null): the profile's device=cuda would
                # fail in torch; 'auto' still asks SLURM for a GPU, then runs on the node's CPU
                "--config",
                "device=auto",
                # a quicker first poll and file wait than a production cluster needs
                "--slurm-init-seconds-before-status-checks",
                "2",
                "--latency-wait",
                "5",
            ]
        )
        slurm_out = _wait(slurm, SLURM_TIMEOUT + 60)
        seconds = time.time() - start
        local_out = _wait(local, SLURM_TIMEOUT)
    finally:
        # whatever happened (a failure, a timeout, Ctrl-C): no process or SLURM job of ours is left
        for proc in (local, slurm):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        poller.stop()
        leftover = [
            j
            for j in _job_ids(slurm_dir)
            if poller.jobs.get(j, {}).get("state") in ("PENDING", "RUNNING", "CONFIGURING")
        ]
        if leftover:
            subprocess.run(["scancel", *leftover], timeout=30)

    ours = _job_ids(slurm_dir)
    assert slurm.returncode == 0, f"SLURM run failed (rc {slurm.returncode}):\n{slurm_out[-8000:]}"
    assert local.returncode == 0, f"local run failed:\n{local_out[-8000:]}"
    print(f"\nSLURM run: {seconds:.0f} s, {len(ours)} jobs")
    return {"local": local_dir, "slurm": slurm_dir, "jobs": poller.jobs, "ids": ours, "log": slurm_out}


def _job_ids(workdir: Path) -> dict[str, str]:
    """SLURM job id -> rule, from the per-job logs the plugin keeps (slurm-keep-successful-logs)."""
    ids = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule_dir = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0]  # rule_<name>
        ids[log.stem] = rule_dir.removeprefix("rule_")
    return ids


def test_every_rule_ran_as_a_slurm_job(runs):
    rules = set(runs["ids"].values())
    assert {"build_body_model", "prepare_subject", "validate_subject", "optimize", "render", "metrics"} <= rules, rules
    for jobid, rule in runs["ids"].items():
        record = runs["jobs"].get(jobid)
        assert record, f"job {jobid} ({rule}) never showed in squeue"
        # the plugin names the rule (and the wildcards) in the job's comment
        assert re.fullmatch(rf"rule_{rule}(_wildcards_.*)?", record["comment"]), record
        assert record["state"] == "COMPLETED", record


def test_gpu_rules_requested_a_gpu_from_slurm(runs):
    gpu_jobs = {jobid: rule for jobid, rule in runs["ids"].items() if rule in GPU_RULES}
    assert set(gpu_jobs.values()) == {"optimize", "render", "metrics"}
    for jobid, rule in runs["ids"].items():
        tres = runs["jobs"][jobid]["tres"]
        if rule in GPU_RULES:
            assert re.search(r"gres[:/]gpu[:=]1\b", tres), f"{rule} (job {jobid}) asked for {tres!r}"
            # a GPU stage's threads (--cpus-per-task): --cores 2 here, decided when the job was
            # scheduled, not by probing this GPU-less submit host (which gives 1)
            cpus = runs["jobs"][jobid]["cpus"]
            assert cpus == "2", f"{rule} (job {jobid}) got {cpus} CPUs"
        else:
            assert "gpu" not in tres, f"CPU rule {rule} (job {jobid}) asked for {tres!r}"


def test_data_folder_is_identical(runs):
    a = runs["local"] / "results" / SUBJECT / "data"
    b = runs["slurm"] / "results" / SUBJECT / "data"
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    different = [str(p) for p in files_a if (a / p).read_bytes() != (b / p).read_bytes()]
    assert not different, f"differ between the local and the SLURM run: {different}"


def _compare(local, slurm, path="metrics"):
    if isinstance(local, dict):
        assert set(local) == set(slurm), f"{path}: keys {sorted(local)} vs {sorted(slurm)}"
        for key in local:
            if "seconds" not in key:
                _compare(local[key], slurm[key], f"{path}.{key}")
    elif isinstance(local, list):
        assert len(local) == len(slurm), path
        for i, (x, y) in enumerate(zip(local, slurm)):
            _compare(x, y, f"{path}[{i}]")
    elif isinstance(local, float) or isinstance(slurm, float):
        assert math.isclose(local, slurm, rel_tol=REL_TOL, abs_tol=ABS_TOL), f"{path}: {local} vs {slurm}"
    else:
        assert local == slurm, f"{path}: {local!r} vs {slurm!r}"


def test_metrics_equal_a_local_run(runs):
    rel = Path("results") / SUBJECT / VARIANT / "metrics.json"
    local = json.loads((runs["local"] / rel).read_text())
    slurm = json.loads((runs["slurm"] / rel).read_text())
    _compare(local, slurm)
    assert isinstance(local["heldout_full_body"]["psnr"], float)


def test_comparison_is_not_vacuous():
    """The metrics comparison notices a changed number and ignores timings."""
    _compare({"psnr": 20.0, "stage1_seconds": 5.0}, {"psnr": 20.0001, "stage1_seconds": 9.0})
    with pytest.raises(AssertionError):
        _compare({"a": {"psnr": 20.0}}, {"a": {"psnr": 20.1}})
