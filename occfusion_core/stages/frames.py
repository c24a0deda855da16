"""A sequence's frames as the training stages hold them: tensors on the training device with the
projected body box that bounds the mask loss (:class:`TrainingFrame`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import read_mask
from ..masks import body_box_mask, bounding_box
from ..render.camera import Camera


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
            box_xyxy=bounding_box(box) or (0, 0, cam.width, cam.height), camera=cam.to(device),
            poses=params["poses"][i].to(device), betas=params["betas"][i].to(device),
            trans=params["trans"][i].to(device), index=i,
        ))
    return frames
