// Linear blend skinning of Gaussians (GauHuman's big pose -> target pose), fused, forward and
// backward, on the CPU.
//
// Per Gaussian, with skinning weights w (J), the constant big-pose bone transforms B_j and the
// target pose's T_j (3x4 each), its canonical centre x, its offset d (shape and pose blend offsets
// of its body vertex, minus the big pose's), the global translation t, log-scales s and quaternion q:
//
//   B = sum_j w_j B_j          rest = B_R^-1 (x - B_t) + d
//   A = sum_j w_j T_j          mean = A_R rest + A_t + t
//   L = A_R B_R^-1             cov  = L (R(q) diag(e^2s) R(q)^T) L^T
//
// which is exactly occfusion_core/gaussians/human.py's HumanGaussians.deform for one pose (its torch
// code is the reference, tests/test_skin_cpu.py holds the two together). The 3x3 algebra is written
// out; one pass over the Gaussians. Gradients flow to w, T, x, d, t, s and q; the sums over Gaussians
// (for T and t) are taken chunk by chunk in a fixed order, so results do not depend on the threads.
//
// Registered as torch.ops.occfusion_cpu.skin_forward / skin_backward; the Python wrapper is
// occfusion_core/render/backends/cpp.py (SkinCpp).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "quat_math.h"

namespace occfusion {
namespace {

constexpr int64_t kChunk = 256;  // Gaussians per chunk of the reductions (fixed: determinism)

inline void inverse3(const double* m, double* inv) {
  const double a = m[0], b = m[1], c = m[2], d = m[3], e = m[4], f = m[5], g = m[6], h = m[7], i = m[8];
  const double A = e * i - f * h, B = f * g - d * i, C = d * h - e * g;
  const double det = a * A + b * B + c * C;
  const double s = 1.0 / det;
  inv[0] = A * s, inv[1] = (c * h - b * i) * s, inv[2] = (b * f - c * e) * s;
  inv[3] = B * s, inv[4] = (a * i - c * g) * s, inv[5] = (c * d - a * f) * s;
  inv[6] = C * s, inv[7] = (b * g - a * h) * s, inv[8] = (a * e - b * d) * s;
}

inline void matmul3(const double* a, const double* b, double* out) {  // out = a b (3x3 row-major)
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) out[3 * r + c] = a[3 * r] * b[c] + a[3 * r + 1] * b[3 + c] + a[3 * r + 2] * b[6 + c];
}

inline void matmul3_bt(const double* a, const double* b, double* out) {  // out = a b^T
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      out[3 * r + c] = a[3 * r] * b[3 * c] + a[3 * r + 1] * b[3 * c + 1] + a[3 * r + 2] * b[3 * c + 2];
}

inline void matmul3_at(const double* a, const double* b, double* out) {  // out = a^T b
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) out[3 * r + c] = a[r] * b[c] + a[3 + r] * b[3 + c] + a[6 + r] * b[6 + c];
}

// One Gaussian's forward quantities.
struct Skinned {
  double BR[9], Bt[3], Binv[9], u[3], rest[3], AR[9], At[3], L[9], M[9], Rq[9], qn[4], qnorm, es[3], cov_c[9];
};

template <typename scalar_t>
inline void skin_one(int64_t i, int J, const scalar_t* w, const double* big, const double* tgt, const scalar_t* x,
                     const scalar_t* d, const scalar_t* s, const scalar_t* q, Skinned& k) {
  double Bm[12] = {0}, Am[12] = {0};
  const scalar_t* wi = w + i * J;
  for (int j = 0; j < J; ++j) {
    const double wj = wi[j];
    if (wj == 0.0) continue;  // skinning weights are sparse (a few bones per Gaussian); adding 0 changes nothing
    for (int e = 0; e < 12; ++e) Bm[e] += wj * big[12 * j + e], Am[e] += wj * tgt[12 * j + e];
  }
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) k.BR[3 * r + c] = Bm[4 * r + c], k.AR[3 * r + c] = Am[4 * r + c];
    k.Bt[r] = Bm[4 * r + 3], k.At[r] = Am[4 * r + 3];
  }
  inverse3(k.BR, k.Binv);
  for (int r = 0; r < 3; ++r) k.u[r] = double(x[3 * i + r]) - k.Bt[r];
  for (int r = 0; r < 3; ++r)
    k.rest[r] = k.Binv[3 * r] * k.u[0] + k.Binv[3 * r + 1] * k.u[1] + k.Binv[3 * r + 2] * k.u[2] + double(d[3 * i + r]);
  matmul3(k.AR, k.Binv, k.L);
  const double qd[4] = {double(q[4 * i]), double(q[4 * i + 1]), double(q[4 * i + 2]), double(q[4 * i + 3])};
  k.qnorm = quat_rotation(qd, k.Rq, k.qn);
  for (int c = 0; c < 3; ++c) k.es[c] = std::exp(double(s[3 * i + c]));
  rotation_scale_covariance(k.Rq, k.es, k.M, k.cov_c);
}

