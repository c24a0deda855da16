"""What a training stage's ``model.pt`` gives the later stages: the Gaussians, and the body
parameters of every frame they were trained with (refined per frame where the stage refined them)."""

from __future__ import annotations

import torch

from ..gaussians.human import HumanGaussians
from ..io import load_torch


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
    saved = load_torch(model_path, map_location=str(device))
    model = HumanGaussians.from_capture(body, saved["model"]).to(device)
    model.eval()
    # only rendered from here on: no gradient reaches the Gaussians (the held-out body fit of the
    # metrics differentiates through them to the body parameters alone)
    model.requires_grad_(False)
    # The skinning-offset decoder sees only the canonical centres, which no longer change: run it
    # once (fresh, not the checkpoint's cached offsets) and reuse it for every pose. Same images;
    # measured per frame on one CPU thread: deform 24 -> 3 ms at 3.4k Gaussians, 215 -> 14 ms at 30k.
    model.forget_lbs_offsets()
    model.reuse_lbs_offsets = True
    return model, saved
