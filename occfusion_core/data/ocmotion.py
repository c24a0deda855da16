"""Source: a real OcMotion / Wild2Avatar ``*_w2a`` folder -> the sequence format.

The ``*_w2a`` folder (OccNeRF's preparation of OcMotion) holds ``images/<name>.png|.jpg``,
``masks/<name>`` (3-channel, 0/255) and ``metadata.json`` in exactly our per-frame layout; other files
(``mesh_infos.pkl``, ``all_cameras.pkl``, ...) are not needed and are ignored. OccFusion trains on
every 2nd frame at half resolution (``pose_interval=2``, ``image_scaling=0.5``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from occfusion_core.data.sequence import FrameMeta, Sequence, write_sequence
from occfusion_core.data.validate import validate_sequence
from occfusion_core.imaging import resize


def prepare_ocmotion(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    frame_stride: int = 1,
    max_frames: int | None = None,
    scale: float = 1.0,
) -> dict:
    """Convert an OcMotion ``*_w2a`` folder into the sequence format at ``out_dir``.

    The source is validated first and the output after writing (errors name the file and problem).

    Args:
        src_dir: the ``*_w2a`` folder.
        out_dir: the ``data/`` folder to write.
        frame_stride: keep every ``frame_stride``-th frame in sorted order, starting with the first
            (OccFusion: 2).
        max_frames: keep at most this many frames (after the stride); None keeps all.
        scale: resolution factor (OccFusion: 0.5). Output size is round(W * scale) x round(H * scale);
            K rows 0 and 1 are scaled by the exact width and height ratios, so pixel corners stay
            pixel corners.

    Returns:
        The validation report of the written sequence.
    """
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be a positive integer, got {frame_stride!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    src_report = validate_sequence(src_dir, check_gt=False)
    src = Sequence(src_dir)
    names = src.frames[::frame_stride]
    if max_frames is not None:
        names = names[:max_frames]

    h, w = src_report["height"], src_report["width"]
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    # Each axis by its own exact ratio: rounding the size must not shift the pixel grid.
    K_scale = np.diag([out_w / w, out_h / h, 1.0])

    def frames():
        for name in names:
            m = src.meta[name]
            meta = FrameMeta(m.poses, m.betas, m.trans, K_scale @ m.K, m.w2c)
            yield (name, resize(src.image(name), (out_w, out_h), "box"),
                   resize(src.mask(name), (out_w, out_h), "nearest"), meta)

    info = {
        "source": "ocmotion",
        "source_dir": str(src_dir.resolve()),
        "source_frames": src_report["frames"],
        "source_width": w,
        "source_height": h,
        "frame_stride": frame_stride,
        "max_frames": max_frames,
        "scale": scale,
        "width": out_w,
        "height": out_h,
        "occlusion": "real",
        "body_model": "smpl",
        "notes": "OcMotion / Wild2Avatar *_w2a clip; poses, betas, trans and cameras copied from its "
                 "metadata.json, K rows 0-1 scaled with the images.",
    }
    write_sequence(out_dir, frames(), info)
    return validate_sequence(out_dir, check_gt=False)
