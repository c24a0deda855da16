"""The proxy body in SMPL's format and the smplx-backed BodyModel."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import scipy.sparse
import smplx
import torch

from occfusion_core.body import model as body_model_module
from occfusion_core.body.model import (
    JOINT_NAMES,
    SMPL_PARENTS,
    BodyModel,
    big_pose,
    default_proxy_path,
    load_body_model,
)
from occfusion_core.body.proxy import PROXY_VERSION, joint_positions, signed_volume, write_proxy_smpl
from occfusion_core.io import InputError

J = {name: j for j, name in enumerate(JOINT_NAMES)}


@pytest.fixture(scope="module")
def proxy_file(tmp_path_factory):
    return write_proxy_smpl(tmp_path_factory.mktemp("body") / "proxy_smpl.pkl", grid_mm=20.0)


@pytest.fixture(scope="module")
def proxy_data(proxy_file):
    with open(proxy_file, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


@pytest.fixture(scope="module")
def body(proxy_file):
    return BodyModel(proxy_file)


def _pose(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 72)


def _run(body, poses=None, betas=None, trans=None):
    batch = 1 if poses is None else poses.shape[0]
    return body(poses if poses is not None else _pose(batch),
                betas if betas is not None else torch.zeros(batch, 10),
                trans if trans is not None else torch.zeros(batch, 3))


def test_proxy_file_has_smpl_layout(proxy_data):
    v = proxy_data["v_template"]
    num_verts = v.shape[0]
    assert 2000 <= num_verts <= 6000
    assert v.dtype == np.float64 and v.shape == (num_verts, 3)
    assert proxy_data["f"].shape[1] == 3 and proxy_data["f"].max() == num_verts - 1
    assert proxy_data["weights"].shape == (num_verts, 24)
    assert scipy.sparse.issparse(proxy_data["J_regressor"])
    assert proxy_data["J_regressor"].shape == (24, num_verts)
    assert proxy_data["shapedirs"].shape == (num_verts, 3, 10)
    assert isinstance(proxy_data["posedirs"], np.ndarray)
    assert proxy_data["posedirs"].shape == (num_verts, 3, 207)
    assert not proxy_data["posedirs"].any()
    kintree = proxy_data["kintree_table"]
    assert kintree[0, 0] == 4294967295 and list(kintree[0, 1:]) == list(SMPL_PARENTS[1:])
    assert list(kintree[1]) == list(range(24))
    assert proxy_data["proxy"] is True and proxy_data["proxy_version"] == PROXY_VERSION
    assert proxy_data["joint_names"] == list(JOINT_NAMES)
    assert set(proxy_data["vertex_ids"]) == set(smplx.vertex_ids.vertex_ids["smplh"])


def test_proxy_loads_through_smplx(body):
    assert isinstance(body.smpl, smplx.SMPL)
    assert body.is_proxy and body.name == "proxy"
    assert list(body.parents) == [-1] + list(SMPL_PARENTS[1:])
    assert body.faces.dtype == torch.long and body.faces.shape[1] == 3
    assert body.lbs_weights.shape == (body.num_vertices, 24)
    assert body.J_regressor.shape == (24, body.num_vertices)
    assert not any(p.requires_grad for p in body.parameters())  # no stray smplx parameters
    out = _run(body, _pose(2))
    assert out.vertices.shape == (2, body.num_vertices, 3)
    assert out.joints.shape == (2, 24, 3) and out.joints45.shape == (2, 45, 3)
    assert out.transforms.shape == (2, 24, 4, 4)


def test_mesh_is_closed_manifold_genus_zero_with_outward_faces(proxy_data):
    verts, faces = proxy_data["v_template"], proxy_data["f"]
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    assert (counts == 2).all()  # every edge shared by exactly two faces
    assert len(np.unique(directed, axis=0)) == len(directed)  # neighbours wind consistently
    assert len(np.unique(faces)) == len(verts)  # no loose vertices
    assert len(verts) - len(undirected) + len(faces) == 2  # one closed surface, no handles
    volume = signed_volume(verts, faces)
    assert 0.04 < volume < 0.09  # m^3: a person of about 60 kg, faces wound outwards


def test_proxy_frame_and_proportions(body, proxy_data):
    v = body.v_template.numpy()
    assert v[:, 1].min() == pytest.approx(-1.15, abs=0.01)  # soles
    assert v[:, 1].max() == pytest.approx(0.5, abs=0.02)  # top of the head
    joints = _run(body).joints[0].numpy()
    np.testing.assert_allclose(joints[J["pelvis"]], [0.0, -0.22, 0.0], atol=0.02)
    ids = proxy_data["vertex_ids"]
    assert v[ids["nose"], 2] > 0.08  # the body faces +z
    assert v[ids["LBigToe"], 2] > v[ids["LHeel"], 2] + 0.15
    assert v[ids["lmiddle"], 0] > 0.8 and v[ids["rmiddle"], 0] < -0.8  # T-pose, left is +x


def test_skinning_weights_are_a_partition_of_unity(body):
    w = body.lbs_weights.double()
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(dim=1).numpy(), 1.0, atol=1e-6, rtol=0)
    assert (w.sum(dim=0) > 1).all()  # every bone carries some surface


def test_regressor_is_convex_and_gives_the_designed_joints(body):
    reg = body.J_regressor.double()
    assert (reg >= 0).all()
    np.testing.assert_allclose(reg.sum(dim=1).numpy(), 1.0, atol=1e-6, rtol=0)
    joints = (reg @ body.v_template.double()).numpy()
    np.testing.assert_allclose(joints, joint_positions(), atol=1e-5)
    for name, j in J.items():
        if name.startswith("left_"):
            assert joints[j, 0] > 0.04, name
        elif name.startswith("right_"):
            assert joints[j, 0] < -0.04, name
        else:
            assert abs(joints[j, 0]) < 1e-6, name


@pytest.mark.parametrize("joint, axis, angle", [("left_elbow", 1, 1.5), ("left_elbow", 2, -1.0),
                                                ("right_elbow", 1, -1.5)])
def test_bending_an_elbow_moves_only_its_forearm_and_hand(body, joint, axis, angle):
    poses = _pose()
    poses[0, 3 * J[joint] + axis] = angle
    rest, bent = _run(body).vertices[0], _run(body, poses).vertices[0]
    moved = (bent - rest).norm(dim=1)
    side = 1.0 if joint.startswith("left") else -1.0
    x_from_elbow = side * (body.v_template[:, 0] - float(_run(body).joints[0, J[joint], 0]))
    assert moved[x_from_elbow < -0.03].max() < 1e-6  # shoulder side, torso, head, other limbs
    hand = x_from_elbow > 0.30
    assert hand.sum() > 20 and moved[hand].min() > 0.25


def test_bending_the_left_knee_moves_only_the_left_shin_and_foot(body):
    poses = _pose()
    poses[0, 3 * J["left_knee"]] = 1.5
    rest, bent = _run(body).vertices[0], _run(body, poses).vertices[0]
    moved = (bent - rest).norm(dim=1) > 1e-6
    knee_y = float(_run(body).joints[0, J["left_knee"], 1])
    v = body.v_template
    assert not moved[(v[:, 1] > knee_y + 0.03) | (v[:, 0] < 0)].any()
    assert moved[(v[:, 1] < knee_y - 0.1) & (v[:, 0] > 0)].all()


def test_transforms_reproduce_the_vertices_by_manual_lbs(body):
    gen = torch.Generator().manual_seed(0)
    poses = 0.4 * torch.randn(2, 72, generator=gen)
    betas = torch.randn(2, 10, generator=gen)
    trans = torch.randn(2, 3, generator=gen)
    out = body(poses, betas, trans)
    blended = torch.einsum("vj,bjmn->bvmn", body.lbs_weights, out.transforms)  # (B, V, 4, 4)
    homogeneous = torch.cat([out.v_shaped, torch.ones_like(out.v_shaped[..., :1])], dim=-1)
    manual = torch.einsum("bvmn,bvn->bvm", blended, homogeneous)[..., :3] + trans[:, None]
    np.testing.assert_allclose(manual.numpy(), out.vertices.numpy(), atol=2e-5, rtol=0)
    # the bone transforms also carry the rest joints to the posed joints
    rest_joints = torch.einsum("jv,bvc->bjc", body.J_regressor, out.v_shaped)
    rotations, translations = out.transforms[..., :3, :3], out.transforms[..., :3, 3]
    posed = torch.einsum("bjmn,bjn->bjm", rotations, rest_joints) + translations
    np.testing.assert_allclose((posed + trans[:, None]).numpy(), out.joints.numpy(), atol=2e-5, rtol=0)


def _extent(vertices: torch.Tensor, axis: int) -> float:
    return float(vertices[0, :, axis].max() - vertices[0, :, axis].min())


def test_shape_directions(body):
    # one batch: the mean shape, then each of the 10 betas at +2 and at -2
    betas = torch.zeros(21, 10)
    for index in range(10):
        betas[1 + 2 * index, index], betas[2 + 2 * index, index] = 2.0, -2.0
    out = _run(body, poses=_pose(21), betas=betas)

    def shaped(index: int, value: float) -> torch.Tensor:
        return out.vertices[1 + 2 * index + (value < 0)][None]

    base = out.vertices[:1]
    height = _extent(base, 1)
    assert _extent(shaped(0, 2.0), 1) > height + 0.07  # beta0: taller
    assert _extent(shaped(0, -2.0), 1) < height - 0.07
    assert _extent(shaped(1, 2.0), 0) > _extent(base, 0) + 0.03  # beta1: longer arms
    for v in out.vertices:
        assert v[:, 1].min() == pytest.approx(-1.15, abs=0.01)  # soles stay on the ground
        assert 1.45 < float(v[:, 1].max() - v[:, 1].min()) < 1.85  # plausible bodies at +-2

    def waist_width(vertices: torch.Tensor) -> float:
        v = vertices[0]
        band = ((v[:, 1] - 0.0).abs() < 0.02) & (v[:, 0].abs() < 0.25)
        return float(v[band, 0].max() - v[band, 0].min())

    assert waist_width(shaped(2, 2.0)) > waist_width(base) + 0.03  # beta2: girth
    assert body.shapedirs[..., :6].abs().amax(dim=(0, 1)).min() > 0.005  # six meaningful directions
    assert not body.shapedirs[..., 6:].any()


def test_big_pose_spreads_the_legs(body):
    pose = big_pose()
    assert pose.shape == (72,)
    expected = torch.zeros(72)
    expected[[5, 8, 23, 26]] = torch.deg2rad(torch.tensor([45.0, -45.0, -30.0, 30.0]))
    np.testing.assert_allclose(pose.numpy(), expected.numpy(), atol=1e-7)
    rest, big = _run(body).joints[0], _run(body, pose[None]).joints[0]
    ankles = lambda j: float(j[J["left_ankle"], 0] - j[J["right_ankle"], 0])  # noqa: E731
    assert ankles(big) > ankles(rest) + 0.4
    # the arms stay in T-pose
    np.testing.assert_allclose(big[J["left_wrist"]].numpy(), rest[J["left_wrist"]].numpy(), atol=1e-6)


def test_generation_is_deterministic(proxy_file, tmp_path):
    again = write_proxy_smpl(tmp_path / "again.pkl", grid_mm=20.0)
    assert again.read_bytes() == proxy_file.read_bytes()


def test_load_body_model_caches_the_proxy(proxy_file, tmp_path, monkeypatch):
    writes = []

    def fake_write(path, grid_mm):  # stands in for the generator: copies the module's proxy
        writes.append(path)
        shutil.copyfile(proxy_file, path)
        return path

    monkeypatch.setattr(body_model_module, "write_proxy_smpl", fake_write)
    cached = default_proxy_path(tmp_path, 20.0)
    assert cached.name == "proxy_smpl_20.pkl"
    assert load_body_model(cache_dir=tmp_path).is_proxy and writes == [cached]
    load_body_model(cache_dir=tmp_path)
    assert len(writes) == 1  # reused
    with open(cached, "wb") as fh:
        pickle.dump({"proxy": True, "proxy_version": PROXY_VERSION - 1}, fh)
    load_body_model(cache_dir=tmp_path)
    assert len(writes) == 2  # an older generator's file is rebuilt


def test_user_model_errors_name_the_file(tmp_path, proxy_data):
    missing = tmp_path / "SMPL_NEUTRAL.pkl"
    with pytest.raises(InputError, match="SMPL_NEUTRAL.pkl"):
        load_body_model(str(missing))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="garbage.pkl"):
        load_body_model(garbage)
    incomplete = tmp_path / "incomplete.pkl"
    with open(incomplete, "wb") as fh:
        pickle.dump({k: v for k, v in proxy_data.items() if k != "weights"}, fh)
    with pytest.raises(InputError, match="weights"):
        load_body_model(incomplete)


def test_a_user_file_without_smpl_topology_is_refused(tmp_path, proxy_data):
    # a user's file (no 'proxy' key) gets smplx's SMPL vertex ids, which need SMPL's 6890 vertices
    user = tmp_path / "user_smpl.pkl"
    with open(user, "wb") as fh:
        pickle.dump({k: v for k, v in proxy_data.items() if k not in ("proxy", "vertex_ids")}, fh)
    with pytest.raises(InputError, match="out of range"):
        BodyModel(user)
