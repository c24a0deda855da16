"""Stage prepare_subject: any source -> the common sequence format (written as a whole or not at all)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..config import ConfigError, SyntheticConfig, from_dict
from ..io import atomic_dir

log = logging.getLogger(__name__)


def prepare_subject(source: dict, out_dir: str | os.PathLike, body_model_path: str | os.PathLike) -> dict:
    """Write one subject into ``out_dir`` in the sequence format.

    Args:
        source: {"source": "synthetic" | "ocmotion" | "video" | "zju", "options": {...that source's config...}}.
        out_dir: the subject's ``data/`` folder; built in a temporary sibling and renamed into place,
            so a killed job never leaves a half-written folder that looks finished.
        body_model_path: SMPL-format file (the user's SMPL or the generated proxy).
    """
    kind, options = source["source"], source.get("options", {}) or {}
    start = time.time()
    with atomic_dir(out_dir) as tmp_dir:
        summary = _write_source(kind, options, tmp_dir, body_model_path)
    log.info("prepared %s subject in %.1f s: %s", kind, time.time() - start, summary)
    return summary or {}


def _write_source(kind: str, options: dict, tmp_dir: Path, body_model_path) -> dict:
    if kind == "synthetic":
        from ..body.model import load_body_model
        from ..data.synthetic import generate_synthetic_subject

        cfg = from_dict(SyntheticConfig, options, "synthetic")
        summary = generate_synthetic_subject(tmp_dir, cfg, load_body_model(body_model_path))
    elif kind == "ocmotion":
        from ..data.ocmotion import prepare_ocmotion

        summary = prepare_ocmotion(options["path"], tmp_dir,
                                   frame_stride=options.get("frame_stride", 1),
                                   max_frames=options.get("max_frames"),
                                   scale=options.get("scale", 1.0))
        if options.get("occlusion"):
            from ..body.model import load_body_model
            from ..data.occlusion import occlude_sequence
            from ..data.source_configs import SimulatedOcclusionConfig

            occ = from_dict(SimulatedOcclusionConfig, options["occlusion"], "ocmotion.occlusion")
            summary["occlusion"] = occlude_sequence(tmp_dir, occ, load_body_model(body_model_path))
    elif kind == "video":
        from ..body.model import load_body_model
        from ..data.source_configs import VideoConfig
        from ..data.video import prepare_video

        cfg = from_dict(VideoConfig, options, "video")
        summary = prepare_video(cfg.path, tmp_dir, cfg, load_body_model(body_model_path))
    elif kind == "zju":
        from ..body.model import load_body_model
        from ..data.source_configs import ZJUConfig
        from ..data.zju import prepare_zju

        cfg = from_dict(ZJUConfig, options, "zju")
        summary = prepare_zju(cfg.path, tmp_dir, cfg, load_body_model(body_model_path))
    else:
        raise ConfigError(f"source: unknown kind '{kind}' (synthetic, ocmotion, video, zju)")
    return summary
