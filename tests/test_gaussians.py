"""Human Gaussians: KNN, networks, canonical init, LBS deformation, optimiser groups, checkpoints."""

import io
import math
from types import SimpleNamespace

import pytest
import torch
from smplx.lbs import lbs
from torch import nn

from occfusion_core.body.model import big_pose
from occfusion_core.config import OptimizeConfig
from occfusion_core.gaussians.human import HumanGaussians
from occfusion_core.gaussians.knn import init_scales, knn
from occfusion_core.gaussians.networks import BodyPoseRefiner, LBSOffsetDecoder, positional_encoding
from occfusion_core.render.sh import SH_C0

L_ELBOW, L_WRIST = 18, 20
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


class TinyBody(nn.Module):
    """A small SMPL-format body with non-zero blend shapes (the proxy's posedirs are zeros).

    Joints of a T-posed stick figure; vertices on each bone segment and on a six-point ring around
    every joint (the regressor averages the ring, so it returns the joint). ``forward`` is
    smplx's full ``lbs``, independent of the code under test.
    """

    JOINTS = [(0, 0, 0), (.06, -.09, 0), (-.06, -.09, 0), (0, .11, 0), (.1, -.47, 0), (-.1, -.47, 0),
              (0, .25, 0), (.09, -.87, 0), (-.09, -.87, 0), (0, .3, 0), (.11, -.93, .12), (-.11, -.93, .12),
              (0, .51, 0), (.08, .42, 0), (-.08, .42, 0), (0, .6, .05), (.19, .45, 0), (-.19, .45, 0),
              (.45, .44, 0), (-.45, .44, 0), (.7, .45, 0), (-.7, .45, 0), (.78, .45, 0), (-.78, .45, 0)]

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        joints = torch.tensor(self.JOINTS)
        verts, weights, regressor_rows = [], [], []
        ring = torch.cat([torch.eye(3), -torch.eye(3)]) * 0.01
        for j in range(24):
            regressor_rows.append(list(range(len(verts), len(verts) + 6)))
            for offset in ring:
                verts.append(joints[j] + offset)
                weights.append(torch.nn.functional.one_hot(torch.tensor(j), 24).float())
        for j in range(1, 24):
            p = SMPL_PARENTS[j]
            for t in torch.linspace(0.1, 0.9, 9):
                radial = torch.randn(3, generator=gen) * 0.02
                verts.append(joints[p] + t * (joints[j] - joints[p]) + radial)
                w = torch.zeros(24)
                w[j] = max(0.0, (float(t) - 0.7) / 0.6)  # blend into the child bone near the joint
                w[p] = 1.0 - w[j]
                weights.append(w)
        v = torch.stack(verts)
        regressor = torch.zeros(24, v.shape[0])
        for j, rows in enumerate(regressor_rows):
            regressor[j, rows] = 1.0 / 6.0
        self.register_buffer("v_template", v)
        self.register_buffer("lbs_weights", torch.stack(weights))
        self.register_buffer("J_regressor", regressor)
        self.register_buffer("shapedirs", torch.randn(v.shape[0], 3, 10, generator=gen) * 0.01)
        # smplx's layout (207, V*3), as BodyModel.posedirs
        self.register_buffer("posedirs", torch.randn(207, v.shape[0] * 3, generator=gen) * 0.002)
        self.register_buffer("parents", torch.tensor(SMPL_PARENTS))
        self.faces = torch.zeros(0, 3, dtype=torch.long)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def forward(self, poses, betas, trans):
        vertices, joints = lbs(betas, poses, self.v_template, self.shapedirs, self.posedirs,
                               self.J_regressor, self.parents, self.lbs_weights)
        return SimpleNamespace(vertices=vertices + trans[:, None], joints=joints + trans[:, None])


