"""Stage overlay: the posed body model drawn over every frame, the first check of body parameters."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..io import atomic_dir, write_image, write_video

log = logging.getLogger(__name__)


def shade_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) camera-space unit normals -> (H, W, 3) a light-blue clay shading in [0, 1]."""
    light = np.array([0.3, -0.4, -1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip((normals * light).sum(-1, keepdims=True), 0, 1)
    return np.clip(np.array([0.45, 0.65, 0.95]) * (0.35 + 0.65 * lambert), 0, 1)


def overlay_frame(image_u8: np.ndarray, vertices: torch.Tensor, faces: torch.Tensor, camera,
                  visible_mask: np.ndarray | None = None, opacity: float = 0.55) -> np.ndarray:
    """Blend the shaded body mesh over a frame; outline the visible-person mask in yellow.

    Args:
        image_u8: (H, W, 3) frame.
        vertices: (V, 3) posed body vertices (world).
        faces: (F, 3) triangle indices.
    Returns:
        (H, W, 3) float image in [0, 1].
    """
    from ..render.mesh import rasterize_mesh

    frags = rasterize_mesh(vertices, faces, camera)
    covered = (frags.face_index >= 0).cpu().numpy()
    vc = camera.world_to_camera(vertices)
    tri = vc[faces]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    fn = fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    normals = fn[frags.face_index.clamp_min(0)].cpu().numpy()
    img = image_u8.astype(np.float32) / 255.0
    shaded = shade_normals(normals)
    out = np.where(covered[..., None], (1 - opacity) * img + opacity * shaded, img)
    if visible_mask is not None:
        m = visible_mask
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = (1.0, 0.85, 0.1)
    return out


def mark_dropped(image_u8: np.ndarray, reason: str) -> np.ndarray:
    """A dropped frame for the overlay video: greyed, a red border, and why it was dropped."""
    from PIL import Image, ImageDraw

    img = image_u8.astype(np.float32) / 255.0
    grey = img.mean(-1, keepdims=True)
    out = 0.35 * img + 0.35 * grey + 0.1
    h, w = out.shape[:2]
    border = max(2, min(h, w) // 40)
    out[:border], out[-border:], out[:, :border], out[:, -border:] = (0.85, 0.1, 0.1), (0.85, 0.1, 0.1), \
        (0.85, 0.1, 0.1), (0.85, 0.1, 0.1)
    canvas = Image.fromarray((out * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    words, lines = ("dropped: " + reason).split(), [""]
    for word in words:  # wrap to the frame's width (the default bitmap font is ~6 px a character)
        if len(lines[-1]) + len(word) + 1 > max(10, (w - 2 * border) // 6):
            lines.append("")
        lines[-1] = (lines[-1] + " " + word).strip()
    for k, line in enumerate(lines[:6]):
        draw.text((border + 3, border + 3 + 11 * k), line, fill=(255, 230, 230))
    return np.asarray(canvas).astype(np.float32) / 255.0


def draw_overlays(data_dir, body_model_path, out_dir, video_path, fps: int = 15) -> int:
    """Write ``out_dir/<name>.png`` for every frame and an mp4 of them, with the frames the source
    dropped (``data/dropped/``, reasons in info.json) marked in their place; returns the frame count."""
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence
    from ..io import read_image

    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path)
    params = seq.body_params()
    with torch.no_grad():
        verts = body(params["poses"], params["betas"], params["trans"]).vertices
    dropped = {f"{int(d['video_frame']):05d}": d.get("reason", "")
               for d in seq.info.get("dropped_frames", []) if isinstance(d, dict)}
    index = {name: i for i, name in enumerate(seq.frames)}
    frames = []
    with atomic_dir(out_dir) as tmp:
        for name in sorted(set(seq.frames) | set(dropped)):
            if name in index:
                i = index[name]
                img = overlay_frame(seq.image(name), verts[i], body.faces, seq.camera(name), seq.mask(name))
            else:
                path = seq.root / "dropped" / f"{name}.png"
                if not path.is_file():
                    continue
                img = mark_dropped(read_image(path), dropped[name])
            write_image(tmp / f"{name}.png", img)
            frames.append(img)
        write_video(video_path, frames, fps=fps)
    log.info("overlay: %d frames (%d dropped, marked)", len(frames), len(frames) - len(seq.frames))
    return len(frames)
