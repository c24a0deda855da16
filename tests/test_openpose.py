"""OpenPose-18 joints from the body model, the self-occlusion test and the OpenPose canvases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occfusion_core.body.model import BodyModel
from occfusion_core.body.openpose import (
    CANONICAL_HORS,
    LIMB_COLOR_SCALE,
    OPENPOSE_COLORS,
    OPENPOSE_LIMBS,
    OPENPOSE_NAMES,
    SMPL_TO_OPENPOSE,
    canonical_camera,
    canonical_openpose_canvases,
    draw_openpose,
    openpose18,
    project_openpose,
    self_occlusion_valid,
)
from occfusion_core.body.proxy import write_proxy_smpl

OP = {name: i for i, name in enumerate(OPENPOSE_NAMES)}


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    return BodyModel(write_proxy_smpl(tmp_path_factory.mktemp("body") / "proxy_smpl.pkl", grid_mm=20.0))


@pytest.fixture(scope="module")
def t_pose(body):
    return body(torch.zeros(1, 72), torch.zeros(1, 10), torch.zeros(1, 3))


def test_openpose18_picks_smplx_joints():
    joints45 = torch.arange(2 * 45 * 3, dtype=torch.float32).reshape(2, 45, 3)
    op = openpose18(joints45)
    assert op.shape == (2, 18, 3)
    assert torch.equal(op[:, OP["neck"]], joints45[:, 12])
    assert torch.equal(op[:, OP["nose"]], joints45[:, 24])
    assert torch.equal(op[:, OP["left_ear"]], joints45[:, 28])
    assert len(SMPL_TO_OPENPOSE) == 18 and len(OPENPOSE_LIMBS) == 17


def test_front_camera_sees_the_subjects_left_on_the_image_right(body, t_pose):
    uv, depth = project_openpose(openpose18(t_pose.joints45)[0], canonical_camera(0.0))
    u, v = uv[:, 0], uv[:, 1]
    for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle", "eye", "ear"):
        assert u[OP[f"left_{part}"]] > u[OP[f"right_{part}"]] + 5, part
    assert v[OP["nose"]] < v[OP["neck"]] < v[OP["left_hip"]] < v[OP["left_knee"]] < v[OP["left_ankle"]]
    assert ((depth > 4.2) & (depth < 4.8)).all()
    assert ((uv >= 0) & (uv < 512)).all()


def test_canonical_camera_orbit():
    front, side = canonical_camera(0.0), canonical_camera(90.0)
    np.testing.assert_allclose(front.center.numpy(), [0.0, 0.0, 4.5], atol=1e-5)
    np.testing.assert_allclose(side.center.numpy(), [4.5, 0.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(front.K.numpy(), [[1000.0, 0, 256], [0, 1000.0, 256], [0, 0, 1]])
    assert (front.width, front.height) == (512, 512)
    uv, z = front.project(torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(uv[0].numpy(), [256.0, 256.0], atol=1e-4)
    assert uv[1, 1] < 256 and float(z[0]) == pytest.approx(4.5)  # world up is image up


def test_draw_openpose_colours_and_skips_invalid_joints():
    uv = torch.tensor([[50.0 + 25 * (i % 6), 40.0 + 60 * (i // 6)] for i in range(18)]) + 0.5
    valid = torch.ones(18, dtype=torch.bool)
    valid[OP["left_knee"]] = False
    canvas = draw_openpose(uv, valid, width=240, height=220)
    assert canvas.shape == (220, 240, 3) and canvas.dtype == np.uint8
    for i, (x, y) in enumerate(uv.long().tolist()):
        expected = OPENPOSE_COLORS[i] if valid[i] else (0, 0, 0)
        assert tuple(canvas[y, x]) == expected, OPENPOSE_NAMES[i]
    # a limb between two valid joints is drawn at 0.6 of its colour; limbs to the invalid joint are not
    a, b = OPENPOSE_LIMBS[2]  # right shoulder - right elbow, 25 px apart
    mid = ((uv[a] + uv[b]) / 2).long().tolist()
    assert tuple(canvas[mid[1], mid[0]]) == tuple(int(c * LIMB_COLOR_SCALE) for c in OPENPOSE_COLORS[2])
    knee_limbs = [k for k, limb in enumerate(OPENPOSE_LIMBS) if OP["left_knee"] in limb]
    for k in knee_limbs:
        a, b = OPENPOSE_LIMBS[k]
        x, y = ((uv[a] + uv[b]) / 2).long().tolist()
        assert tuple(canvas[y, x]) != tuple(int(c * LIMB_COLOR_SCALE) for c in OPENPOSE_COLORS[k])
    assert not canvas[:, 200:].any()  # nothing outside the drawn skeleton


def test_self_occlusion_marks_hidden_and_off_image_joints():
    uv = torch.tensor([[10.5, 10.5], [20.5, 10.5], [30.5, 10.5], [40.5, 10.5], [70.5, 10.5], [-3.0, 5.0]])
    depth = torch.full((6,), 3.0)
    depth_map = torch.full((32, 64), float("inf"))
    depth_map[10, 10] = 2.9  # body surface 10 cm in front of joint 0: visible
    depth_map[10, 20] = 2.5  # another body part 50 cm in front of joint 1: hidden
    depth_map[10, 30] = 0.0  # joint 2 projects where no body is (0 marks empty): invalid
    # joint 3 lands on inf (empty), joints 4 and 5 fall off the image
    valid = self_occlusion_valid(uv, depth, depth_map, tol=0.3)
    assert valid.tolist() == [True, False, False, False, False, False]


def test_self_occlusion_with_the_body_seen_from_its_left(body):
    poses = torch.zeros(1, 72)
    poses[0, 3 * 16 + 2], poses[0, 3 * 17 + 2] = -1.3, 1.3  # arms down along the body
    posed = body(poses, torch.zeros(1, 10), torch.zeros(1, 3))
    camera = canonical_camera(90.0)  # on +x: the left arm and the torso hide the right arm
    verts_uv, verts_z = camera.project(posed.vertices[0])
    # point z-buffer of the vertices, each splatted over 7x7 pixels (vertex spacing is ~4 px here)
    depth_map = np.full((camera.height, camera.width), np.inf)
    cols, rows = np.floor(verts_uv[:, 0].numpy()).astype(int), np.floor(verts_uv[:, 1].numpy()).astype(int)
    for dr in range(-3, 4):
        for dc in range(-3, 4):
            pixels = (np.clip(rows + dr, 0, 511), np.clip(cols + dc, 0, 511))
            np.minimum.at(depth_map, pixels, verts_z.numpy())
    uv, depth = project_openpose(openpose18(posed.joints45)[0], camera)
    valid = self_occlusion_valid(uv, depth, torch.from_numpy(depth_map), tol=0.3)
    for part in ("shoulder", "elbow", "wrist"):
        assert valid[OP[f"left_{part}"]] and not valid[OP[f"right_{part}"]], part


def test_canonical_canvases_cover_18_azimuths_and_mirror_front_and_back(body):
    canvases = canonical_openpose_canvases(body)
    assert sorted(canvases) == sorted(CANONICAL_HORS) and len(canvases) == 18
    for canvas in canvases.values():
        assert canvas.shape == (512, 512, 3) and canvas.dtype == np.uint8 and canvas.any()

    def centre_of(canvas: np.ndarray, name: str) -> np.ndarray:
        """(2,) mean (col, row) of the pixels in a joint's colour (limbs are darker, so never match)."""
        rows, cols = np.nonzero((canvas == OPENPOSE_COLORS[OP[name]]).all(axis=-1))
        assert len(rows) > 20, name
        return np.array([cols.mean(), rows.mean()])

    front, back = canvases[0], canvases[180]
    for part in ("shoulder", "elbow", "wrist", "hip", "ankle"):
        left_front, right_front = centre_of(front, f"left_{part}"), centre_of(front, f"right_{part}")
        left_back = centre_of(back, f"left_{part}")
        assert left_front[0] > 256 > right_front[0] and left_back[0] < 256, part
        # the back view is the front view mirrored: left and right swap sides (the body is symmetric)
        np.testing.assert_allclose(left_back, [511 - left_front[0], left_front[1]], atol=3)
        np.testing.assert_allclose(left_back, right_front, atol=3)
