"""Procedural body motions in SMPL's pose format (24 joints x axis-angle, SMPL world: y up, the body
faces +z at rest, the subject's left is +x).

- :func:`walk_turn`: the synthetic subject's training motion -- walking in place while turning about
  the vertical axis, so every side of the body faces a static camera in some frames.
- :func:`novel_pose_motion`: motions the training never shows ('dance', 'kick', 'walk'), for the
  novel-pose renders.
- :func:`walk_wave`: a few steps of walking while the right arm waves; the project's shipped motion
  file (``results/motions/walk_wave.npz``, see :mod:`occfusion_core.data.motion_files`).
- :func:`ground_trans`: translations that put the lowest point of the posed body on the floor.

Joint rotations are local (relative to the parent, in the rest-pose axes), as SMPL composes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial.transform import Rotation

NUM_JOINTS = 24
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = 12, 13, 14, 15, 16, 17, 18, 19
L_WRIST, R_WRIST = 20, 21

ARMS_DOWN_DEG = 72.0
"""Rotation of the shoulders about z that brings the T-pose arms down beside the body."""
GAIT_PERIOD_FRAMES = 18
"""Frames per walking cycle (1.2 s at 15 fps)."""
NOVEL_MOTIONS = ("dance", "kick", "walk")


def _rot(axis: str, deg: np.ndarray) -> Rotation:
    """Rotations about a principal axis ('x', 'y' or 'z') by ``deg`` (T,) degrees."""
    return Rotation.from_euler(axis, np.asarray(deg, dtype=np.float64).reshape(-1, 1), degrees=True)


class _PoseBuilder:
    """Collects per-joint rotations for T frames and packs them as (T, 72) axis-angle."""

    def __init__(self, frames: int):
        self.frames = frames
        self.rot = [Rotation.identity(frames) for _ in range(NUM_JOINTS)]

    def set(self, joint: int, rotation: Rotation) -> None:
        self.rot[joint] = rotation

    def poses(self) -> np.ndarray:
        return np.concatenate([r.as_rotvec() for r in self.rot], axis=1)  # (T, 72)


def walk_turn(frames: int, turns: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Walking in place while turning about the vertical axis.

    Legs swing (+-25 deg at the hips) with the knees bending in the swing phase, arms swing opposite to
    the legs, the pelvis rolls and twists a little and the spine counter-twists. The heading turns
    ``turns`` full circles over the sequence, starting near facing +z (the training camera). The seed
    varies the amplitudes by +-10 %, the gait phase and the start heading (+-10 deg).

    Args:
        frames: number of frames T.
        turns: full turns of the heading over the T frames.
        seed: random seed.

    Returns:
        poses: (T, 72) float64 axis-angle, SMPL joint order.
        trans: (T, 3) float64, all zero (constant pelvis height); see :func:`ground_trans` to put
            the feet on a floor.
    """
    if frames < 1:
        raise ValueError(f"walk_turn: frames must be >= 1, got {frames}")
    rng = np.random.default_rng(seed)
    hip_amp, knee_amp, arm_amp, sway_amp = 1.0 + 0.1 * rng.uniform(-1.0, 1.0, size=4)
    phase0 = rng.uniform(0.0, 2.0 * math.pi)
    heading0 = rng.uniform(-10.0, 10.0)
    t = np.arange(frames, dtype=np.float64)
    phi = phase0 + 2.0 * math.pi * t / GAIT_PERIOD_FRAMES
    heading = heading0 + 360.0 * turns * t / frames
    sin, cos = np.sin(phi), np.cos(phi)

    b = _PoseBuilder(frames)
    b.set(PELVIS, _rot("y", heading) * _rot("y", 4.0 * sway_amp * cos) * _rot("z", 3.0 * sway_amp * sin))
    for joint, lean in ((SPINE1, 3.0), (SPINE2, 0.0), (SPINE3, 0.0)):
        b.set(joint, _rot("y", -2.0 * sway_amp * cos) * _rot("z", -1.0 * sway_amp * sin)
              * _rot("x", np.full(frames, lean)))
    b.set(HEAD, _rot("x", 3.0 * np.sin(2.0 * phi)))
    # Legs: forward swing is a negative rotation about x; the knee bends (positive x) while its leg
    # swings forward (cos > 0 for the left leg), and the ankle keeps the foot roughly level.
    for hip, knee, ankle, side in ((L_HIP, L_KNEE, L_ANKLE, 1.0), (R_HIP, R_KNEE, R_ANKLE, -1.0)):
        forward = 25.0 * hip_amp * side * sin
        bend = 5.0 + 45.0 * knee_amp * np.clip(side * cos, 0.0, None) ** 1.5
        b.set(hip, _rot("x", -forward))
        b.set(knee, _rot("x", bend))
        b.set(ankle, _rot("x", 0.5 * (forward - bend)))
    # Arms: down beside the body, swinging opposite to the leg on the same side, elbows a bit bent.
    for shoulder, elbow, side in ((L_SHOULDER, L_ELBOW, 1.0), (R_SHOULDER, R_ELBOW, -1.0)):
        forward = -20.0 * arm_amp * side * sin
        b.set(shoulder, _rot("x", -forward) * _rot("z", -side * ARMS_DOWN_DEG))
        b.set(elbow, _rot("y", -side * (15.0 + 20.0 * np.clip(forward / 20.0, 0.0, None))))
    return b.poses(), np.zeros((frames, 3))


