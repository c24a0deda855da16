"""Gaussian rasterizer: projection and SH against gsplat's pure-torch implementation, compositing
against a brute-force per-pixel evaluation, gradients by finite differences, the entry point's
validation and the backend registry."""

from __future__ import annotations

import logging
import math
import sys
import types

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

from occfusion_core.render import backends
from occfusion_core.render.backends import torch_ref
from occfusion_core.render.camera import Camera, look_at
from occfusion_core.render.projection import project_gaussians, quat_scale_to_covar
from occfusion_core.render.rasterize import RenderOutput, rasterize, rasterize_to_pixels
from occfusion_core.render.sh import RGB2SH, SH2RGB, SH_C0, eval_sh, sh_to_rgb

ALPHA_MIN, ALPHA_MAX, T_MIN = 1.0 / 255.0, 0.999, 1e-4


def make_camera(width: int, height: int) -> Camera:
    """Off-centre principal point and fx != fy, so swapped axes show up."""
    K = torch.tensor([[1.1 * width, 0.0, 0.45 * width], [0.0, 1.0 * width, 0.55 * height], [0.0, 0.0, 1.0]])
    return Camera(K, look_at((0.4, -0.3, -4.0), (0.0, 0.0, 0.0)), width, height)


def random_scene(n: int, seed: int, dtype=torch.float64, spread: float = 1.0) -> dict[str, torch.Tensor]:
    """Gaussians around the origin (the camera looks at it from 4 m), plus some behind the camera,
    some close to its plane and some far off to the side."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * 2 * spread
    n_odd = n // 10
    means[:n_odd, 2] = -4.5 - torch.rand(n_odd, generator=gen, dtype=dtype) * 3  # behind the camera
    means[n_odd:2 * n_odd, 0] += 8.0  # off to the side
    means[2 * n_odd:3 * n_odd, 2] = -3.99 + 0.02 * torch.rand(n_odd, generator=gen, dtype=dtype)  # at the camera plane
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=gen, dtype=dtype),
        "scales": torch.exp(torch.empty(n, 3, dtype=dtype).uniform_(math.log(0.01), math.log(0.15), generator=gen)),
        "opacities": torch.rand(n, generator=gen, dtype=dtype),
        "colors": torch.rand(n, 3, generator=gen, dtype=dtype),
    }


def brute_force_composite(means2d, conics, colors, opacities, depths, radii, width, height):
    """Every pixel against every Gaussian, Gaussians one at a time in depth order, the rules of
    ``rasterize_to_pixels`` written out plainly. Returns image (H,W,C), alpha (H,W,1) and counts of
    how often each rule fired, so tests can check that a scene exercises them."""
    dtype = means2d.dtype
    rows = torch.arange(height, dtype=dtype)[:, None] + 0.5
    cols = torch.arange(width, dtype=dtype)[None, :] + 0.5
    transmittance = torch.ones(height, width, dtype=dtype)
    stopped = torch.zeros(height, width, dtype=torch.bool)
    image = torch.zeros(height, width, colors.shape[1], dtype=dtype)
    fired = {"negative_sigma": 0, "below_min_alpha": 0, "clamped": 0, "stopped": 0}
    order = sorted(range(len(depths)), key=lambda i: (float(depths[i]), i))
    for i in order:
        if not bool((radii[i] > 0).all()):
            continue
        dx = means2d[i, 0] - cols
        dy = means2d[i, 1] - rows
        in_box = (dx.abs() <= radii[i, 0].to(dtype)) & (dy.abs() <= radii[i, 1].to(dtype))
        sigma = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
        raw_alpha = opacities[i] * torch.exp(-sigma)
        alpha = torch.clamp_max(raw_alpha, ALPHA_MAX)
        live = in_box & ~stopped
        fired["negative_sigma"] += int((live & (sigma < 0)).sum())
        fired["below_min_alpha"] += int((live & (sigma >= 0) & (alpha < ALPHA_MIN)).sum())
        drawn = live & (sigma >= 0) & (alpha >= ALPHA_MIN)
        fired["clamped"] += int((drawn & (raw_alpha > ALPHA_MAX)).sum())
        next_t = transmittance * (1 - alpha)
        stop = drawn & (next_t <= T_MIN)
        fired["stopped"] += int(stop.sum())
        stopped |= stop
        add = drawn & ~stop
        image += torch.where(add, alpha * transmittance, 0.0)[..., None] * colors[i]
        transmittance = torch.where(add, next_t, transmittance)
    return image, (1 - transmittance)[..., None], fired


def random_splats(n: int, seed: int, width: int, height: int, dtype) -> dict[str, torch.Tensor]:
    """2D Gaussians for ``rasterize_to_pixels``: a dense opaque pile (to trigger the early stop),
    clamped opacities, depth ties, a few indefinite conics and some boxes hanging off the image."""
    gen = torch.Generator().manual_seed(seed)
    means2d = (torch.rand(n, 2, generator=gen, dtype=dtype)
               * torch.tensor([width + 10.0, height + 10.0], dtype=dtype) - 5)
    sx = torch.empty(n, dtype=dtype).uniform_(0.4, 6.0, generator=gen)
    sy = torch.empty(n, dtype=dtype).uniform_(0.4, 6.0, generator=gen)
    rho = torch.empty(n, dtype=dtype).uniform_(-0.8, 0.8, generator=gen)
    cxx, cyy, cxy = sx * sx, sy * sy, rho * sx * sy
    det = cxx * cyy - cxy * cxy
    conics = torch.stack([cyy / det, -cxy / det, cxx / det], dim=1)
    radii = torch.stack([torch.ceil(3.33 * sx), torch.ceil(3.33 * sy)], dim=1).to(torch.int32)
    opacities = torch.rand(n, generator=gen, dtype=dtype)
    pile = slice(0, n // 4)  # opaque, over one corner
    means2d[pile] = torch.rand(n // 4, 2, generator=gen, dtype=dtype) * 8 + 3
    opacities[pile] = 0.9 + 0.2 * torch.rand(n // 4, generator=gen, dtype=dtype)  # some > 0.999: clamped
    conics[n // 4:n // 4 + 5, 1] = 3.0 * conics[n // 4:n // 4 + 5, 0].abs().sqrt() * conics[n // 4:n // 4 + 5, 2].sqrt()
    opacities[n // 4 + 5:n // 4 + 8] = torch.tensor([0.0, 0.002, ALPHA_MIN], dtype=dtype)  # at or below 1/255
    few = max(1, n // 15)
    radii[n - 3 * few:n - 2 * few, 0] = 0  # not drawn
    depths = torch.rand(n, generator=gen, dtype=dtype) * 5 + 1
    depths[n - 2 * few:n - few] = depths[n - few:]  # ties
    colors = torch.rand(n, 5, generator=gen, dtype=dtype)
    return dict(means2d=means2d, conics=conics, colors=colors, opacities=opacities, depths=depths, radii=radii)


# ---------------------------------------------------------------- projection and SH vs gsplat


def test_quat_scale_to_covar_matches_gsplat():
    scene = random_scene(200, seed=0)
    ours = quat_scale_to_covar(scene["quats"], scene["scales"])
    theirs, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_matches_gsplat(dtype):
    scene = random_scene(600, seed=1, dtype=dtype)
    camera = make_camera(64, 48)
    covars = quat_scale_to_covar(scene["quats"], scene["scales"])
    proj = project_gaussians(scene["means"], covars, camera, eps2d=0.3, near=0.01, far=1e10)
    cam = camera.to("cpu", dtype)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        scene["means"], covars, cam.w2c[None], cam.K[None], 64, 48, eps2d=0.3, near_plane=0.01, far_plane=1e10
    )
    assert proj.radii.dtype == torch.int32
    assert torch.equal(proj.radii, radii[0].to(torch.int32))
    torch.testing.assert_close(proj.depths, depths[0], rtol=1e-6, atol=1e-5)
    # Within `near` of the camera plane we deliberately differ (finite values instead of inf/NaN).
    regular = depths[0].abs() >= 0.01
    assert (~regular).sum() > 0
    torch.testing.assert_close(proj.means2d[regular], means2d[0][regular], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(proj.conics[regular], conics[0][regular], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(proj.means2d).all() and torch.isfinite(proj.conics).all()
    # The scene exercises every rule: drawn, behind the camera, off-image.
    visible = proj.visible
    assert visible.sum() > 100
    assert not visible[:60].any()  # behind the camera
    culled_in_front = (depths[0] > 0.01) & ~visible
    assert culled_in_front[60:120].all()  # off to the side


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    gen = torch.Generator().manual_seed(degree)
    sh = torch.randn(50, 16, 3, generator=gen, dtype=torch.float64)
    dirs = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 3  # not normalised on purpose
    theirs = _spherical_harmonics(degree, dirs, sh)
    torch.testing.assert_close(eval_sh(degree, sh, dirs), theirs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sh_to_rgb(degree, sh, dirs), torch.clamp_min(theirs + 0.5, 0.0))
    # Only the first (degree+1)^2 coefficients are read.
    torch.testing.assert_close(eval_sh(degree, sh[:, : (degree + 1) ** 2], dirs), theirs)


def test_rgb_sh_round_trip():
    rgb = torch.rand(10, 3, dtype=torch.float64)
    assert SH_C0 == pytest.approx(0.5 / math.sqrt(math.pi))
    torch.testing.assert_close(SH2RGB(RGB2SH(rgb)), rgb)
    sh = torch.zeros(10, 4, 3, dtype=torch.float64)
    sh[:, 0] = RGB2SH(rgb)
    torch.testing.assert_close(sh_to_rgb(1, sh, torch.randn(10, 3, dtype=torch.float64)), rgb)


# ---------------------------------------------------------------- compositing vs brute force


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_rasterize_to_pixels_matches_brute_force(dtype, tol):
    width, height = 37, 29
    splats = random_splats(300, seed=3, width=width, height=height, dtype=dtype)
    image, alpha = rasterize_to_pixels(**splats, width=width, height=height, backend="torch")
    expected_image, expected_alpha, fired = brute_force_composite(**splats, width=width, height=height)
    assert all(count > 0 for count in fired.values()), fired
    assert image.shape == (height, width, 5) and alpha.shape == (height, width, 1)
    torch.testing.assert_close(image, expected_image, rtol=0, atol=tol)
    torch.testing.assert_close(alpha, expected_alpha, rtol=0, atol=tol)


def test_float32_gradients_match_float64():
    """Opaque pairs make the transmittance gradients cancellation-prone; float32 must stay close."""
    width, height = 37, 29
    splats = random_splats(300, seed=21, width=width, height=height, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        inputs = {k: v.to(dtype).clone().requires_grad_(k != "depths") if v.is_floating_point() else v
                  for k, v in splats.items()}
        image, alpha = rasterize_to_pixels(**inputs, width=width, height=height)
        gen = torch.Generator().manual_seed(22)
        out_grad = torch.randn(height, width, 6, generator=gen, dtype=torch.float64).to(dtype)
        torch.autograd.backward(torch.cat([image, alpha], dim=-1), out_grad)
        grads[dtype] = {k: inputs[k].grad.double() for k in ("means2d", "conics", "colors", "opacities")}
    for name, reference in grads[torch.float64].items():
        error = (grads[torch.float32][name] - reference).abs().max() / reference.abs().max()
        assert error < 5e-6, (name, float(error))


def test_row_bands_give_the_same_image(monkeypatch):
    width, height = 37, 29
    splats = random_splats(300, seed=4, width=width, height=height, dtype=torch.float64)
    image, alpha = rasterize_to_pixels(**splats, width=width, height=height)
    monkeypatch.setattr(torch_ref, "MAX_PAIRS_PER_BAND", 700)
    radii = splats["radii"].long()
    assert (4 * radii[:, 0] * radii[:, 1]).sum() > 10 * 700  # really several bands
    banded_image, banded_alpha = rasterize_to_pixels(**splats, width=width, height=height)
    torch.testing.assert_close(banded_image, image, rtol=0, atol=1e-10)
    torch.testing.assert_close(banded_alpha, alpha, rtol=0, atol=1e-10)


def test_band_wider_than_16_bit_pixel_ids():
    """A band of more than 65536 pixels sorts 32-bit pixel ids instead of 16-bit ones."""
    width, height = 65_600, 1
    splats = random_splats(12, seed=16, width=width, height=height, dtype=torch.float64)
    splats["means2d"][:, 0] = 65_500 + 10 * torch.arange(12, dtype=torch.float64)  # around pixel id 2^16
    splats["means2d"][:, 1] = torch.rand(12, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    image, alpha = rasterize_to_pixels(**splats, width=width, height=height)
    expected_image, expected_alpha, _ = brute_force_composite(**splats, width=width, height=height)
    assert expected_alpha[:, 65_530:65_540].min() > 0
    torch.testing.assert_close(image, expected_image, rtol=0, atol=1e-9)
    torch.testing.assert_close(alpha, expected_alpha, rtol=0, atol=1e-9)


def test_recomputed_bands_give_the_same_gradients(monkeypatch):
    """Several bands, once holding their autograd state and once recomputed in backward."""
    width, height = 37, 29
    splats = random_splats(300, seed=19, width=width, height=height, dtype=torch.float64)
    monkeypatch.setattr(torch_ref, "MAX_PAIRS_PER_BAND", 700)

    def image_and_grads(checkpoint_above: int):
        monkeypatch.setattr(torch_ref, "CHECKPOINT_ABOVE_PAIRS", checkpoint_above)
        inputs = {k: v.clone().requires_grad_() if v.is_floating_point() and k != "depths" else v
                  for k, v in splats.items()}
        image, alpha = rasterize_to_pixels(**inputs, width=width, height=height)
        weights = torch.rand(height, width, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(20))
        (torch.cat([image, alpha], dim=-1) * weights).sum().backward()
        grads = [inputs[k].grad for k in ("means2d", "conics", "colors", "opacities")]
        return torch.cat([image, alpha], dim=-1), grads

    held_image, held_grads = image_and_grads(checkpoint_above=1 << 40)
    recomputed_image, recomputed_grads = image_and_grads(checkpoint_above=0)
    torch.testing.assert_close(recomputed_image, held_image, rtol=0, atol=1e-12)
    for recomputed, held in zip(recomputed_grads, held_grads):
        assert held.abs().sum() > 0
        torch.testing.assert_close(recomputed, held, rtol=0, atol=1e-12)


@pytest.mark.parametrize("band_pixels", [65_536, 65_537])
def test_pixel_sort_is_stable_for_16_and_32_bit_keys(band_pixels):
    gen = torch.Generator().manual_seed(18)
    pixel = torch.randint(0, band_pixels, (5000,), generator=gen, dtype=torch.int32)
    pixel[:3] = torch.tensor([0, band_pixels - 1, 32_768], dtype=torch.int32)
    pixel[3000:4000] = pixel[:1000]  # repeated ids: stability matters
    sorted_pixel, order = torch_ref._stable_sort_pixels(pixel, band_pixels)
    expected = torch.sort(pixel.long(), stable=True)
    assert sorted_pixel.dtype == torch.int32
    assert torch.equal(sorted_pixel.long(), expected.values) and torch.equal(order, expected.indices)


def test_box_edge_is_inclusive_and_exact():
    """Pixel centres exactly on the box edge are in; one step further out are not."""
    dtype = torch.float64
    means2d = torch.tensor([[5.5, 4.5]], dtype=dtype)  # on a pixel centre
    conics = torch.tensor([[0.01, 0.0, 0.01]], dtype=dtype)  # wide, so alpha stays well above 1/255
    image, _ = rasterize_to_pixels(
        means2d, conics, torch.ones(1, 1, dtype=dtype), torch.tensor([0.5], dtype=dtype),
        torch.ones(1, dtype=dtype), torch.tensor([[2, 1]], dtype=torch.int32), 12, 10,
    )
    covered = image[..., 0] > 0
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[3:6, 3:8] = True  # rows 4 +- 1, cols 5 +- 2
    assert torch.equal(covered, expected)


def test_full_render_matches_brute_force_with_background_and_depth():
    scene = random_scene(300, seed=5, dtype=torch.float64)
    camera = make_camera(40, 32)
    background = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    out = rasterize(scene["means"], scene["opacities"], camera, quats=scene["quats"], scales=scene["scales"],
                    colors=scene["colors"], background=background)
    assert isinstance(out, RenderOutput)
    proj = project_gaussians(scene["means"], quat_scale_to_covar(scene["quats"], scene["scales"]), camera)
    features = torch.cat([scene["colors"], proj.depths[:, None]], dim=1)
    image, alpha, _ = brute_force_composite(proj.means2d, proj.conics, features, scene["opacities"], proj.depths,
                                            proj.radii, 40, 32)
    assert alpha.max() > 0.9 and alpha.min() < 0.1
    torch.testing.assert_close(out.alpha, alpha, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.rgb, image[..., :3] + (1 - alpha) * background, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.depth, image[..., 3:], rtol=0, atol=1e-9)
    assert torch.equal(out.radii, proj.radii) and torch.equal(out.visible, proj.visible)


def test_depth_is_alpha_weighted_depth():
    """All means at one camera depth z: the accumulated depth is z * alpha everywhere."""
    gen = torch.Generator().manual_seed(6)
    n = 40
    means = torch.cat([torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5,
                       torch.full((n, 1), 0.0, dtype=torch.float64)], dim=1)
    camera = Camera(torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]]), torch.eye(4), 32, 24)
    camera.w2c[2, 3] = 3.0  # the plane z=0 sits 3 m in front
    out = rasterize(means, torch.full((n,), 0.7, dtype=torch.float64), camera,
                    quats=torch.randn(n, 4, generator=gen, dtype=torch.float64),
                    scales=torch.full((n, 3), 0.05, dtype=torch.float64), colors=torch.rand(n, 3, dtype=torch.float64))
    assert out.alpha.max() > 0.5
    torch.testing.assert_close(out.depth, 3.0 * out.alpha, rtol=0, atol=1e-12)


def test_nothing_visible_still_backpropagates():
    scene = {k: v.requires_grad_() for k, v in random_scene(20, seed=7).items()}
    behind = scene["means"] - torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64)  # all behind the camera
    out = rasterize(behind, scene["opacities"], make_camera(16, 16), quats=scene["quats"], scales=scene["scales"],
                    colors=scene["colors"], background=torch.ones(3, dtype=torch.float64))
    assert not out.visible.any()
    assert torch.equal(out.rgb, torch.ones(16, 16, 3, dtype=torch.float64))
    (out.rgb.sum() + out.depth.sum()).backward()
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert scene[name].grad is not None and torch.equal(scene[name].grad, torch.zeros_like(scene[name]))


def test_means2d_can_retain_grad():
    scene = {k: v.requires_grad_() for k, v in random_scene(100, seed=8, dtype=torch.float32).items()}
    out = rasterize(scene["means"], scene["opacities"], make_camera(32, 32), quats=scene["quats"],
                    scales=scene["scales"], colors=scene["colors"])
    out.means2d.retain_grad()
    out.rgb.sum().backward()
    assert out.means2d.grad is not None
    assert (out.means2d.grad[out.visible].abs().sum(dim=1) > 0).any()
    assert torch.equal(out.means2d.grad[~out.visible], torch.zeros_like(out.means2d.grad[~out.visible]))


# ---------------------------------------------------------------- gradients


def tiny_scene(seed: int):
    """Three float64 Gaussians on an 8x8 image, opacities well inside (1/255, 0.999)."""
    gen = torch.Generator().manual_seed(seed)
    camera = Camera(torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]), torch.eye(4), 8, 8)
    means = torch.tensor([[-0.05, 0.02, 2.0], [0.08, -0.04, 2.3], [0.0, 0.1, 2.6]], dtype=torch.float64)
    means = means + 0.02 * torch.randn(3, 3, generator=gen, dtype=torch.float64)
    quats = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    scales = torch.tensor([[0.15, 0.2, 0.1], [0.25, 0.12, 0.2], [0.18, 0.18, 0.3]], dtype=torch.float64)
    opacities = torch.tensor([0.55, 0.7, 0.8], dtype=torch.float64)
    colors = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    return camera, dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)


def assert_away_from_thresholds(camera, scene):
    """Finite differences are only meaningful where no pair sits on a rule's threshold."""
    proj = project_gaussians(scene["means"], quat_scale_to_covar(scene["quats"], scene["scales"]), camera)
    assert proj.visible.all()
    rows = torch.arange(camera.height, dtype=torch.float64)[:, None] + 0.5
    cols = torch.arange(camera.width, dtype=torch.float64)[None, :] + 0.5
    for i in range(3):
        dx, dy = proj.means2d[i, 0] - cols, proj.means2d[i, 1] - rows
        a, b, c = proj.conics[i]
        alpha = scene["opacities"][i] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
        in_box = (dx.abs() <= proj.radii[i, 0]) & (dy.abs() <= proj.radii[i, 1])
        assert (alpha - ALPHA_MIN)[in_box].abs().min() > 1e-5
    _, alpha_img, fired = brute_force_composite(proj.means2d, proj.conics, scene["colors"], scene["opacities"],
                                                proj.depths, proj.radii, camera.width, camera.height)
    assert fired["stopped"] == 0 and fired["clamped"] == 0 and alpha_img.max() > 0.8