def random_pose(seed: int, scale: float = 0.4) -> torch.Tensor:
    return torch.randn(72, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------ knn


def test_knn_matches_brute_force_with_chunks():
    gen = torch.Generator().manual_seed(0)
    points, query = torch.rand(300, 3, generator=gen), torch.rand(77, 3, generator=gen)
    dist2, idx = knn(query, points, 5, chunk_elements=1000)  # 3 query rows per chunk
    full = ((query[:, None] - points[None]) ** 2).sum(-1)
    want_d2, want_idx = full.sort(dim=1)
    assert torch.equal(idx, want_idx[:, :5])
    assert torch.allclose(dist2, want_d2[:, :5], atol=1e-7)


def test_knn_exclude_self_and_init_scales():
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(200, 3, generator=gen)
    points[7] = points[3]  # a coincident pair: each must find the other, never itself
    dist2, idx = knn(points, points, 3, exclude_self=True, chunk_elements=500)
    assert not (idx == torch.arange(200)[:, None]).any()
    assert idx[7, 0] == 3 and idx[3, 0] == 7 and dist2[7, 0] == 0
    full = ((points[:, None] - points[None]) ** 2).sum(-1)
    full.fill_diagonal_(float("inf"))
    want = full.sort(dim=1).values[:, :3].mean(1).clamp_min(1e-7).sqrt().log()
    scales = init_scales(points)
    assert scales.shape == (200, 3)
    assert torch.allclose(scales, want[:, None].expand(200, 3), atol=1e-5)


def test_cached_nearest_vertex_stays_exact_as_gaussians_move(make_model):
    """The nearest-vertex cache searches again only where a Gaussian moved past its margin, and its
    answer is always the exact nearest vertex: small steps (most kept), large jumps (searched),
    Gaussians drifting centimetres off the body (the wider neighbourhood) and far off it (all)."""
    model = make_model()
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.cached_nearest_vertex(), model.nearest_vertex(model.xyz))
    for step in (1e-4, 1e-3, 5e-3, 2e-2, 1e-4, 6e-2, 1e-3, 0.3, 1e-3):
        with torch.no_grad():
            model.xyz.add_(step * torch.randn(model.xyz.shape, generator=gen))
        assert torch.equal(model.cached_nearest_vertex(), model.nearest_vertex(model.xyz)), step
    # the two neighbourhood tiers the steps above reach (a 16-vertex one, then a 128-vertex one)
    assert [n.shape[1] for n, _ in model._vertex_neighbourhoods()] == [17, 129]


@pytest.mark.parametrize("decoder", [True, False])
def test_constant_skinning_weights_are_reused_only_while_they_hold(make_model, decoder):
    """Weights that cannot change (no decoder, or its offsets held) are kept between iterations, and
    made again when a Gaussian's nearest vertex or the held offsets change."""
    model = make_model(lbs_offsets=decoder)

    def fresh(nearest):
        body = model.lbs_weights[nearest]
        return body if not decoder else torch.softmax(torch.log(body + 1e-9) + model.cached_lbs_offsets, dim=-1)

    first = model.skinning_weights(model.cached_nearest_vertex())
    assert first.requires_grad == decoder  # a decoder run learns from it: never held
    model.reuse_lbs_offsets = True
    held = model.skinning_weights(model.cached_nearest_vertex())
    assert model.skinning_weights(model.cached_nearest_vertex()) is held
    torch.testing.assert_close(held, fresh(model.cached_nearest_vertex()), rtol=0, atol=0)
    with torch.no_grad():  # move one Gaussian onto another vertex
        model.xyz[0] = model.big_pose_vertices[100]
    nearest = model.cached_nearest_vertex()
    assert nearest[0] == 100
    moved = model.skinning_weights(nearest)
    assert moved is not held
    torch.testing.assert_close(moved, fresh(nearest), rtol=0, atol=0)
    if decoder:
        model.cached_lbs_offsets = torch.randn_like(model.cached_lbs_offsets)
        torch.testing.assert_close(model.skinning_weights(nearest), fresh(nearest), rtol=0, atol=0)

def test_pose_refiner_starts_near_identity_and_layers():
    refiner = BodyPoseRefiner()
    linears = [m for m in refiner.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(69, 128), (128, 128), (128, 69)]
    assert linears[-1].weight.abs().max() <= 1e-5 and linears[-1].bias.abs().max() == 0
    bound = nn.init.calculate_gain("relu") * math.sqrt(6.0 / (69 + 128))  # Xavier-uniform, ReLU gain
    assert linears[0].weight.abs().max() <= bound and linears[0].weight.abs().max() > 0.9 * bound
    delta = refiner(random_pose(0)[None, 3:])
    assert delta.shape == (1, 23, 3, 3)
    assert torch.allclose(delta, torch.eye(3).expand(1, 23, 3, 3), atol=1e-3)
    # Still a rotation once the output is large.
    with torch.no_grad():
        linears[-1].bias.normal_(0, 1.0)
    rot = refiner(random_pose(1)[None, 3:])[0]
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3).expand(23, 3, 3), atol=1e-4)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(23), atol=1e-4)