void check(const at::Tensor& weights, const at::Tensor& big, const at::Tensor& target, const at::Tensor& xyz,
           const at::Tensor& offsets, const at::Tensor& trans, const at::Tensor& log_scales, const at::Tensor& quats) {
  const int64_t n = xyz.size(0), J = weights.size(1);
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == n, "skin_cpu: weights must be (N, J)");
  TORCH_CHECK(big.sizes() == at::IntArrayRef({J, 4, 4}) && target.sizes() == at::IntArrayRef({J, 4, 4}),
              "skin_cpu: big and target transforms must be (J, 4, 4)");
  TORCH_CHECK(xyz.sizes() == at::IntArrayRef({n, 3}) && offsets.sizes() == at::IntArrayRef({n, 3}) &&
                  log_scales.sizes() == at::IntArrayRef({n, 3}) && quats.sizes() == at::IntArrayRef({n, 4}) &&
                  trans.numel() == 3,
              "skin_cpu: xyz, offsets, log_scales (N, 3), quats (N, 4), trans (3,)");
  for (const auto* t : {&weights, &big, &target, &xyz, &offsets, &trans, &log_scales, &quats}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == xyz.scalar_type(),
                "skin_cpu: inputs must be contiguous CPU tensors of one dtype");
  }
}

std::vector<double> rows3x4(const at::Tensor& t) {  // (J, 4, 4) -> J x 12 doubles (first three rows)
  const auto d = t.to(at::kDouble).contiguous();
  const int64_t J = t.size(0);
  std::vector<double> out(12 * J);
  const double* p = d.data_ptr<double>();
  for (int64_t j = 0; j < J; ++j)
    for (int e = 0; e < 12; ++e) out[12 * j + e] = p[16 * j + e];
  return out;
}

// Returns means (N, 3), covars (N, 3, 3), linear (N, 3, 3).
std::vector<at::Tensor> skin_forward(const at::Tensor& weights, const at::Tensor& big, const at::Tensor& target,
                                     const at::Tensor& xyz, const at::Tensor& offsets, const at::Tensor& trans,
                                     const at::Tensor& log_scales, const at::Tensor& quats) {
  check(weights, big, target, xyz, offsets, trans, log_scales, quats);
  const int64_t n = xyz.size(0);
  const int J = int(weights.size(1));
  const auto bigd = rows3x4(big), tgtd = rows3x4(target);
  const auto opts = xyz.options();
  at::Tensor means = at::empty({n, 3}, opts), covars = at::empty({n, 3, 3}, opts), linear = at::empty({n, 3, 3}, opts);
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "skin_cpu_forward", [&] {
    const scalar_t *w = weights.data_ptr<scalar_t>(), *x = xyz.data_ptr<scalar_t>(), *d = offsets.data_ptr<scalar_t>(),
                   *tr = trans.data_ptr<scalar_t>(), *s = log_scales.data_ptr<scalar_t>(), *q = quats.data_ptr<scalar_t>();
    scalar_t *om = means.data_ptr<scalar_t>(), *oc = covars.data_ptr<scalar_t>(), *ol = linear.data_ptr<scalar_t>();
    at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Skinned k;
        skin_one(i, J, w, bigd.data(), tgtd.data(), x, d, s, q, k);
        for (int r = 0; r < 3; ++r)
          om[3 * i + r] = scalar_t(k.AR[3 * r] * k.rest[0] + k.AR[3 * r + 1] * k.rest[1] + k.AR[3 * r + 2] * k.rest[2] +
                                   k.At[r] + double(tr[r]));
        double LS[9], C[9];
        matmul3(k.L, k.cov_c, LS);
        matmul3_bt(LS, k.L, C);
        for (int e = 0; e < 9; ++e) oc[9 * i + e] = scalar_t(C[e]), ol[9 * i + e] = scalar_t(k.L[e]);
      }
    });
  });
  return {means, covars, linear};
}