def novel_pose_motion(name: str, frames: int) -> np.ndarray:
    """A motion unseen in training, facing +z, for novel-pose renders.

    Args:
        name: 'dance' (arms up and down overhead, hips sway, knees bounce), 'kick' (alternating front
            kicks, arms out for balance) or 'walk' (walking in place without turning).
        frames: number of frames T.

    Returns:
        (T, 72) float64 axis-angle poses.
    """
    if frames < 1:
        raise ValueError(f"novel_pose_motion: frames must be >= 1, got {frames}")
    t = np.arange(frames, dtype=np.float64)
    b = _PoseBuilder(frames)
    if name == "dance":
        phi = 2.0 * math.pi * t / 20.0
        arm_up = -10.0 - 60.0 * np.cos(phi)  # from -70 (down) to +50 deg (above the shoulder)
        bounce = 0.5 - 0.5 * np.cos(2.0 * phi)
        b.set(PELVIS, _rot("y", 20.0 * np.sin(0.5 * phi)) * _rot("z", 8.0 * np.sin(phi)))
        for joint in (SPINE1, SPINE2, SPINE3):
            b.set(joint, _rot("z", -4.0 * np.sin(phi)))
        b.set(HEAD, _rot("z", -3.0 * np.sin(phi)))
        for hip, knee, ankle in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
            b.set(hip, _rot("x", -(5.0 + 15.0 * bounce)))
            b.set(knee, _rot("x", 10.0 + 30.0 * bounce))
            b.set(ankle, _rot("x", -(5.0 + 15.0 * bounce)))
        for shoulder, elbow, side in ((L_SHOULDER, L_ELBOW, 1.0), (R_SHOULDER, R_ELBOW, -1.0)):
            b.set(shoulder, _rot("z", side * arm_up))
            b.set(elbow, _rot("y", -side * (20.0 + 25.0 * (0.5 + 0.5 * np.cos(phi)))))
    elif name == "kick":
        period = 24.0
        p = np.remainder(t, period) / period * 2.0  # 0..2: first half left kicks, second half right
        for hip, knee, ankle, shoulder, elbow, side, start in (
            (L_HIP, L_KNEE, L_ANKLE, R_SHOULDER, R_ELBOW, 1.0, 0.0),
            (R_HIP, R_KNEE, R_ANKLE, L_SHOULDER, L_ELBOW, -1.0, 1.0),
        ):
            q = p - start  # this leg's kick phase in [0, 1), outside = standing
            active = (q >= 0.0) & (q < 1.0)
            qa = np.clip(q, 0.0, 1.0)
            lift = np.where(active, np.sin(math.pi * qa) ** 2, 0.0)  # hip flexion profile
            chamber = np.where(active & (qa < 0.5), np.sin(2.0 * math.pi * qa) ** 2, 0.0)
            b.set(hip, _rot("x", -75.0 * lift))
            b.set(knee, _rot("x", 8.0 + 70.0 * chamber))
            b.set(ankle, _rot("x", 20.0 * lift))
            # The arm opposite the kicking leg swings forward.
            b.set(shoulder, _rot("x", -40.0 * lift) * _rot("z", np.full(frames, side * 35.0)))
            b.set(elbow, _rot("y", side * (20.0 + 30.0 * lift)))
        lean = np.sin(math.pi * np.remainder(p, 1.0)) ** 2
        b.set(SPINE1, _rot("x", -8.0 * lean))
        b.set(SPINE2, _rot("x", -4.0 * lean))
    elif name == "walk":
        return walk_turn(frames, turns=0.0, seed=0)[0]
    else:
        raise ValueError(f"novel_pose_motion: unknown motion {name!r}; known: {', '.join(NOVEL_MOTIONS)}")
    return b.poses()


