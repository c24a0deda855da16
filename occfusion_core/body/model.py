"""The body model: SMPL through ``smplx``, from a user's SMPL file or the generated proxy body.

Both kinds of file load through the same ``smplx.SMPL`` code path; the proxy differs only in its
data (see ``proxy.py``) and in its own vertex ids for smplx's extra vertex joints.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.lbs import batch_rodrigues, blend_shapes, vertices2joints
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from ..io import InputError
from .kinematics import rigid_transforms
from .proxy import JOINT_NAMES, NUM_BETAS, NUM_JOINTS, PROXY_VERSION, SMPL_PARENTS, write_proxy_smpl

__all__ = ["JOINT_NAMES", "SMPL_PARENTS", "BodyOutput", "BodyModel", "load_body_model", "big_pose",
           "default_proxy_path"]

_REQUIRED_KEYS = ("v_template", "f", "weights", "J_regressor", "kintree_table", "shapedirs", "posedirs")
_FACE_KEYPOINTS = ("nose", "reye", "leye", "rear", "lear")


@dataclass
class BodyOutput:
    """Result of ``BodyModel.forward`` for a batch of B bodies with V vertices.

    Attributes:
        vertices: (B, V, 3) posed vertices in world coordinates (SMPL output + trans).
        joints: (B, 24, 3) posed SMPL joints in world coordinates.
        joints45: (B, 45, 3) smplx's joints: the 24 SMPL joints, then the vertex joints nose, reye,
            leye, rear, lear, LBigToe, LSmallToe, LHeel, RBigToe, RSmallToe, RHeel and the ten
            fingertips (lthumb..lpinky, rthumb..rpinky), in world coordinates.
        transforms: (B, 24, 4, 4) relative bone transforms A of ``smplx.lbs.batch_rigid_transform``:
            posed vertex = sum_j w_j A_j [v_shaped + pose offsets; 1], before adding trans.
        v_shaped: (B, V, 3) rest-pose vertices with the shape applied (v_template + shapedirs beta).
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    joints45: torch.Tensor
    transforms: torch.Tensor
    v_shaped: torch.Tensor


def big_pose() -> torch.Tensor:
    """(72,) GauHuman's canonical "big pose" (Da-pose): legs spread 45 degrees, feet turned back 30."""
    pose = torch.zeros(NUM_JOINTS * 3)
    pose[5] = math.radians(45.0)  # left hip, about z
    pose[8] = math.radians(-45.0)  # right hip, about z
    pose[23] = math.radians(-30.0)  # left ankle, about z
    pose[26] = math.radians(30.0)  # right ankle, about z
    return pose


