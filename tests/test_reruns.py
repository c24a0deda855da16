"""Rerun only what changed, and pick up an interrupted run where it stopped.

One full run is shared by the module: tests/configs/tiny.yaml (variant occgauhuman: stage 1 only)
plus a variant with every stage (STAGED_VARIANT: stage 0 complete masks, stage 1, stage 2 in-context
inpainting, stage 3 refinement, with the methods that need no model weights). It is itself the
interruption case: it is killed (SIGKILL of the whole process group, like a crashed node) while
stage 1 runs, once a checkpoint exists, and restarted with --rerun-incomplete. Every other case works
on a copy of the finished run folder and asks Snakemake what it would run (a dry run).

The workflow itself is also a copy (Snakefile, rules, scripts and occfusion_core under a temporary
folder): the rules list core source files as inputs (core_code() in rules/common.smk), so editing
occfusion_core in the repository while the tests run would otherwise change what reruns, and the
code cases edit files of this copy, never the repository's. The C++ rasterizer module and its
sources are symlinks to the repository's, so its compiled build is reused.

Stages and the jobs each change must rerun are data (LATE_STAGE_CASES, CODE_CASES): a new stage is a
new row there.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_killable

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SUBJECT, VARIANT, STAGED = "tiny", "occgauhuman", "occfusion"
RUN_TIMEOUT = 900  # seconds for the full run (about a minute and a half on an idle 2-core machine)

# tiny.yaml + a variant that runs stages 0-3 (CPU methods, no weights) + small stage settings
STAGED_VARIANT = {
    "variants": {STAGED: {
        "description": "OccFusion stages 0-3 with the methods that need no model weights",
        "stages": ["complete_masks", "optimize", "incontext_inpaint", "refine"],
        "optimize": {"loss_region": "visible", "mask_source": "complete", "lambda_mask": 2.0,
                     "lambda_ssim": 0.1, "lambda_lpips": 0.0},
    }},
    "complete_masks": {"method": "silhouette"},
    "incontext_inpaint": {"method": "render_fill"},
    "refine": {"iterations": 20, "checkpoint_every": 10, "log_every": 10},
}

BOTH = (VARIANT, STAGED)


def jobs_of(**per_variant) -> set[tuple[str, str | None]]:
    """{(rule, variant)}: jobs_of(occfusion=["refine"], all_=["summary"]); `both` = every variant."""
    out = set()
    for key, rules in per_variant.items():
        variants = {"both": BOTH, "all_": (None,)}.get(key, (key,))
        out |= {(rule, v) for rule in rules for v in variants}
    return out


# the jobs that read a variant's final model
FINAL_MODEL_USERS = ["render", "metrics", "export", "animate"]
# (stage whose settings change, config edit, jobs that must rerun: exactly these)
LATE_STAGE_CASES = [
    ("render", {"render": {"orbit_frames": 5}}, jobs_of(both=["render"])),
    ("metrics", {"metrics": {"crop_to_body_box": False}}, jobs_of(both=["metrics"], all_=["summary"])),
    ("refine", {"refine": {"lambda_l1": 0.9}},
     jobs_of(occfusion=["refine", *FINAL_MODEL_USERS], all_=["summary"])),
    ("incontext_inpaint", {"incontext_inpaint": {"alpha_threshold": 0.4}},
     jobs_of(occfusion=["incontext_inpaint", "refine", *FINAL_MODEL_USERS], all_=["summary"])),
    ("optimize", {"optimize": {"lambda_l1": 0.9}},
     jobs_of(both=["optimize", *FINAL_MODEL_USERS], occfusion=["incontext_inpaint", "refine"],
             all_=["summary"])),
    ("complete_masks", {"complete_masks": {"silhouette_band": 0.3}},
     jobs_of(occfusion=["complete_masks", "optimize", "incontext_inpaint", "refine", *FINAL_MODEL_USERS],
             all_=["summary"])),
]
# (core source file edited, jobs that must rerun: exactly these)
CODE_CASES = [
    ("gaussians/human.py", jobs_of(both=["optimize", *FINAL_MODEL_USERS],
                                   occfusion=["incontext_inpaint", "refine"], all_=["summary"])),
    ("stages/render.py", jobs_of(both=["render", "animate"])),  # animate renders with its renderer
    ("data/sequence.py", jobs_of(all_=["prepare_subject", "validate_subject", "overlay", "summary"],
                                 both=["optimize", *FINAL_MODEL_USERS],
                                 occfusion=["complete_masks", "incontext_inpaint", "refine"])),
]
WORKFLOW_PARTS = ["Snakefile", "config.yaml", "rules", "schemas", "envs", "workflow_scripts",
                  "profiles", "report", "occfusion_core"]
# shared with the repository (symlinks): the compiled CPU rasterizer finds its build there
SHARED_WITH_REPO = ["occfusion_core/render/backends/cpp.py", "occfusion_core/render/backends/csrc"]


# --------------------------------------------------------------------------------- helpers


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow tree (mtimes kept), with the C++ backend linked to the repository's."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=ignore, copy_function=shutil.copy2)
        else:
            shutil.copy2(src, dest / part)
    for rel in SHARED_WITH_REPO:
        target = dest / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        target.symlink_to(ROOT / rel)
    return dest


def write_config(path: Path, *edits: dict) -> Path:
    """tests/configs/tiny.yaml with ``edits`` merged in, in order (nested dicts key by key)."""
    config = yaml.safe_load(TINY.read_text())

    def merge(base, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)

    for edit in edits:
        merge(config, edit)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_cmd(workflow: Path, workdir: Path, config: Path, *extra: str) -> list[str]:
    return [SNAKEMAKE, "--snakefile", str(workflow / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config), "--cores", "2", "--resources", "gpu=1", *extra]


def run(cmd: list[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return run_killable(cmd, timeout)


def planned_jobs(workflow: Path, workdir: Path, config: Path, *extra: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run would execute ("all" left out)."""
    out = run(snakemake_cmd(workflow, workdir, config, "--dry-run", *extra), timeout=300)
    assert out.returncode == 0, out.stdout[-5000:]
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", out.stdout, re.M):
        if m.group(1) == "all":
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", m.group(2), re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((m.group(1), wildcards))
    if not jobs:
        assert "Nothing to be done" in out.stdout, out.stdout[-3000:]
    return jobs


