"""Animatable human Gaussians: canonical big-pose Gaussians + per-frame LBS deformation (GauHuman).

See docs/method.md, "Human Gaussians". The Gaussians live in the canonical space of the
mean-shape (β = 0) body in the "big pose" (legs spread, arms in T-pose) and start on its vertices. A frame is
rendered by moving every Gaussian with the skinning of its nearest canonical body vertex: big pose -> T pose
(inverse of the blended big-pose bone transforms), swap that vertex's pose-blend offset for the
frame's, add its shape offset, then the frame's blended bone transforms and translation. Optional
learned parts: per-frame joint-rotation corrections (:class:`BodyPoseRefiner`) and skinning-weight
logit offsets (:class:`LBSOffsetDecoder`).

Skinning goes through ``smplx.lbs`` (Rodrigues, blend shapes, joint regression, kinematic chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from smplx.lbs import batch_rodrigues, blend_shapes
from torch import nn

from occfusion_core.body.kinematics import rest_joint_basis, rigid_transforms
from occfusion_core.body.model import big_pose
from occfusion_core.config import OptimizeConfig
from occfusion_core.gaussians.knn import init_scales, knn
from occfusion_core.gaussians.networks import BodyPoseRefiner, LBSOffsetDecoder
from occfusion_core.render.projection import quat_scale_to_covar
from occfusion_core.render.sh import RGB2SH

if TYPE_CHECKING:
    from occfusion_core.body.model import BodyModel

CAPTURE_FORMAT = "occfusion.human_gaussians/1"


GAUSSIAN_GROUPS: dict[str, str] = {
    "xyz": "xyz",
    "f_dc": "features_dc",
    "f_rest": "features_rest",
    "opacity": "opacity",
    "scaling": "scaling",
    "rotation": "rotation",
}
"""Optimizer group name -> attribute of the per-Gaussian parameter (one row per Gaussian)."""


def inverse_sigmoid(p: float) -> float:
    return math.log(p / (1.0 - p))


def _fused_skinning_available() -> bool:
    from occfusion_core.render.backends.cpp import is_available

    return is_available()


def _invert_3x3(mats: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> inverses; ``inv_ex`` skips the error check that would sync a GPU each call."""
    return torch.linalg.inv_ex(mats).inverse


@dataclass
class DeformedGaussians:
    """Gaussians ready for the rasterizer, in world space (or centred canonical space).

    Leading batch dims ``...`` are () for one pose and (B,) for a batch of poses.

    Attributes:
        means: (..., N, 3) centres.
        covars: (..., N, 3, 3) covariances.
        opacities: (N,) in (0, 1).
        sh: (N, K, 3) SH coefficients, K = (max degree + 1)²; the rasterizer uses the first
            (sh_degree + 1)².
        sh_degree: active SH degree.
        transforms: (..., N, 3, 3) linear part that took canonical covariances to these.
    """

    means: torch.Tensor
    covars: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    sh_degree: int
    transforms: torch.Tensor


