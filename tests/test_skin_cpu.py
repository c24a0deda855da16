"""The compiled skinning of Gaussians (csrc/skin_cpu.cpp) held to HumanGaussians.deform's torch code:
values and gradients of every input (skinning weights through the offset network, pose, shape,
translation, canonical centres, scales, rotations), float32 and float64."""

from __future__ import annotations

import os

import pytest
import torch

from occfusion_core.render.backends import cpp

REQUIRE = os.environ.get("OCCFUSION_REQUIRE_CPP") == "1"
if not cpp.is_available():
    if REQUIRE:
        raise RuntimeError("OCCFUSION_REQUIRE_CPP=1 but the C++ extension did not build")
    pytest.skip("the C++ extension is unavailable", allow_module_level=True)


def _perturbed(make_model, dtype, seed, lbs_offsets=True):
    model = make_model(lbs_offsets=lbs_offsets).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.xyz.add_(0.01 * torch.randn(model.xyz.shape, generator=gen, dtype=dtype))
        model.scaling.add_(0.3 * torch.randn(model.scaling.shape, generator=gen, dtype=dtype))
        model.rotation.copy_(torch.randn(model.rotation.shape, generator=gen, dtype=dtype))
        for p in (model.lbs_offset_decoder.parameters() if lbs_offsets else ()):
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=dtype))
    pose = 0.4 * torch.randn(72, generator=gen, dtype=dtype)
    betas = torch.randn(10, generator=gen, dtype=dtype)
    trans = torch.randn(3, generator=gen, dtype=dtype)
    return model, pose, betas, trans


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lbs_offsets", [True, False], ids=["dense weights with gradient", "sparse body weights"])
def test_fused_skinning_matches_the_torch_deformation(make_model, dtype, lbs_offsets):
    """With the offset network the weights are dense and learn; without it they are the body's
    nearest-vertex weights (a few bones each, no gradient), where the compiled code skips zeros."""
    model, pose, betas, trans = _perturbed(make_model, dtype, seed=1, lbs_offsets=lbs_offsets)
    results = {}
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        p, b, t = (x.clone().requires_grad_() for x in (pose, betas, trans))
        d = model.deform(p, b, t, fused=fused)
        gen = torch.Generator().manual_seed(2)
        loss = sum((torch.randn(x.shape, generator=gen, dtype=dtype) * x).sum()
                   for x in (d.means, d.covars, d.transforms))
        loss.backward()
        grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
        grads.update(pose=p.grad, betas=b.grad, trans=t.grad)
        results[fused] = (d.means.detach(), d.covars.detach(), d.transforms.detach(), grads)
    ref, got = results[False], results[True]
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for name, a, b in zip(("means", "covars", "transforms"), got[:3], ref[:3]):
        torch.testing.assert_close(a, b, **tol, msg=f"{name} ({dtype})")
    assert set(got[3]) == set(ref[3]) and {"xyz", "scaling", "rotation", "pose", "betas", "trans"} <= set(ref[3])
    assert any(name.startswith("lbs_offset_decoder") for name in ref[3]) == lbs_offsets
    gtol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-9)
    for name, b in ref[3].items():
        a = got[3][name]
        scale = b.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(a / scale, b / scale, **gtol, msg=f"d/d{name} ({dtype})")


def test_gradcheck_of_the_compiled_skinning():
    gen = torch.Generator().manual_seed(4)
    n, J = 5, 4
    f64 = dict(dtype=torch.float64)
    weights = torch.softmax(torch.randn(n, J, generator=gen, **f64), -1)
    big = torch.eye(4, **f64).repeat(J, 1, 1)
    big[:, :3, :3] = torch.linalg.matrix_exp(0.2 * torch.randn(J, 3, 3, generator=gen, **f64))
    big[:, :3, 3] = 0.1 * torch.randn(J, 3, generator=gen, **f64)
    target = torch.eye(4, **f64).repeat(J, 1, 1)
    target[:, :3, :3] = torch.linalg.matrix_exp(0.3 * torch.randn(J, 3, 3, generator=gen, **f64))
    target[:, :3, 3] = torch.randn(J, 3, generator=gen, **f64)
    inputs = [weights, target, torch.randn(n, 3, generator=gen, **f64), 0.05 * torch.randn(n, 3, generator=gen, **f64),
              torch.randn(3, generator=gen, **f64), torch.randn(n, 3, generator=gen, **f64) - 2.0,
              torch.randn(n, 4, generator=gen, **f64)]

    def fn(w, T, x, d, t, s, q):
        return torch.cat([o.flatten() for o in cpp.skin_gaussians(w, big, T, x, d, t, s, q)])

    assert torch.autograd.gradcheck(fn, [x.clone().requires_grad_() for x in inputs], eps=1e-6, atol=1e-6, rtol=1e-5)