def test_lbs_offset_decoder_shapes_and_encoding():
    x = torch.tensor([[0.1, -0.2, 0.3]])
    enc = positional_encoding(x)
    assert enc.shape == (1, 63)
    assert torch.allclose(enc[0, :3], x[0])
    assert torch.allclose(enc[0, 3:6], torch.sin(x[0])) and torch.allclose(enc[0, 6:9], torch.cos(x[0]))
    assert torch.allclose(enc[0, -3:], torch.cos(512 * x[0]))
    decoder = LBSOffsetDecoder()
    shapes = [(m.in_features, m.out_features) for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(63, 128), (128, 128), (128, 128), (191, 128), (128, 24)]
    assert decoder(torch.rand(10, 3)).shape == (10, 24)


# ------------------------------------------------------------------ canonical init


def test_init_on_big_pose_vertices(proxy_body, make_model):
    model = make_model()
    n = proxy_body.num_vertices
    big_vertices = proxy_body(torch.as_tensor(big_pose()).float()[None], torch.zeros(1, 10),
                              torch.zeros(1, 3)).vertices[0]
    assert model.num_gaussians == n and torch.allclose(model.xyz, big_vertices)
    assert model.features_dc.shape == (n, 1, 3) and model.features_rest.shape == (n, 15, 3)
    assert torch.allclose(model.features_dc * SH_C0 + 0.5, torch.full((n, 1, 3), 0.5))
    assert model.features_rest.abs().max() == 0
    assert torch.allclose(model.opacities(), torch.full((n,), 0.1))
    assert torch.equal(model.rotation, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4))
    assert torch.equal(model.scaling, init_scales(big_vertices))
    assert model.active_sh_degree == 0
    for _ in range(5):
        model.oneup_sh_degree()
    assert model.active_sh_degree == 3


