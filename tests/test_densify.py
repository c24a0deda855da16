"""KL densification: statistics, KL, clone / split / merge / prune and the optimizer's state."""

import math

import pytest
import torch

from occfusion_core.config import DensifyConfig, OptimizeConfig
from occfusion_core.gaussians.densify import (
    DensifyState,
    _merge_pairs,
    _within_budget,
    densify_and_prune,
    gaussian_kl,
    is_densify_step,
)
from occfusion_core.gaussians.human import HumanGaussians
from occfusion_core.render.projection import quat_to_rotmat

HIGH_GRAD = 1e-3  # above DensifyConfig.grad_threshold (2e-4)


def test_is_densify_step():
    cfg = DensifyConfig(enabled=True, start_iter=400, stop_iter=1000, interval=100)
    assert [s for s in range(0, 1201, 100) if is_densify_step(s, cfg)] == [500, 600, 700, 800, 900]
    assert not is_densify_step(500, DensifyConfig(enabled=False))


def test_add_stats_averages_over_visible_views():
    state = DensifyState(3)
    # Pixel gradients become NDC gradients: x times width / 2, y times height / 2 (3DGS units).
    state.add_stats(torch.tensor([[3.0, 2.0], [0.5, 0.0], [9.0, 9.0]]), torch.tensor([True, True, False]),
                    image_size=(2, 4))
    state.add_stats(torch.tensor([[0.0, 0.5], [0.0, 0.0], [9.0, 9.0]]), torch.tensor([True, False, False]),
                    image_size=(2, 4))
    assert torch.allclose(state.mean_grad(), torch.tensor([3.0, 0.5, 0.0]))
    assert torch.equal(state.denom, torch.tensor([2.0, 1.0, 0.0]))
    copy = DensifyState(3)
    copy.load_state_dict(state.state_dict())
    assert torch.equal(copy.mean_grad(), state.mean_grad())


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    n = 6
    mean0, mean1 = torch.randn(n, 3, generator=gen) * 0.1, torch.randn(n, 3, generator=gen) * 0.1
    rot0 = quat_to_rotmat(torch.randn(n, 4, generator=gen))
    rot1 = quat_to_rotmat(torch.randn(n, 4, generator=gen))
    log0, log1 = torch.randn(n, 3, generator=gen) * 0.5 - 3, torch.randn(n, 3, generator=gen) * 0.5 - 3
    got = gaussian_kl(mean0.double(), rot0.double(), log0.double(), mean1.double(), rot1.double(), log1.double())

    def mvn(mean, rot, log_scale):
        rs = rot.double() * torch.exp(log_scale.double())[:, None, :]
        return torch.distributions.MultivariateNormal(mean.double(), covariance_matrix=rs @ rs.transpose(1, 2))

    want = torch.distributions.kl_divergence(mvn(mean0, rot0, log0), mvn(mean1, rot1, log1))
    assert torch.allclose(got, want, rtol=1e-6)
    assert torch.allclose(gaussian_kl(mean0, rot0, log0, mean0, rot0, log0), torch.zeros(n), atol=1e-4)


def test_merge_pairs_are_disjoint():
    #            0  1  2  3  4  5  6
    neighbour = torch.tensor([1, 0, 1, 4, 3, 6, 5])
    selected = torch.tensor([True, True, True, True, False, True, False])
    busy = torch.tensor([False, False, False, False, False, False, True])
    pairs = _merge_pairs(selected, neighbour, busy)
    # 0<->1 mutual (merged once); 2->1 finds 1 taken; 3->4 kept; 5->6: 6 is being cloned or split.
    assert pairs.tolist() == [[0, 1], [3, 4]]


def _spread_vertices(vertices: torch.Tensor, count: int, min_gap: float) -> list[int]:
    chosen = [0]
    for i in range(1, vertices.shape[0]):
        if (vertices[chosen] - vertices[i]).norm(dim=-1).min() >= min_gap:
            chosen.append(i)
            if len(chosen) == count:
                return chosen
    raise AssertionError("body too small for the constructed case")