class HumanGaussians(nn.Module):
    """Canonical big-pose Gaussians with GauHuman's skinning-based deformation.

    Per-Gaussian parameters (N rows; N changes with densification):
        xyz (N, 3) canonical centres; features_dc (N, 1, 3); features_rest (N, K - 1, 3);
        scaling (N, 3) log-scales; rotation (N, 4) quaternions (w, x, y, z), unnormalised;
        opacity (N, 1) logits.
    Networks: ``pose_refiner`` (:class:`BodyPoseRefiner` or None), ``lbs_offset_decoder``
    (:class:`LBSOffsetDecoder` or None).
    Body buffers (copied from the body model, not saved by :meth:`capture`): big-pose vertices,
    bone transforms and pose-blend offsets, template, blend shapes, joint regressor, weights.
    """

    def __init__(self, body: "BodyModel", sh_degree: int = 3, init_opacity: float = 0.1,
                 pose_refiner: bool = True, lbs_offsets: bool = True):
        super().__init__()
        self.max_sh_degree = int(sh_degree)
        self.active_sh_degree = 0
        v_template = body.v_template.detach()
        dtype, device = v_template.dtype, v_template.device
        num_vertices = v_template.shape[0]
        num_betas = body.shapedirs.shape[-1]
        self.num_joints = body.lbs_weights.shape[1]

        def body_buffer(name: str, value: torch.Tensor) -> None:
            # Not persistent: they come from the body model, which a checkpoint does not replace.
            self.register_buffer(name, value.detach().to(device=device, dtype=dtype).contiguous(), persistent=False)

        body_buffer("v_template", v_template)
        body_buffer("shapedirs", body.shapedirs)  # (V, 3, num_betas)
        if body.posedirs.shape[-1] != num_vertices * 3:
            raise ValueError(f"posedirs must be smplx's (207, V*3), got {tuple(body.posedirs.shape)}")
        body_buffer("posedirs", body.posedirs)  # (P, V*3): pose feature (B, P) @ posedirs -> (B, V*3)
        joint_template, joint_shapedirs = rest_joint_basis(body.J_regressor, v_template, body.shapedirs)
        body_buffer("joint_template", joint_template)  # (J, 3)
        body_buffer("joint_shapedirs", joint_shapedirs)  # (J, 3, L)
        # The proxy body has no pose blend shapes: skip the (P, V*3) product and its gradient.
        self.has_pose_blend = bool(body.posedirs.detach().abs().max() > 0)
        body_buffer("lbs_weights", body.lbs_weights)  # (V, J)
        # The kinematic chain's plan (rigid_transforms) is looked up from the parents on every pose;
        # keeping them on the CPU avoids a device sync each time.
        self.parents = body.parents.detach().to("cpu", torch.long).clone()

        big = torch.as_tensor(big_pose(), dtype=dtype, device=device).reshape(1, -1)
        zero_betas = torch.zeros(1, num_betas, dtype=dtype, device=device)
        with torch.no_grad():
            vertices = body(big, zero_betas, torch.zeros(1, 3, dtype=dtype, device=device)).vertices[0]
            big_rot = batch_rodrigues(big.reshape(-1, 3)).reshape(1, -1, 3, 3)
            _, big_pose_offsets, big_transforms = self._pose_body(big_rot, zero_betas)
        body_buffer("big_pose_vertices", vertices)  # (V, 3)
        body_buffer("big_pose_offsets", torch.zeros_like(vertices) if big_pose_offsets is None
                    else big_pose_offsets[0])  # (V, 3)
        body_buffer("big_pose_transforms", big_transforms[0])  # (J, 4, 4)

        num_sh = (self.max_sh_degree + 1) ** 2
        n = num_vertices
        self.xyz = nn.Parameter(vertices.clone())
        self.features_dc = nn.Parameter(torch.full((n, 1, 3), RGB2SH(0.5), dtype=dtype, device=device))
        self.features_rest = nn.Parameter(torch.zeros((n, num_sh - 1, 3), dtype=dtype, device=device))
        self.scaling = nn.Parameter(init_scales(vertices))
        rotation = torch.zeros((n, 4), dtype=dtype, device=device)
        rotation[:, 0] = 1.0
        self.rotation = nn.Parameter(rotation)
        self.opacity = nn.Parameter(torch.full((n, 1), inverse_sigmoid(init_opacity), dtype=dtype, device=device))

        self.pose_refiner = BodyPoseRefiner(embedding_size=3 * (self.num_joints - 1)).to(device, dtype) \
            if pose_refiner else None
        self.lbs_offset_decoder = LBSOffsetDecoder(total_bones=self.num_joints).to(device, dtype) \
            if lbs_offsets else None
        self.reuse_lbs_offsets = False
        """Set by a trainer between refreshes: deform with the decoder's last offsets (detached)
        instead of running it (see ``OptimizeConfig.lbs_offset_every``)."""
        self._lbs_offsets: torch.Tensor | None = None
        # (offsets they were made with, nearest vertices, (N, J) weights) while both stay constant
        self._constant_weights: tuple | None = None

    # ------------------------------------------------------------------ accessors

    @property
    def num_gaussians(self) -> int:
        return self.xyz.shape[0]

    @property
    def num_body_vertices(self) -> int:
        return self.v_template.shape[0]

    def scales(self) -> torch.Tensor:
        """(N, 3) scales (exp of the log-scale parameters)."""
        return torch.exp(self.scaling)

    def opacities(self) -> torch.Tensor:
        """(N,) opacities in (0, 1)."""
        return torch.sigmoid(self.opacity)[:, 0]

    def sh(self) -> torch.Tensor:
        """(N, (max_sh_degree + 1)², 3) SH coefficients."""
        return torch.cat([self.features_dc, self.features_rest], dim=1)

    def canonical_covariances(self) -> torch.Tensor:
        """(N, 3, 3) covariances in canonical space."""
        return quat_scale_to_covar(self.rotation, torch.exp(self.scaling))

    def oneup_sh_degree(self) -> None:
        """Raise the active SH degree by one, up to the maximum."""
        self.active_sh_degree = min(self.active_sh_degree + 1, self.max_sh_degree)

    def gaussian_parameters(self) -> dict[str, nn.Parameter]:
        """Optimizer group name -> per-Gaussian parameter (see ``GAUSSIAN_GROUPS``)."""
        return {group: getattr(self, attr) for group, attr in GAUSSIAN_GROUPS.items()}

    def set_gaussian_parameters(self, params: dict[str, torch.Tensor]) -> None:
        """Replace all per-Gaussian parameters at once (densification, restore); rows must agree."""
        if set(params) != set(GAUSSIAN_GROUPS):
            raise ValueError(f"need exactly the groups {sorted(GAUSSIAN_GROUPS)}, got {sorted(params)}")
        counts = {group: value.shape[0] for group, value in params.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"per-Gaussian parameters disagree on N: {counts}")
        for group, value in params.items():
            setattr(self, GAUSSIAN_GROUPS[group], value if isinstance(value, nn.Parameter) else nn.Parameter(value))

    # ------------------------------------------------------------------ deformation

    @torch.no_grad()
    def nearest_vertex(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) canonical points -> (N,) index of the nearest big-pose body vertex (exact; between
        vertices at the very same distance, the one :meth:`cached_nearest_vertex` picks too)."""
        return knn(points.detach(), self.big_pose_vertices, 2)[1][:, 0]

    @torch.no_grad()
    def cached_nearest_vertex(self) -> torch.Tensor:
        """(N,) nearest big-pose body vertex of every Gaussian, searched again only for the Gaussians
        that moved far enough to possibly change it, and then first among the vertices around it.

        With e the distance a Gaussian moved since its vertex was found, d1 and d2 its distances then
        to the nearest and the second-nearest vertex, no other vertex can have come nearer while
        e < (d2 - d1) / 2; only Gaussians past that margin are searched again. The search looks at
        the old nearest vertex v and its K nearest vertices first: the new nearest v' has
        |v - v'| <= 2 |x - v|, and the second-nearest s has |v - s| <= |x - v| + |x - s|, so when that
        bound is below the distance to v's K-th neighbour both are among them. Gaussians that stand
        further off the body (clothing, hair, split Gaussians drifting) try a wider neighbourhood
        next, and only the rest are searched among all vertices. The answer is always exact (ties:
        the lower index, as :func:`knn`).
        """
        xyz = self.xyz.detach()
        cache = getattr(self, "_nearest_cache", None)
        if cache is None or cache[0].shape != xyz.shape or cache[0].device != xyz.device:
            snapshot = xyz.clone()
            dist2, idx = knn(xyz, self.big_pose_vertices, 2)
            self._nearest_cache = (snapshot, idx[:, 0].clone(), 0.5 * (dist2[:, 1].sqrt() - dist2[:, 0].sqrt()))
            return self._nearest_cache[1]
        snapshot, nearest, margin = cache
        stale = torch.nonzero((xyz - snapshot).norm(dim=-1) >= margin)[:, 0]
        if stale.numel() == 0:
            return nearest
        points = xyz[stale]
        old = nearest[stale]
        d_old = (points - self.big_pose_vertices[old]).norm(dim=-1)
        new_nearest = torch.empty_like(old)
        first, second = torch.empty_like(d_old), torch.empty_like(d_old)
        todo = torch.arange(stale.numel(), device=xyz.device)  # rows of ``points`` not yet settled
        for neighbours, reach in self._vertex_neighbourhoods():
            if todo.numel() == 0:
                break
            around = neighbours[old[todo]]  # (M, K + 1) candidates, sorted by index
            d2 = (points[todo, None] - self.big_pose_vertices[around]).square().sum(-1)
            # the two smallest, ties to the first (lower index): argmin twice, cheaper than a sort
            rows = torch.arange(d2.shape[0], device=d2.device)
            at1 = d2.argmin(dim=1)
            d1 = d2[rows, at1]
            d2[rows, at1] = float("inf")
            d2nd = d2.min(dim=1).values
            inside = d_old[todo] + d2nd.sqrt() < reach[old[todo]]
            settled = todo[inside]
            new_nearest[settled] = around[rows, at1][inside]
            first[settled], second[settled] = d1[inside].sqrt(), d2nd[inside].sqrt()
            todo = todo[~inside]
        if todo.numel():
            full_d2, full_idx = knn(points[todo], self.big_pose_vertices, 2)
            new_nearest[todo] = full_idx[:, 0]
            first[todo], second[todo] = full_d2[:, 0].sqrt(), full_d2[:, 1].sqrt()
        snapshot[stale] = points
        nearest[stale] = new_nearest
        margin[stale] = 0.5 * (second - first)
        return nearest

    NEIGHBOURHOOD_SIZES = (16, 128)
    """Vertices around a Gaussian's last nearest vertex that :meth:`cached_nearest_vertex` looks at,
    nearest tier first (16 covers Gaussians on the body, 128 those a few centimetres off it)."""

    def _vertex_neighbourhoods(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per tier: (V, K + 1) each vertex and its K nearest vertices, sorted by index, and (V,) the
        distance to the K-th (computed once per body)."""
        cached = getattr(self, "_neighbourhoods", None)
        vertices = self.big_pose_vertices
        if cached is None or cached[0][0].device != vertices.device:
            own = torch.arange(vertices.shape[0], device=vertices.device)[:, None]
            sizes = sorted({min(k, vertices.shape[0] - 1) for k in self.NEIGHBOURHOOD_SIZES})
            dist2, idx = knn(vertices, vertices, sizes[-1], exclude_self=True)
            self._neighbourhoods = [(torch.cat([own, idx[:, :k]], dim=1).sort(dim=1).values, dist2[:, k - 1].sqrt())
                                    for k in sizes]
        return self._neighbourhoods

    def skinning_weights(self, nearest: torch.Tensor) -> torch.Tensor:
        """(N,) nearest-vertex indices -> (N, J) skinning weights of the current Gaussians.

        With the offset decoder: softmax(log(W_body[nearest] + 1e-9) + ΔW(xyz)), ΔW fed the
        detached centres (GauHuman), so the decoder learns from the deformed geometry while the
        centres get no gradient through their encoding. With ``reuse_lbs_offsets`` the last ΔW is
        used as a constant (no decoder run, no gradient to it).
        """
        cached = self._lbs_offsets
        runs_decoder = self.lbs_offset_decoder is not None and not (
            self.reuse_lbs_offsets and cached is not None and cached.shape[0] == self.num_gaussians)
        if not runs_decoder:
            # Constant weights (no decoder, or its offsets held fixed) change only with a Gaussian's
            # nearest vertex: most iterations reuse the last ones.
            held = self._constant_weights
            if (held is not None and held[0] is cached and held[1].shape == nearest.shape
                    and held[2].device == nearest.device and held[2].dtype == self.lbs_weights.dtype
                    and torch.equal(held[1], nearest)):
                return held[2]
        body_weights = self.lbs_weights[nearest]
        if self.lbs_offset_decoder is None:
            weights = body_weights
        else:
            if runs_decoder:
                offsets = self.lbs_offset_decoder(self.xyz.detach())
                self._lbs_offsets = offsets.detach()
            else:
                offsets = cached
            weights = torch.softmax(torch.log(body_weights + 1e-9) + offsets, dim=-1)
        self._constant_weights = None if runs_decoder else (cached, nearest.clone(), weights)
        return weights

    def forget_lbs_offsets(self) -> None:
        """Drop the cached decoder offsets (the Gaussians were replaced, e.g. by densification)."""
        self._lbs_offsets = None
        self._constant_weights = None

    @property
    def cached_lbs_offsets(self) -> torch.Tensor | None:
        """(N, J) the decoder's last offsets, reused while ``reuse_lbs_offsets`` (a resumable
        checkpoint keeps them, so a resumed run continues exactly)."""
        return self._lbs_offsets

    @cached_lbs_offsets.setter
    def cached_lbs_offsets(self, value: torch.Tensor | None) -> None:
        self._lbs_offsets = None if value is None else value.to(self.xyz.device, self.xyz.dtype)
        self._constant_weights = None

    def _pose_body(self, rot_mats: torch.Tensor, betas: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-vertex shape and pose-blend offsets and bone transforms of a shaped, posed body.

        Args:
            rot_mats: (B, J, 3, 3) joint rotations (root first).
            betas: (B, num_betas).

        Returns:
            shape_offsets: (B, V, 3); pose_offsets: (B, V, 3), or None for a body without pose
            blend shapes (the proxy);
            transforms: (B, J, 4, 4) smplx relative bone transforms (rest pose -> posed, joints of
            the β-shaped template).
        """
        batch = rot_mats.shape[0]
        shape_offsets = blend_shapes(betas, self.shapedirs)
        joints = self.joint_template + torch.einsum("jkl,bl->bjk", self.joint_shapedirs, betas)
        if self.has_pose_blend:
            eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
            pose_feature = (rot_mats[:, 1:] - eye).reshape(batch, -1)
            pose_offsets = (pose_feature @ self.posedirs).reshape(batch, -1, 3)
        else:
            pose_offsets = None
        _, transforms = rigid_transforms(rot_mats, joints, self.parents)
        return shape_offsets, pose_offsets, transforms

    def _as_batch(self, value: torch.Tensor | Any, size: int, batch: int | None) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=self.xyz.dtype, device=self.xyz.device).reshape(-1, size)
        return value if batch is None else value.expand(batch, size)

    def deform(self, poses: torch.Tensor, betas: torch.Tensor | None = None,
               trans: torch.Tensor | None = None, fused: bool | None = None) -> DeformedGaussians:
        """Move the canonical Gaussians to a body pose in world space (docs/method.md, "Human Gaussians").

        OcMotion convention: the global rotation is ``poses[:3]``, world = SMPL space + ``trans``.

        Args:
            poses: (72,) or (B, 72) axis-angle per joint, root first.
            betas: (10,) or (B, 10) shape coefficients; None = mean shape.
            trans: (3,) or (B, 3) translation; None = zero.
            fused: blend, transform and covariances in one compiled pass
                (:func:`occfusion_core.render.backends.cpp.skin_gaussians`, held to this torch code by
                tests/test_skin_cpu.py); None: where it can (one pose, on the CPU, the extension built).

        Returns:
            :class:`DeformedGaussians` with batch dims () for a (72,) pose, (B,) for (B, 72).
        """
        single = torch.as_tensor(poses).ndim == 1
        poses = self._as_batch(poses, 3 * self.num_joints, None)
        batch = poses.shape[0]
        num_betas = self.shapedirs.shape[-1]
        betas = self._as_batch(torch.zeros(num_betas) if betas is None else betas, num_betas, batch)
        trans = self._as_batch(torch.zeros(3) if trans is None else trans, 3, batch)

        nearest = self.cached_nearest_vertex()  # (N,)
        weights = self.skinning_weights(nearest)  # (N, J)
        if fused is None:
            fused = batch == 1 and self.xyz.device.type == "cpu" and _fused_skinning_available()
        if fused:
            return self._deform_fused(poses, betas, trans, nearest, weights, single)

        # Big pose -> T pose with the inverse of the blended big-pose bone transform, then the
        # target pose (joint rotations, non-root ones corrected by the refiner) with its offsets.
        big = (weights @ self.big_pose_transforms.reshape(self.num_joints, 16)).reshape(-1, 4, 4)
        big_linear_inv = _invert_3x3(big[:, :3, :3])  # (N, 3, 3)
        transforms, offsets = self._target_pose(poses, betas, nearest)
        rest = (big_linear_inv @ (self.xyz - big[:, :3, 3])[..., None])[..., 0] + offsets  # (B, N, 3)

        target = (weights @ transforms.reshape(batch, self.num_joints, 16)).reshape(batch, -1, 4, 4)
        means = (target[..., :3, :3] @ rest[..., None])[..., 0] + target[..., :3, 3] + trans[:, None]
        linear = target[..., :3, :3] @ big_linear_inv  # (B, N, 3, 3)
        covars = linear @ self.canonical_covariances() @ linear.transpose(-1, -2)
        if single:
            means, covars, linear = means[0], covars[0], linear[0]
        return DeformedGaussians(means=means, covars=covars, opacities=self.opacities(), sh=self.sh(),
                                 sh_degree=self.active_sh_degree, transforms=linear)

    def _target_pose(self, poses: torch.Tensor, betas: torch.Tensor, nearest: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target pose's bone transforms (B, J, 4, 4) and each Gaussian's blend-shape offset
        minus the big pose's (B, N, 3)."""
        batch = poses.shape[0]
        rot_mats = batch_rodrigues(poses.reshape(-1, 3)).reshape(batch, self.num_joints, 3, 3)
        if self.pose_refiner is not None:
            corrections = self.pose_refiner(poses[:, 3:])  # (B, J-1, 3, 3)
            rot_mats = torch.cat([rot_mats[:, :1], rot_mats[:, 1:] @ corrections], dim=1)
        shape_offsets, pose_offsets, transforms = self._pose_body(rot_mats, betas)
        blend = shape_offsets if pose_offsets is None else shape_offsets + pose_offsets
        offsets = blend[:, nearest] - self.big_pose_offsets[nearest]
        return transforms, offsets

    def _deform_fused(self, poses, betas, trans, nearest, weights, single: bool) -> DeformedGaussians:
        from occfusion_core.render.backends.cpp import skin_gaussians

        transforms, offsets = self._target_pose(poses, betas, nearest)
        means, covars, linear = skin_gaussians(weights, self.big_pose_transforms, transforms[0], self.xyz, offsets[0],
                                               trans[0], self.scaling, self.rotation)
        if not single:
            means, covars, linear = means[None], covars[None], linear[None]
        return DeformedGaussians(means=means, covars=covars, opacities=self.opacities(), sh=self.sh(),
                                 sh_degree=self.active_sh_degree, transforms=linear)

    def canonical(self, center: bool = True) -> DeformedGaussians:
        """The Gaussians in canonical (big-pose) space, no skinning (canonical-space SDS renders).

        Args:
            center: subtract the mean centre, so the body sits at the origin of the orbit cameras.
        """
        means = self.xyz - self.xyz.mean(dim=0, keepdim=True) if center else self.xyz
        eye = torch.eye(3, dtype=self.xyz.dtype, device=self.xyz.device).expand(self.num_gaussians, 3, 3)
        return DeformedGaussians(means=means, covars=self.canonical_covariances(), opacities=self.opacities(),
                                 sh=self.sh(), sh_degree=self.active_sh_degree, transforms=eye)

    # ------------------------------------------------------------------ optimisation

    def param_groups(self, cfg: OptimizeConfig) -> list[dict]:
        """Adam parameter groups with GauHuman's per-group learning rates (docs/method.md, "Schedule and
        learning rates").

        Use with ``torch.optim.Adam(groups, lr=0.0, eps=1e-15)`` (see :meth:`make_optimizer`); the
        xyz rate then follows :meth:`position_lr` via :meth:`apply_position_lr`.
        """
        groups = [
            {"name": "xyz", "params": [self.xyz], "lr": cfg.lr_position},
            {"name": "f_dc", "params": [self.features_dc], "lr": cfg.lr_feature},
            {"name": "f_rest", "params": [self.features_rest], "lr": cfg.lr_feature / 20.0},
            {"name": "opacity", "params": [self.opacity], "lr": cfg.lr_opacity},
            {"name": "scaling", "params": [self.scaling], "lr": cfg.lr_scaling},
            {"name": "rotation", "params": [self.rotation], "lr": cfg.lr_rotation},
        ]
        if self.pose_refiner is not None:
            groups.append({"name": "pose_refiner", "params": list(self.pose_refiner.parameters()),
                           "lr": cfg.lr_pose_refiner})
        if self.lbs_offset_decoder is not None:
            groups.append({"name": "lbs_offset", "params": list(self.lbs_offset_decoder.parameters()),
                           "lr": cfg.lr_lbs_offset})
        return groups

    def make_optimizer(self, cfg: OptimizeConfig) -> torch.optim.Adam:
        """One Adam over :meth:`param_groups` with eps 1e-15 (3DGS/GauHuman)."""
        return torch.optim.Adam(self.param_groups(cfg), lr=0.0, eps=1e-15)

    @staticmethod
    def position_lr(step: int, cfg: OptimizeConfig) -> float:
        """Centre learning rate: log-linear from lr_position (step 0) to lr_position_final
        (step >= lr_position_steps)."""
        if step < 0 or (cfg.lr_position == 0.0 and cfg.lr_position_final == 0.0):
            return 0.0
        t = min(max(step / max(cfg.lr_position_steps, 1), 0.0), 1.0)
        return math.exp(math.log(cfg.lr_position) * (1.0 - t) + math.log(cfg.lr_position_final) * t)

    @classmethod
    def apply_position_lr(cls, optimizer: torch.optim.Optimizer, step: int, cfg: OptimizeConfig) -> float:
        """Set the "xyz" group's learning rate for ``step``; returns it."""
        lr = cls.position_lr(step, cfg)
        for group in optimizer.param_groups:
            if group.get("name") == "xyz":
                group["lr"] = lr
        return lr

    # ------------------------------------------------------------------ checkpoints

    def capture(self) -> dict:
        """Everything needed to resume (not the optimizer, which the trainer saves).

        The body buffers are left out; :meth:`restore` needs a model built on the same body.
        """
        return {
            "format": CAPTURE_FORMAT,
            "num_gaussians": self.num_gaussians,
            "max_sh_degree": self.max_sh_degree,
            "active_sh_degree": self.active_sh_degree,
            "pose_refiner": self.pose_refiner is not None,
            "lbs_offsets": self.lbs_offset_decoder is not None,
            "num_body_vertices": self.num_body_vertices,
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }

    def restore(self, captured: dict) -> None:
        """Load a :meth:`capture` into this model, resizing the Gaussians to its N.

        Raises:
            ValueError: the capture is of another format, SH degree, network set or body.
        """
        if captured.get("format") != CAPTURE_FORMAT:
            raise ValueError(f"not a HumanGaussians capture (format {captured.get('format')!r})")
        expected = {"max_sh_degree": self.max_sh_degree, "pose_refiner": self.pose_refiner is not None,
                    "lbs_offsets": self.lbs_offset_decoder is not None,
                    "num_body_vertices": self.num_body_vertices}
        wrong = {k: (captured[k], v) for k, v in expected.items() if captured[k] != v}
        if wrong:
            raise ValueError(f"capture does not fit this model (captured, model): {wrong}")
        n = int(captured["num_gaussians"])
        self.set_gaussian_parameters({group: p.new_empty((n, *p.shape[1:]))
                                      for group, p in self.gaussian_parameters().items()})
        self.load_state_dict(captured["state_dict"], strict=True)
        self.active_sh_degree = int(captured["active_sh_degree"])

    @classmethod
    def from_capture(cls, body: "BodyModel", captured: dict) -> "HumanGaussians":
        """Build a model on ``body`` with the capture's Gaussians (N as saved) and networks."""
        model = cls(body, sh_degree=captured["max_sh_degree"], pose_refiner=captured["pose_refiner"],
                    lbs_offsets=captured["lbs_offsets"])
        model.restore(captured)
        return model
