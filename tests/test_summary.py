"""The summary's gap-closed figure and the Markdown table `make demo` prints (the README's table)."""

import csv

import pytest

from occfusion_core.stages.summary import COLUMNS, gap_closed, markdown_table


def test_gap_closed_is_the_fraction_of_the_baseline_to_ceiling_gap():
    assert gap_closed(10.0, 4.0, 16.0) == pytest.approx(0.5)
    assert gap_closed(4.0, 4.0, 16.0) == pytest.approx(0.0)
    assert gap_closed(None, 4.0, 16.0) is None and gap_closed(10.0, None, 16.0) is None


def test_markdown_table_rounds_and_keeps_the_csv_order(tmp_path):
    path = tmp_path / "summary.csv"
    rows = [
        {"subject": "s", "variant": "base", "role": "baseline", "occluded_psnr": "4.403", "heldout_psnr": "13.9274",
         "heldout_ssim": "0.8006", "visible_psnr": "9.9295", "gap_closed": "0.0", "silhouette_iou": "0.319",
         "gaussians": "3426"},
        {"subject": "s", "variant": "top", "role": "ceiling", "occluded_psnr": "25.4113", "heldout_psnr": "",
         "heldout_ssim": "", "visible_psnr": "23.9876", "gap_closed": "1.0", "silhouette_iou": "0.9655",
         "gaussians": "3426"},
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = markdown_table(path).splitlines()
    assert lines[0] == "subject `s`:"
    assert lines[4] == "| base | baseline | 4.40 | 13.93 | 0.801 | 9.93 | 0.000 | 0.319 | 3426 |"
    assert lines[5] == "| top | ceiling | 25.41 | - | - | 23.99 | 1.000 | 0.966 | 3426 |"
