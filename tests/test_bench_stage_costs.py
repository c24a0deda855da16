"""bench/stage_costs.py on Snakemake benchmark TSVs written here: stage naming, repeats, NA cells,
extended format, sorting, totals and errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
EXTENDED = HEADER + "\tjobid\trule_name\twildcards\tparams\tthreads\tcpu_usage\tresources\tinput_size_mb"


@pytest.fixture(scope="module")
def stage_costs():
    spec = importlib.util.spec_from_file_location("stage_costs", ROOT / "bench" / "stage_costs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["stage_costs"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("stage_costs", None)


def write_tsv(path: Path, header: str, *rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture
def benchmarks(tmp_path) -> Path:
    root = tmp_path / "benchmarks"
    # optimize: one long job. render: two jobs, one with two repeats. build_body_model: no memory data.
    write_tsv(root / "optimize" / "S1.full.tsv", HEADER,
              "120.50\t0:02:00\t2048.5\t3000\t2000\t2010\t10\t20\t95.0\t230.0")
    write_tsv(root / "render" / "S1.full.tsv", HEADER,
              "10.00\t0:00:10\t500.0\t800\t480\t490\t1\t2\t90.0\t9.0",
              "14.00\t0:00:14\t700.0\t900\t680\t690\t1\t2\t90.0\t13.0")
    write_tsv(root / "render" / "S2.full.tsv", HEADER, "20.00\t0:00:20\t600.0\t850\t580\t590\t1\t2\t90.0\t19.0")
    write_tsv(root / "build_body_model.tsv", HEADER, "3.25\t0:00:03\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA")
    # Extended format: the stage comes from rule_name, not from the folder.
    write_tsv(root / "misc" / "job7.tsv", EXTENDED,
              "5.00\t0:00:05\t4096.0\t5000\t4000\t4010\t0\t0\t50.0\t2.5\t7\tcomplete_masks\t-\t-\t1\t50\t-\t1.0")
    return root


def test_stages_are_summed_and_sorted_by_wall_time(stage_costs, benchmarks):
    jobs = stage_costs.read_benchmarks([benchmarks])
    assert len(jobs) == 5
    stages = stage_costs.summarize(jobs)
    assert [s.stage for s in stages] == ["optimize", "render", "complete_masks", "build_body_model"]
    render = stages[1]
    # S1 has two repeats: one job with their mean time (12 s) and their largest peak (700 MB).
    assert render.jobs == 2
    assert render.wall_s == pytest.approx(12.0 + 20.0)
    assert render.max_job_wall_s == pytest.approx(20.0)
    assert render.peak_rss_mb == pytest.approx(700.0)
    assert render.cpu_s == pytest.approx(11.0 + 19.0)
    body = stages[3]
    assert body.wall_s == pytest.approx(3.25) and math.isnan(body.peak_rss_mb) and math.isnan(body.cpu_s)


def test_sorting_by_memory(stage_costs, benchmarks):
    stages = stage_costs.summarize(stage_costs.read_benchmarks([benchmarks]), sort_by="rss")
    assert [s.stage for s in stages] == ["complete_masks", "optimize", "render", "build_body_model"]


def test_table_has_stages_jobs_and_totals(stage_costs, benchmarks, capsys):
    assert stage_costs.main([str(benchmarks), "--jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = lines[-1].split()
    assert total[0] == "total" and total[1] == "5"
    assert float(total[3]) == pytest.approx(120.5 + 32.0 + 5.0 + 3.25, abs=0.051)  # printed to 0.1 s
    assert total[-2] == "4096.0"  # the largest single-job peak, not a sum
    assert float(total[-1]) == pytest.approx(230.0 + 30.0 + 2.5)
    assert lines[2].startswith("optimize") and "0:02:00" in lines[2]
    assert any(line.strip().startswith("render/S2.full") for line in lines)
    assert any(line.startswith("build_body_model") and " NA " in line for line in lines)


def test_json_output_has_no_nan(stage_costs, benchmarks, capsys):
    assert stage_costs.main([str(benchmarks), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)
    assert stages[-1]["stage"] == "build_body_model" and stages[-1]["peak_rss_mb"] is None


def test_bad_files_and_empty_folders_are_errors(stage_costs, tmp_path, capsys):
    assert stage_costs.main([str(tmp_path / "nothing")]) == 1
    assert "no benchmark files" in capsys.readouterr().err
    write_tsv(tmp_path / "b" / "broken.tsv", "wall\tmemory", "1\t2")
    assert stage_costs.main([str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "broken.tsv" in err and "missing column" in err
