"""Losses and metric helpers of the stages, held to independent computations."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from occfusion_core.losses import gaussian_window_1d, masked_mean, ssim_map
from occfusion_core.masks import body_box_mask, bounding_box
from occfusion_core.render.camera import Camera, look_at
from occfusion_core.stages.metrics import psnr, ssim_full, ssim_masked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reflect_ssim_map_is_torchmetrics_ssim(dtype):
    """The metrics' SSIM (mean of the reflect-padded map) is torchmetrics' number, to rounding."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 48, 40, generator=g).to(dtype)
    b = (a + 0.1 * torch.randn(2, 3, 48, 40, generator=g).to(dtype)).clamp(0, 1)
    b[1, :, :10] = a[1, :, :10]  # flat-error and zero-variance patches
    b[1, :, 20:30, 5:15] = 0.5
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for i in range(2):
        ours = ssim_map(a[i:i + 1], b[i:i + 1], padding="reflect").mean()
        ref = tm_ssim(a[i:i + 1], b[i:i + 1], data_range=1.0, gaussian_kernel=True, kernel_size=11, sigma=1.5)
        assert abs(float(ours) - float(ref)) < tol
    assert ssim_full(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy()) == pytest.approx(
        float(tm_ssim(a[:1].float(), b[:1].float(), data_range=1.0, kernel_size=11, sigma=1.5)), abs=1e-6)
    assert torch.allclose(ssim_map(a, a), torch.ones_like(a), atol=1e-4)
    with pytest.raises(ValueError, match="padding"):
        ssim_map(a, b, padding="circular")


def _ssim_map_2d(img1, img2, window=11, sigma=1.5):
    """The plain reference: five depthwise 11x11 convolutions with the outer-product window."""
    g = gaussian_window_1d(window, sigma, dtype=img1.dtype)
    c, pad = img1.shape[1], window // 2
    w = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def mean(x):
        return torch.nn.functional.conv2d(x, w, padding=pad, groups=c)

    mu1, mu2 = mean(img1), mean(img2)
    s1, s2, s12 = mean(img1 * img1) - mu1**2, mean(img2 * img2) - mu2**2, mean(img1 * img2) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_separable_ssim_equals_the_2d_convolution_in_values_and_gradients(dtype):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 37, 29, generator=g, dtype=dtype, requires_grad=True)
    b = (a.detach() + 0.2 * torch.randn(2, 3, 37, 29, generator=g, dtype=dtype)).clamp(0, 1).requires_grad_(True)
    weight = torch.rand(2, 3, 37, 29, generator=g, dtype=dtype)
    ours, ref = ssim_map(a, b), _ssim_map_2d(a, b)
    # float32: the variances E[x^2] - mu^2 cancel, so the two summation orders round apart by ~1e-6
    tol = dict(rtol=1e-3, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, ref, **tol)
    grads = torch.autograd.grad((ours * weight).sum(), (a, b))
    ref_grads = torch.autograd.grad((ref * weight).sum(), (a, b))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **tol)


def test_ssim_map_is_differentiable():
    a = torch.rand(1, 3, 16, 16, requires_grad=True)
    ssim_map(a, torch.rand(1, 3, 16, 16)).mean().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_masked_mean_ignores_unmasked_pixels():
    x = torch.zeros(4, 4, 3)
    x[0, 0] = 9.0
    m = torch.zeros(4, 4, 1, dtype=torch.bool)
    m[1:, 1:] = True
    assert float(masked_mean(x, m)) == 0.0
    m[0, 0] = True
    assert math.isclose(float(masked_mean(x, m)), 9.0 / 10, rel_tol=1e-6)


def test_psnr_full_and_masked():
    gt = np.zeros((8, 8, 3), np.float32)
    pred = gt.copy()
    pred[:4] = 0.1  # mse 0.01 on the top half
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    assert math.isclose(psnr(pred, gt, mask), 20.0, rel_tol=1e-6)
    assert math.isclose(psnr(pred, gt), -10 * math.log10(0.005), rel_tol=1e-6)
    assert psnr(gt, gt) == float("inf")


