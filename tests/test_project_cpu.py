"""The compiled projection + SH colours (csrc/project_cpu.cpp) held to the torch reference
(render/projection.py's project_gaussians, then render/sh.py's sh_to_rgb of view_directions):
values and gradients, float32 and float64, with and without per-Gaussian view transforms, with
Gaussians clamped at the field of view's edge, behind the camera and off the image."""

from __future__ import annotations

import os

import pytest
import torch

from occfusion_core.render.backends import cpp
from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at
from occfusion_core.render.projection import project_gaussians, quat_scale_to_covar
from occfusion_core.render.rasterize import rasterize
from occfusion_core.render.sh import sh_to_rgb, view_directions

REQUIRE = os.environ.get("OCCFUSION_REQUIRE_CPP") == "1"
if not cpp.is_available():
    if REQUIRE:
        raise RuntimeError("OCCFUSION_REQUIRE_CPP=1 but the C++ extension did not build")
    pytest.skip("the C++ extension is unavailable", allow_module_level=True)


def scene(n: int, dtype, seed: int = 0, turned: bool = True):
    gen = torch.Generator().manual_seed(seed)
    camera = Camera(intrinsics_from_fov(96, 80, 45.0), look_at(torch.tensor([0.2, 1.0, 3.0]),
                                                               torch.tensor([0.0, 0.9, 0.0])), 96, 80)
    means = torch.randn(n, 3, generator=gen) * torch.tensor([0.7, 0.8, 0.6]) + torch.tensor([0.0, 0.9, 0.0])
    means[: n // 10] += torch.tensor([4.0, 0.0, 0.0])  # far beyond the field of view: clamped
    means[n // 10: n // 8, 2] = 3.0 + 0.5 * torch.rand(n // 8 - n // 10, generator=gen)  # behind the camera
    quats = torch.randn(n, 4, generator=gen)
    scales = torch.exp(torch.randn(n, 3, generator=gen) * 0.5 - 3.5)
    covars = quat_scale_to_covar(quats, scales)
    sh = 0.3 * torch.randn(n, 16, 3, generator=gen)
    transforms = (torch.linalg.matrix_exp(0.3 * torch.randn(n, 3, 3, generator=gen))
                  * (1.0 + 0.1 * torch.rand(n, 1, 1, generator=gen))) if turned else None
    cast = (lambda t: None if t is None else t.to(dtype))
    return camera, cast(means), cast(covars), cast(sh), cast(transforms)


def reference(means, covars, sh, degree, camera, transforms):
    proj = project_gaussians(means, covars, camera)
    colors = sh_to_rgb(degree, sh, view_directions(means, camera.center, transforms))
    return proj.means2d, proj.conics, proj.depths, proj.radii, colors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("degree,turned", [(0, False), (1, True), (3, True), (3, False)])
def test_values_and_gradients_match_the_torch_reference(dtype, degree, turned):
    camera, means, covars, sh, transforms = scene(400, dtype, seed=degree + 7 * turned, turned=turned)
    camera = camera.to("cpu", dtype)
    leaves = [t.clone().requires_grad_() for t in (means, covars, sh)]
    ref = reference(*leaves, degree, camera, transforms)
    leaves_c = [t.clone().requires_grad_() for t in (means, covars, sh)]
    got = cpp.project_and_shade(*leaves_c, degree, camera, transforms)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    names = ("means2d", "conics", "depths", "radii", "colors")
    for name, a, b in zip(names, got, ref):
        if name == "radii":
            # integers from float arithmetic: equal but where a value sits on a rounding edge
            assert (a.to(torch.int64) - b.to(torch.int64)).abs().max() <= 1
            assert (a != b).float().mean() < 0.01
            continue
        torch.testing.assert_close(a, b, **tol, msg=f"{name} ({dtype}, degree {degree}, turned {turned})")
    gen = torch.Generator().manual_seed(3)
    upstream = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in (ref[0], ref[1], ref[2], ref[4])]
    loss_ref = sum((u * t).sum() for u, t in zip(upstream, (ref[0], ref[1], ref[2], ref[4])))
    loss_got = sum((u * t).sum() for u, t in zip(upstream, (got[0], got[1], got[2], got[4])))
    g_ref = torch.autograd.grad(loss_ref, leaves)
    g_got = torch.autograd.grad(loss_got, leaves_c)
    gtol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-8)
    for name, a, b in zip(("means", "covars", "sh"), g_got, g_ref):
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a / scale, b / scale, **gtol, msg=f"d/d{name} ({dtype}, degree {degree})")


