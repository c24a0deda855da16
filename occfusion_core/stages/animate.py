"""Stage animate: the trained avatar performing any motion (a built-in one or an AMASS-style file,
docs/motions.md), seen from the training camera and from a camera orbiting the body, as mp4 videos.

The avatar keeps its own shape (the trained subject's betas); only poses and translations come from
the motion. A motion file has its own world, so each motion is placed in the training scene:

- turned about the vertical: ``heading='motion'`` points the motion world's +z (where a body at rest
  faces) at the training camera, ``heading='camera'`` turns the motion's first frame to face it;
- moved so that its mean pelvis position (horizontally) is the training frames' mean pelvis
  position, and its lowest point over the clip is the training frames' lowest point (the floor).

This also removes the constant offset that an up-axis conversion leaves in the translation
(:mod:`occfusion_core.data.motion_files`).

:func:`motion_placement` derives the scene's placement once from the training frames and
:func:`placed_motion` places a clip with it; the live viewer (:mod:`occfusion_core.viewer`) places its
motions with the same two functions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..config import AnimateConfig
from ..data.motion import BUILTIN_MOTIONS
from ..data.motion_files import load_motion
from ..io import atomic_dir, write_json, write_video
from .device import pick_device
from .render import AvatarRenderer
from .trained_model import load_trained_model, training_body_params

log = logging.getLogger(__name__)

CAMERAS = ("train", "orbit")
HEADINGS = ("motion", "camera")
"""Values of ``AnimateConfig.heading`` (:class:`MotionPlacement`)."""
REFERENCE_FRAMES = 64
"""At most this many training frames (evenly spaced) give the scene's pelvis position and floor."""


def _posed(body, poses: np.ndarray, betas: torch.Tensor, trans: np.ndarray):
    """Body model output for poses (N, 72), betas (10,), trans (N, 3), on the body's device."""
    dev = betas.device
    n = poses.shape[0]
    with torch.no_grad():
        return body(
            torch.as_tensor(poses, dtype=torch.float32, device=dev),
            betas.expand(n, -1),
            torch.as_tensor(trans, dtype=torch.float32, device=dev),
        )


def _yaw_of(rotvec: np.ndarray) -> float:
    """Heading (radians, about +y from +z towards +x) of a body whose root rotation is ``rotvec`` (3,)."""
    facing = Rotation.from_rotvec(rotvec).apply([0.0, 0.0, 1.0])
    return math.atan2(facing[0], facing[2])


