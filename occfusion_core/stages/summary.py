"""Stage summary: one CSV row per subject x variant and a plot, like the paper's ablation table."""

from __future__ import annotations

import csv
import logging

from ..io import atomic_path, read_json

log = logging.getLogger(__name__)

PROTOCOLS = [("heldout_full_body", "heldout"), ("occluded_region", "occluded"), ("visible_train", "visible")]
COLUMNS = ["subject", "variant"] + [f"{short}_{m}" for _, short in PROTOCOLS for m in ("psnr", "ssim", "lpips")] \
    + ["silhouette_iou", "hidden_covered", "gaussians", "stage1_seconds", "methods"]


def summary_rows(metric_files: list[str]) -> list[dict]:
    rows = []
    for path in metric_files:
        m = read_json(path)
        row = {"subject": m["subject"], "variant": m["variant"]}
        for key, short in PROTOCOLS:
            block = m.get(key) or {}
            for metric in ("psnr", "ssim", "lpips"):
                row[f"{short}_{metric}"] = block.get(metric)
        row["silhouette_iou"] = (m.get("silhouette") or {}).get("iou_vs_full_mask")
        row["hidden_covered"] = (m.get("silhouette") or {}).get("hidden_pixels_covered")
        row["gaussians"] = m["model"]["gaussians"]
        row["stage1_seconds"] = m["model"]["stage1_seconds"]
        row["methods"] = "; ".join(f"{k}: {v}" for k, v in sorted(m.get("methods", {}).items()))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["subject"], r["variant"]))


def summarize(metric_files: list[str], table_path, plot_path) -> list[dict]:
    """Write the CSV table and a bar plot of PSNR per protocol, subject and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(metric_files)
    with atomic_path(table_path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    subjects = sorted({r["subject"] for r in rows})
    fig, axes = plt.subplots(1, len(subjects), figsize=(4.5 * len(subjects) + 1, 3.6), squeeze=False)
    for ax, subject in zip(axes[0], subjects):
        sub = [r for r in rows if r["subject"] == subject]
        width = 0.8 / max(len(sub), 1)
        for j, r in enumerate(sub):
            vals = [r[f"{short}_psnr"] or 0.0 for _, short in PROTOCOLS]
            xs = [k + (j - (len(sub) - 1) / 2) * width for k in range(len(PROTOCOLS))]
            bars = ax.bar(xs, vals, width, label=r["variant"])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(PROTOCOLS)), [s for _, s in PROTOCOLS])
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(subject)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    log.info("summary of %d runs -> %s", len(rows), table_path)
    return rows