@pytest.mark.parametrize("fast_mode", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_gradcheck_quats_scales_means_opacities_colors(fast_mode):
    camera, scene = tiny_scene(seed=12)
    assert_away_from_thresholds(camera, scene)
    background = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def render(means, quats, scales, opacities, colors):
        out = rasterize(means, opacities, camera, quats=quats, scales=scales, colors=colors, background=background)
        return torch.cat([out.rgb, out.alpha, out.depth], dim=-1)

    inputs = tuple(scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors"))
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast_mode)


def test_gradcheck_sh_and_covars():
    camera, scene = tiny_scene(seed=10)
    assert_away_from_thresholds(camera, scene)
    gen = torch.Generator().manual_seed(11)
    sh = 0.3 * torch.randn(3, 16, 3, generator=gen, dtype=torch.float64)
    sh[:, 0] = RGB2SH(scene["colors"])
    covars = quat_scale_to_covar(scene["quats"], scene["scales"])

    def render(means, covars, sh):
        out = rasterize(means, scene["opacities"], camera, covars=covars, sh=sh, sh_degree=3)
        return torch.cat([out.rgb, out.alpha, out.depth], dim=-1)

    inputs = (scene["means"].clone().requires_grad_(), covars.clone().requires_grad_(), sh.requires_grad_())
    # Fast mode (random vector-Jacobian products against finite differences) keeps 174 inputs cheap.
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", ["means", "opacities", "quats", "scales", "colors", "background"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_is_named(bad, value):
    scene = random_scene(10, seed=12, dtype=torch.float32)
    scene["background"] = torch.zeros(3)
    scene[bad].view(-1)[0] = value
    with pytest.raises(ValueError, match=rf"^{bad} contains NaN or inf"):
        rasterize(scene["means"], scene["opacities"], make_camera(8, 8), quats=scene["quats"], scales=scene["scales"],
                  colors=scene["colors"], background=scene["background"])


def test_huge_finite_inputs_are_not_taken_for_inf():
    """The finiteness check sums first; a sum that overflows must not reject finite values."""
    scene = random_scene(10, seed=12, dtype=torch.float32)
    scene["quats"][:, 0] = 3e38  # finite; their float32 sum is inf
    out = rasterize(scene["means"], scene["opacities"], make_camera(8, 8), quats=scene["quats"], scales=scene["scales"],
                    colors=scene["colors"])
    assert torch.isfinite(out.rgb).all()


def test_bad_arguments_raise_clear_errors():
    scene = random_scene(10, seed=13, dtype=torch.float32)
    camera = make_camera(8, 8)
    common = dict(quats=scene["quats"], scales=scene["scales"])
    with pytest.raises(ValueError, match="opacities must have shape"):
        rasterize(scene["means"], scene["opacities"][:, None], camera, colors=scene["colors"], **common)
    with pytest.raises(ValueError, match="either quats and scales, or covars"):
        rasterize(scene["means"], scene["opacities"], camera, quats=scene["quats"], colors=scene["colors"])
    with pytest.raises(ValueError, match="either colors or sh"):
        rasterize(scene["means"], scene["opacities"], camera, **common)
    with pytest.raises(ValueError, match="sh must hold"):
        rasterize(scene["means"], scene["opacities"], camera, sh=torch.zeros(10, 5, 3), **common)
    with pytest.raises(ValueError, match="sh_degree must be"):
        rasterize(scene["means"], scene["opacities"], camera, sh=torch.zeros(10, 4, 3), sh_degree=2, **common)
    with pytest.raises(ValueError, match="colors is torch.float64"):
        rasterize(scene["means"], scene["opacities"], camera, colors=scene["colors"].double(), **common)
    with pytest.raises(ValueError, match="unknown rasterizer backend 'nope'"):
        rasterize(scene["means"], scene["opacities"], camera, colors=scene["colors"], backend="nope", **common)


# ---------------------------------------------------------------- registry


def test_auto_resolves_to_an_available_backend():
    available = backends.available_backends()
    assert "torch" in available
    chosen = backends.resolve_backend("auto", device="cpu")
    assert chosen in available and backends.get_backend(chosen).supports("cpu")
    if not torch.cuda.is_available():
        assert "gsplat" not in available
    scene = random_scene(30, seed=14, dtype=torch.float32)
    out = rasterize(scene["means"], scene["opacities"], make_camera(16, 16), quats=scene["quats"],
                    scales=scene["scales"], colors=scene["colors"], backend="auto")
    assert out.rgb.shape == (16, 16, 3)


@pytest.mark.parametrize("failure", ["missing module", "build error"])
def test_a_broken_backend_is_logged_once_and_auto_falls_back(monkeypatch, caplog, failure):
    if failure == "missing module":
        module_name, level, reason = ("occfusion_core.render.backends._no_such_module", logging.INFO,
                                      "ModuleNotFoundError")
    else:
        module_name, level, reason = ("fake_backend_that_fails_to_build", logging.WARNING,
                                      "RuntimeError: compiler exploded")
        module = types.ModuleType(module_name)

        def register_backend():
            raise RuntimeError("compiler exploded")

        module.register_backend = register_backend
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(backends, "BUILTIN_BACKEND_MODULES",
                        {**backends.BUILTIN_BACKEND_MODULES, "broken": module_name})
    monkeypatch.setattr(backends, "AUTO_PREFERENCE", ("broken", "torch"))
    monkeypatch.setattr(backends, "_LOAD_FAILURES", {})
    with caplog.at_level(logging.INFO, logger=backends.__name__):
        assert backends.resolve_backend("auto") == "torch"
        assert backends.resolve_backend("auto") == "torch"
    records = [r for r in caplog.records if "'broken'" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == level and reason in records[0].getMessage()
    with pytest.raises(RuntimeError, match=f"'broken' is unavailable: {reason}"):
        backends.resolve_backend("broken")
    assert "broken" not in backends.available_backends()


def test_full_backend_replaces_the_pipeline(monkeypatch):
    calls = []

    def fake_full(means, opacities, camera, **kwargs):
        calls.append(kwargs)
        h, w = camera.height, camera.width
        zeros = torch.zeros(h, w, 1)
        return RenderOutput(torch.zeros(h, w, 3), zeros, zeros, torch.zeros(len(means), 2),
                            torch.zeros(len(means), 2, dtype=torch.int32), torch.zeros(len(means), dtype=torch.bool))

    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register_full_backend("fake", fake_full, devices=("cpu",))
    scene = random_scene(5, seed=15, dtype=torch.float32)
    out = rasterize(scene["means"], scene["opacities"], make_camera(8, 6), quats=scene["quats"],
                    scales=scene["scales"], colors=scene["colors"], backend="fake", eps2d=0.1)
    assert out.rgb.shape == (6, 8, 3) and len(calls) == 1 and calls[0]["eps2d"] == 0.1
    with pytest.raises(ValueError, match="renders whole scenes only"):
        rasterize_to_pixels(**random_splats(40, 0, 8, 6, torch.float32), width=8, height=6, backend="fake")
