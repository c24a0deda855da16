"""Stage render: the final avatar on the training frames, held-out views, a 360-degree orbit and a
novel-pose sequence, as PNGs and mp4 videos."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..config import RenderConfig
from ..figures import write_video_page
from ..io import atomic_dir, write_image, write_json, write_video
from .device import pick_device
from .trained_model import load_trained_model, training_body_params

log = logging.getLogger(__name__)

VIDEO_CAPTIONS = {
    "train": "training frames: input (non-person pixels set to the background) | render",
    "heldout": "held-out cameras: ground truth above, render below, one column per camera",
    "orbit": "360-degree orbit around the body of one training frame",
    "novel_pose": "novel poses: a motion the subject never performed, from the first training camera",
}


class AvatarRenderer:
    """Render a trained model in any pose from any camera.

    Args:
        model: a trained :class:`HumanGaussians`.
        background: (3,) colour.
        backend: rasterizer backend name (already resolved).
    """

    def __init__(self, model, background, backend: str, view_frame: str = "canonical"):
        self.model, self.backend, self.view_frame = model, backend, view_frame
        self.background = torch.as_tensor(background, dtype=torch.float32, device=model.xyz.device)

    def render(self, poses, betas, trans, camera):
        """-> RenderOutput for body parameters poses (72,), betas (10,), trans (3,) and a Camera,
        differentiable in the body parameters (the held-out body fit of the metrics)."""
        from ..gaussians.rendering import render_gaussians

        dev = self.background.device
        d = self.model.deform(poses.to(dev), betas.to(dev), trans.to(dev))
        return render_gaussians(d, camera.to(dev), self.background, self.backend, self.view_frame)

    @torch.no_grad()
    def __call__(self, poses, betas, trans, camera):
        """:meth:`render` without gradients."""
        return self.render(poses, betas, trans, camera)

    def image(self, poses, betas, trans, camera) -> np.ndarray:
        """(H, W, 3) float RGB in [0, 1]."""
        return self(poses, betas, trans, camera).rgb.clamp(0, 1).cpu().numpy()


def _composite(image_u8: np.ndarray, mask: np.ndarray, background) -> np.ndarray:
    """uint8 frame with non-person pixels replaced by the background -> float (H, W, 3)."""
    img = image_u8.astype(np.float32) / 255.0
    return np.where(mask[..., None], img, np.asarray(background, dtype=np.float32))


def render_all(data_dir, model_path, body_model_path, cfg: RenderConfig, out_dir) -> dict:
    """Write ``out_dir/{train,heldout,orbit,novel_pose}/`` PNGs, one mp4 per set, ``videos.html`` (a page
    playing them) and ``summary.json``."""
    from ..body.model import load_body_model
    from ..data.motion import novel_pose_motion
    from ..data.sequence import read_sequence
    from ..render.backends import resolve_backend
    from ..render.camera import orbit_cameras

    device = pick_device(cfg.device)
    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path).to(device)
    model, saved = load_trained_model(model_path, body, device)
    background = saved["config"]["background"]
    renderer = AvatarRenderer(model, background, resolve_backend(cfg.backend),
                              saved["config"].get("sh_view_frame", "world"))
    params, body_source = training_body_params(seq, saved)
    counts, render_seconds = {}, 0.0
    with atomic_dir(out_dir) as tmp:

        def render(poses, betas, trans, cam):
            nonlocal render_seconds
            t = time.perf_counter()
            img = renderer.image(poses, betas, trans, cam)
            render_seconds += time.perf_counter() - t
            return img

        # Training frames: input | render, side by side in the video.
        video = []
        for i, name in enumerate(seq.frames):
            img = render(params["poses"][i], params["betas"][i], params["trans"][i], seq.camera(name))
            write_image(tmp / "train" / f"{name}.png", img)
            inp = _composite(seq.image(name), seq.mask(name), background)
            video.append(np.concatenate([inp, img], 1))
        write_video(tmp / "train.mp4", video, fps=cfg.fps)
        counts["train"] = len(seq.frames)

        # Held-out views (ground truth on top, render below, one column per view).
        views = seq.heldout_views() if seq.has_gt else {}
        if views:
            index = {name: i for i, name in enumerate(seq.frames)}
            by_frame: dict[str, list] = {}
            for view, cam in views.items():
                for name in seq.heldout_frames(view):
                    i = index[name]
                    img = render(params["poses"][i], params["betas"][i], params["trans"][i], cam)
                    write_image(tmp / "heldout" / view / f"{name}.png", img)
                    gt = _composite(seq.heldout_image(view, name), seq.heldout_mask(view, name), background)
                    by_frame.setdefault(name, []).append(np.concatenate([gt, img], 0))
            write_video(tmp / "heldout.mp4", [np.concatenate(cols, 1) for cols in by_frame.values()],
                        fps=cfg.fps // 3 or 1)
            counts["heldout"] = sum(len(v) for v in by_frame.values())

        # 360-degree orbit around the body at the training camera's distance and height.
        k = min(cfg.orbit_frame_index, len(seq.frames) - 1)
        cam0 = seq.camera(seq.frames[k])
        with torch.no_grad():
            verts = body(params["poses"][k:k + 1].to(device), params["betas"][k:k + 1].to(device),
                         params["trans"][k:k + 1].to(device)).vertices[0].cpu()
        center = ((verts.min(0).values + verts.max(0).values) / 2).numpy()
        eye0 = cam0.center.numpy()
        radius = float(np.linalg.norm((eye0 - center)[[0, 2]]))
        start = np.degrees(np.arctan2(eye0[0] - center[0], eye0[2] - center[2]))
        orbit = []
        azimuths = [start + 360.0 * j / cfg.orbit_frames for j in range(cfg.orbit_frames)]
        cameras = orbit_cameras(center, radius, float(eye0[1]), azimuths, cam0.K, cam0.width, cam0.height)
        for j, cam in enumerate(cameras):
            img = render(params["poses"][k], params["betas"][k], params["trans"][k], cam)
            write_image(tmp / "orbit" / f"{j:05d}.png", img)
            orbit.append(img)
        write_video(tmp / "orbit.mp4", orbit, fps=cfg.fps)
        counts["orbit"] = cfg.orbit_frames

        # Novel poses: a motion the subject never performed, seen from the training camera, keeping
        # the first frame's global orientation and position.
        from scipy.spatial.transform import Rotation

        motion = torch.as_tensor(novel_pose_motion(cfg.novel_pose_motion, cfg.novel_pose_frames), dtype=torch.float32)
        root0 = Rotation.from_rotvec(params["poses"][0, :3].double().numpy())
        # the motion's own root rotation (hip sway), turned to face the way the subject faced in frame 0
        roots = torch.as_tensor((root0 * Rotation.from_rotvec(motion[:, :3].double().numpy())).as_rotvec(),
                                dtype=torch.float32)
        novel = []
        for j, pose in enumerate(motion):
            pose = pose.clone()
            pose[:3] = roots[j]
            img = render(pose, params["betas"][0], params["trans"][0], seq.camera(seq.frames[0]))
            write_image(tmp / "novel_pose" / f"{j:05d}.png", img)
            novel.append(img)
        write_video(tmp / "novel_pose.mp4", novel, fps=cfg.fps)
        counts["novel_pose"] = len(novel)

        total = sum(counts.values())
        summary = {"counts": counts, "render_fps": round(total / max(render_seconds, 1e-9), 1),
                   "backend": renderer.backend, "device": str(device), "model": str(model_path),
                   "body_params": body_source}
        write_json(tmp / "summary.json", summary)
        # the page that plays the videos in the report (report/renders.rst) and from this folder
        write_video_page(tmp / "videos.html", {f"{kind}.mp4": VIDEO_CAPTIONS[kind] for kind in counts},
                         f"Renders of {model_path}")

    log.info("render: %s", summary)
    return summary
