// 3D covariances from rotations and scales, Sigma = R(q) diag(s)^2 R(q)^T, forward and backward, on
// the CPU: one pass over the Gaussians with the 3x3 algebra written out, where the torch reference
// (occfusion_core/render/projection.py's quat_scale_to_covar) runs a dozen elementwise kernels and a
// batched matmul, each with its own autograd node. tests/test_project_cpu.py holds the two together.
//
// Registered as torch.ops.occfusion_cpu.covar_forward / covar_backward; the Python wrapper is
// occfusion_core/render/backends/cpp.py (CovarianceCpp).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#include "quat_math.h"

namespace occfusion {
namespace {

constexpr int64_t kGrain = 2048;  // Gaussians per parallel chunk

// Gaussian i's quaternion and scales, in double.
template <typename scalar_t>
inline void read_gaussian(const scalar_t* q, const scalar_t* s, int64_t i, double* qd, double* sd) {
  for (int k = 0; k < 4; ++k) qd[k] = double(q[4 * i + k]);
  for (int k = 0; k < 3; ++k) sd[k] = double(s[3 * i + k]);
}

void check(const at::Tensor& quats, const at::Tensor& scales) {
  const int64_t n = quats.dim() == 2 ? quats.size(0) : -1;
  TORCH_CHECK(quats.dim() == 2 && quats.size(1) == 4, "covar_cpu: quats must be (N, 4), got ", quats.sizes());
  TORCH_CHECK(scales.sizes() == at::IntArrayRef({n, 3}), "covar_cpu: scales must be (N, 3) with N = ", n, ", got ",
              scales.sizes());
  for (const auto* t : {&quats, &scales})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == quats.scalar_type(),
                "covar_cpu: quats and scales must be contiguous CPU tensors of one dtype");
}

// Returns covars (N, 3, 3).
at::Tensor covar_forward(const at::Tensor& quats, const at::Tensor& scales) {
  check(quats, scales);
  const int64_t n = quats.size(0);
  at::Tensor covars = at::empty({n, 3, 3}, quats.options());
  AT_DISPATCH_FLOATING_TYPES(quats.scalar_type(), "covar_cpu_forward", [&] {
    const scalar_t *q = quats.data_ptr<scalar_t>(), *s = scales.data_ptr<scalar_t>();
    scalar_t* out = covars.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double qd[4], sd[3], R[9], qn[4], M[9], cov[9];
        read_gaussian(q, s, i, qd, sd);
        quat_rotation(qd, R, qn);
        rotation_scale_covariance(R, sd, M, cov);
        for (int e = 0; e < 9; ++e) out[9 * i + e] = scalar_t(cov[e]);
      }
    });
  });
  return covars;
}

// Returns gradients (quats (N, 4), scales (N, 3)).
std::vector<at::Tensor> covar_backward(const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& grad_covars) {
  check(quats, scales);
  const int64_t n = quats.size(0);
  TORCH_CHECK(grad_covars.sizes() == at::IntArrayRef({n, 3, 3}) && grad_covars.scalar_type() == quats.scalar_type(),
              "covar_cpu: grad_covars must be (N, 3, 3) of the inputs' dtype, got ", grad_covars.sizes());
  const at::Tensor grad = grad_covars.contiguous();
  at::Tensor g_quats = at::empty_like(quats), g_scales = at::empty_like(scales);
  AT_DISPATCH_FLOATING_TYPES(quats.scalar_type(), "covar_cpu_backward", [&] {
    const scalar_t *q = quats.data_ptr<scalar_t>(), *s = scales.data_ptr<scalar_t>(), *g = grad.data_ptr<scalar_t>();
    scalar_t *oq = g_quats.data_ptr<scalar_t>(), *os = g_scales.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double qd[4], sd[3], R[9], qn[4], M[9], g_cov[9], g_R[9], g_scale[3], g_q[4];
        read_gaussian(q, s, i, qd, sd);
        const double qnorm = quat_rotation(qd, R, qn);
        scaled_rotation(R, sd, M);
        for (int e = 0; e < 9; ++e) g_cov[e] = double(g[9 * i + e]);
        rotation_scale_covariance_backward(R, M, sd, g_cov, g_R, g_scale);
        quat_rotation_backward(qn, qnorm, g_R, g_q);
        for (int e = 0; e < 4; ++e) oq[4 * i + e] = scalar_t(g_q[e]);
        for (int c = 0; c < 3; ++c) os[3 * i + c] = scalar_t(g_scale[c]);
      }
    });
  });
  return {g_quats, g_scales};
}

}  // namespace
}  // namespace occfusion

TORCH_LIBRARY_FRAGMENT(occfusion_cpu, m) {
  m.def("covar_forward(Tensor quats, Tensor scales) -> Tensor", &occfusion::covar_forward);
  m.def("covar_backward(Tensor quats, Tensor scales, Tensor grad_covars) -> Tensor[]", &occfusion::covar_backward);
}
