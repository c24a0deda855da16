"""Motion files: SMPL pose sequences in the AMASS ``.npz`` layout (Mahmood et al., "AMASS: Archive of
Motion Capture as Surface Shapes", ICCV 2019), read and written for driving a trained avatar.

An AMASS file holds ``poses`` (N, 156) SMPL-H axis-angle (N, 72 for SMPL; N, 165 for the SMPL-X
release), ``trans`` (N, 3) in metres, ``mocap_framerate`` (``mocap_frame_rate`` in the SMPL-X
release), ``betas`` and ``gender``. Only ``poses`` and ``trans`` are required here; the frame rate
defaults to 30. The avatar keeps its own shape, so ``betas`` is not read.

Up axis. AMASS worlds are z-up (the floor is z = 0), while the project's body world is SMPL's: y up,
the body facing +z at rest (see :mod:`occfusion_core.data.motion`). With ``up_axis='z'`` (the default,
as AMASS) :func:`load_motion` turns the whole motion by -90 degrees about x, the rotation that takes
AMASS's up (+z) to the project's up (+y) and AMASS's +y to the project's -z:

    (x, y, z)_AMASS -> (x, z, -y)_project

applied to the global orientation (left-composed with the root rotation) and to the translation.
The translation is rotated as a vector, so the pelvis lands exactly where the rotated world puts it
only up to a constant: SMPL rotates the body about its rest pelvis joint J0 and adds ``trans``
afterwards, so the exact new translation would be R (J0 + trans) - J0, which needs the body model
and its shape. The constant (R - I) J0 (about 30 cm: J0 is about 0.2 m below the origin) is removed
wherever a motion is placed in a scene (the animate stage re-places every motion, see
:mod:`occfusion_core.stages.animate`). ``up_axis='y'`` reads a file already in the project's frame.
:func:`write_motion` applies the inverse rotation, so a written clip reads back unchanged.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..io import InputError, atomic_path

SMPL_POSE_DIMS = 72
"""24 SMPL joints x 3 axis-angle values (global orientation first)."""
SMPL_BODY_DIMS = 66
"""Global orientation + the 21 body joints that SMPL, SMPL-H and SMPL-X share (joints 0..21)."""
ACCEPTED_POSE_DIMS = {72: "SMPL", 156: "SMPL-H", 165: "SMPL-X"}
DEFAULT_FPS = 30.0
AMASS_BETAS = 16
"""AMASS stores 16 shape coefficients per file."""

# -90 degrees about x: AMASS's z-up world -> the project's y-up world, (x, y, z) -> (x, z, -y).
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass
class MotionClip:
    """A pose sequence in the project's frame (y up).

    Attributes:
        name: what the clip is called (the file's stem when loaded).
        poses: (N, 72) float32 SMPL axis-angle, global orientation first.
        trans: (N, 3) float32 root translation in metres.
        fps: frames per second.
    """

    name: str
    poses: np.ndarray
    trans: np.ndarray
    fps: float


def _up_rotation(up_axis: str) -> np.ndarray:
    """(3, 3) rotation from a file's world (``up_axis`` up) into the project's y-up world."""
    if up_axis == "z":
        return _Z_UP_TO_Y_UP
    if up_axis == "y":
        return np.eye(3)
    raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")


def _rotate_world(poses: np.ndarray, trans: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn a motion's world by ``rotation`` (3, 3): root orientation and translation; poses (N, 72),
    trans (N, 3) -> new (poses, trans) as float64."""
    poses = np.array(poses, dtype=np.float64, copy=True)
    root = Rotation.from_matrix(rotation) * Rotation.from_rotvec(poses[:, :3])
    poses[:, :3] = root.as_rotvec()
    return poses, np.asarray(trans, dtype=np.float64) @ rotation.T


def _to_smpl_poses(poses: np.ndarray) -> np.ndarray:
    """(N, 72|156|165) -> (N, 72): the shared 22 joints, then SMPL's two hand joints.

    SMPL's joints 22/23 (left/right hand) are zero, a flat hand in line with the wrist. SMPL-H and
    SMPL-X have no joint there: their joints after the 22 body joints are finger joints (SMPL-H:
    left_index1 first, SMPL-X: the jaw and eyes first), so copying them would bend SMPL's whole hand
    by one finger's (or the jaw's) rotation. The wrists (20/21) are kept, so the hands still turn.
    """
    if poses.shape[1] == SMPL_POSE_DIMS:
        return poses
    out = np.zeros((poses.shape[0], SMPL_POSE_DIMS), dtype=poses.dtype)
    out[:, :SMPL_BODY_DIMS] = poses[:, :SMPL_BODY_DIMS]
    return out


def load_motion(path: str | os.PathLike, up_axis: str = "z") -> MotionClip:
    """Read an AMASS-style ``.npz`` motion.

    Args:
        path: the file (keys ``poses`` (N, 72|156|165), ``trans`` (N, 3), optional
            ``mocap_framerate``).
        up_axis: 'z' (AMASS: converted to the project's y-up world, see the module docstring) or 'y'
            (already y up).

    Returns:
        a :class:`MotionClip` named after the file's stem, poses (N, 72) and trans (N, 3) float32.

    Raises:
        InputError: naming the file and the problem: missing file, not an npz, a missing key, a wrong
            shape, different frame counts, no frames, non-finite values or a bad frame rate.
    """
    path = Path(path)
    rotation = _up_rotation(up_axis)
    if not path.is_file():
        raise InputError(path, "motion file is missing")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise InputError(path, "not an npz archive (a single .npy array); a motion needs poses and trans")
    if not magic.startswith(b"PK"):
        raise InputError(path, "not an npz archive (no zip header); expected AMASS-style poses/trans arrays")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(path, f"not a readable npz archive ({err})") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(path, "not an npz archive (a single .npy array); a motion needs poses and trans")
    with loaded as npz:
        keys = set(npz.files)
        for key in ("poses", "trans"):
            if key not in keys:
                raise InputError(path, f"no '{key}' array (has: {', '.join(sorted(keys)) or 'nothing'})")
        rate_key = next((k for k in ("mocap_framerate", "mocap_frame_rate") if k in keys), None)
        try:
            poses, trans = np.asarray(npz["poses"]), np.asarray(npz["trans"])
            rate = npz[rate_key] if rate_key else DEFAULT_FPS
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(path, f"cannot read its arrays ({err})") from err

    if poses.ndim != 2 or poses.shape[1] not in ACCEPTED_POSE_DIMS:
        known = ", ".join(f"(N, {d}) {n}" for d, n in ACCEPTED_POSE_DIMS.items())
        raise InputError(path, f"'poses' has shape {poses.shape}; expected {known}")
    if trans.ndim != 2 or trans.shape[1] != 3:
        raise InputError(path, f"'trans' has shape {trans.shape}; expected (N, 3)")
    if poses.shape[0] != trans.shape[0]:
        raise InputError(path, f"'poses' has {poses.shape[0]} frames but 'trans' has {trans.shape[0]}")
    if poses.shape[0] == 0:
        raise InputError(path, "the motion has no frames (N == 0)")
    for key, arr in (("poses", poses), ("trans", trans)):
        if not np.issubdtype(arr.dtype, np.number):
            raise InputError(path, f"'{key}' is not numeric (dtype {arr.dtype})")
        bad = ~np.isfinite(arr)
        if bad.any():
            frame = int(np.argwhere(bad)[0, 0])
            raise InputError(path, f"'{key}' has non-finite values (first in frame {frame})")
    try:
        fps = float(np.asarray(rate).reshape(()))
    except (TypeError, ValueError) as err:
        raise InputError(path, f"'{rate_key}' is not one number ({err})") from err
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(path, f"'{rate_key}' is {fps}; expected a frame rate > 0")

    poses, trans = _rotate_world(_to_smpl_poses(poses.astype(np.float64)), trans, rotation)
    return MotionClip(name=path.stem, poses=poses.astype(np.float32), trans=trans.astype(np.float32), fps=fps)


def write_motion(path: str | os.PathLike, clip: MotionClip, up_axis: str = "z") -> None:
    """Write ``clip`` as an AMASS-style ``.npz`` (atomically): ``poses`` (N, 72), ``trans`` (N, 3),
    ``mocap_framerate``, ``betas`` zeros (16,) and ``gender`` 'neutral'.

    Args:
        path: the output file.
        clip: a clip in the project's frame (y up).
        up_axis: the file's up axis: 'z' (AMASS, the default; the inverse of :func:`load_motion`'s
            conversion) or 'y'.
    """
    rotation = _up_rotation(up_axis)
    poses = np.asarray(clip.poses, dtype=np.float64)
    trans = np.asarray(clip.trans, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != SMPL_POSE_DIMS or trans.shape != (poses.shape[0], 3):
        raise ValueError(f"write_motion wants poses (N, 72) and trans (N, 3); got {poses.shape}, {trans.shape}")
    poses, trans = _rotate_world(poses, trans, rotation.T)  # the inverse of load_motion's rotation
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            poses=poses.astype(np.float32),
            trans=trans.astype(np.float32),
            mocap_framerate=np.float64(clip.fps),
            betas=np.zeros(AMASS_BETAS, dtype=np.float32),
            gender=np.array("neutral"),
        )
