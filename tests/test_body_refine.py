"""Per-frame refinement of the body estimate (stages 1 and 3) and the alignment of the estimate to
the visible evidence (stage 0)."""

import math

import numpy as np
import pytest
import torch

from occfusion_core.body.refine import BodyRefinement, rotation_error_deg
from occfusion_core.config import BodyRefineConfig, OptimizeConfig, SyntheticConfig
from occfusion_core.data.synthetic import generate_synthetic_subject
from occfusion_core.io import load_torch, read_json


def _refinement(frames=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    poses = 0.3 * torch.randn(frames, 72, generator=gen)
    trans = torch.randn(frames, 3, generator=gen)
    betas = torch.randn(frames, 10, generator=gen)
    return BodyRefinement(poses, trans, [f"{i:05d}" for i in range(frames)], betas), poses, trans, betas


def test_corrections_start_at_the_estimate_and_round_trip():
    body, poses, trans, betas = _refinement()
    p, b, t = body.frame(2)
    assert torch.equal(p, poses[2]) and torch.equal(b, betas[2]) and torch.equal(t, trans[2])
    reg = body.regularizer(BodyRefineConfig())
    assert float(reg["body_prior"]) == 0.0
    with torch.no_grad():
        body.delta_pose[1, 5] = 0.1
        body.delta_trans[3] = torch.tensor([0.01, 0.0, -0.02])
        body.delta_betas[0] = 0.5
    again = BodyRefinement.from_capture(body.capture())
    for a, b_ in zip(again.all_frames(), body.all_frames()):
        assert torch.equal(a, b_)
    assert float(again.regularizer(BodyRefineConfig(refine_shape=True))["body_prior"]) > 0
    with pytest.raises(ValueError, match="other frames"):
        BodyRefinement(poses[:4], trans[:4], ["a", "b", "c", "d"], betas[:4]).restore(body.capture())


def test_the_prior_fades_on_what_a_frame_shows():
    """Full prior weight on a joint the frame hides, the 'seen' weight on one it shows, kept by a capture."""
    body, *_ = _refinement(frames=2)
    cfg = BodyRefineConfig(prior_pose=0.5, prior_pose_seen=0.01, prior_trans=50.0, prior_trans_seen=1.0)
    with torch.no_grad():
        body.delta_pose[0, 3 * 18] = 0.2  # left elbow of frame 0
        body.delta_trans[1, 0] = 0.1
    hidden = float(body.regularizer(cfg)["body_prior"])
    assert hidden == pytest.approx((0.5 * 0.2**2) / (2 * 72) + (50.0 * 0.1**2) / (2 * 3), rel=1e-5)
    body.seen[0, 18] = 1.0  # frame 0 shows the elbow; frame 1 shows everything
    body.seen[1] = 1.0
    shown = float(body.regularizer(cfg)["body_prior"])
    assert shown == pytest.approx((0.01 * 0.2**2) / (2 * 72) + (1.0 * 0.1**2) / (2 * 3), rel=1e-5)
    assert torch.equal(BodyRefinement.from_capture(body.capture()).seen, body.seen)


def test_seen_share_tells_a_limb_in_view_from_one_behind_an_occluder(proxy_body):
    """Measured on the estimate's own silhouette: everything shown; with the lower half of the
    silhouette hidden, the legs are not and the head still is; a few pixels of error do not count."""
    from occfusion_core.body.model import JOINT_NAMES
    from occfusion_core.body.refine import seen_share
    from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at
    from occfusion_core.render.mesh import rasterize_mesh

    poses, betas, trans = torch.zeros(1, 72), torch.zeros(1, 10), torch.tensor([[0.0, 0.2, 0.0]])
    camera = Camera(K=intrinsics_from_fov(96, 96, 40.0), w2c=look_at((0.0, 0.0, 4.0), (0.0, 0.0, 0.0)),
                    width=96, height=96)
    silhouette = rasterize_mesh(proxy_body(poses, betas, trans).vertices[0], proxy_body.faces, camera).mask.numpy()
    joint = {name: j for j, name in enumerate(JOINT_NAMES)}
    full = seen_share(proxy_body, poses, betas, trans, [camera], [silhouette])[0]
    assert full.min() > 0.95
    shifted = seen_share(proxy_body, poses, betas, trans, [camera], [np.roll(silhouette, 2, axis=1)])[0]
    assert shifted.min() > 0.95  # 2 px of error: still in view
    rows = np.nonzero(silhouette.any(1))[0]
    upper = silhouette.copy()
    upper[(rows[0] + rows[-1]) // 2:] = False  # an occluder over the lower half
    half = seen_share(proxy_body, poses, betas, trans, [camera], [upper])[0]
    assert half[joint["left_ankle"]] < 0.05 and half[joint["right_foot"]] < 0.05 and half[joint["head"]] > 0.95
    assert seen_share(proxy_body, poses, betas, trans, [camera], [np.zeros_like(silhouette)]).abs().max() == 0


def test_smoothness_ignores_a_steady_turn_through_180_degrees():
    """Second differences of rotation matrices: a constant turn costs next to nothing even where the
    axis-angle vector flips sign at 180 degrees; a jitter of one frame costs."""
    angles = np.radians(np.arange(150, 215, 5.0))  # crosses 180
    poses = torch.zeros(len(angles), 72)
    poses[:, 1] = torch.tensor(np.where(angles <= np.pi, angles, angles - 2 * np.pi), dtype=torch.float32)
    body = BodyRefinement(poses, torch.zeros(len(angles), 3), [f"{i:05d}" for i in range(len(angles))])
    cfg = BodyRefineConfig(smooth_pose=1.0)
    steady = float(body.regularizer(cfg)["body_smooth"])
    with torch.no_grad():
        body.delta_pose[6, 1] = 0.1
    assert float(body.regularizer(cfg)["body_smooth"]) > 20 * steady


def test_rotation_error_is_geodesic():
    a = np.zeros((1, 72))
    b = np.zeros((1, 72))
    b[0, 3:6] = [0.0, np.radians(30.0), 0.0]
    err = rotation_error_deg(a, b)
    assert err.shape == (1, 24) and err[0, 1] == pytest.approx(30.0, abs=1e-6) and err[0, 0] == 0.0


@pytest.mark.slow
def test_refinement_moves_a_noisy_estimate_towards_the_truth(proxy_body_path, proxy_body, tmp_path, one_torch_thread):
    """Stage 1 on a noisy, unoccluded subject: the refined poses and translations are closer to the
    exact ones than the estimate was (mean joint angle and translation errors both fall), and the
    renders of the training frames use them."""
    from occfusion_core.stages.optimize import optimize

    data = tmp_path / "data"
    generate_synthetic_subject(data, SyntheticConfig(frames=12, width=96, height=96, occlusion="none",
                                                     heldout_views=0, pose_noise_deg=6.0, trans_noise_m=0.03,
                                                     seed=3), proxy_body)
    cfg = OptimizeConfig(iterations=360, checkpoint_every=10**6, log_every=60, backend="auto", device="cpu",
                         lambda_lpips=0.0)
    optimize(data, proxy_body_path, cfg, tmp_path / "model.pt", tmp_path / "renders", tmp_path / "ckpt",
             progress=False)
    record = load_torch(tmp_path / "model.pt")["body_refinement"]
    meta, clean = read_json(data / "metadata.json"), read_json(data / "gt" / "clean_metadata.json")
    names = record["names"]
    exact = np.array([clean[n]["poses"] for n in names])
    estimate = np.array([meta[n]["poses"] for n in names])
    refined = (record["estimate_poses"] + record["delta_pose"]).double().numpy()
    before, after = rotation_error_deg(estimate, exact).mean(), rotation_error_deg(refined, exact).mean()
    exact_t = np.array([clean[n]["trans"] for n in names])
    before_t = np.linalg.norm(np.array([meta[n]["trans"] for n in names]) - exact_t, axis=1).mean()
    after_t = np.linalg.norm((record["estimate_trans"] + record["delta_trans"]).double().numpy() - exact_t,
                             axis=1).mean()
    print(f"\nmean joint angle error {before:.2f} -> {after:.2f} deg, translation {100 * before_t:.2f} -> "
          f"{100 * after_t:.2f} cm")
    assert after < before - 0.2
    assert after_t < before_t
    assert record["mean_correction_deg"] > 0.5


def test_fitting_the_pose_to_a_view_undoes_an_error_the_view_sees(make_model, one_torch_thread):
    """Test-time pose fit (metrics' heldout_body_fitted): a body 4 cm and 8 degrees off, seen by a
    side camera, moves back to where the target render put it; the avatar itself does not change."""
    from occfusion_core.body.refine import fit_pose_to_view
    from occfusion_core.gaussians.rendering import render_gaussians
    from occfusion_core.render.camera import Camera, look_at

    model = make_model(pose_refiner=False, lbs_offsets=False)
    with torch.no_grad():  # a texture to align (the initial Gaussians are one grey)
        model.features_dc.copy_(torch.rand(model.features_dc.shape, generator=torch.Generator().manual_seed(0)))
    model.requires_grad_(False)
    before = [p.clone() for p in model.parameters()]
    camera = Camera(torch.tensor([[90.0, 0, 32], [0, 90.0, 32], [0, 0, 1]]),
                    look_at((3.0, 0.2, 0.0), (0.0, 0.2, 0.0)), 64, 64)  # looking along the x axis
    background = torch.ones(3)
    betas = torch.zeros(10)

    def render(poses, trans):
        out = render_gaussians(model.deform(poses, betas, trans), camera, background, "auto")
        return out.rgb, out.alpha[..., 0]

    true_poses, true_trans = torch.zeros(72), torch.zeros(3)
    with torch.no_grad():
        image, alpha = render(true_poses, true_trans)
    start_poses = true_poses.clone()
    start_poses[1] = math.radians(8.0)  # the root turned about the vertical axis
    start_trans = torch.tensor([0.0, 0.0, 0.04])  # sideways for this camera, depth for one on +z

    def error(poses, trans):
        with torch.no_grad():
            return float((render(poses, trans)[0] - image).abs().mean())

    poses, trans = fit_pose_to_view(render, start_poses, start_trans, image, alpha, steps=40)
    assert error(poses, trans) < 0.5 * error(start_poses, start_trans)
    assert abs(float(trans[2])) < 0.02
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