def place_motion(
    body,
    poses: np.ndarray,
    trans: np.ndarray,
    betas: torch.Tensor,
    yaw: float,
    target_pelvis: np.ndarray,
    floor_y: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn a motion about the vertical by ``yaw`` and move it onto the scene's pelvis position and floor.

    SMPL turns the body about its rest pelvis joint J0 and adds ``trans`` afterwards, so turning the
    world by R maps trans to R (J0 + trans) - J0.

    Args:
        body: the body model.
        poses: (N, 72) axis-angle; trans: (N, 3); betas: (10,) the avatar's shape.
        yaw: radians about +y.
        target_pelvis: (3,) where the motion's mean pelvis goes (its y is not used).
        floor_y: where the motion's lowest vertex over all frames goes.

    Returns:
        poses (N, 72), trans (N, 3) and the posed pelvis path (N, 3), float64.
    """
    turn = Rotation.from_euler("y", yaw)
    poses = np.array(poses, dtype=np.float64, copy=True)
    poses[:, :3] = (turn * Rotation.from_rotvec(poses[:, :3])).as_rotvec()
    rest_pelvis = _posed(body, np.zeros((1, 72)), betas, np.zeros((1, 3))).joints[0, 0].double().cpu().numpy()
    trans = turn.apply(np.asarray(trans, dtype=np.float64) + rest_pelvis) - rest_pelvis
    out = _posed(body, poses, betas, trans)
    pelvis = out.joints[:, 0].double().cpu().numpy()
    lowest = float(out.vertices[..., 1].min())
    shift = np.array([target_pelvis[0] - pelvis[:, 0].mean(), floor_y - lowest, target_pelvis[2] - pelvis[:, 2].mean()])
    return poses, trans + shift, pelvis + shift


@dataclass(frozen=True)
class MotionPlacement:
    """Where motions go in a training scene (the module docstring), from :func:`motion_placement`.

    Attributes:
        target_pelvis: (3,) float64, the training frames' mean pelvis position; a motion's mean pelvis
            goes there horizontally.
        floor_y: the training frames' lowest vertex height; a motion's lowest point goes there.
        centre_y: the training frames' mean body-centre height (half way between lowest and highest vertex).
        camera_yaw: radians about +y (from +z towards +x) from ``target_pelvis`` towards the training camera.
        heading: 'motion' or 'camera' (:data:`HEADINGS`, ``AnimateConfig.heading``).
    """

    target_pelvis: np.ndarray
    floor_y: float
    centre_y: float
    camera_yaw: float
    heading: str

    def yaw(self, poses: np.ndarray) -> float:
        """The turn (radians about +y) for a motion with axis-angle ``poses`` (N, 72): the motion world's
        +z towards the camera ('motion'), or its first frame's facing towards it ('camera')."""
        return self.camera_yaw - (
            _yaw_of(np.asarray(poses, dtype=np.float64)[0, :3]) if self.heading == "camera" else 0.0
        )


def motion_placement(body, params: dict, camera, betas: torch.Tensor, heading: str) -> MotionPlacement:
    """The placement of motions in the training scene: the pelvis position, floor and body-centre
    height of (at most :data:`REFERENCE_FRAMES`, evenly spaced) training frames, and the direction of
    the training camera.

    Args:
        body: the body model.
        params: the training frames' body parameters (:func:`training_body_params`: "poses" (T, 72),
            "trans" (T, 3)).
        camera: the training camera motions are turned towards (the first frame's).
        betas: (10,) the avatar's shape, on the body's device.
        heading: 'motion' or 'camera' (``AnimateConfig.heading``).

    Raises:
        ValueError: for an unknown heading.
    """
    if heading not in HEADINGS:
        raise ValueError(f"animate.heading: {heading!r}; known: {', '.join(HEADINGS)}")
    count = len(params["poses"])
    rows = np.unique(np.linspace(0, count - 1, min(REFERENCE_FRAMES, count)).round().astype(int))
    ref = _posed(body, params["poses"][rows].cpu().numpy(), betas, params["trans"][rows].cpu().numpy())
    target_pelvis = ref.joints[:, 0].double().mean(0).cpu().numpy()
    floor_y = float(ref.vertices[..., 1].min())
    centre_y = float(((ref.vertices[..., 1].amin(1) + ref.vertices[..., 1].amax(1)) / 2).mean())
    to_camera = camera.center.double().cpu().numpy() - target_pelvis
    camera_yaw = math.atan2(to_camera[0], to_camera[2])
    return MotionPlacement(target_pelvis, floor_y, centre_y, camera_yaw, heading)


def placed_motion(
    body, poses: np.ndarray, trans: np.ndarray, placement: MotionPlacement, betas: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A motion placed in the training scene: turned by ``placement.yaw(poses)`` and moved onto its
    pelvis position and floor (:func:`place_motion`).

    Args:
        body: the body model.
        poses: (N, 72) axis-angle; trans: (N, 3); the frames to place (the placement depends on which:
            the mean pelvis and lowest point are over these frames).
        placement: :func:`motion_placement`'s result.
        betas: (10,) the avatar's shape, on the body's device.

    Returns:
        poses (N, 72), trans (N, 3), the posed pelvis path (N, 3), float64, and the yaw (radians).
    """
    poses = np.asarray(poses, dtype=np.float64)
    yaw = placement.yaw(poses)
    poses, trans, pelvis = place_motion(body, poses, trans, betas, yaw, placement.target_pelvis, placement.floor_y)
    return poses, trans, pelvis, yaw


def _video_fps(cfg: AnimateConfig, clip_fps: float) -> int:
    return max(1, int(round(cfg.fps if cfg.fps else clip_fps / cfg.frame_stride)))


def animate_avatar(data_dir, model_path, body_model_path, motions: dict, cfg: AnimateConfig, out_dir) -> dict:
    """Render the final model performing each motion: ``out_dir/{name}_{camera}.mp4`` and ``summary.json``.

    Args:
        data_dir: the subject's sequence (training cameras and body parameters).
        model_path: a training stage's ``model.pt``.
        body_model_path: the body model file.
        motions: {name: .npz path}, in output order; a name of a built-in motion (its file written
            z-up by the workflow) is always read z-up, other files with ``cfg.up_axis``.
        cfg: the stage settings.
        out_dir: the output folder (replaced whole when the stage succeeds).

    Returns:
        the summary written to ``summary.json``.
    """
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence
    from ..render.backends import resolve_backend
    from ..render.camera import orbit_cameras

    unknown = [c for c in cfg.cameras if c not in CAMERAS]
    if unknown or not cfg.cameras:
        raise ValueError(f"animate.cameras: {cfg.cameras}; known: {', '.join(CAMERAS)}")
    if cfg.heading not in HEADINGS:  # before anything loads
        raise ValueError(f"animate.heading: {cfg.heading!r}; known: {', '.join(HEADINGS)}")
    device = pick_device(cfg.device)
    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path).to(device)
    model, saved = load_trained_model(model_path, body, device)
    renderer = AvatarRenderer(
        model,
        saved["config"]["background"],
        resolve_backend(cfg.backend),
        saved["config"].get("sh_view_frame", "world"),
    )
    params, body_source = training_body_params(seq, saved)
    betas = params["betas"].mean(0).to(device)  # (10,) one shape for the whole avatar

    # The scene: the training frames' pelvis positions, floor and body-centre height.
    cam0 = seq.camera(seq.frames[0])
    placement = motion_placement(body, params, cam0, betas, cfg.heading)
    target_pelvis, floor_y, centre_y = placement.target_pelvis, placement.floor_y, placement.centre_y
    camera_yaw = placement.camera_yaw
    eye0 = cam0.center.double().numpy()
    to_camera = eye0 - target_pelvis
    orbit_radius = float(np.hypot(to_camera[0], to_camera[2]))

    summary_motions, frames_rendered, render_seconds = {}, 0, 0.0
    with atomic_dir(out_dir) as tmp:
        for name, path in motions.items():
            clip = load_motion(path, up_axis="z" if name in BUILTIN_MOTIONS else cfg.up_axis)
            keep = np.arange(0, len(clip.poses), cfg.frame_stride)[: cfg.max_frames]
            poses, trans = clip.poses[keep].astype(np.float64), clip.trans[keep].astype(np.float64)
            poses, trans, pelvis, yaw = placed_motion(body, poses, trans, placement, betas)
            poses_t = torch.as_tensor(poses, dtype=torch.float32)
            trans_t = torch.as_tensor(trans, dtype=torch.float32)
            fps = _video_fps(cfg, clip.fps)
            videos = {}
            for camera in cfg.cameras:
                frames = []
                for j in range(len(keep)):
                    if camera == "train":
                        cam = cam0
                    else:  # circles the body's current position at the training camera's distance and height
                        centre = np.array([pelvis[j, 0], centre_y, pelvis[j, 2]])
                        azimuth = math.degrees(camera_yaw) + cfg.orbit_deg_per_frame * j
                        (cam,) = orbit_cameras(
                            centre, orbit_radius, float(eye0[1]), [azimuth], cam0.K, cam0.width, cam0.height
                        )
                    t = time.perf_counter()
                    frames.append(renderer.image(poses_t[j], betas, trans_t[j], cam))
                    render_seconds += time.perf_counter() - t
                video = f"{name}_{camera}.mp4"
                write_video(tmp / video, frames, fps=fps)
                videos[camera] = video
                frames_rendered += len(frames)
            summary_motions[name] = {
                "file": str(path),
                "source_frames": len(clip.poses),
                "source_fps": clip.fps,
                "frame_stride": cfg.frame_stride,
                "frames": len(keep),
                "fps": fps,
                "seconds": round(len(keep) / fps, 3),
                "videos": videos,
                "yaw_deg": round(math.degrees(yaw), 2),
            }
        summary = {
            "motions": summary_motions,
            "frames_rendered": frames_rendered,
            "render_fps": round(frames_rendered / max(render_seconds, 1e-9), 1),
            "backend": renderer.backend,
            "device": str(device),
            "model": str(model_path),
            "shape": f"mean betas of the training frames' body parameters: {body_source}",
            "placement": {"pelvis": [round(float(v), 4) for v in target_pelvis], "floor_y": round(floor_y, 4)},
        }
        write_json(Path(tmp) / "summary.json", summary)
    log.info("animate: %s", summary)
    return summary
