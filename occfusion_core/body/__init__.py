"""Body models: SMPL through smplx, or the generated proxy body in SMPL's format; OpenPose joints."""

from .model import (
    JOINT_NAMES,
    SMPL_PARENTS,
    BodyModel,
    BodyOutput,
    big_pose,
    default_proxy_path,
    load_body_model,
)
from .openpose import (
    SMPL_TO_OPENPOSE,
    canonical_camera,
    canonical_openpose_canvases,
    draw_openpose,
    openpose18,
    project_openpose,
    self_occlusion_valid,
)
from .proxy import build_proxy_smpl, write_proxy_smpl

__all__ = [
    "JOINT_NAMES", "SMPL_PARENTS", "SMPL_TO_OPENPOSE", "BodyModel", "BodyOutput", "big_pose",
    "build_proxy_smpl", "canonical_camera", "canonical_openpose_canvases", "default_proxy_path",
    "draw_openpose", "load_body_model", "openpose18", "project_openpose", "self_occlusion_valid",
    "write_proxy_smpl",
]