WALK_WAVE_FPS = 30.0
"""Frame rate of :func:`walk_wave` (AMASS clips are mostly 60-120 fps; 30 keeps the file small)."""


def walk_wave(frames: int = 72, fps: float = WALK_WAVE_FPS) -> tuple[np.ndarray, np.ndarray]:
    """Walking forward a few steps while the right arm waves (2.4 s at the defaults: four steps).

    The body heads 55 degrees from +z towards +x (so a camera on +z sees it cross the frame and the
    waving arm, which is on the +z side, nearly face on) at 0.6 m/s, one gait cycle (two steps) per
    1.2 s. The legs (with shorter steps: +-18 degrees at the hips, so that the stance foot slides
    little at this speed), the left arm and the torso move as in :func:`walk_turn`; the right arm rises in
    the first 0.4 s from its swing beside the body to the upper arm 35 degrees above horizontal with
    the forearm up, then the forearm waves +-25 degrees side to side twice a second.

    Args:
        frames: number of frames T.
        fps: frames per second (sets the timing; the motion lasts T / fps seconds).

    Returns:
        poses: (T, 72) float64 axis-angle, SMPL joint order.
        trans: (T, 3) float64: the walk along the heading in x/z, y zero (see :func:`ground_trans`).
    """
    if frames < 1 or fps <= 0:
        raise ValueError(f"walk_wave: frames must be >= 1 and fps > 0, got {frames}, {fps}")
    heading_deg, speed, gait_period_s = 55.0, 0.6, 1.2
    t = np.arange(frames, dtype=np.float64) / fps
    phi = 2.0 * math.pi * t / gait_period_s
    sin, cos = np.sin(phi), np.cos(phi)
    ramp = np.clip(t / 0.4, 0.0, 1.0)
    raised = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: the arm starts and stops rising gently

    b = _PoseBuilder(frames)
    b.set(PELVIS, _rot("y", np.full(frames, heading_deg)) * _rot("y", 4.0 * cos) * _rot("z", 3.0 * sin))
    for joint, lean in ((SPINE1, 3.0), (SPINE2, 0.0), (SPINE3, 0.0)):
        b.set(joint, _rot("y", -2.0 * cos) * _rot("z", -1.0 * sin) * _rot("x", np.full(frames, lean)))
    b.set(HEAD, _rot("x", 3.0 * np.sin(2.0 * phi)))
    for hip, knee, ankle, side in ((L_HIP, L_KNEE, L_ANKLE, 1.0), (R_HIP, R_KNEE, R_ANKLE, -1.0)):
        forward = 18.0 * side * sin
        bend = 5.0 + 35.0 * np.clip(side * cos, 0.0, None) ** 1.5
        b.set(hip, _rot("x", -forward))
        b.set(knee, _rot("x", bend))
        b.set(ankle, _rot("x", 0.5 * (forward - bend)))
    swing = 20.0 * sin  # the left arm swings opposite to the left leg, as in walk_turn
    b.set(L_SHOULDER, _rot("x", swing) * _rot("z", np.full(frames, -ARMS_DOWN_DEG)))
    b.set(L_ELBOW, _rot("y", -(15.0 + 20.0 * np.clip(-swing / 20.0, 0.0, None))))
    # Right arm (T-pose along -x): about z, +72 deg brings it down, -35 raises it above the shoulder;
    # the elbow's -z rotation lifts the forearm, and its oscillation is the wave.
    wave = -70.0 + 25.0 * np.sin(2.0 * math.pi * 2.0 * t)
    b.set(R_SHOULDER, _rot("x", -swing * (1.0 - raised)) * _rot("z", ARMS_DOWN_DEG * (1.0 - raised) - 35.0 * raised))
    b.set(R_ELBOW, _rot("z", wave * raised) * _rot("y", 15.0 * (1.0 - raised)))
    heading = math.radians(heading_deg)
    distance = speed * t
    trans = np.stack([distance * math.sin(heading), np.zeros(frames), distance * math.cos(heading)], axis=1)
    return b.poses(), trans