def test_ssim_helpers_agree_on_identical_images():
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    assert ssim_full(img, img) == pytest.approx(1.0, abs=1e-5)
    assert ssim_masked(img, img, np.ones((32, 32), bool)) == pytest.approx(1.0, abs=1e-4)
    assert ssim_masked(img, 1 - img, np.ones((32, 32), bool)) < 0.5


def test_body_box_mask_covers_projected_points_and_not_far_away():
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
    cam = Camera(K, look_at((0, 0, 3), (0, 0, 0)), 64, 64)
    verts = torch.tensor([[-0.2, -0.5, -0.1], [0.2, 0.5, 0.1], [0.0, 0.0, 0.0]])
    box = body_box_mask(verts, cam, pad=0.0)
    # the box of these points is the cuboid [-0.2,0.2]x[-0.5,0.5]x[-0.1,0.1]: its projection spans
    # the front face (z=0.1 -> depth 2.9) at most; every mask pixel centre lies within it
    corners = torch.tensor([[x, y, 0.1] for x in (-0.2, 0.2) for y in (-0.5, 0.5)])
    uv, _ = cam.project(corners)
    ys, xs = torch.nonzero(box, as_tuple=True)
    assert (xs + 0.5 >= uv[:, 0].min()).all() and (xs + 0.5 <= uv[:, 0].max()).all()
    assert (ys + 0.5 >= uv[:, 1].min()).all() and (ys + 0.5 <= uv[:, 1].max()).all()
    area = float((uv[:, 0].max() - uv[:, 0].min()) * (uv[:, 1].max() - uv[:, 1].min()))
    assert abs(int(box.sum()) - area) < 0.25 * area
    assert box[32, 32]
    assert not box[2, 2] and not box[32, 2]
    x0, y0, x1, y1 = bounding_box(box)
    assert 26 <= x0 and x1 <= 38 and 20 <= y0 and y1 <= 44


def test_stage_methods_names_every_stage(tmp_path):
    from occfusion_core.io import write_json
    from occfusion_core.stages.metrics import stage_methods

    write_json(tmp_path / "stage0" / "report.json", {"method": "silhouette", "description": "weight-free: body"})
    write_json(tmp_path / "stage2" / "report.json", {"method": "render_fill", "description": "weight-free: render"})
    methods = stage_methods({"methods": {"stage1": "gaussian optimisation, no SDS"}},
                            [tmp_path / "stage0" / "report.json", tmp_path / "stage2" / "report.json"])
    assert methods == {"stage1": "gaussian optimisation, no SDS", "stage0": "silhouette: weight-free: body",
                       "stage2": "render_fill: weight-free: render"}


def test_region_ssim_loss_ignores_the_render_outside_its_region():
    """The SSIM term of stages 1 and 3 compares like with like: whatever the render shows outside
    the loss region (the hidden person) changes neither the loss nor gets a gradient, even in the
    pixels an SSIM window at the region's edge reaches."""
    from occfusion_core.losses import region_ssim_loss

    gen = torch.Generator().manual_seed(0)
    background = torch.ones(3)
    region = torch.zeros(32, 32, 1, dtype=torch.bool)
    region[:, :12] = True  # the hidden part starts at column 12, inside the windows of columns 7-11
    image = torch.where(region, torch.rand(32, 32, 3, generator=gen), background)
    rgb = torch.rand(32, 32, 3, generator=gen, requires_grad=True)
    loss = region_ssim_loss(rgb, image, region, (0, 0, 32, 32), background)
    loss.backward()
    assert rgb.grad[:, 12:].abs().sum() == 0 and rgb.grad[:, :12].abs().sum() > 0
    other = rgb.detach().clone()
    other[:, 12:] = 0.0
    assert float(region_ssim_loss(other, image, region, (0, 0, 32, 32), background)) == pytest.approx(float(loss))
    # the render matching the target inside the region scores a perfect 0 whatever it shows outside
    assert float(region_ssim_loss(torch.where(region, image, 0.2), image, region, (0, 0, 32, 32),
                                  background)) == pytest.approx(0.0, abs=1e-5)