def test_canonical_is_centred_and_untransformed(make_model):
    model = make_model()
    out = model.canonical()
    assert torch.allclose(out.means.mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(out.means + model.xyz.mean(0), model.xyz, atol=1e-6)
    assert torch.allclose(out.covars, model.canonical_covariances())
    assert torch.equal(model.canonical(center=False).means, model.xyz)


# ------------------------------------------------------------------ deformation


def test_big_pose_deform_is_identity(make_model):
    model = make_model(pose_refiner=False)
    with torch.no_grad():  # off the vertices, so the nearest-vertex lookup matters
        model.xyz.add_(torch.randn_like(model.xyz) * 0.01)
        model.rotation.copy_(torch.randn_like(model.rotation))
        model.scaling.add_(torch.randn_like(model.scaling) * 0.3)
    out = model.deform(torch.as_tensor(big_pose()).float(), torch.zeros(10), torch.zeros(3))
    assert torch.allclose(out.means, model.xyz, atol=1e-5)
    assert torch.allclose(out.covars, model.canonical_covariances(), atol=1e-7, rtol=1e-4)
    # The refiner starts at ≈ identity: a small but non-zero change.
    model = make_model()
    out = model.deform(torch.as_tensor(big_pose()).float(), torch.zeros(10), torch.zeros(3))
    assert (out.means - model.xyz).norm(dim=-1).max() < 2e-3


def test_deform_at_init_lands_on_posed_body(proxy_body, make_model):
    pose, betas = random_pose(3), torch.zeros(10)
    want = proxy_body(pose[None], betas[None], torch.zeros(1, 3)).vertices[0]
    plain = make_model(pose_refiner=False, lbs_offsets=False)
    assert not plain.has_pose_blend  # the proxy's posedirs are zeros: the product is skipped
    error = (plain.deform(pose, betas).means - want).norm(dim=-1)
    # A few proxy vertices nearly coincide in the big pose (inner thighs): those Gaussians may
    # take the skinning of the twin vertex; all others are exact.
    own = plain.nearest_vertex(plain.xyz) == torch.arange(plain.num_gaussians)
    assert own.float().mean() > 0.98
    assert error[own].max() < 1e-5 and error.max() < 5e-4
    # With both networks at their initialisation: GauHuman's offset decoder starts at PyTorch's
    # default init (ΔW not zero), which only re-blends vertices that have several bones.
    learned = make_model().deform(pose, betas)
    assert (learned.means - want).norm(dim=-1).median() < 2e-3
    assert (learned.means - want).norm(dim=-1).max() < 5e-2


def test_deform_shape_and_pose_blend_shapes_match_smplx():
    body = TinyBody()
    model = HumanGaussians(body, pose_refiner=False, lbs_offsets=False)
    assert model.has_pose_blend
    for seed in range(3):
        pose, betas = random_pose(seed), torch.randn(10, generator=torch.Generator().manual_seed(9 + seed))
        trans = torch.tensor([0.3, -0.2, 2.0])
        want = body(pose[None], betas[None], trans[None]).vertices[0]
        assert torch.allclose(model.deform(pose, betas, trans).means, want, atol=1e-5)


def test_trans_shifts_everything_and_batches_agree(make_model):
    model = make_model()
    pose, betas = random_pose(4), torch.zeros(10)
    trans = torch.tensor([1.0, -2.0, 3.0])
    base, moved = model.deform(pose, betas), model.deform(pose, betas, trans)
    assert torch.allclose(moved.means, base.means + trans, atol=1e-5)
    assert torch.allclose(moved.covars, base.covars)
    poses = torch.stack([pose, random_pose(5)])
    batched = model.deform(poses, betas, torch.stack([torch.zeros(3), trans]))
    second = model.deform(poses[1], betas, trans)
    assert batched.means.shape == (2, model.num_gaussians, 3)
    assert torch.allclose(batched.means[0], base.means, atol=1e-5)
    assert torch.allclose(batched.means[1], second.means, atol=1e-5)
    assert torch.allclose(batched.covars[1], second.covars, atol=1e-7, rtol=1e-4)


def _rotation_x_to(direction: torch.Tensor) -> torch.Tensor:
    """Quaternion (w, x, y, z) turning the x axis onto unit ``direction``."""
    x = torch.tensor([1.0, 0.0, 0.0])
    q = torch.cat([(1.0 + x @ direction)[None], torch.linalg.cross(x, direction)])
    return q / q.norm()


def test_covariances_spd_and_turn_with_the_forearm(proxy_body, make_model):
    model = make_model(pose_refiner=False, lbs_offsets=False)
    big = torch.as_tensor(big_pose()).float()[None]
    big_joints = proxy_body(big, torch.zeros(1, 10), torch.zeros(1, 3)).joints[0]
    arm = big_joints[L_WRIST] - big_joints[L_ELBOW]
    arm = arm / arm.norm()
    on_forearm = model.lbs_weights[:, L_ELBOW] > 0.99
    # The forearm vertex nearest the middle of the forearm.
    middle = 0.5 * (big_joints[L_ELBOW] + big_joints[L_WRIST])
    dist = (model.xyz.detach() - middle).norm(dim=-1).masked_fill(~on_forearm, float("inf"))
    i = int(dist.argmin())
    assert on_forearm[i]
    with torch.no_grad():
        model.scaling[i] = torch.log(torch.tensor([0.05, 0.005, 0.005]))
        model.rotation[i] = _rotation_x_to(arm)
    pose = torch.zeros(72)
    pose[3 * L_ELBOW + 1] = -math.pi / 2  # bend the left elbow 90° about y
    pose[:3] = torch.tensor([0.1, 0.5, -0.2])  # and turn the whole body
    with torch.no_grad():
        out = model.deform(pose, torch.zeros(10))
    bone = proxy_body(pose[None], torch.zeros(1, 10), torch.zeros(1, 3)).transforms[0, L_ELBOW, :3, :3]
    evals, evecs = torch.linalg.eigh(out.covars[i])
    assert torch.allclose(evals[-1].sqrt(), torch.tensor(0.05), rtol=1e-3)
    assert abs(float(evecs[:, -1] @ (bone @ arm))) > 0.999
    assert abs(float(evecs[:, -1] @ arm)) < 0.5  # it did turn
    covars = out.covars
    assert torch.allclose(covars, covars.transpose(-1, -2), atol=1e-9)
    assert (torch.linalg.eigvalsh(covars) > 0).all()


def test_gradients_reach_all_learned_parts(make_model):
    model = make_model()
    with torch.no_grad():  # anisotropic, else the covariances do not depend on the rotations
        model.scaling.add_(torch.randn_like(model.scaling) * 0.3)
    out = model.deform(random_pose(6), torch.zeros(10), torch.zeros(3))
    target = torch.randn_like(out.means)
    loss = ((out.means - target) ** 2).sum() + (out.covars ** 2).sum() * 1e4 + out.opacities.sum() \
        + (out.sh * torch.randn_like(out.sh)).sum()
    loss.backward()
    named = {"xyz": model.xyz, "scaling": model.scaling, "rotation": model.rotation,
             "opacity": model.opacity, "features_dc": model.features_dc, "features_rest": model.features_rest}
    named.update({f"pose_refiner.{k}": p for k, p in model.pose_refiner.named_parameters()})
    named.update({f"lbs_offset_decoder.{k}": p for k, p in model.lbs_offset_decoder.named_parameters()})
    no_grad = [k for k, p in named.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


# ------------------------------------------------------------------ optimiser and checkpoints


def test_param_groups_and_position_lr(make_model):
    cfg = OptimizeConfig()
    model = make_model()
    groups = {g["name"]: g for g in model.param_groups(cfg)}
    want = {"xyz": 1.6e-4, "f_dc": 2.5e-3, "f_rest": 2.5e-3 / 20, "opacity": 0.05, "scaling": 5e-3,
            "rotation": 1e-3, "pose_refiner": 5e-5, "lbs_offset": 5e-5}
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(want)
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    optimizer = model.make_optimizer(cfg)
    assert optimizer.defaults["eps"] == 1e-15
    assert model.position_lr(0, cfg) == pytest.approx(1.6e-4)
    assert model.position_lr(1200, cfg) == pytest.approx(1.6e-4 * 0.01 ** (1200 / 30000))
    assert model.position_lr(30000, cfg) == pytest.approx(1.6e-6)
    assert model.position_lr(10 ** 6, cfg) == pytest.approx(1.6e-6)
    assert model.apply_position_lr(optimizer, 1200, cfg) == pytest.approx(1.33e-4, rel=0.01)
    assert [g["lr"] for g in optimizer.param_groups if g["name"] == "xyz"] == [pytest.approx(1.33e-4, rel=0.01)]
    bare = make_model(pose_refiner=False, lbs_offsets=False)
    assert [g["name"] for g in bare.param_groups(cfg)] == ["xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation"]


def test_capture_restore_round_trip_with_new_count(proxy_body, make_model):
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    keep = torch.rand(model.num_gaussians, generator=torch.Generator().manual_seed(0)) > 0.3
    model.set_gaussian_parameters({g: p.detach()[keep] for g, p in model.gaussian_parameters().items()})
    model.oneup_sh_degree()
    buffer = io.BytesIO()
    torch.save(model.capture(), buffer)
    buffer.seek(0)
    captured = torch.load(buffer)
    restored = HumanGaussians.from_capture(proxy_body, captured)
    assert restored.num_gaussians == int(keep.sum()) and restored.active_sh_degree == 1
    pose = random_pose(8)
    a, b = model.deform(pose), restored.deform(pose)
    assert torch.equal(a.means, b.means) and torch.equal(a.covars, b.covars) and torch.equal(a.sh, b.sh)
    with pytest.raises(ValueError, match="does not fit"):
        make_model(pose_refiner=False).restore(captured)
    assert "v_template" not in captured["state_dict"]  # the body is not duplicated in checkpoints


def test_knn_orders_close_points_exactly():
    """Pairs of points 2e-4 apart, ~1.7 from their centre, each queried near one of the two: the
    rounded matrix-product ranking alone swaps many pairs; the exact re-ranking must swap none."""
    from occfusion_core.gaussians.knn import knn

    gen = torch.Generator().manual_seed(3)
    first = torch.randn(2000, 3, generator=gen)
    direction = torch.nn.functional.normalize(torch.randn(2000, 3, generator=gen), dim=-1)
    points = torch.cat([first, first + 2e-4 * direction])
    query = first + 0.6e-4 * direction
    dist2, idx = knn(query, points, 2)
    assert torch.equal(idx[:, 0], torch.arange(2000))
    assert torch.equal(idx[:, 1], torch.arange(2000) + 2000)
    assert torch.all(dist2[:, 0] < dist2[:, 1])