def _read_smpl_file(path: Path) -> dict:
    """Unpickle and check an SMPL-format file; every problem becomes an InputError naming it."""
    if not path.is_file():
        raise InputError(path, "SMPL model file is missing" if not path.exists() else "not a file")
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="latin1")  # SMPL's official files are Python 2 pickles
    except ModuleNotFoundError as err:
        raise InputError(path, f"cannot unpickle the SMPL file: it needs the module '{err.name}' (the "
                               "official files need 'chumpy'; or use a chumpy-free copy)") from err
    except Exception as err:  # pickle raises many types for a truncated or foreign file
        raise InputError(path, f"cannot read the SMPL file ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise InputError(path, f"not an SMPL model file (holds a {type(data).__name__}, not a dict)")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise InputError(path, f"not an SMPL model file: keys {missing} are missing")
    num_verts = np.shape(data["v_template"])[0]
    checks = {
        "v_template": (np.shape(data["v_template"]), (num_verts, 3)),
        "weights": (np.shape(data["weights"]), (num_verts, NUM_JOINTS)),
        "J_regressor": (tuple(data["J_regressor"].shape), (NUM_JOINTS, num_verts)),
        "kintree_table": (np.shape(data["kintree_table"]), (2, NUM_JOINTS)),
    }
    for key, (got, want) in checks.items():
        if tuple(got) != want:
            raise InputError(path, f"'{key}' has shape {tuple(got)}, SMPL needs {want}")
    if np.shape(data["shapedirs"])[:2] != (num_verts, 3) or np.shape(data["shapedirs"])[2] < NUM_BETAS:
        raise InputError(path, f"'shapedirs' has shape {np.shape(data['shapedirs'])}, "
                               f"SMPL needs ({num_verts}, 3, >={NUM_BETAS})")
    return data


class BodyModel(torch.nn.Module):
    """SMPL (``smplx.SMPL``) with the pose as one (B, 72) axis-angle vector, plus bone transforms.

    Attributes:
        smpl: the wrapped ``smplx.SMPL`` module (no learnable parameters of its own).
        is_proxy: True for the generated proxy body.
        name: "proxy" or the model file's stem (e.g. "SMPL_NEUTRAL").
        openpose_vertex_ids: smplx vertex ids of nose, reye, leye, rear, lear (joints45[24:29]).
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        path = Path(path)
        data = _read_smpl_file(path)
        self.is_proxy = bool(data.get("proxy", False))
        self.name = "proxy" if self.is_proxy else path.stem
        # a real SMPL file shares SMPL-H's topology, which is smplx's default; the proxy brings its own
        ids = dict(data["vertex_ids"]) if self.is_proxy else dict(SMPLX_VERTEX_IDS["smplh"])
        num_verts = np.shape(data["v_template"])[0]
        bad = {k: v for k, v in ids.items() if not 0 <= int(v) < num_verts}
        if bad:
            raise InputError(path, f"vertex ids {bad} are out of range for {num_verts} vertices "
                                   "(is this an SMPL file with 6890 vertices?)")
        self.openpose_vertex_ids = {k: int(ids[k]) for k in _FACE_KEYPOINTS}
        del data
        # smplx prints a warning for every model with 10 shape coefficients (all SMPL files)
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(
                model_path=str(path), vertex_ids=ids, batch_size=1, num_betas=NUM_BETAS,
                create_betas=False, create_global_orient=False, create_body_pose=False,
                create_transl=False,
            )

    @property
    def faces(self) -> torch.Tensor:
        """(F, 3) long triangle vertex indices."""
        return self.smpl.faces_tensor

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    @property
    def parents(self) -> torch.Tensor:
        """(24,) long parent of each joint; -1 for the root."""
        return self.smpl.parents

    @property
    def lbs_weights(self) -> torch.Tensor:
        """(V, 24) skinning weights, rows sum to 1."""
        return self.smpl.lbs_weights

    @property
    def v_template(self) -> torch.Tensor:
        """(V, 3) rest-pose (T-pose) vertices of the mean shape."""
        return self.smpl.v_template

    @property
    def shapedirs(self) -> torch.Tensor:
        """(V, 3, 10) shape blend shapes."""
        return self.smpl.shapedirs

    @property
    def posedirs(self) -> torch.Tensor:
        """(207, V*3) pose blend shapes as smplx stores them (all zero for the proxy)."""
        return self.smpl.posedirs

    @property
    def J_regressor(self) -> torch.Tensor:
        """(24, V) joint regressor: joints = J_regressor @ vertices."""
        return self.smpl.J_regressor

    def forward(self, poses: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor) -> BodyOutput:
        """Pose B bodies.

        Args:
            poses: (B, 72) axis-angle rotations of the 24 joints (global orientation first).
            betas: (B, 10) shape coefficients.
            trans: (B, 3) world translation added to the SMPL output.
        """
        batch = poses.shape[0]
        expected = ((batch, NUM_JOINTS * 3), (batch, NUM_BETAS), (batch, 3))
        if (tuple(poses.shape), tuple(betas.shape), tuple(trans.shape)) != expected:
            raise ValueError(f"BodyModel wants poses (B,72), betas (B,10), trans (B,3); got "
                             f"{tuple(poses.shape)}, {tuple(betas.shape)}, {tuple(trans.shape)}")
        out = self.smpl(betas=betas, global_orient=poses[:, :3], body_pose=poses[:, 3:], transl=trans)
        # smplx.lbs does not return the bone transforms, so they are recomputed with its own pieces
        v_shaped = self.smpl.v_template + blend_shapes(betas, self.smpl.shapedirs)
        rest_joints = vertices2joints(self.smpl.J_regressor, v_shaped)
        rotations = batch_rodrigues(poses.reshape(-1, 3)).reshape(batch, NUM_JOINTS, 3, 3)
        _, transforms = rigid_transforms(rotations, rest_joints, self.smpl.parents)
        return BodyOutput(
            vertices=out.vertices,
            joints=out.joints[:, :NUM_JOINTS],
            joints45=out.joints,
            transforms=transforms,
            v_shaped=v_shaped,
        )


def default_proxy_path(cache_dir: str | os.PathLike | None = None, grid_mm: float = 20.0) -> Path:
    """Where ``load_body_model`` caches the proxy body: ``<cache_dir>/proxy_smpl_<grid>.pkl``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "occfusion"
    return cache_dir / f"proxy_smpl_{grid_mm:g}.pkl"


def _is_current_proxy(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
    except Exception:  # a foreign or truncated cache file is simply rebuilt
        return False
    return isinstance(data, dict) and data.get("proxy_version") == PROXY_VERSION


def load_body_model(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                    grid_mm: float = 20.0) -> BodyModel:
    """The user's SMPL file at ``path``, or (``path`` None) the proxy body.

    The proxy is generated into ``cache_dir`` (default ``~/.cache/occfusion``) when it is missing or
    was made by an older generator, then loaded like any SMPL file. A missing or unreadable ``path``
    raises ``InputError`` naming it.
    """
    if path is not None:
        return BodyModel(path)
    proxy_path = default_proxy_path(cache_dir, grid_mm)
    if not (proxy_path.is_file() and _is_current_proxy(proxy_path)):
        write_proxy_smpl(proxy_path, grid_mm)
    return BodyModel(proxy_path)