def _constructed_model(body):
    """Nine Gaussians: 0 clone, 1 split, 2+3 merge pair, 4 transparent, 5 far from the body, 6-8 idle.

    features_dc[:, 0, 0] holds the row number, to follow rows through the step.
    """
    model = HumanGaussians(body, sh_degree=1, pose_refiner=False, lbs_offsets=False)
    vertices = model.big_pose_vertices
    at = vertices[_spread_vertices(vertices, 8, 0.15)]
    xyz = torch.stack([at[0], at[1], at[2], at[2] + torch.tensor([1e-3, 0, 0]), at[3],
                       vertices.max(dim=0).values + torch.tensor([0.3, 0, 0]), at[5], at[6], at[7]])
    n = xyz.shape[0]
    scale = torch.full((n, 3), 0.005)
    scale[1] = 0.012  # above percent_dense * extent = 0.01: split, not clone
    opacity = torch.full((n, 1), 0.0)
    opacity[4] = math.log(0.001 / 0.999)  # below min_opacity 0.005
    rotation = torch.nn.functional.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    features_dc = torch.zeros(n, 1, 3)
    features_dc[:, 0, 0] = torch.arange(n, dtype=torch.float32)
    model.set_gaussian_parameters({
        "xyz": xyz, "f_dc": features_dc, "f_rest": torch.zeros(n, 3, 3), "opacity": opacity,
        "scaling": scale.log(), "rotation": rotation,
    })
    return model


def test_clone_split_merge_prune_and_adam_state(proxy_body):
    model = _constructed_model(proxy_body)
    before = {name: p.detach().clone() for name, p in model.gaussian_parameters().items()}
    optimizer = model.make_optimizer(OptimizeConfig())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    for name, p in model.gaussian_parameters().items():  # moments that name their row
        tags = torch.arange(p.shape[0], dtype=p.dtype).reshape(-1, *[1] * (p.ndim - 1))
        optimizer.state[p]["exp_avg"] = tags.expand_as(p).clone()
        optimizer.state[p]["exp_avg_sq"] = tags.expand_as(p).clone() + 100
        p.data.copy_(before[name])
    state = DensifyState(model.num_gaussians)
    state.add_stats(torch.tensor([[HIGH_GRAD, 0.0]] * 3 + [[0.0, 0.0]] * 6), torch.ones(9, dtype=torch.bool),
                    image_size=(2, 2))

    counts = densify_and_prune(model, optimizer, state, DensifyConfig(), generator=torch.Generator().manual_seed(1))

    assert counts == {"before": 9, "cloned": 1, "split": 1, "merged": 1, "pruned": 2, "after": 8}
    # Kept rows first (0, 6, 7, 8), then the clone of 0, two children of 1, the merge of 2 and 3.
    assert model.features_dc[:, 0, 0].tolist() == [0, 6, 7, 8, 0, 1, 1, 2.5]
    old_scale = before["scaling"].exp()
    xyz, scale = model.xyz.detach(), model.scaling.detach().exp()
    assert torch.equal(xyz[:4], before["xyz"][[0, 6, 7, 8]])
    assert torch.allclose(scale[4], old_scale[0]) and 0 < (xyz[4] - xyz[0]).norm() < 0.05
    assert torch.allclose(scale[5:7], old_scale[1] / 1.6)
    assert ((xyz[5:7] - before["xyz"][1]).norm(dim=-1) < 0.06).all()
    assert torch.allclose(xyz[7], before["xyz"][2:4].mean(0))
    assert torch.allclose(scale[7], old_scale[2] / 0.8)
    assert torch.equal(model.rotation[7], before["rotation"][2])
    # Parameters, groups and Adam moments stay aligned row by row; new rows start at zero.
    groups = {g["name"]: g for g in optimizer.param_groups}
    for name, p in model.gaussian_parameters().items():
        assert groups[name]["params"][0] is p
        moments = optimizer.state[p]
        assert moments["exp_avg"].shape == p.shape and moments["exp_avg_sq"].shape == p.shape
        first = moments["exp_avg"].reshape(p.shape[0], -1)[:, 0]
        assert first.tolist() == [0, 6, 7, 8, 0, 0, 0, 0]
        assert moments["exp_avg_sq"].reshape(p.shape[0], -1)[:4, 0].tolist() == [100, 106, 107, 108]
    assert state.grad_accum.shape == (8,) and state.denom.abs().sum() == 0
    # Training goes on with the new rows.
    model.deform(torch.zeros(72)).means.sum().backward()
    optimizer.step()


