"""The levelled kinematic chain held to smplx's joint-by-joint reference, values and gradients."""

from __future__ import annotations

import pytest
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from occfusion_core.body.kinematics import kinematic_levels, rest_joint_basis, rigid_transforms
from occfusion_core.body.proxy import SMPL_PARENTS

# a skeleton unlike SMPL's: a long chain with branches at several depths, children far from parents
OTHER_PARENTS = [-1, 0, 1, 0, 2, 3, 4, 2, 7, 5, 9, 1]


def _inputs(parents, batch: int, dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rot = batch_rodrigues(torch.randn(batch * len(parents), 3, generator=gen, dtype=dtype))
    rot = rot.reshape(batch, len(parents), 3, 3).requires_grad_()
    joints = torch.randn(batch, len(parents), 3, generator=gen, dtype=dtype).requires_grad_()
    return rot, joints


@pytest.mark.parametrize("parents", [SMPL_PARENTS, OTHER_PARENTS], ids=["smpl", "other"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_rigid_transforms_match_smplx_values_and_gradients(parents, dtype, tol):
    rot, joints = _inputs(parents, batch=3, dtype=dtype, seed=len(parents))
    gen = torch.Generator().manual_seed(7)
    weight_joints = torch.randn(3, len(parents), 3, generator=gen, dtype=dtype)
    weight_transforms = torch.randn(3, len(parents), 4, 4, generator=gen, dtype=dtype)
    results = []
    for fn in (lambda r, j: batch_rigid_transform(r, j, torch.tensor(parents), dtype=dtype),
               lambda r, j: rigid_transforms(r, j, parents)):
        posed, transforms = fn(rot, joints)
        loss = (posed * weight_joints).sum() + (transforms * weight_transforms).sum()
        results.append((posed.detach(), transforms.detach(), *torch.autograd.grad(loss, (rot, joints))))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert results[1][1][..., 3, :].eq(torch.tensor([0, 0, 0, 1], dtype=dtype)).all()


def test_levels_group_joints_by_depth():
    levels = kinematic_levels(SMPL_PARENTS)
    assert levels[0] == ((0,), ())
    assert len(levels) == 9  # pelvis .. spine3, collar, shoulder, elbow, wrist, hand
    for depth, (joints, slots) in enumerate(levels[1:], start=1):
        previous = levels[depth - 1][0]
        assert [previous[s] for s in slots] == [SMPL_PARENTS[j] for j in joints]
    assert sorted(j for joints, _ in levels for j in joints) == list(range(24))


@pytest.mark.parametrize("parents", [[-1, 2, 0], [-1, -1, 0], [0, 0, 1]])
def test_bad_skeletons_are_refused(parents):
    with pytest.raises(ValueError, match="parent|root"):
        kinematic_levels(parents)


def test_rest_joint_basis_is_the_regressed_shaped_template():
    gen = torch.Generator().manual_seed(3)
    regressor = torch.rand(24, 50, generator=gen, dtype=torch.float64)
    template, shapedirs = torch.randn(50, 3, generator=gen, dtype=torch.float64), \
        torch.randn(50, 3, 10, generator=gen, dtype=torch.float64)
    betas = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    joint_template, joint_dirs = rest_joint_basis(regressor, template, shapedirs)
    want = regressor @ (template + torch.einsum("bl,vkl->bvk", betas, shapedirs))
    torch.testing.assert_close(joint_template + torch.einsum("jkl,bl->bjk", joint_dirs, betas), want)
