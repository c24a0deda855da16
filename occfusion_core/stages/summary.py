"""Stage summary: one CSV row per subject x variant and a plot, like the paper's ablation table."""

from __future__ import annotations

import csv
import logging

from ..io import atomic_path, read_json

log = logging.getLogger(__name__)

PROTOCOLS = [("heldout_full_body", "heldout"), ("heldout_body_fitted", "heldout_fitted"),
             ("occluded_region", "occluded"), ("visible_train", "visible")]
COLUMNS = ["subject", "variant", "role", "iterations"] \
    + [f"{short}_{m}" for _, short in PROTOCOLS for m in ("psnr", "ssim", "lpips")] \
    + ["gap_closed", "silhouette_iou", "hidden_covered", "gaussians", "stage1_seconds", "body_params", "methods"]
ROLE_ORDER = {"baseline": 0, "method": 1, "control": 2, "ceiling": 3}
"""Rows of one subject: the baseline first, the ceiling last."""


def gap_closed(value: float | None, baseline: float | None, ceiling: float | None) -> float | None:
    """(value - baseline) / (ceiling - baseline): the share of the way from the baseline to the
    ceiling; None where a number is missing or the ceiling is no better than the baseline."""
    if value is None or baseline is None or ceiling is None or ceiling - baseline <= 1e-9:
        return None
    return round((value - baseline) / (ceiling - baseline), 4)


def summary_rows(metric_files: list[str]) -> list[dict]:
    """One row per metrics.json; ``gap_closed`` on occluded-region PSNR against the subject's
    baseline and ceiling rows (where both exist)."""
    rows = []
    for path in metric_files:
        m = read_json(path)
        row = {"subject": m["subject"], "variant": m["variant"], "role": m.get("role", "method"),
               "iterations": m.get("iterations", m["model"].get("iterations"))}
        for key, short in PROTOCOLS:
            block = m.get(key) or {}
            for metric in ("psnr", "ssim", "lpips"):
                row[f"{short}_{metric}"] = block.get(metric)
        row["silhouette_iou"] = (m.get("silhouette") or {}).get("iou_vs_full_mask")
        row["hidden_covered"] = (m.get("silhouette") or {}).get("hidden_pixels_covered")
        row["gaussians"] = m["model"]["gaussians"]
        row["stage1_seconds"] = m["model"]["stage1_seconds"]
        row["body_params"] = m.get("body_params", "")
        row["methods"] = "; ".join(f"{k}: {v}" for k, v in sorted(m.get("methods", {}).items()))
        rows.append(row)
    for subject in {r["subject"] for r in rows}:
        mine = [r for r in rows if r["subject"] == subject]
        by_role = {r["role"]: r for r in mine if r["role"] in ("baseline", "ceiling")}
        base = (by_role.get("baseline") or {}).get("occluded_psnr")
        ceiling = (by_role.get("ceiling") or {}).get("occluded_psnr")
        for r in mine:
            r["gap_closed"] = gap_closed(r["occluded_psnr"], base, ceiling)
    return sorted(rows, key=lambda r: (r["subject"], ROLE_ORDER.get(r["role"], 1), r["variant"]))


def summarize(metric_files: list[str], table_path, plot_path) -> list[dict]:
    """Write the CSV table and a bar plot of PSNR per protocol, subject and variant (the ceiling and
    controls drawn hollow, so they read as references rather than methods)."""
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
    # a protocol no row was scored under (the held-out body fit is off by default) gets no bars
    protocols = [(key, short) for key, short in PROTOCOLS if any(r[f"{short}_psnr"] is not None for r in rows)]
    fig, axes = plt.subplots(1, len(subjects), figsize=(8.0 * len(subjects) + 1, 3.8), squeeze=False)
    for ax, subject in zip(axes[0], subjects):
        sub = [r for r in rows if r["subject"] == subject]
        width = 0.8 / max(len(sub), 1)
        for j, r in enumerate(sub):
            vals = [r[f"{short}_psnr"] or 0.0 for _, short in protocols]
            xs = [k + (j - (len(sub) - 1) / 2) * width for k in range(len(protocols))]
            reference = r["role"] in ("ceiling", "control")
            label = r["variant"] + (f" ({r['role']})" if r["role"] != "method" else "")
            if r["gap_closed"] is not None and r["role"] == "method":
                label += f", gap closed {100 * r['gap_closed']:.0f}%"
            bars = ax.bar(xs, vals, width, label=label, fill=not reference,
                          hatch="//" if r["role"] == "control" else None,
                          edgecolor=f"C{j}", color=f"C{j}", linewidth=1.2)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(protocols)), [s for _, s in protocols])
        ax.set_ylabel("PSNR (dB)")
        iterations = sorted({r["iterations"] for r in sub if r["iterations"]})
        ax.set_title(f"{subject} ({'/'.join(map(str, iterations))} iterations)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not over them
    fig.tight_layout()
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    log.info("summary of %d runs -> %s", len(rows), table_path)
    return rows


MARKDOWN_COLUMNS = [
    ("variant", "variant"), ("role", "role"), ("occluded_psnr", "occluded-region PSNR"),
    ("heldout_psnr", "held-out PSNR"), ("heldout_ssim", "held-out SSIM"), ("visible_psnr", "visible-pixel PSNR"),
    ("gap_closed", "gap closed"), ("silhouette_iou", "silhouette IoU"), ("gaussians", "Gaussians"),
]


def markdown_table(table_path) -> str:
    """The summary CSV as the README's Markdown table (one table per subject, rows in CSV order).

    PSNR to 2 decimals, SSIM, IoU and the gap closed to 3; an empty cell is '-'.
    """
    with open(table_path, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = []
    for subject in dict.fromkeys(r["subject"] for r in rows):
        if len(lines):
            lines.append("")
        lines.append(f"subject `{subject}`:")
        lines.append("")
        lines.append("| " + " | ".join(title for _, title in MARKDOWN_COLUMNS) + " |")
        lines.append("|" + "---|" * len(MARKDOWN_COLUMNS))
        for row in (r for r in rows if r["subject"] == subject):
            cells = []
            for key, _ in MARKDOWN_COLUMNS:
                value = row.get(key, "")
                if value and key.endswith("psnr"):
                    value = f"{float(value):.2f}"
                elif value and key in ("heldout_ssim", "gap_closed", "silhouette_iou"):
                    value = f"{float(value):.3f}"
                cells.append(value or "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m occfusion_core.stages.summary results/summary.csv
    import sys

    print(markdown_table(sys.argv[1] if len(sys.argv) > 1 else "results/summary.csv"))
