"""Per-frame refinement of the body estimate, learnt together with the avatar.

A monocular body estimate is wrong by a few degrees per joint and centimetres of translation in every
frame, and GauHuman's pose refiner cannot undo that: it is a function of the pose, so two frames
with the same estimate get the same correction whatever their errors. The standard remedy of
monocular avatar methods (HumanNeRF, InstantAvatar, 3DGS-Avatar, GART) is one learnable correction
per frame, optimised with the avatar's own losses. Here:

    poses_t = estimate_t + delta_t       (72,) axis-angle, global orientation and body pose
    trans_t = estimate_t + tau_t         (3,)  metres
    betas_t = estimate_t + beta          (10,) one shape correction shared by every frame

with ``delta``, ``tau``, ``beta`` starting at zero, and two regularisers (:meth:`BodyRefinement.regularizer`):

- a prior towards the estimate: mean squared correction, so what the images cannot tell (a hidden
  limb, a forearm's twist) stays where the estimate put it. It is weighted per frame and joint by
  how much of the joint's body part the frame shows (:func:`seen_share`): full on a limb behind an
  occluder, weak on one in view, which the images can correct;
  the shape's prior is its squared norm, like a shape estimator's;
- temporal smoothness: squared second differences of the refined joint rotations (as matrices, so a
  global orientation crossing 180 degrees is not a jump) and translations, so steady motion is free
  and frame-to-frame jitter is not.

Corrections are additive in axis-angle space: they stay small (degrees), and the map from a rotation
vector to its matrix is smooth wherever a joint can be, so the optimiser never meets the log map's
singularities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from smplx.lbs import batch_rodrigues
from torch import nn

from .configs import BodyRefineConfig

if TYPE_CHECKING:
    from ..render.camera import Camera
    from .model import BodyModel


class BodyRefinement(nn.Module):
    """Learnable corrections of T frames' body estimates.

    Args:
        poses: (T, 72) estimated axis-angle poses (global orientation first).
        trans: (T, 3) estimated translations.
        names: the T frame names, in time order.
        betas: (T, 10) estimated shapes (None: the mean shape).

    Attributes:
        delta_pose: (T, 72) parameter, pose corrections (zero at the start).
        delta_trans: (T, 3) parameter, translation corrections (zero at the start).
        delta_betas: (10,) parameter, the shape correction of every frame (zero at the start).
    """

    def __init__(self, poses: torch.Tensor, trans: torch.Tensor, names: list[str],
                 betas: torch.Tensor | None = None):
        super().__init__()
        poses = torch.as_tensor(poses, dtype=torch.float32)
        trans = torch.as_tensor(trans, dtype=torch.float32)
        betas = torch.zeros(poses.shape[0], 10) if betas is None else torch.as_tensor(betas, dtype=torch.float32)
        if (poses.ndim != 2 or poses.shape[1] != 72 or trans.shape != (poses.shape[0], 3)
                or betas.shape != (poses.shape[0], 10)):
            raise ValueError(f"BodyRefinement wants poses (T, 72), trans (T, 3) and betas (T, 10), got "
                             f"{tuple(poses.shape)}, {tuple(trans.shape)}, {tuple(betas.shape)}")
        if len(names) != poses.shape[0]:
            raise ValueError(f"{len(names)} names for {poses.shape[0]} frames")
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.register_buffer("estimate_poses", poses.clone())
        self.register_buffer("estimate_trans", trans.clone())
        self.register_buffer("estimate_betas", betas.clone())
        self.delta_pose = nn.Parameter(torch.zeros_like(poses))
        self.delta_trans = nn.Parameter(torch.zeros_like(trans))
        self.delta_betas = nn.Parameter(torch.zeros(10, dtype=torch.float32))
        # (T, 24) share of each joint's body part that each frame shows (:func:`seen_share`); 0, the
        # estimate's full prior, until the caller measures it
        self.register_buffer("seen", torch.zeros(poses.shape[0], poses.shape[1] // 3))

    @property
    def num_frames(self) -> int:
        return len(self.names)

    def frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refined (poses (72,), betas (10,), trans (3,)) of frame ``index``, differentiable."""
        return (self.estimate_poses[index] + self.delta_pose[index],
                self.estimate_betas[index] + self.delta_betas,
                self.estimate_trans[index] + self.delta_trans[index])

    def all_frames(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refined (poses (T, 72), betas (T, 10), trans (T, 3)), differentiable."""
        return (self.estimate_poses + self.delta_pose, self.estimate_betas + self.delta_betas,
                self.estimate_trans + self.delta_trans)

    def regularizer(self, cfg: BodyRefineConfig) -> dict[str, torch.Tensor]:
        """Weighted prior and smoothness terms (scalars): body_prior, body_smooth."""
        # what a frame shows, its images can correct: the prior fades from its full weight on hidden
        # parts to the 'seen' weight on parts in view
        pose_weight = cfg.prior_pose + (cfg.prior_pose_seen - cfg.prior_pose) * self.seen  # (T, 24)
        trans_weight = cfg.prior_trans + (cfg.prior_trans_seen - cfg.prior_trans) * self.seen.mean(1)  # (T,)
        prior = ((pose_weight[..., None] * self.delta_pose.reshape(*self.seen.shape, 3).square()).mean()
                 + (trans_weight[:, None] * self.delta_trans.square()).mean())
        if cfg.refine_shape:
            # the shape estimate's own prior: a shape estimator's betas are ~N(0, 1) around the mean shape
            prior = prior + cfg.prior_shape * (self.estimate_betas.mean(0) + self.delta_betas).square().mean()
        terms = {"body_prior": prior}
        if self.num_frames > 2:
            poses, _, trans = self.all_frames()
            rot = batch_rodrigues(poses.reshape(-1, 3)).reshape(self.num_frames, 24, 9)
            accel_rot = rot[2:] - 2.0 * rot[1:-1] + rot[:-2]
            accel_trans = trans[2:] - 2.0 * trans[1:-1] + trans[:-2]
            terms["body_smooth"] = (cfg.smooth_pose * accel_rot.square().mean()
                                    + cfg.smooth_trans * accel_trans.square().mean())
        return terms

    def param_groups(self, cfg: BodyRefineConfig) -> list[dict]:
        """Adam groups 'body_pose', 'body_trans' and 'body_shape' (their rates follow :meth:`apply_lr`)."""
        return [{"name": "body_pose", "params": [self.delta_pose], "lr": cfg.lr_pose},
                {"name": "body_trans", "params": [self.delta_trans], "lr": cfg.lr_trans},
                {"name": "body_shape", "params": [self.delta_betas], "lr": cfg.lr_shape if cfg.refine_shape else 0.0}]

    @staticmethod
    def apply_lr(optimizer: torch.optim.Optimizer, cfg: BodyRefineConfig, progress: float,
                 active: bool = True) -> None:
        """Set the body groups' rates for ``progress`` in [0, 1] through the stage (0 when not active)."""
        decay = cfg.lr_final_fraction ** min(max(progress, 0.0), 1.0)
        rates = {"body_pose": cfg.lr_pose * decay, "body_trans": cfg.lr_trans * decay,
                 "body_shape": cfg.lr_shape * decay if cfg.refine_shape else 0.0}
        for group in optimizer.param_groups:
            if group.get("name") in rates:
                group["lr"] = rates[group["name"]] if active else 0.0

    @torch.no_grad()
    def refined_numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Refined (poses (T, 72), betas (T, 10), trans (T, 3)) as float64 arrays."""
        return tuple(x.double().cpu().numpy() for x in self.all_frames())

    def capture(self) -> dict:
        """Plain tensors and lists: frame names, estimates and corrections."""
        return {"names": list(self.names),
                **{k: getattr(self, k).detach().cpu().clone()
                   for k in ("estimate_poses", "estimate_trans", "estimate_betas", "delta_pose", "delta_trans",
                             "delta_betas", "seen")}}

    @classmethod
    def from_capture(cls, captured: dict) -> "BodyRefinement":
        refinement = cls(captured["estimate_poses"], captured["estimate_trans"], captured["names"],
                         captured["estimate_betas"])
        refinement.restore(captured)
        return refinement

    def restore(self, captured: dict) -> None:
        """Load a :meth:`capture` of the same frames into this module (in place)."""
        if list(captured["names"]) != self.names:
            raise ValueError("body refinement: the capture holds other frames than this sequence")
        with torch.no_grad():
            for k in ("delta_pose", "delta_trans", "delta_betas", "seen"):
                if k in captured:  # captures from before 'seen' was measured lack it
                    getattr(self, k).copy_(captured[k])


@torch.no_grad()
def seen_share(body: "BodyModel", poses: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor,
               cameras: list["Camera"], visible_masks: list[np.ndarray], reach: float = 0.08) -> torch.Tensor:
    """How much of each joint's body part each frame shows, from the estimate and the visible mask.

    A vertex counts as shown when it projects within ``reach`` (a fraction of the projected body's
    height) of a visible person pixel: the reach absorbs the estimate's own error (a limb off by a
    few centimetres is still in view), while a limb behind an occluder lands far from any visible
    pixel. Each vertex belongs to the joint with its largest skinning weight.

    Args:
        poses (T, 72), betas (T, 10), trans (T, 3): the estimates; cameras: T cameras;
        visible_masks: T bool (H, W) visible-person masks.

    Returns:
        (T, J) shares in [0, 1] (0 for a joint without vertices and in a frame without visible pixels).
    """
    from ..masks import signed_distance

    owner = body.lbs_weights.argmax(1).cpu()  # (V,)
    num_joints = body.lbs_weights.shape[1]
    per_joint = torch.bincount(owner, minlength=num_joints).clamp_min(1).float()
    device = body.v_template.device
    vertices = body(*(torch.as_tensor(x, dtype=torch.float32).to(device) for x in (poses, betas, trans))).vertices.cpu()
    rows = []
    for verts, camera, visible in zip(vertices, cameras, visible_masks):
        visible = np.asarray(visible, bool)
        uv, _ = camera.to("cpu").project(verts)
        limit = reach * float(uv[:, 1].max() - uv[:, 1].min())
        # outside the mask: distance to the nearest visible pixel (inf without any); inside: negative
        distance = torch.from_numpy(signed_distance(visible))
        x, y = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (x >= 0) & (x < visible.shape[1]) & (y >= 0) & (y < visible.shape[0])
        shown = torch.zeros(len(verts))
        shown[inside] = (distance[y[inside], x[inside]] <= limit).float()
        rows.append(torch.bincount(owner, weights=shown, minlength=num_joints) / per_joint)
    return torch.stack(rows)


def rotation_error_deg(poses_a: np.ndarray, poses_b: np.ndarray, joints: slice | list | None = None) -> np.ndarray:
    """Geodesic angle (degrees) between the joint rotations of two pose arrays.

    Args:
        poses_a, poses_b: (T, 72) axis-angle.
        joints: which of the 24 joints (default all).

    Returns:
        (T, J) angles.
    """
    from scipy.spatial.transform import Rotation

    a = np.asarray(poses_a, np.float64).reshape(-1, 24, 3)
    b = np.asarray(poses_b, np.float64).reshape(-1, 24, 3)
    if joints is not None:
        a, b = a[:, joints], b[:, joints]
    ra, rb = Rotation.from_rotvec(a.reshape(-1, 3)), Rotation.from_rotvec(b.reshape(-1, 3))
    return np.degrees((ra.inv() * rb).magnitude()).reshape(a.shape[:2])


def fit_pose_to_view(render, poses: torch.Tensor, trans: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                     steps: int, lr_pose: float = 1e-2, lr_trans: float = 4e-3,
                     prior: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame's pose and translation fitted to one image with the avatar held fixed.

    Test-time pose optimisation, the evaluation protocol of monocular avatars trained on estimated
    poses (Anim-NeRF and InstantAvatar on PeopleSnapshot): a held-out view sees the body's depth
    error, which the one training camera cannot, so scoring it with the training poses mixes that
    error into the avatar's quality; fitting the pose to the view first scores the avatar alone.
    Only the body moves: colours, shapes and opacities stay as trained.

    Args:
        render: (poses (72,), trans (3,)) -> (rgb (H, W, 3), alpha (H, W)), differentiable in both.
        poses (72,), trans (3,): the start (the frame's refined training parameters).
        image: (H, W, 3) target in [0, 1] (composited on the render's background).
        mask: (H, W) target person mask, 0/1 float.
        steps: Adam steps on L1 colour + squared silhouette error + ``prior`` x mean squared pose change.

    Returns:
        Fitted (poses (72,), trans (3,)), detached.
    """
    delta_pose = torch.zeros_like(poses, requires_grad=True)
    delta_trans = torch.zeros_like(trans, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [delta_pose], "lr": lr_pose}, {"params": [delta_trans], "lr": lr_trans}])
    for _ in range(steps):
        rgb, alpha = render(poses + delta_pose, trans + delta_trans)
        loss = ((rgb - image).abs().mean() + (alpha - mask).square().mean()
                + prior * delta_pose.square().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (poses + delta_pose).detach(), (trans + delta_trans).detach()
