"""Figures for the workflow report (``snakemake --report``, report/workflow.rst): a grid of a stage's
inputs and outputs for a few frames, and a page that plays a folder's videos."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from .io import atomic_path, write_image

GAP_PX = 4
MIN_CELL_HEIGHT = 160
"""Cells are enlarged by a whole factor (nearest neighbour) up to at least this height, so that the
report shows 64- or 128-pixel frames at a readable size without blurring the mask edges."""


def pick_frames(scores: list[float], count: int = 4) -> list[int]:
    """Indices of ``count`` frames spread evenly over those with a positive score (for example the
    number of hidden pixels), else over all frames; in frame order."""
    candidates = [i for i, s in enumerate(scores) if s > 0] or list(range(len(scores)))
    if len(candidates) <= count:
        return candidates
    spots = np.linspace(0, len(candidates) - 1, count).round().astype(int)
    return [candidates[i] for i in sorted(set(spots.tolist()))]


def _as_rgb(cell: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from a bool mask (white person on black), a grey or an RGB(A) image."""
    arr = np.asarray(cell)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def image_grid(rows: list[list[np.ndarray | None]]) -> np.ndarray:
    """One uint8 RGB image of cells in rows and columns, separated by white gaps.

    Args:
        rows: per row, its cells (bool masks, grey or RGB images of one size); None leaves a cell
            blank (a column that only some frames have).
    """
    cells = [_as_rgb(c) for row in rows for c in row if c is not None]
    if not cells:
        raise ValueError("image_grid: no cells")
    h, w = cells[0].shape[:2]
    scale = max(1, -(-MIN_CELL_HEIGHT // h))
    ch, cw = h * scale, w * scale
    ncols = max(len(row) for row in rows)
    grid = np.full((len(rows) * (ch + GAP_PX) - GAP_PX, ncols * (cw + GAP_PX) - GAP_PX, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            big = np.repeat(np.repeat(_as_rgb(cell), scale, axis=0), scale, axis=1)
            y, x = r * (ch + GAP_PX), c * (cw + GAP_PX)
            grid[y : y + ch, x : x + cw] = big[:ch, :cw]
    return grid


def write_image_grid(path: str | os.PathLike, rows: list[list[np.ndarray | None]]) -> None:
    write_image(path, image_grid(rows))


def write_video_page(path: str | os.PathLike, videos: dict[str, str], title: str) -> None:
    """An HTML page that plays videos lying beside it (``videos``: file name -> caption).

    The videos are referenced by relative path, not embedded: the page works opened from its folder
    and inside the zip form of the Snakemake report, which stores the page next to its videos."""
    figures = "\n".join(
        f'<figure><video src="{html.escape(name)}" controls loop muted autoplay playsinline></video>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in videos.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; background: #fff; color: #222; }}
main {{ display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }}
figure {{ margin: 0; }}
video {{ display: block; height: 256px; max-width: 100%; image-rendering: pixelated; background: #eee; }}
figcaption {{ font-size: 13px; max-width: 36em; margin-top: 4px; }}
</style></head>
<body><h3>{html.escape(title)}</h3><main>
{figures}
</main></body></html>
"""
    with atomic_path(path, suffix=".html") as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