def test_prune_removes_far_and_transparent_gaussians(make_model):
    model = make_model(pose_refiner=False, lbs_offsets=False)
    n = model.num_gaussians
    far = torch.zeros(n, dtype=torch.bool)
    far[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:10]] = True
    transparent = torch.zeros(n, dtype=torch.bool)
    transparent[:5] = True
    transparent &= ~far
    with torch.no_grad():
        model.xyz[far] += torch.tensor([0.0, 0.0, 1.0])  # 1 m in front of the body
        model.xyz[~far] += 0.02 * torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)[~far]  # within 5 cm
        model.opacity[transparent] = -10.0
    kept_xyz = model.xyz.detach()[~(far | transparent)]
    optimizer = model.make_optimizer(OptimizeConfig())
    counts = densify_and_prune(model, optimizer, DensifyState(n), DensifyConfig())
    assert counts["cloned"] == counts["split"] == counts["merged"] == 0
    assert counts["pruned"] == int((far | transparent).sum()) and counts["after"] == n - counts["pruned"]
    assert torch.equal(model.xyz.detach(), kept_xyz)
    assert all(g["params"][0].shape[0] == counts["after"] for g in optimizer.param_groups[:6])


def test_state_must_match_the_model(make_model):
    model = make_model(pose_refiner=False, lbs_offsets=False)
    with pytest.raises(ValueError, match="statistics are for"):
        densify_and_prune(model, None, DensifyState(model.num_gaussians + 1), DensifyConfig())
    other_optimizer = make_model(pose_refiner=False, lbs_offsets=False).make_optimizer(OptimizeConfig())
    with pytest.raises(ValueError, match="does not hold exactly"):
        densify_and_prune(model, other_optimizer, DensifyState(model.num_gaussians), DensifyConfig())



def test_budget_caps_the_count(make_model):
    model = make_model(pose_refiner=False, lbs_offsets=False)
    n = model.num_gaussians
    grads = torch.full((n,), HIGH_GRAD)
    everything = DensifyConfig(kl_threshold=0.0, merge_kl_threshold=0.0)
    uncapped = densify_and_prune(make_model(pose_refiner=False, lbs_offsets=False), None, _state_with(grads),
                                 everything)
    assert uncapped["after"] > n + 20
    capped = DensifyConfig(kl_threshold=0.0, merge_kl_threshold=0.0, max_gaussians=n + 20)
    counts = densify_and_prune(model, None, _state_with(grads), capped)
    assert counts["cloned"] + counts["split"] > 0 and counts["after"] <= n + 20


def test_budget_keeps_the_largest_gradients():
    grads = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 6.0])
    clone = torch.tensor([True, True, False, False, True, False])
    split = torch.tensor([False, False, True, True, False, False])  # a split adds 1 (2 children - 1)
    kept_clone, kept_split = _within_budget(clone, split, grads, budget=3)
    assert kept_clone.tolist() == [True, False, False, False, True, False]  # 5 and 3
    assert kept_split.tolist() == [False, False, True, False, False, False]  # 4
    assert _within_budget(clone, split, grads, budget=-5)[0].sum() == 0
    assert _within_budget(clone, split, grads, budget=10) == (clone, split)


def _state_with(grads: torch.Tensor) -> DensifyState:
    state = DensifyState(grads.shape[0])
    state.grad_accum += grads
    state.denom += 1.0
    return state