def rules_of(jobs) -> set[str]:
    return {rule for rule, _ in jobs}


def pairs_of(jobs) -> set[tuple[str, str | None]]:
    return {(rule, wc.get("variant")) for rule, wc in jobs}


def job_key(rule: str, wildcards: dict) -> tuple[str, str | None, str | None]:
    return rule, wildcards.get("subject"), wildcards.get("variant")


def finished_jobs(log_text: str) -> set[tuple[str, str | None, str | None]]:
    """(rule, subject, variant) of every job a Snakemake log says finished."""
    started = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", log_text, re.M):
        jobid = re.search(r"^\s+jobid: (\d+)", m.group(2), re.M)
        wc = re.search(r"^\s+wildcards: (.*)$", m.group(2), re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        if jobid:
            started[jobid.group(1)] = job_key(m.group(1), wildcards)
    return {started[j] for j in re.findall(r"^Finished jobid: (\d+) ", log_text, re.M)
            if j in started and started[j][0] != "all"}


def copy_run(src: Path, dest: Path) -> Path:
    """A copy of a run folder, results and .snakemake metadata, with every mtime kept."""
    shutil.copytree(src, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


# --------------------------------------------------------------------------------- the shared run


@dataclass
class CompletedRun:
    base: Path
    workflow: Path
    workdir: Path
    config: Path
    finished_before_kill: set[tuple]
    resume_plan: set[tuple]
    first_log: str
    restart_log: str
    mtimes_before_restart: dict[str, float]


def _output_mtimes(workdir: Path) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime
            for p in (workdir / "results").rglob("*") if p.is_file() and "logs" not in p.parts}


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory) -> CompletedRun:
    base = tmp_path_factory.mktemp("reruns")
    workflow = copy_workflow(base / "workflow")
    workdir = base / "run"
    workdir.mkdir()
    config = write_config(base / "tiny.yaml", STAGED_VARIANT)
    checkpoint = workdir / "results" / SUBJECT / VARIANT / "stage1" / "checkpoints" / "checkpoint.pt"

    # 1. start the run and kill it (the whole process group, no cleanup) once stage 1 checkpointed
    first = subprocess.Popen(snakemake_cmd(workflow, workdir, config), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + RUN_TIMEOUT
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed = first.poll() is None
    if killed:
        os.killpg(first.pid, signal.SIGKILL)
    first_log = first.communicate()[0]
    if not killed or not checkpoint.exists():
        pytest.fail("the run ended before stage 1 wrote a checkpoint; cannot test the resume:\n"
                    + first_log[-5000:])

    # 2. what a restart plans, then the restart itself (a killed run leaves its lock behind)
    unlock = run(snakemake_cmd(workflow, workdir, config, "--unlock"), timeout=300)
    assert unlock.returncode == 0, unlock.stdout[-3000:]
    resume_plan = {job_key(r, wc) for r, wc in planned_jobs(workflow, workdir, config, "--rerun-incomplete")}
    mtimes = _output_mtimes(workdir)
    restart = run(snakemake_cmd(workflow, workdir, config, "--rerun-incomplete"))
    assert restart.returncode == 0, restart.stdout[-8000:]
    return CompletedRun(base, workflow, workdir, config, finished_jobs(first_log), resume_plan,
                        first_log, restart.stdout, mtimes)


# --------------------------------------------------------------------------------- (d) interruption


def test_interrupted_run_continues_where_it_stopped(completed_run):
    run_ = completed_run
    killed = ("optimize", SUBJECT, VARIANT)
    # the jobs that finished before the kill are neither planned again nor rerun; the killed one is
    finished_rules = {rule for rule, _, _ in run_.finished_before_kill}
    assert {"build_body_model", "prepare_subject", "validate_subject"} <= finished_rules
    assert killed not in run_.finished_before_kill and killed in run_.resume_plan
    assert not (run_.resume_plan & run_.finished_before_kill), run_.resume_plan
    assert not (finished_jobs(run_.restart_log) & run_.finished_before_kill)
    now = _output_mtimes(run_.workdir)
    for rel, mtime in run_.mtimes_before_restart.items():
        if not rel.startswith(f"results/{SUBJECT}/{VARIANT}/stage1/"):  # the killed job's own files
            assert now.get(rel) == mtime, f"{rel} was rewritten by the restart"


def test_optimize_resumed_from_its_checkpoint(completed_run):
    log = (completed_run.workdir / "results" / "logs" / "optimize" / f"{SUBJECT}.{VARIANT}.log").read_text()
    m = re.search(r"resuming from \S+checkpoint\.pt at iteration (\d+)", log)
    assert m, f"the optimize log does not say it resumed:\n{log[-3000:]}"
    iteration = int(m.group(1))
    config = yaml.safe_load(completed_run.config.read_text())
    cfg = config["optimize"]
    # matched budgets: the variant has no stage 3, so stage 1 also runs the stage-3 iterations
    iterations = cfg["iterations"] + config["refine"]["iterations"]
    assert 0 < iteration < iterations and iteration % cfg["checkpoint_every"] == 0
    from occfusion_core.io import load_torch

    model = load_torch(completed_run.workdir / "results" / SUBJECT / VARIANT / "stage1" / "model.pt")
    assert model["resumed_from"] == iteration and model["iteration"] == iterations
    # the checkpoint folder is gone once model.pt (which holds the optimiser state) is written
    assert not (completed_run.workdir / "results" / SUBJECT / VARIANT / "stage1" / "checkpoints").exists()


def test_finished_run_is_up_to_date(completed_run):
    r = completed_run
    assert planned_jobs(r.workflow, r.workdir, r.config) == []
    assert (r.workdir / "results" / "summary.csv").exists()


# --------------------------------------------------------------------------------- (a) a stage's settings


@pytest.mark.parametrize("stage,edit,expected", LATE_STAGE_CASES, ids=[c[0] for c in LATE_STAGE_CASES])
def test_changed_stage_settings_rerun_that_stage_and_what_follows(completed_run, tmp_path, stage, edit,
                                                                    expected):
    workdir = copy_run(completed_run.workdir, tmp_path / "run")
    config = write_config(tmp_path / "edited.yaml", STAGED_VARIANT, edit)
    jobs = planned_jobs(completed_run.workflow, workdir, config)
    assert pairs_of(jobs) == expected, f"changing {stage} settings plans {sorted(pairs_of(jobs), key=str)}"


# --------------------------------------------------------------------------------- (b) core code


@pytest.mark.parametrize("module,expected", CODE_CASES, ids=[c[0] for c in CODE_CASES])
def test_changed_core_code_reruns_the_stages_that_use_it(completed_run, tmp_path, module, expected):
    # The workflow copy of the run itself is edited (and put back): the rules list core files by
    # absolute path, so a workflow at another path would have other inputs and rerun everything.
    workdir = copy_run(completed_run.workdir, tmp_path / "run")
    source = completed_run.workflow / "occfusion_core" / module
    assert source.is_file() and not source.is_symlink()
    before, original = source.stat(), source.read_bytes()
    try:
        # an edit: Snakemake reruns when an input is newer than the outputs *and* its content differs
        # from the checksum recorded at the last run (so a bare `touch` reruns nothing)
        source.write_bytes(original + b"\n# an edit (tests/test_reruns.py)\n")
        later = time.time() + 2
        os.utime(source, (later, later))
        jobs = planned_jobs(completed_run.workflow, workdir, completed_run.config)
    finally:
        source.write_bytes(original)
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert pairs_of(jobs) == expected, f"editing {module} plans {sorted(pairs_of(jobs), key=str)}"


# --------------------------------------------------------------------------------- (c) a new subject


def test_added_subject_runs_only_its_own_jobs(completed_run, tmp_path):
    workdir = copy_run(completed_run.workdir, tmp_path / "run")
    new = {"source": "synthetic", "synthetic": {"frames": 12, "width": 64, "height": 64,
                                                "occlusion": "object", "seed": 7}}
    config = write_config(tmp_path / "two.yaml", STAGED_VARIANT, {"subjects": {"second": new}})
    jobs = planned_jobs(completed_run.workflow, workdir, config)
    per_subject = [(rule, wc) for rule, wc in jobs if "subject" in wc]
    assert {wc["subject"] for _, wc in per_subject} == {"second"}, jobs
    assert rules_of(per_subject) == {"prepare_subject", "validate_subject", "overlay", "complete_masks",
                                     "optimize", "incontext_inpaint", "refine", *FINAL_MODEL_USERS}
    # besides the new subject's jobs, only the table over all subjects is redone
    assert rules_of(jobs) - rules_of(per_subject) == {"summary"}
