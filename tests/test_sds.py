"""Score distillation on silhouettes: the maths of one step, the schedule, where gradients go."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from occfusion_core.priors.configs import DiffusionModels, GuidanceConfig  # noqa: E402
from occfusion_core.priors.diffusion import sds_models_from_config  # noqa: E402
from occfusion_core.priors.sds import (  # noqa: E402
    CANONICAL,
    POSE,
    CanonicalViews,
    SilhouetteSDS,
    canonical_weight_mask,
    choose_branch,
    posed_openpose_canvas,
    posed_sds_input,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def models():
    return sds_models_from_config(GuidanceConfig(models=DiffusionModels(source="tiny")), "cpu")


@pytest.fixture(scope="module")
def sds(models):
    return SilhouetteSDS(models, GuidanceConfig())


def _canvas(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_timestep_anneals_from_980_to_20(sds):
    assert sds.timestep(1, 1200) == 980  # round(1000) clipped to the t_range top
    assert sds.timestep(1200, 1200) == 20
    assert sds.timestep(600, 1200) == round((1 - 599 / 1199) * 1000)
    ts = [sds.timestep(i, 50) for i in range(1, 51)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    random_sds = SilhouetteSDS(sds.models, GuidanceConfig(timestep_schedule="random", t_range=(0.3, 0.4)))
    draws = {random_sds.timestep(1, 10, torch.Generator().manual_seed(i)) for i in range(30)}
    assert min(draws) >= 300 and max(draws) <= 400 and len(draws) > 5


def test_step_loss_is_the_published_formula(sds):
    """Rebuild the loss from the public pieces with the same random stream and compare."""
    alpha = torch.rand(40, 24, 1)
    control = _canvas(40, 24)
    weight = torch.zeros(40, 24)
    weight[:, 12:] = 1.0
    loss = sds.step(alpha, control, weight, iteration=3, total_iterations=10,
                    generator=torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)
    image = torch.nn.functional.interpolate(alpha.permute(2, 0, 1)[None].expand(-1, 3, -1, -1), (256, 256),
                                            mode="bilinear", align_corners=False)
    with torch.no_grad():
        z = sds.encode(image, gen).float()
        t = sds.timestep(3, 10)
        eps = torch.randn(z.shape, generator=gen)
        noisy = sds.models.scheduler.add_noise(z, eps, torch.tensor([t]))
        eps_hat = sds.predict_noise(noisy, t, sds.prepare_control(control))
    w = 1 - sds.models.scheduler.alphas_cumprod[t]
    mask = torch.nn.functional.interpolate(weight[None, None], z.shape[-2:], mode="bilinear", align_corners=False)
    expected = 0.5 * (mask * (w * (eps_hat - eps)) ** 2).sum()
    assert t == round((1 - 2 / 9) * 1000) == sds.last_timestep
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    assert float(loss) > 0


def test_guidance_scale_zero_is_the_negative_prompt_prediction(models):
    by_scale = {s: SilhouetteSDS(models, GuidanceConfig(guidance_scale=s)) for s in (0.0, 1.0, 2.0)}
    noisy = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    control = by_scale[0.0].prepare_control(_canvas(64, 64))
    eps = {s: m.predict_noise(noisy, 500, control) for s, m in by_scale.items()}
    # s = 1 gives eps_pos, s = 2 gives 2 eps_pos - eps_neg: so eps_neg = 2 eps(1) - eps(2)
    torch.testing.assert_close(eps[0.0], 2 * eps[1.0] - eps[2.0], rtol=1e-3, atol=1e-4)
    assert not torch.allclose(eps[0.0], eps[1.0])  # the two prompts do differ


def test_step_is_fast_and_gradients_reach_alpha_only_where_hidden(sds):
    H, W = 64, 48
    alpha = torch.rand(H, W, 1, requires_grad=True)
    visible = torch.zeros(H, W, 1, dtype=torch.bool)
    visible[:, : W // 2] = True
    box = (4, 2, 44, 62)
    canvas = _canvas(H, W)
    posed = posed_sds_input(alpha, visible, canvas, box)
    assert posed.alpha.shape == (60, 40, 1) and posed.control.shape == (60, 40, 3)
    torch.testing.assert_close(posed.weight_mask, 1.0 - visible[2:62, 4:44, 0].float())
    sds.step(posed.alpha, posed.control, posed.weight_mask, 1, 10).backward()  # warm-up
    times = []
    for _ in range(3):  # the fastest of three: robust to a busy shared machine
        alpha.grad = None
        t0 = time.perf_counter()
        posed = posed_sds_input(alpha, visible, canvas, box)
        loss = sds.step(posed.alpha, posed.control, posed.weight_mask, iteration=2, total_iterations=10,
                        generator=torch.Generator().manual_seed(0))
        loss.backward()
        times.append(time.perf_counter() - t0)
    assert min(times) < 1.0, f"one SDS step (forward + backward) took {min(times):.2f} s"
    grad = alpha.grad[..., 0]
    inside_box = torch.zeros(H, W, dtype=torch.bool)
    inside_box[2:62, 4:44] = True
    assert torch.count_nonzero(grad[visible[..., 0]]) == 0  # blocked inside the visible mask
    assert torch.count_nonzero(grad[~inside_box]) == 0  # nothing outside the crop
    hidden = ~visible[..., 0] & inside_box
    assert (grad[hidden] != 0).float().mean() > 0.9
    # with the weighting mask off everywhere, nothing moves at all
    alpha.grad = None
    posed = posed_sds_input(alpha, visible, canvas, box)
    sds.step(posed.alpha, posed.control, torch.zeros_like(posed.weight_mask), 2, 10).backward()
    assert torch.count_nonzero(alpha.grad) == 0


def test_sds_gradients_reach_only_gaussians_where_the_person_is_hidden(sds):
    """A tiny differentiable Gaussian scene: Gaussians drawn inside the visible mask get no gradient."""
    from occfusion_core.render.camera import Camera
    from occfusion_core.render.rasterize import rasterize

    H = W = 48
    camera = Camera(torch.tensor([[60.0, 0, 24], [0, 60.0, 24], [0, 0, 1]]), torch.eye(4), W, H)
    xs = torch.linspace(-0.8, 0.8, 5)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)  # u = 20 x + 24
    means = torch.cat([grid, torch.full((len(grid), 1), 3.0)], 1).requires_grad_(True)
    opacities = torch.full((len(grid),), 0.8, requires_grad=True)
    n = len(grid)
    out = rasterize(means, opacities, camera, quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).contiguous(),
                    scales=torch.full((n, 3), 0.05), colors=torch.full((n, 3), 0.5), backend="torch")
    visible = torch.zeros(H, W, 1, dtype=torch.bool)
    visible[:, :24] = True  # left half seen: Gaussians at u = 8, 16 (x = -0.8, -0.4) are drawn there
    posed = posed_sds_input(out.alpha, visible, _canvas(H, W), (0, 0, W, H))
    sds.step(posed.alpha, posed.control, posed.weight_mask, 1, 10,
             generator=torch.Generator().manual_seed(0)).backward()
    column = torch.round((grid[:, 0] + 0.8) / 0.4).long()  # 0..4, left to right
    seen = column <= 1
    hidden = column >= 3
    assert torch.count_nonzero(opacities.grad[seen]) == 0 and torch.count_nonzero(means.grad[seen]) == 0
    assert bool((opacities.grad[hidden] != 0).all())
    assert bool((means.grad[hidden].abs().sum(1) > 0).all())


def test_choose_branch_matches_the_released_draw():
    rng, released = np.random.default_rng(5), np.random.default_rng(5)
    draws = [choose_branch(rng) for _ in range(4000)]
    assert draws == [POSE if released.uniform() > 0.25 else CANONICAL for _ in range(4000)]
    assert abs(draws.count(POSE) / 4000 - 0.75) < 0.03
    assert {choose_branch(np.random.default_rng(i), p_pose=0.0) for i in range(20)} == {CANONICAL}


def test_canonical_views_and_posed_canvas(sds, proxy_body):
    views = CanonicalViews(proxy_body, sds, hors=(0, 90, -160))
    hor, camera, control = views.sample(np.random.default_rng(0))
    assert hor in (0, 90, -160) and camera.width == camera.height == 512
    assert control.shape == (1, 3, 256, 256) and 0 <= float(control.min()) and float(control.max()) <= 1
    assert float(control.max()) > 0.5  # the skeleton is drawn
    alpha = torch.zeros(8, 8, 1)
    alpha[2:5, 3:6] = 0.5
    alpha[0, 0] = 0.005
    weight = canonical_weight_mask(alpha)
    assert weight.shape == (8, 8) and float(weight.sum()) == 9.0
    with torch.no_grad():
        joints45 = proxy_body(torch.zeros(1, 72), torch.zeros(1, 10), torch.tensor([[0.0, 0.0, 3.0]])).joints45[0]
    from occfusion_core.render.camera import Camera

    camera = Camera(torch.tensor([[80.0, 0, 32], [0, 80.0, 48], [0, 0, 1]]),
                    torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])) @ torch.eye(4), 64, 96)
    canvas = posed_openpose_canvas(joints45, camera)
    assert canvas.shape == (96, 64, 3) and canvas.dtype == np.uint8 and canvas.any()


@pytest.fixture(scope="module")
def guided_subject(tmp_path_factory):
    """A 4-frame 64 px subject on a coarse proxy body, for stage 1 with SDS on the tiny models."""
    from occfusion_core.body.model import load_body_model
    from occfusion_core.body.proxy import write_proxy_smpl
    from occfusion_core.config import SyntheticConfig
    from occfusion_core.data.synthetic import generate_synthetic_subject

    root = tmp_path_factory.mktemp("guided")
    body_path = write_proxy_smpl(root / "body.pkl", grid_mm=40)
    generate_synthetic_subject(root / "data", SyntheticConfig(frames=4, width=64, height=64, heldout_views=0),
                               load_body_model(body_path))
    return root / "data", body_path


def _gradient_norm(loss, params) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))


def test_pixel_and_sds_terms_keep_the_released_balance(guided_subject):
    """The released stage 1 multiplies the pixel loss by 10000 and weighs SDS by 20. Measured on
    the Gaussians' gradients, the two terms then pull with comparable strength (pixel/SDS about
    0.7-3.4 on the tiny models); without the factor SDS would outweigh the pixels about 4000-fold."""
    from occfusion_core.body.model import load_body_model
    from occfusion_core.config import OptimizeConfig
    from occfusion_core.data.sequence import read_sequence
    from occfusion_core.gaussians.human import HumanGaussians
    from occfusion_core.gaussians.rendering import render_gaussians
    from occfusion_core.stages.frames import load_training_frames
    from occfusion_core.stages.guidance import Stage1Guidance
    from occfusion_core.stages.optimize import stage1_losses

    data, body_path = guided_subject
    body = load_body_model(body_path)
    frames = load_training_frames(read_sequence(data), body, [1.0, 1.0, 1.0], "cpu")
    cfg = OptimizeConfig(lambda_lpips=0.0, sds=GuidanceConfig(enabled=True, models=DiffusionModels(source="tiny")))
    assert cfg.pixel_loss_scale == 10000.0 and cfg.sds.pose_weight == cfg.sds.canonical_weight == 20.0
    model = HumanGaussians(body)
    guidance = Stage1Guidance(cfg.sds, model, body, frames, "cpu")
    params = [model.opacity, model.xyz, model.scaling]
    ratios = []
    for k in range(6):
        frame = frames[k % len(frames)]
        out = render_gaussians(model.deform(frame.poses, frame.betas, frame.trans), frame.camera, torch.ones(3), "auto")
        pixel = stage1_losses(out, frame, cfg, None)["total"]
        sds_total = guidance.terms(out, frame, 600, 1200, "auto")["total"]
        ratios.append(_gradient_norm(cfg.pixel_loss_scale * pixel, params) / _gradient_norm(sds_total, params))
    ratio = float(np.median(ratios))
    assert 0.2 < ratio < 50.0, ratios
    assert ratio / cfg.pixel_loss_scale < 1e-2  # the unscaled pixel loss would drown in SDS


def test_optimize_runs_with_sds_through_stage1_guidance(guided_subject, tmp_path):
    """Stage 1 end to end with SDS on (tiny random models: a smoke test of the code path, not a prior)."""
    from occfusion_core.config import OptimizeConfig
    from occfusion_core.io import load_torch
    from occfusion_core.stages.optimize import optimize

    data, body_path = guided_subject
    cfg = OptimizeConfig(iterations=8, checkpoint_every=100, log_every=1, backend="auto", device="cpu",
                         lambda_lpips=0.0, sds=GuidanceConfig(enabled=True, models=DiffusionModels(source="tiny")))
    optimize(data, body_path, cfg, tmp_path / "model.pt", tmp_path / "renders", tmp_path / "ckpt", progress=False)
    saved = load_torch(tmp_path / "model.pt")
    assert "SDS (tiny random models" in saved["methods"]["stage1"]
    branches = {k for row in saved["history"] for k in row if k.startswith("sds_")}
    assert branches and branches <= {"sds_pose", "sds_canonical"}
    assert "sds_pose" in saved["history"][-1]  # the last iteration takes the posed branch (released)
    assert all(np.isfinite(row["total"]) for row in saved["history"])