def ground_trans(body_model, poses: np.ndarray, trans: np.ndarray, floor_y: float,
                 betas: np.ndarray | None = None) -> np.ndarray:
    """Shift each frame vertically so that the lowest vertex of the posed body sits on ``floor_y``.

    Args:
        body_model: a :class:`occfusion_core.body.model.BodyModel` (or the same interface).
        poses: (T, 72) axis-angle; trans: (T, 3); betas: (T, 10) or None (zeros).
        floor_y: world height of the floor (SMPL world: y up).

    Returns:
        (T, 3) float64 translations: ``trans`` with y changed.
    """
    poses_t = torch.as_tensor(poses, dtype=torch.float32)
    trans_t = torch.as_tensor(trans, dtype=torch.float32)
    betas_t = torch.zeros(poses_t.shape[0], 10) if betas is None else torch.as_tensor(betas, dtype=torch.float32)
    with torch.no_grad():
        verts = body_model.forward(poses_t, betas_t, trans_t).vertices  # (T, V, 3)
    lowest = verts[..., 1].amin(dim=1).double().numpy()
    out = np.array(trans, dtype=np.float64, copy=True)
    out[:, 1] += floor_y - lowest
    return out


BUILTIN_MOTIONS = {"walk_wave": (walk_wave, WALK_WAVE_FPS)}
"""Name -> (function returning (poses, trans), frame rate): the motions the workflow writes itself
(``results/motions/{name}.npz``, rule ``builtin_motion``), which a config's ``animate.motions`` may
name. The schema's enum of names lists the same."""


def builtin_motion_clip(name: str, body_model):
    """A built-in motion as a :class:`~occfusion_core.data.motion_files.MotionClip` with the feet on
    the floor y = 0 (AMASS's z = 0 once written z-up), grounded on ``body_model`` at the mean shape.

    Returns:
        MotionClip with poses (T, 72) and trans (T, 3) float32.
    """
    from .motion_files import MotionClip

    if name not in BUILTIN_MOTIONS:
        raise ValueError(f"unknown built-in motion {name!r}; known: {', '.join(BUILTIN_MOTIONS)}")
    make, fps = BUILTIN_MOTIONS[name]
    poses, trans = make()
    trans = ground_trans(body_model, poses, trans, floor_y=0.0)
    return MotionClip(name=name, poses=poses.astype(np.float32), trans=trans.astype(np.float32), fps=fps)
