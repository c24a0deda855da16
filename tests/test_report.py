"""The Snakemake report of the tiny workflow (make report): built with ``snakemake --report``, then
opened in headless Chromium (tests/browser.py).

One run of tests/configs/tiny.yaml plus a weight-free ``occfusion`` variant (stages 0 to 3), so that
the stage-0 and stage-2 panels exist: 1 subject x 2 variants.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import run_killable

from tests.browser import REPORT_VIDEOS_JS, open_page, require_browser, serve_directory, unpack_report

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
RUN_TIMEOUT = 900
OCCFUSION_VARIANT = {
    "description": "stages 0 to 3 with the weight-free methods",
    "stages": ["complete_masks", "optimize", "incontext_inpaint", "refine"],
    "optimize": {
        "loss_region": "visible",
        "mask_source": "complete",
        "lambda_mask": 2.0,
        "lambda_ssim": 0.1,
        "lambda_lpips": 0.0,
    },
}
EXPECTED_PAIRS = {("tiny", "occgauhuman"), ("tiny", "occfusion")}
RENDER_FILES = {"videos.html", "train.mp4", "heldout.mp4", "orbit.mp4", "novel_pose.mp4"}
VIDEO_DURATIONS_JS = """async () => {
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map((v) => v.readyState >= 1 ? null : new Promise((done) => {
    v.addEventListener('loadedmetadata', done); v.addEventListener('error', done); })));
  return videos.map((v) => v.duration);
}"""


@pytest.fixture(scope="module")
def report_zip(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    config = yaml.safe_load(TINY.read_text())
    config["variants"]["occfusion"] = OCCFUSION_VARIANT
    # weight-free stages 0 and 2; a short body alignment (its 15 default rounds take 25 s here)
    config["complete_masks"] = {"method": "silhouette", "align": {"rounds": 3}}
    config["incontext_inpaint"] = {"method": "render_fill"}
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    workdir = base / "run"
    workdir.mkdir()
    snakemake = [
        SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
    ]
    out = run_killable([*snakemake, "--cores", "2", "--resources", "gpu=1"], RUN_TIMEOUT)
    assert out.returncode == 0, out.stdout[-8000:]
    report = base / "report.zip"
    out = run_killable(
        [*snakemake, "--report", str(report), "--report-stylesheet", str(ROOT / "report" / "style.css")], 300
    )
    assert out.returncode == 0 and report.is_file(), out.stdout[-8000:]
    return report


def report_data(report: Path) -> tuple[dict, str]:
    """(the report's results, by path; its workflow description as HTML), read from its page."""
    with zipfile.ZipFile(report) as archive:
        page = archive.read("report/report.html").decode()

    def variable(script_id: str, name: str):
        # each is a one-line JSON value in its own <script id=...> block
        match = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', page, re.S)
        assert match, f"report.html has no {name}"
        return json.loads(match.group(1))

    return variable("results", "results"), variable("workflow-desc", "workflow_desc")


def test_report_has_every_marked_output_with_its_caption(report_zip):
    """The overlay, per variant its renders, metrics and (with stages 0 and 2) panels, and the summary
    table and plot, each grouped by subject and variant, with captions that docutils rendered."""
    results, description = report_data(report_zip)
    paths = set(results)
    assert {"results/summary.csv", "results/summary.png", "results/tiny/overlay.mp4"} <= paths
    for subject, variant in EXPECTED_PAIRS:
        base = f"results/{subject}/{variant}"
        assert {f"{base}/renders/{name}" for name in RENDER_FILES} | {f"{base}/metrics.json"} <= paths, variant
    assert {"results/tiny/occfusion/stage0/panel.png", "results/tiny/occfusion/stage2/panel.png"} <= paths
    assert not any("/occgauhuman/stage" in path for path in paths), "occgauhuman runs neither stage 0 nor 2"
    with zipfile.ZipFile(report_zip) as archive:
        stored = {Path(name).name for name in archive.namelist()}
    assert {Path(path).name for path in paths} <= stored
    for path, result in results.items():
        assert result["caption"], f"{path} has no caption"
        assert "system-message" not in result["caption"], f"{path}: docutils error in its caption"
        assert result["labels"] and "figure" in result["labels"], path
    assert "system-message" not in description
    assert "Metric protocols" in description and "occluded_region" in description
    for path, result in results.items():
        if path.startswith("results/tiny/occfusion/"):
            assert result["data_uri"].startswith("data/raw/"), "the zip form stores files beside the page"


def test_report_opens_in_chromium_with_summary_and_playing_videos(report_zip, tmp_path):
    """Loads without console errors; the summary table has a row per subject x variant; the videos
    page of a variant plays (every video has a positive duration)."""
    require_browser()
    page = unpack_report(report_zip, tmp_path / "unpacked")
    screenshot = tmp_path / "report.png"
    # served over HTTP: one origin, so that the checks can look inside the result frame
    with serve_directory(tmp_path / "unpacked") as base:
        url = base + page.relative_to(tmp_path / "unpacked").as_posix()
        result = open_page(url, wait_s=20.0, screenshot=screenshot, evaluate=REPORT_VIDEOS_JS)
    print(f"report screenshot: {result.screenshot}")
    assert result.console_errors == [], result.console_errors
    value = result.value
    assert {(row["subject"], row["variant"]) for row in value["rows"]} == EXPECTED_PAIRS
    assert len(value["rows"]) == len(EXPECTED_PAIRS)
    videos = value["videos"]
    assert {Path(v["src"]).name for v in videos} == RENDER_FILES - {"videos.html"}, videos
    assert all(v["error"] is None and v["duration"] > 0 and v["width"] > 0 for v in videos), videos
    assert value["docutils_problems"] == 0
    assert screenshot.stat().st_size > 0


def test_report_opens_from_the_unzipped_folder(report_zip, tmp_path):
    """How a reader opens it: report.html from disk (file://) without console errors, and a videos
    page from there plays its videos, which lie beside it."""
    require_browser()
    page = unpack_report(report_zip, tmp_path)
    result = open_page(page.as_uri(), evaluate="typeof app === 'object' && Object.keys(results).length")
    assert result.console_errors == [], result.console_errors
    assert result.value >= 10
    videos_page = next(page.parent.glob("data/raw/*/videos.html"))
    result = open_page(videos_page.as_uri(), evaluate=VIDEO_DURATIONS_JS)
    assert result.console_errors == [], result.console_errors
    assert len(result.value) == 4 and all(duration > 0 for duration in result.value), result.value
