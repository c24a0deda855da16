"""The kinematic chain of a skeleton: joint rotations to bone transforms, one tree level at a time.

``smplx.lbs.batch_rigid_transform`` composes the chain one joint at a time: 23 small matrix products
for SMPL, each a node of the autograd graph, and on the CPU the per-op overhead is most of the cost
(1.1 ms forward and backward for one body on one thread; the compiled skinning of 3.4k Gaussians
takes about 2 ms). Every joint at the same depth of the tree has its parent already composed, so one
batched product per depth gives the same transforms with 8 products for SMPL instead of 23 (0.7 ms).
``smplx.lbs.batch_rigid_transform`` stays the reference: tests/test_kinematics.py holds the two together,
values and gradients, in float32 and float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = ["kinematic_levels", "rest_joint_basis", "rigid_transforms"]


@lru_cache(maxsize=8)
def _levels(parents: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    depth = []
    for joint, parent in enumerate(parents):
        if parent < 0:
            depth.append(0)
        elif not 0 <= parent < joint:
            raise ValueError(f"joint {joint}'s parent {parent} does not come before it (parents {list(parents)})")
        else:
            depth.append(depth[parent] + 1)
    if depth.count(0) != 1 or parents[0] >= 0:
        raise ValueError(f"the skeleton needs exactly one root, joint 0 (parents {list(parents)})")
    levels = []
    for d in range(max(depth) + 1):
        joints = tuple(j for j in range(len(parents)) if depth[j] == d)
        previous = levels[-1][0] if levels else ()
        # where each joint's parent sits inside the previous level's tensor
        parent_slots = tuple(previous.index(parents[j]) for j in joints) if d else ()
        levels.append((joints, parent_slots))
    return tuple(levels)


def kinematic_levels(parents: Sequence[int] | torch.Tensor) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """The joints grouped by depth in the tree.

    Args:
        parents: (J,) parent of each joint, -1 for the root (joint 0); a parent comes before its child.

    Returns:
        One ``(joints, parent_slots)`` per depth: the joint ids at that depth, and for each the
        position of its parent among the previous depth's joints (empty for the root's level).
    """
    if isinstance(parents, torch.Tensor):
        parents = parents.tolist()
    return _levels(tuple(int(p) for p in parents))


def rest_joint_basis(J_regressor: torch.Tensor, v_template: torch.Tensor, shapedirs: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest joints as a linear function of the shape, regressed once instead of per pose.

    Args:
        J_regressor: (J, V); v_template: (V, 3); shapedirs: (V, 3, L).

    Returns:
        template: (J, 3) and directions: (J, 3, L), so that the rest joints of shapes ``betas`` (B, L)
        are ``template + einsum("jkl,bl->bjk", directions, betas)``.
    """
    return J_regressor @ v_template, torch.einsum("jv,vkl->jkl", J_regressor, shapedirs)


def _homogeneous(linear: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) and (..., 3) -> (..., 4, 4) with the bottom row (0, 0, 0, 1)."""
    top = torch.cat([linear, translation[..., None]], dim=-1)
    bottom = top.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(*top.shape[:-2], 1, 4)
    return torch.cat([top, bottom], dim=-2)


def rigid_transforms(rot_mats: torch.Tensor, joints: torch.Tensor, parents: Sequence[int] | torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed joints and relative bone transforms, as ``smplx.lbs.batch_rigid_transform`` returns them.

    Args:
        rot_mats: (B, J, 3, 3) joint rotations relative to the parent (root first).
        joints: (B, J, 3) rest-pose joint locations.
        parents: (J,) parent of each joint, -1 for the root.

    Returns:
        posed_joints: (B, J, 3).
        transforms: (B, J, 4, 4), the bone transforms taking rest-pose points to posed ones
            (the world transform of each joint with its rest location taken off).
    """
    plan = _plan(tuple(int(p) for p in (parents.tolist() if isinstance(parents, torch.Tensor) else parents)),
                 joints.device)
    # each joint's offset from its parent (the root's from the origin)
    offsets = torch.cat([joints[:, :1], joints[:, 1:] - joints.index_select(1, plan.parents_of_children)], dim=1)
    local = _homogeneous(rot_mats, offsets)  # (B, J, 4, 4): rotation about the joint, offset from the parent
    world_levels = [local[:, :1]]
    for level_joints, parent_slots in plan.levels:
        world_levels.append(world_levels[-1].index_select(1, parent_slots) @ local.index_select(1, level_joints))
    world = torch.cat(world_levels, dim=1).index_select(1, plan.inverse_order)  # (B, J, 4, 4) in joint order
    rotation, posed_joints = world[..., :3, :3], world[..., :3, 3]
    rest_taken_off = posed_joints - (rotation @ joints[..., None])[..., 0]
    return posed_joints, _homogeneous(rotation, rest_taken_off)


@dataclass(frozen=True)
class _Plan:
    parents_of_children: torch.Tensor  # (J - 1,) parent of joints 1..J-1
    levels: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # below the root: joint ids, parent slots
    inverse_order: torch.Tensor  # (J,) position of each joint in the levels' concatenation


@lru_cache(maxsize=16)
def _plan(parents: tuple[int, ...], device: torch.device) -> _Plan:
    levels = kinematic_levels(parents)
    order = [j for level_joints, _ in levels for j in level_joints]

    def index(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return _Plan(parents_of_children=index(parents[1:]),
                 levels=tuple((index(j), index(s)) for j, s in levels[1:]),
                 inverse_order=index(sorted(range(len(order)), key=order.__getitem__)))