// Returns gradients (weights (N, J), target (J, 4, 4), xyz (N, 3), offsets (N, 3), trans (3,),
// log_scales (N, 3), quats (N, 4)); the weights' is an empty tensor unless weight_grad (it is the
// only part that needs every bone of every Gaussian, the rest only the bones it is bound to).
std::vector<at::Tensor> skin_backward(const at::Tensor& weights, const at::Tensor& big, const at::Tensor& target,
                                      const at::Tensor& xyz, const at::Tensor& offsets, const at::Tensor& trans,
                                      const at::Tensor& log_scales, const at::Tensor& quats,
                                      const at::Tensor& grad_means, const at::Tensor& grad_covars,
                                      const at::Tensor& grad_linear, bool weight_grad) {
  check(weights, big, target, xyz, offsets, trans, log_scales, quats);
  const int64_t n = xyz.size(0);
  const int J = int(weights.size(1));
  const auto bigd = rows3x4(big), tgtd = rows3x4(target);
  const auto opts = xyz.options();
  at::Tensor g_w = weight_grad ? at::zeros_like(weights) : at::empty({0}, weights.options());
  at::Tensor g_x = at::zeros_like(xyz), g_d = at::zeros_like(offsets);
  at::Tensor g_s = at::zeros_like(log_scales), g_q = at::zeros_like(quats);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part_T(size_t(chunks) * 12 * J, 0.0), part_t(size_t(chunks) * 3, 0.0);
  const auto gm_c = grad_means.contiguous(), gc_c = grad_covars.contiguous(), gl_c = grad_linear.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "skin_cpu_backward", [&] {
    const scalar_t *w = weights.data_ptr<scalar_t>(), *x = xyz.data_ptr<scalar_t>(), *d = offsets.data_ptr<scalar_t>(),
                   *s = log_scales.data_ptr<scalar_t>(), *q = quats.data_ptr<scalar_t>();
    const scalar_t *gm = gm_c.data_ptr<scalar_t>(), *gcv = gc_c.data_ptr<scalar_t>(), *gl = gl_c.data_ptr<scalar_t>();
    scalar_t *ow = weight_grad ? g_w.data_ptr<scalar_t>() : nullptr, *ox = g_x.data_ptr<scalar_t>(), *od = g_d.data_ptr<scalar_t>(),
             *os = g_s.data_ptr<scalar_t>(), *oq = g_q.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t chunk = cb; chunk < ce; ++chunk) {
        double* pT = part_T.data() + chunk * 12 * J;
        double* pt = part_t.data() + chunk * 3;
        for (int64_t i = chunk * kChunk; i < std::min(n, (chunk + 1) * kChunk); ++i) {
          Skinned k;
          skin_one(i, J, w, bigd.data(), tgtd.data(), x, d, s, q, k);
          const double g_mean[3] = {double(gm[3 * i]), double(gm[3 * i + 1]), double(gm[3 * i + 2])};
          double gC[9], gL[9];
          for (int e = 0; e < 9; ++e) gC[e] = double(gcv[9 * i + e]), gL[e] = double(gl[9 * i + e]);
          // cov = L cov_c L^T: dL += (gC + gC^T) L cov_c ; d cov_c = L^T gC L
          double gsym[9], LS[9], tmp[9];
          for (int r = 0; r < 3; ++r)
            for (int c = 0; c < 3; ++c) gsym[3 * r + c] = gC[3 * r + c] + gC[3 * c + r];
          matmul3(k.L, k.cov_c, LS);
          matmul3(gsym, LS, tmp);
          for (int e = 0; e < 9; ++e) gL[e] += tmp[e];
          double g_cov_c[9], LtG[9];
          matmul3_at(k.L, gC, LtG);
          matmul3(LtG, k.L, g_cov_c);
          // mean = A_R rest + A_t + t
          double g_AR[9], g_At[3], g_rest[3];
          for (int r = 0; r < 3; ++r) {
            for (int c = 0; c < 3; ++c) g_AR[3 * r + c] = g_mean[r] * k.rest[c];
            g_At[r] = g_mean[r];
            pt[r] += g_mean[r];
          }
          for (int c = 0; c < 3; ++c) g_rest[c] = k.AR[c] * g_mean[0] + k.AR[3 + c] * g_mean[1] + k.AR[6 + c] * g_mean[2];
          // L = A_R B^-1
          double g_Binv[9];
          matmul3_bt(gL, k.Binv, tmp);  // gL Binv^T
          for (int e = 0; e < 9; ++e) g_AR[e] += tmp[e];
          matmul3_at(k.AR, gL, g_Binv);  // AR^T gL
          // rest = B^-1 u + d
          for (int r = 0; r < 3; ++r)
            for (int c = 0; c < 3; ++c) g_Binv[3 * r + c] += g_rest[r] * k.u[c];
          double g_u[3];
          for (int c = 0; c < 3; ++c) g_u[c] = k.Binv[c] * g_rest[0] + k.Binv[3 + c] * g_rest[1] + k.Binv[6 + c] * g_rest[2];
          for (int c = 0; c < 3; ++c) ox[3 * i + c] = scalar_t(g_u[c]), od[3 * i + c] = scalar_t(g_rest[c]);
          // B^-1 of B_R: dB_R = -B^-T g_Binv B^-T ; u = x - B_t: dB_t = -g_u
          double g_BR[9];
          matmul3_at(k.Binv, g_Binv, tmp);  // Binv^T g_Binv
          matmul3_bt(tmp, k.Binv, g_BR);    // ... Binv^T
          for (int e = 0; e < 9; ++e) g_BR[e] = -g_BR[e];
          // blends: dw_j = <dB, B_j> + <dA, T_j> ; dT_j += w_j dA
          const scalar_t* wi = w + i * J;
          for (int j = 0; j < J; ++j) {
            const double wj = wi[j];
            if (weight_grad) {
              const double* Bj = bigd.data() + 12 * j;
              const double* Tj = tgtd.data() + 12 * j;
              double acc = 0.0;
              for (int r = 0; r < 3; ++r) {
                for (int c = 0; c < 3; ++c) acc += g_BR[3 * r + c] * Bj[4 * r + c] + g_AR[3 * r + c] * Tj[4 * r + c];
                acc += -g_u[r] * Bj[4 * r + 3] + g_At[r] * Tj[4 * r + 3];
              }
              ow[i * J + j] = scalar_t(acc);
            }
            if (wj == 0.0) continue;
            double* gT = pT + 12 * j;
            for (int r = 0; r < 3; ++r) {
              for (int c = 0; c < 3; ++c) gT[4 * r + c] += wj * g_AR[3 * r + c];
              gT[4 * r + 3] += wj * g_At[r];
            }
          }
          // cov_c = M M^T, M = R(q) diag(e^s)
          double g_R[9], g_es[3], g_q[4];
          rotation_scale_covariance_backward(k.Rq, k.M, k.es, g_cov_c, g_R, g_es);
          quat_rotation_backward(k.qn, k.qnorm, g_R, g_q);
          for (int c = 0; c < 3; ++c) os[3 * i + c] = scalar_t(g_es[c] * k.es[c]);  // d e^s / ds = e^s
          for (int e = 0; e < 4; ++e) oq[4 * i + e] = scalar_t(g_q[e]);
        }
      }
    });
  });
  at::Tensor g_target = at::zeros({J, 4, 4}, opts), g_trans = at::zeros({3}, opts);
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "skin_cpu_reduce", [&] {
    scalar_t* gT = g_target.data_ptr<scalar_t>();
    scalar_t* gt = g_trans.data_ptr<scalar_t>();
    for (int j = 0; j < J; ++j)
      for (int e = 0; e < 12; ++e) {
        double acc = 0.0;
        for (int64_t c = 0; c < chunks; ++c) acc += part_T[size_t(c) * 12 * J + 12 * j + e];
        gT[16 * j + e] = scalar_t(acc);
      }
    for (int r = 0; r < 3; ++r) {
      double acc = 0.0;
      for (int64_t c = 0; c < chunks; ++c) acc += part_t[size_t(c) * 3 + r];
      gt[r] = scalar_t(acc);
    }
  });
  return {g_w, g_target, g_x, g_d, g_trans, g_s, g_q};
}

}  // namespace
}  // namespace occfusion

TORCH_LIBRARY_FRAGMENT(occfusion_cpu, m) {
  m.def(
      "skin_forward(Tensor weights, Tensor big, Tensor target, Tensor xyz, Tensor offsets, Tensor trans, "
      "Tensor log_scales, Tensor quats) -> Tensor[]",
      &occfusion::skin_forward);
  m.def(
      "skin_backward(Tensor weights, Tensor big, Tensor target, Tensor xyz, Tensor offsets, Tensor trans, "
      "Tensor log_scales, Tensor quats, Tensor grad_means, Tensor grad_covars, Tensor grad_linear, "
      "bool weight_grad) -> Tensor[]",
      &occfusion::skin_backward);
}
