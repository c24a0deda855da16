"""Pieces shared by the stages: device choice, training-frame tensors, body boxes, model files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..render.camera import Camera

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def config_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def body_box_mask(vertices: torch.Tensor, camera: Camera, pad: float = 0.05) -> torch.Tensor:
    """The projected 3D box of the posed body, grown by ``pad`` metres, filled (GauHuman's bound mask).

    Args:
        vertices: (V, 3) posed body vertices in world coordinates.
    Returns:
        (H, W) bool: pixels whose centre lies inside the convex hull of the 8 projected box corners.
    """
    from scipy.spatial import ConvexHull

    lo, hi = vertices.min(0).values - pad, vertices.max(0).values + pad
    corners = torch.stack(torch.meshgrid(*[torch.stack([lo[i], hi[i]]) for i in range(3)], indexing="ij"), -1)
    uv, _ = camera.project(corners.reshape(8, 3))
    uv = uv.detach().cpu().double().numpy()
    hull = ConvexHull(uv)
    ys, xs = np.mgrid[0:camera.height, 0:camera.width]
    pts = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    # inside iff on the inner side of every hull facet: n . p + d <= 0
    inside = (pts @ hull.equations[:, :2].T + hull.equations[:, 2]).max(1) <= 1e-9
    return torch.from_numpy(inside.reshape(camera.height, camera.width))


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive, of the true pixels of an (H, W) mask (whole image if empty)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class TrainingFrame:
    """One training frame as tensors on the training device.

    Attributes:
        name: frame name.
        image: (H, W, 3) float in [0, 1], the input frame with non-person pixels set to the background.
        visible: (H, W, 1) bool, the input's visible-person mask.
        target_mask: (H, W, 1) float, the mask-loss target (visible or stage-0 complete mask).
        box: (H, W, 1) bool, the projected body box (mask-loss region).
        box_xyxy: the box's bounding rectangle, end-exclusive.
        camera: the frame's camera.
        poses (72,), betas (10,), trans (3,): body parameters (the input estimate).
        index: position of the frame in the sequence (row of the per-frame body corrections).
    """

    name: str
    image: torch.Tensor
    visible: torch.Tensor
    target_mask: torch.Tensor
    box: torch.Tensor
    box_xyxy: tuple[int, int, int, int]
    camera: Camera
    poses: torch.Tensor
    betas: torch.Tensor
    trans: torch.Tensor
    index: int = 0


TRAINING_BOX_PAD = 0.1
"""Metres by which a training frame's projected body box is grown: GauHuman's 0.05 plus room for
the error of a body estimate (a few degrees per joint moves a hand by centimetres)."""


def load_training_frames(seq, body, background, device, complete_masks_dir=None) -> list[TrainingFrame]:
    """Every frame of a sequence as :class:`TrainingFrame` tensors.

    Args:
        seq: a :class:`occfusion_core.data.sequence.Sequence`.
        body: the body model (to compute the projected body boxes).
        background: (3,) colour that replaces non-person pixels of the input.
        complete_masks_dir: stage-0 masks (``<name>.png``) used as mask-loss targets when given.
    """
    from ..io import read_mask

    bg = torch.as_tensor(background, dtype=torch.float32)
    params = seq.body_params()
    body_device = body.v_template.device  # the body may already sit on the training device
    with torch.no_grad():
        verts = body(*(params[k].to(body_device) for k in ("poses", "betas", "trans"))).vertices.cpu()
    frames = []
    for i, name in enumerate(seq.frames):
        cam = seq.camera(name)
        image = torch.tensor(seq.image(name), dtype=torch.float32) / 255.0
        visible = torch.from_numpy(seq.mask(name))[..., None]
        image = torch.where(visible, image, bg)
        if complete_masks_dir is not None:
            target = torch.from_numpy(read_mask(Path(complete_masks_dir) / f"{name}.png"))[..., None]
        else:
            target = visible
        box = body_box_mask(verts[i], cam, pad=TRAINING_BOX_PAD)
        frames.append(TrainingFrame(
            name=name, image=image.to(device), visible=visible.to(device),
            target_mask=target.float().to(device), box=box[..., None].to(device),
            box_xyxy=mask_box(box), camera=cam.to(device),
            poses=params["poses"][i].to(device), betas=params["betas"][i].to(device),
            trans=params["trans"][i].to(device), index=i,
        ))
    return frames


def training_body_params(seq, saved: dict) -> tuple[dict, str]:
    """Body parameters of the sequence's frames for rendering a trained model: the per-frame
    refined ones the model was trained with where it has them, else the input estimates.

    Args:
        seq: the sequence.
        saved: the stage's ``model.pt`` dict (``body_refinement`` holds the refined parameters).

    Returns:
        ({"poses": (T, 72), "betas": (T, 10), "trans": (T, 3)} float32, a description of which).
    """
    params = seq.body_params()
    refined = saved.get("body_refinement")
    if not refined:
        return params, "input estimates (metadata.json)"
    index = {n: i for i, n in enumerate(refined["names"])}
    missing = [n for n in seq.frames if n not in index]
    if missing:
        raise ValueError(f"the model's refined body parameters lack frames {missing[:5]} of the sequence")
    rows = [index[n] for n in seq.frames]
    poses = torch.as_tensor(refined["estimate_poses"])[rows] + torch.as_tensor(refined["delta_pose"])[rows]
    trans = torch.as_tensor(refined["estimate_trans"])[rows] + torch.as_tensor(refined["delta_trans"])[rows]
    betas = torch.as_tensor(refined["estimate_betas"])[rows] + torch.as_tensor(refined["delta_betas"])
    params["poses"], params["betas"], params["trans"] = poses.float(), betas.float(), trans.float()
    return params, (f"refined per frame with the avatar ({refined.get('stages', 'stage 1')}); "
                    f"mean correction {refined.get('mean_correction_deg', float('nan')):.2f} deg per joint, "
                    f"{refined.get('mean_correction_cm', float('nan')):.2f} cm translation")


def load_trained_model(model_path, body, device):
    """Rebuild :class:`HumanGaussians` from a stage's ``model.pt``; returns (model, the saved dict)."""
    from ..gaussians.human import HumanGaussians
    from ..io import load_torch

    saved = load_torch(model_path, map_location=str(device))
    model = HumanGaussians.from_capture(body, saved["model"]).to(device)
    model.eval()
    return model, saved


def view_directions(deformed, camera, view_frame: str = "canonical") -> torch.Tensor:
    """(N, 3) unit directions from the camera centre to each Gaussian, for SH colour evaluation.

    ``world`` is GauHuman's choice. For a static camera watching a person turn, world directions
    barely change, so SH cannot follow appearance that turns with the body (light fixed in the
    world shading a turning body). ``canonical`` maps each direction into the Gaussian's canonical
    frame through the inverse of its skinning transform, so the SH sees the body-relative view
    (and, with camera and light fixed in the world, the body-relative light).
    """
    from ..render.sh import view_directions as directions

    return directions(deformed.means, camera.center, _view_transforms(deformed, view_frame))


def _view_transforms(deformed, view_frame: str):
    if view_frame == "canonical":
        return deformed.transforms
    if view_frame != "world":
        raise ValueError(f"view_frame must be 'canonical' or 'world', got {view_frame!r}")
    return None


def render_gaussians(deformed, camera, background, backend: str, view_frame: str = "canonical"):
    """Rasterize deformed Gaussians with their SH colours evaluated for ``camera``.

    Returns:
        :class:`occfusion_core.render.rasterize.RenderOutput`.
    """
    from ..render.rasterize import rasterize_with_sh

    return rasterize_with_sh(deformed.means, deformed.opacities, camera, deformed.covars, deformed.sh,
                             deformed.sh_degree, view_transforms=_view_transforms(deformed, view_frame),
                             background=background, backend=backend)
