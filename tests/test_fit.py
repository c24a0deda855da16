"""Body fitting to keypoints: joints-only kinematics, the landmark mapping, initialisation, and recovery
of a known motion from its synthesised MediaPipe-like detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from occfusion_core.body.configs import FitConfig
from occfusion_core.body.fit import (
    CAMERA_W2C,
    JOINT_LIMITS_HIGH,
    JOINT_LIMITS_LOW,
    JointsFK,
    camera_w2c,
    fit_body,
    frames_seen,
    initial_guess,
    ray_rotation,
    synthesize_detections,
)
from occfusion_core.body.landmarks import LANDMARK_FROM_JOINTS45, LANDMARK_NAMES, LANDMARK_WEIGHTS

K = np.array([[500.0, 0.0, 256.0], [0.0, 500.0, 256.0], [0.0, 0.0, 1.0]])
# Joints whose rotation the keypoints pin down: root, hips, knees, shoulders, elbows.
CONSTRAINED = [0, 1, 2, 4, 5, 16, 17, 18, 19]


def test_joints_fk_matches_body_model(proxy_body):
    rng = np.random.default_rng(0)
    poses = torch.tensor(rng.normal(0, 0.4, (3, 72)), dtype=torch.float32)
    betas = torch.tensor(rng.normal(0, 1.0, (3, 10)), dtype=torch.float32)
    trans = torch.tensor(rng.normal(0, 1.0, (3, 3)), dtype=torch.float32)
    joints, rot = JointsFK(proxy_body)(poses, betas, trans)
    expected = proxy_body(poses, betas, trans).joints45
    assert joints.shape == (3, 45, 3) and rot.shape == (3, 24, 3, 3)
    torch.testing.assert_close(joints, expected, atol=1e-5, rtol=0)


def test_landmark_mapping_is_consistent():
    assert LANDMARK_FROM_JOINTS45.shape == (33, 45) and len(LANDMARK_NAMES) == 33
    np.testing.assert_allclose(LANDMARK_FROM_JOINTS45.sum(1), 1.0)
    used = {LANDMARK_NAMES[i] for i in np.flatnonzero(LANDMARK_WEIGHTS)}
    for name in ("nose", "left_eye", "right_ear", "left_shoulder", "right_elbow", "left_wrist", "right_hip",
                 "left_knee", "right_ankle", "left_heel", "right_foot_index"):
        assert name in used
    assert "mouth_left" not in used
    # the subject's left hip landmark lies on the subject's left (+x in SMPL's rest frame)
    left, right = LANDMARK_NAMES.index("left_hip"), LANDMARK_NAMES.index("right_hip")
    assert LANDMARK_FROM_JOINTS45[left, 1] > 1.0 and LANDMARK_FROM_JOINTS45[right, 2] > 1.0


def test_ray_rotation_turns_the_optical_axis_onto_the_ray():
    uv = np.array([[256.0, 256.0], [456.0, 100.0]])
    R = ray_rotation(uv, K)
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-9)
    ray = np.linalg.solve(K, [456.0, 100.0, 1.0])
    np.testing.assert_allclose(R[1][:, 2], ray / np.linalg.norm(ray), atol=1e-9)


def _motion(frames: int, seed: int = 1) -> np.ndarray:
    """(T, 72) a natural-looking pose sequence: per joint, slerp between two random poses with bent
    knees and elbows, the spine, neck and collars close to rest and no forearm roll."""
    def pose(r):
        q = np.zeros(72)
        q[0:3] = [r.uniform(-0.1, 0.2), r.uniform(-0.8, 0.8), r.uniform(-0.1, 0.1)]
        q[3:6] = [r.uniform(-1.0, 0.2), r.uniform(-0.15, 0.15), r.uniform(-0.1, 0.5)]  # left hip
        q[6:9] = [r.uniform(-1.0, 0.2), r.uniform(-0.15, 0.15), r.uniform(-0.5, 0.1)]  # right hip
        q[12], q[15] = r.uniform(0.3, 1.2), r.uniform(0.3, 1.2)  # knees
        q[48:51] = [r.uniform(-0.15, 0.15), r.uniform(-1.0, 0.3), r.uniform(-1.2, 0.5)]  # left shoulder
        q[51:54] = [r.uniform(-0.15, 0.15), r.uniform(-0.3, 1.0), r.uniform(-0.5, 1.2)]  # right shoulder
        q[55], q[58] = r.uniform(-1.5, -0.3), r.uniform(0.3, 1.5)  # elbows
        for j in (3, 6, 9, 12, 15):
            q[3 * j:3 * j + 3] = r.uniform(-0.08, 0.08, 3)
        return q

    rng = np.random.default_rng(seed)
    a, b = pose(rng), pose(rng)
    poses = np.zeros((frames, 72))
    for j in range(24):
        key = Rotation.from_rotvec(np.stack([a[3 * j:3 * j + 3], b[3 * j:3 * j + 3]]))
        poses[:, 3 * j:3 * j + 3] = Slerp([0.0, 1.0], key)(np.linspace(0.0, 1.0, frames)).as_rotvec()
    assert np.all(poses.reshape(frames, 24, 3)[:, 1:] >= JOINT_LIMITS_LOW[1:] - 1e-9)
    assert np.all(poses.reshape(frames, 24, 3)[:, 1:] <= JOINT_LIMITS_HIGH[1:] + 1e-9)
    return poses


def _scene(body, frames: int, noise_px: float, noise_m: float, seed: int = 1, w2c=CAMERA_W2C):
    rng = np.random.default_rng(seed)
    poses = _motion(frames, seed)
    betas = rng.normal(0.0, 0.5, 10)
    # 3 m in front of the camera, whatever its pitch
    forward = -w2c[2, :3] * np.array([0.0, 1.0, 1.0]) / np.linalg.norm(w2c[2, 1:3])
    trans = np.stack([np.linspace(-0.3, 0.3, frames), np.zeros(frames), np.zeros(frames)], 1) - 3.0 * forward
    keypoints, world = synthesize_detections(body, poses, betas, trans, K, w2c)
    keypoints = keypoints + rng.normal(0.0, noise_px, keypoints.shape)
    world = world + rng.normal(0.0, noise_m, world.shape)
    return poses, betas, trans, keypoints, world


def _geodesic_deg(poses_a: np.ndarray, poses_b: np.ndarray) -> np.ndarray:
    """(T, 72) x 2 -> (T, 24) angle of the relative rotation per joint, degrees."""
    Ra = Rotation.from_rotvec(poses_a.reshape(-1, 3))
    Rb = Rotation.from_rotvec(poses_b.reshape(-1, 3))
    return np.degrees((Ra.inv() * Rb).magnitude()).reshape(len(poses_a), 24)


def test_initial_guess_places_the_body_in_front_of_the_camera(proxy_body):
    poses, _, trans, keypoints, world = _scene(proxy_body, 4, 0.0, 0.0)
    weights = np.tile(LANDMARK_WEIGHTS, (4, 1))
    orient, trans0 = initial_guess(JointsFK(proxy_body), keypoints, weights, K, world)
    # depth from similar triangles: within 15 % of the truth (the rest body is not the posed one)
    assert np.all(np.abs(trans0[:, 2] / trans[:, 2] - 1.0) < 0.15)
    # orientation from the torso: within 20 degrees (the rest torso vs a posed one)
    error = np.degrees((Rotation.from_rotvec(orient).inv() * Rotation.from_rotvec(poses[:, :3])).magnitude())
    assert np.all(error < 20.0), error


def test_fit_recovers_a_known_motion(proxy_body):
    T = 8
    poses, betas, trans, keypoints, world = _scene(proxy_body, T, noise_px=1.0, noise_m=0.01)
    visibility = np.full((T, 33), 0.95)
    result = fit_body(proxy_body, keypoints, visibility, K, world, FitConfig(progress=False))

    assert result.poses.shape == (T, 72) and result.betas.shape == (10,) and result.trans.shape == (T, 3)
    np.testing.assert_array_equal(result.w2c, CAMERA_W2C)
    error = _geodesic_deg(poses, result.poses)[:, CONSTRAINED]
    assert error.mean() < 10.0, f"mean joint error {error.mean():.1f} deg; per joint {error.mean(0).round(1)}"
    # reprojection close to the 1 px noise on a ~270 px tall person
    assert np.nanmean(result.residual_fraction) < 0.015
    assert np.all(np.isfinite(result.residual_px))
    assert np.abs(result.trans[:, 2] - trans[:, 2]).max() < 0.3  # depth within 10 % at 3 m


def test_camera_w2c_pitch():
    np.testing.assert_allclose(camera_w2c(0.0), CAMERA_W2C, atol=1e-12)
    w2c = camera_w2c(20.0)
    axis = w2c[2, :3]  # optical axis in world coordinates
    np.testing.assert_allclose(axis, [0.0, -np.sin(np.radians(20.0)), -np.cos(np.radians(20.0))], atol=1e-12)
    assert w2c[1, 1] < 0  # image rows still go down the world's y


def test_fit_ignores_invisible_keypoints_under_a_pitched_camera(proxy_body):
    """Keypoints below min_visibility are wrong on purpose; the fit must not follow them. The camera
    looks down 25 degrees and is given: the body comes out upright in the world."""
    T = 4
    w2c = camera_w2c(25.0)
    poses, betas, trans, keypoints, world = _scene(proxy_body, T, noise_px=0.5, noise_m=0.005, seed=3, w2c=w2c)
    visibility = np.full((T, 33), 0.95)
    wrist = LANDMARK_NAMES.index("left_wrist")
    keypoints[:, wrist] += 150.0
    visibility[:, wrist] = 0.1
    cfg = FitConfig(progress=False, iterations_global=30, iterations_pose=150, iterations_all=60)
    result = fit_body(proxy_body, keypoints, visibility, K, world, cfg, w2c=w2c)
    assert np.isnan(result.landmark_error_px[wrist])
    assert np.nanmean(result.residual_fraction) < 0.03
    np.testing.assert_array_equal(result.w2c, w2c)
    # the trunk (pelvis -> neck) leans in the world as the true one does: the pitch was applied
    fk = JointsFK(proxy_body)
    f32 = dict(dtype=torch.float32)
    true_joints, _ = fk(torch.tensor(poses, **f32), torch.tensor(np.tile(betas, (T, 1)), **f32),
                        torch.tensor(trans, **f32))
    fit_joints, _ = fk(torch.tensor(result.poses, **f32), torch.tensor(np.tile(result.betas, (T, 1)), **f32),
                       torch.tensor(result.trans, **f32))
    trunk_true = torch.nn.functional.normalize(true_joints[:, 12] - true_joints[:, 0], dim=-1)
    trunk_fit = torch.nn.functional.normalize(fit_joints[:, 12] - fit_joints[:, 0], dim=-1)
    lean_error = torch.rad2deg(torch.acos((trunk_true * trunk_fit).sum(-1).clamp(-1, 1)))
    assert lean_error.max() < 10.0, lean_error


def test_an_arm_no_keypoint_sees_hangs_down(proxy_body):
    """The right arm's shoulder, elbow, wrist and hand landmarks are hidden (visibility 0, as behind an
    occluder); the fit has no evidence for that arm and must leave it relaxed at the side, not in
    SMPL's T-pose straight out sideways: the wrist well below the shoulder and near the trunk."""
    T = 4
    poses, betas, trans, keypoints, world = _scene(proxy_body, T, noise_px=0.5, noise_m=0.005, seed=5)
    visibility = np.full((T, 33), 0.95)
    hidden = [i for i, name in enumerate(LANDMARK_NAMES)
              if name.startswith("right_") and name.split("_", 1)[1] in ("elbow", "wrist", "pinky", "index", "thumb")]
    visibility[:, hidden] = 0.0
    cfg = FitConfig(progress=False, iterations_global=30, iterations_pose=150, iterations_all=60)
    result = fit_body(proxy_body, keypoints, visibility, K, None, cfg)
    fk = JointsFK(proxy_body)
    f32 = dict(dtype=torch.float32)
    joints, _ = fk(torch.tensor(result.poses, **f32), torch.tensor(np.tile(result.betas, (T, 1)), **f32),
                   torch.tensor(result.trans, **f32))
    shoulder, wrist, pelvis = joints[:, 17], joints[:, 21], joints[:, 0]
    drop = (shoulder[:, 1] - wrist[:, 1]).numpy()  # world y is up
    reach = (wrist - pelvis)[:, [0, 2]].norm(dim=-1).numpy()  # sideways distance from the trunk
    assert np.all(drop > 0.3), drop
    assert np.all(reach < 0.45), reach


def test_a_frame_needs_its_trunk_to_anchor_the_fit():
    """A hand and a foot (four landmarks or more, but no shoulder or hip) do not place the body: the
    frame takes its neighbours' placement."""
    hands_and_foot = np.zeros((1, 33))
    hands_and_foot[0, [LANDMARK_NAMES.index(n) for n in ("right_wrist", "right_index", "left_index",
                                                          "right_knee", "left_ankle", "left_heel")]] = 0.9
    trunk = np.zeros((1, 33))
    trunk[0, [LANDMARK_NAMES.index(n) for n in ("left_shoulder", "left_hip", "left_knee", "left_ankle")]] = 0.9
    few = trunk.copy()
    few[0, LANDMARK_NAMES.index("left_ankle")] = 0.0
    assert list(frames_seen(np.concatenate([hands_and_foot, trunk, few]))) == [False, True, False]


def test_fit_rejects_bad_shapes(proxy_body):
    with pytest.raises(ValueError, match="keypoints"):
        fit_body(proxy_body, np.zeros((2, 17, 2)), np.zeros((2, 17)), K)