def test_gradcheck_float64():
    camera, means, covars, sh, transforms = scene(12, torch.float64, seed=5)
    camera = camera.to("cpu", torch.float64)
    keep = slice(2, 12)  # Gaussians in front of the camera, inside the field of view

    m0, c0, s0, t0 = means[keep], covars[keep], sh[keep], transforms[keep]

    def geometry(m, c):
        means2d, conics, depths, _, _ = cpp.project_and_shade(m, c, s0, 3, camera, t0)
        return torch.cat([means2d.flatten(), conics.flatten(), depths])

    def colours(s):  # the viewing directions are constants, so the means stay fixed here
        return cpp.project_and_shade(m0, c0, s, 3, camera, t0)[4]

    # conics of centimetre-sized Gaussians are steep: finite differences are good to ~1e-5 relative
    assert torch.autograd.gradcheck(geometry, (m0.clone().requires_grad_(), c0.clone().requires_grad_()),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(colours, (s0.clone().requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_the_training_render_is_the_same_with_the_compiled_pass(proxy_body):
    """render_gaussians through rasterize_with_sh: the compiled path equals the torch path."""
    from occfusion_core.gaussians.human import HumanGaussians
    from occfusion_core.render.rasterize import rasterize_with_sh

    model = HumanGaussians(proxy_body)
    with torch.no_grad():
        model.features_rest.normal_(0.0, 0.2)
    model.oneup_sh_degree()
    pose = torch.zeros(72)
    pose[50] = 0.6
    d = model.deform(pose)
    camera = Camera(intrinsics_from_fov(64, 64, 40.0), look_at(torch.tensor([0.0, 0.3, 3.0]),
                                                               torch.tensor([0.0, 0.3, 0.0])), 64, 64)
    bg = torch.ones(3)
    fast = rasterize_with_sh(d.means, d.opacities, camera, d.covars, d.sh, d.sh_degree, view_transforms=d.transforms,
                             background=bg, backend="cpp")
    slow = rasterize_with_sh(d.means, d.opacities, camera, d.covars, d.sh, d.sh_degree, view_transforms=d.transforms,
                             background=bg, backend="torch")
    torch.testing.assert_close(fast.rgb, slow.rgb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.alpha, slow.alpha, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_covariances_match_the_torch_reference(dtype):
    """csrc/covar_cpu.cpp against quat_scale_to_covar: values and gradients, unnormalised
    quaternions of any size and a zero scale included."""
    gen = torch.Generator().manual_seed(11)
    quats = torch.randn(500, 4, generator=gen) * torch.exp(torch.randn(500, 1, generator=gen))
    scales = torch.exp(torch.randn(500, 3, generator=gen) - 3.0)
    scales[1, 2] = 0.0
    quats, scales = quats.to(dtype), scales.to(dtype)
    ref_leaves = [t.clone().requires_grad_() for t in (quats, scales)]
    got_leaves = [t.clone().requires_grad_() for t in (quats, scales)]
    ref = quat_scale_to_covar(*ref_leaves)
    got = cpp.quat_scale_to_covar(*got_leaves)
    # relative to each covariance's largest variance: float32 off-diagonals cancel
    size = scales.amax(dim=1)[:, None, None] ** 2
    tol = dict(rtol=0.0, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.0, atol=1e-14)
    torch.testing.assert_close(got / size, ref / size, **tol)
    upstream = torch.randn(ref.shape, generator=gen, dtype=dtype)
    g_ref = torch.autograd.grad((upstream * ref).sum(), ref_leaves)
    g_got = torch.autograd.grad((upstream * got).sum(), got_leaves)
    gtol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    for name, a, b in zip(("quats", "scales"), g_got, g_ref):
        torch.testing.assert_close(a, b, **gtol, msg=f"d/d{name} ({dtype})")


def test_gradcheck_of_the_compiled_covariances():
    gen = torch.Generator().manual_seed(2)
    quats = torch.randn(20, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    scales = (0.05 + torch.rand(20, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(cpp.quat_scale_to_covar, (quats, scales))


def test_rasterize_with_quats_uses_the_compiled_covariances_and_matches_the_torch_path(monkeypatch):
    calls = []
    compiled = cpp.quat_scale_to_covar
    monkeypatch.setattr(cpp, "quat_scale_to_covar", lambda q, s: calls.append(len(q)) or compiled(q, s))
    camera, means, covars, sh, _ = scene(300, torch.float64, seed=4, turned=False)
    camera = camera.to("cpu", torch.float64)
    gen = torch.Generator().manual_seed(9)
    quats = torch.randn(300, 4, generator=gen, dtype=torch.float64)
    scales = torch.exp(torch.randn(300, 3, generator=gen, dtype=torch.float64) * 0.3 - 3.0)
    opacities = torch.rand(300, generator=gen, dtype=torch.float64)
    colors = torch.rand(300, 3, generator=gen, dtype=torch.float64)
    outs = {}
    for backend in ("cpp", "torch"):
        leaves = [t.clone().requires_grad_() for t in (quats, scales)]
        out = rasterize(means, opacities, camera, quats=leaves[0], scales=leaves[1], colors=colors, backend=backend)
        outs[backend] = (out.rgb, *torch.autograd.grad(out.rgb.sum() + out.alpha.sum(), leaves))
    assert calls == [300]  # the cpp backend's call, not the torch one's
    for a, b in zip(outs["cpp"], outs["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
