// Projection of 3D Gaussians to the image and their spherical-harmonic colours, fused, forward and
// backward, on the CPU.
//
// The maths is exactly that of the torch reference, occfusion_core/render/projection.py
// (project_gaussians: gsplat's pinhole EWA projection with the x/z, y/z clamp at 1.3 x the field of
// view, eps2d on the 2D covariance's diagonal, the determinant clamped at 1e-10, radii from 3.33
// sigma) and occfusion_core/render/sh.py (sh_to_rgb: the 3DGS real SH basis up to degree 3, + 0.5,
// clamped at 0), with the viewing direction of each Gaussian optionally turned into its own frame
// (occfusion_core/stages/common.py: view_directions, 'canonical'). The 3x3 algebra is written out;
// one pass over the Gaussians does everything, threads splitting the Gaussians.
//
// Gradients: of means2d, conics, depths and colours with respect to means, covariances and SH
// coefficients (the directions count as constants, as the reference detaches them; radii are
// integers). Each Gaussian's gradient is computed by one thread alone, so results are the same for
// any thread count.
//
// Registered as torch.ops.occfusion_cpu.project_forward / project_backward; the Python wrapper is
// occfusion_core/render/backends/cpp.py (ProjectShadeCpp).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace occfusion {
namespace {

constexpr double kSH_C0 = 0.28209479177387814;
constexpr double kSH_C1 = 0.4886025119029199;
constexpr double kSH_C2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                              0.5462742152960396};
constexpr double kSH_C3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                              -0.4570457994644658, 1.445305721320277, -0.5900435899266435};
constexpr double kExtentSigmas = 3.33;
constexpr int64_t kGrain = 1024;  // Gaussians per parallel chunk: a few microseconds of work

struct Camera {
  double R[9], t[3];
  double fx, fy, cx, cy, skew;
  double lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
  int width, height;
  double eps2d, near_plane, far_plane, center[3];
};

Camera make_camera(const at::Tensor& K, const at::Tensor& w2c, int64_t width, int64_t height, double eps2d,
                   double near_plane, double far_plane) {
  TORCH_CHECK(K.sizes() == at::IntArrayRef({3, 3}) && w2c.sizes() == at::IntArrayRef({4, 4}),
              "project_cpu: K must be (3, 3) and w2c (4, 4)");
  const auto k = K.to(at::kDouble).contiguous();
  const auto e = w2c.to(at::kDouble).contiguous();
  const double* kp = k.data_ptr<double>();
  const double* ep = e.data_ptr<double>();
  Camera c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.R[3 * i + j] = ep[4 * i + j];
    c.t[i] = ep[4 * i + 3];
  }
  // camera centre -R^T t, for the viewing directions
  for (int j = 0; j < 3; ++j) c.center[j] = -(c.R[j] * c.t[0] + c.R[3 + j] * c.t[1] + c.R[6 + j] * c.t[2]);
  c.fx = kp[0], c.skew = kp[1], c.cx = kp[2], c.fy = kp[4], c.cy = kp[5];
  c.width = int(width), c.height = int(height);
  const double tan_fovx = 0.5 * width / c.fx, tan_fovy = 0.5 * height / c.fy;
  c.lim_x_pos = (width - c.cx) / c.fx + 0.3 * tan_fovx;
  c.lim_x_neg = c.cx / c.fx + 0.3 * tan_fovx;
  c.lim_y_pos = (height - c.cy) / c.fy + 0.3 * tan_fovy;
  c.lim_y_neg = c.cy / c.fy + 0.3 * tan_fovy;
  c.eps2d = eps2d, c.near_plane = near_plane, c.far_plane = far_plane;
  return c;
}

// The real SH basis (3DGS sign convention) of a unit direction, up to `degree`; returns the count.
inline int sh_basis(int degree, double x, double y, double z, double* b) {
  b[0] = kSH_C0;
  if (degree < 1) return 1;
  b[1] = -kSH_C1 * y, b[2] = kSH_C1 * z, b[3] = -kSH_C1 * x;
  if (degree < 2) return 4;
  const double xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = kSH_C2[0] * xy, b[5] = kSH_C2[1] * yz, b[6] = kSH_C2[2] * (2.0 * zz - xx - yy);
  b[7] = kSH_C2[3] * xz, b[8] = kSH_C2[4] * (xx - yy);
  if (degree < 3) return 9;
  b[9] = kSH_C3[0] * y * (3 * xx - yy), b[10] = kSH_C3[1] * xy * z, b[11] = kSH_C3[2] * y * (4 * zz - xx - yy);
  b[12] = kSH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), b[13] = kSH_C3[4] * x * (4 * zz - xx - yy);
  b[14] = kSH_C3[5] * z * (xx - yy), b[15] = kSH_C3[6] * x * (xx - 3 * yy);
  return 16;
}

// The viewing direction of Gaussian i (camera centre -> mean, turned by the inverse of its 3x3
// transform when given), normalised; the reference normalises twice (view_directions, then eval_sh),
// which is the same up to rounding.
template <typename scalar_t>
inline void view_direction(const scalar_t* mean, const scalar_t* transform, const Camera& cam, double* d) {
  double v[3] = {double(mean[0]) - cam.center[0], double(mean[1]) - cam.center[1], double(mean[2]) - cam.center[2]};
  if (transform != nullptr) {  // solve T d = v (Cramer's rule, T = transform row-major)
    const double a = transform[0], b = transform[1], c = transform[2], e = transform[3], f = transform[4],
                 g = transform[5], h = transform[6], i = transform[7], j = transform[8];
    const double A = f * j - g * i, B = g * h - e * j, C = e * i - f * h;
    const double det = a * A + b * B + c * C;
    const double inv = det != 0.0 ? 1.0 / det : 0.0;
    const double s0 = v[0], s1 = v[1], s2 = v[2];
    v[0] = (A * s0 + (c * i - b * j) * s1 + (b * g - c * f) * s2) * inv;
    v[1] = (B * s0 + (a * j - c * h) * s1 + (c * e - a * g) * s2) * inv;
    v[2] = (C * s0 + (b * h - a * i) * s1 + (a * f - b * e) * s2) * inv;
  }
  const double norm = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  const double s = 1.0 / std::max(norm, 1e-12);
  d[0] = v[0] * s, d[1] = v[1] * s, d[2] = v[2] * s;
}

// Everything the forward computes for one Gaussian that the backward needs again.
struct Projected {
  double mc[3];       // camera-space mean
  double cov_c[9];    // camera-space covariance
  double tz_safe;     // z, moved to `near` when |z| < near
  bool safe_moved;    // whether it was moved
  double txc, tyc;    // clamped x and y (tz * clamp(x / tz, ...))
  int clamp_x, clamp_y;  // 0 free, +1 clamped at the positive limit, -1 at the negative one
  double J[6];        // Jacobian rows (fx/z, 0, -fx txc/z^2), (0, fy/z, -fy tyc/z^2)
  double xx, yy, xy;  // 2D covariance (eps2d added)
  double det;         // its determinant (before the clamp)
};

template <typename scalar_t>
inline void project_one(const scalar_t* mean, const scalar_t* cov, const Camera& cam, Projected& p) {
  const double* R = cam.R;
  for (int i = 0; i < 3; ++i)
    p.mc[i] = R[3 * i] * mean[0] + R[3 * i + 1] * mean[1] + R[3 * i + 2] * mean[2] + cam.t[i];
  // R Sigma R^T
  double RS[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      RS[3 * i + j] = R[3 * i] * cov[j] + R[3 * i + 1] * cov[3 + j] + R[3 * i + 2] * cov[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      p.cov_c[3 * i + j] = RS[3 * i] * R[3 * j] + RS[3 * i + 1] * R[3 * j + 1] + RS[3 * i + 2] * R[3 * j + 2];
  const double tz = p.mc[2];
  p.safe_moved = std::abs(tz) < cam.near_plane;
  p.tz_safe = p.safe_moved ? cam.near_plane : tz;
  const double z = p.tz_safe;
  const double ux = p.mc[0] / z, uy = p.mc[1] / z;
  p.clamp_x = ux > cam.lim_x_pos ? 1 : (ux < -cam.lim_x_neg ? -1 : 0);
  p.clamp_y = uy > cam.lim_y_pos ? 1 : (uy < -cam.lim_y_neg ? -1 : 0);
  p.txc = z * (p.clamp_x > 0 ? cam.lim_x_pos : (p.clamp_x < 0 ? -cam.lim_x_neg : ux));
  p.tyc = z * (p.clamp_y > 0 ? cam.lim_y_pos : (p.clamp_y < 0 ? -cam.lim_y_neg : uy));
  p.J[0] = cam.fx / z, p.J[1] = 0.0, p.J[2] = -cam.fx * p.txc / (z * z);
  p.J[3] = 0.0, p.J[4] = cam.fy / z, p.J[5] = -cam.fy * p.tyc / (z * z);
  // cov2d = J cov_c J^T
  double JC[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      JC[3 * i + j] = p.J[3 * i] * p.cov_c[j] + p.J[3 * i + 1] * p.cov_c[3 + j] + p.J[3 * i + 2] * p.cov_c[6 + j];
  const double c00 = JC[0] * p.J[0] + JC[1] * p.J[1] + JC[2] * p.J[2];
  const double c01 = JC[0] * p.J[3] + JC[1] * p.J[4] + JC[2] * p.J[5];
  const double c10 = JC[3] * p.J[0] + JC[4] * p.J[1] + JC[5] * p.J[2];
  const double c11 = JC[3] * p.J[3] + JC[4] * p.J[4] + JC[5] * p.J[5];
  p.xx = c00 + cam.eps2d, p.yy = c11 + cam.eps2d, p.xy = 0.5 * (c01 + c10);
  p.det = p.xx * p.yy - p.xy * p.xy;
}

void check(const at::Tensor& means, const at::Tensor& covars, const at::Tensor& sh, const at::Tensor& transforms,
           int64_t sh_degree) {
  const int64_t n = means.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "project_cpu: means must be (N, 3)");
  TORCH_CHECK(covars.sizes() == at::IntArrayRef({n, 3, 3}), "project_cpu: covars must be (N, 3, 3)");
  TORCH_CHECK(sh.dim() == 3 && sh.size(0) == n && sh.size(2) == 3, "project_cpu: sh must be (N, K, 3)");
  TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3 && sh.size(1) >= (sh_degree + 1) * (sh_degree + 1),
              "project_cpu: sh_degree must be in [0, 3] with (degree + 1)^2 <= K");
  TORCH_CHECK(!transforms.defined() || transforms.numel() == 0 || transforms.sizes() == at::IntArrayRef({n, 3, 3}),
              "project_cpu: transforms must be (N, 3, 3) or empty");
  for (const auto* t : {&means, &covars, &sh}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == means.scalar_type(),
                "project_cpu: inputs must be contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(means.scalar_type() == at::kFloat || means.scalar_type() == at::kDouble,
              "project_cpu: float32 or float64 only");
}

// Returns means2d (N, 2), conics (N, 3), depths (N,), radii (N, 2) int32, colors (N, 3).
std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& covars, const at::Tensor& sh,
                                        const at::Tensor& transforms, int64_t sh_degree, const at::Tensor& K,
                                        const at::Tensor& w2c, int64_t width, int64_t height, double eps2d,
                                        double near_plane, double far_plane) {
  check(means, covars, sh, transforms, sh_degree);
  const Camera cam = make_camera(K, w2c, width, height, eps2d, near_plane, far_plane);
  const int64_t n = means.size(0), K_sh = sh.size(1);
  const auto opts = means.options();
  at::Tensor means2d = at::empty({n, 2}, opts), conics = at::empty({n, 3}, opts), depths = at::empty({n}, opts);
  at::Tensor colors = at::empty({n, 3}, opts), radii = at::empty({n, 2}, opts.dtype(at::kInt));
  const bool turned = transforms.defined() && transforms.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_cpu_forward", [&] {
    const scalar_t* m = means.data_ptr<scalar_t>();
    const scalar_t* cv = covars.data_ptr<scalar_t>();
    const scalar_t* coef = sh.data_ptr<scalar_t>();
    const scalar_t* tr = turned ? transforms.data_ptr<scalar_t>() : nullptr;
    scalar_t* o_m2 = means2d.data_ptr<scalar_t>();
    scalar_t* o_con = conics.data_ptr<scalar_t>();
    scalar_t* o_dep = depths.data_ptr<scalar_t>();
    scalar_t* o_col = colors.data_ptr<scalar_t>();
    int32_t* o_rad = radii.data_ptr<int32_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Projected p;
        project_one(m + 3 * i, cv + 9 * i, cam, p);
        const double z = p.tz_safe;
        // means2d = K[:2, :3] (mc / z); the rounding of the reference: (mc / z) first
        const double x = p.mc[0] / z, y = p.mc[1] / z, one = p.mc[2] / z;
        const double u = cam.fx * x + cam.skew * y + cam.cx * one, v = cam.fy * y + cam.cy * one;
        o_m2[2 * i] = scalar_t(u), o_m2[2 * i + 1] = scalar_t(v);
        const double dc = std::max(p.det, 1e-10);
        o_con[3 * i] = scalar_t(p.yy / dc), o_con[3 * i + 1] = scalar_t(-p.xy / dc), o_con[3 * i + 2] = scalar_t(p.xx / dc);
        o_dep[i] = scalar_t(p.mc[2]);
        // radii (integers; the reference computes them in the input dtype)
        const scalar_t sx = std::sqrt(std::max(scalar_t(p.xx), scalar_t(0))), sy = std::sqrt(std::max(scalar_t(p.yy), scalar_t(0)));
        const scalar_t rx = std::ceil(scalar_t(kExtentSigmas) * sx), ry = std::ceil(scalar_t(kExtentSigmas) * sy);
        const bool valid = p.det > 0 && p.mc[2] > cam.near_plane && p.mc[2] < cam.far_plane;
        const scalar_t mu = scalar_t(u), mv = scalar_t(v);
        const bool inside = (mu + rx > 0) && (mu - rx < scalar_t(cam.width)) && (mv + ry > 0) &&
                            (mv - ry < scalar_t(cam.height));
        o_rad[2 * i] = valid && inside ? int32_t(rx) : 0;
        o_rad[2 * i + 1] = valid && inside ? int32_t(ry) : 0;
        // colours
        double d[3], b[16];
        view_direction(m + 3 * i, tr != nullptr ? tr + 9 * i : nullptr, cam, d);
        const int nb = sh_basis(int(sh_degree), d[0], d[1], d[2], b);
        const scalar_t* c = coef + i * K_sh * 3;
        for (int ch = 0; ch < 3; ++ch) {
          double acc = 0.0;
          for (int k = 0; k < nb; ++k) acc += b[k] * double(c[3 * k + ch]);
          o_col[3 * i + ch] = scalar_t(std::max(acc + 0.5, 0.0));
        }
      }
    });
  });
  return {means2d, conics, depths, radii, colors};
}

// Returns gradients (means (N, 3), covars (N, 3, 3), sh (N, K, 3)).
std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& covars, const at::Tensor& sh,
                                         const at::Tensor& transforms, int64_t sh_degree, const at::Tensor& K,
                                         const at::Tensor& w2c, int64_t width, int64_t height, double eps2d,
                                         double near_plane, double far_plane, const at::Tensor& colors,
                                         const at::Tensor& grad_means2d, const at::Tensor& grad_conics,
                                         const at::Tensor& grad_depths, const at::Tensor& grad_colors) {
  check(means, covars, sh, transforms, sh_degree);
  const Camera cam = make_camera(K, w2c, width, height, eps2d, near_plane, far_plane);
  const int64_t n = means.size(0), K_sh = sh.size(1);
  const auto opts = means.options();
  at::Tensor g_means = at::zeros({n, 3}, opts), g_covars = at::zeros({n, 3, 3}, opts), g_sh = at::zeros_like(sh);
  const bool turned = transforms.defined() && transforms.numel() > 0;
  const auto gm2 = grad_means2d.contiguous(), gcon = grad_conics.contiguous(), gdep = grad_depths.contiguous(),
             gcol = grad_colors.contiguous(), col = colors.contiguous();
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_cpu_backward", [&] {
    const scalar_t* m = means.data_ptr<scalar_t>();
    const scalar_t* cv = covars.data_ptr<scalar_t>();
    const scalar_t* tr = turned ? transforms.data_ptr<scalar_t>() : nullptr;
    const scalar_t* o_col = col.data_ptr<scalar_t>();
    const scalar_t* g_m2 = gm2.data_ptr<scalar_t>();
    const scalar_t* g_con = gcon.data_ptr<scalar_t>();
    const scalar_t* g_dep = gdep.data_ptr<scalar_t>();
    const scalar_t* g_col = gcol.data_ptr<scalar_t>();
    scalar_t* gm = g_means.data_ptr<scalar_t>();
    scalar_t* gc = g_covars.data_ptr<scalar_t>();
    scalar_t* gs = g_sh.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Projected p;
        project_one(m + 3 * i, cv + 9 * i, cam, p);
        const double z = p.tz_safe;
        // conics -> 2D covariance (the clamp of the determinant stops the gradient through it)
        const double dc = std::max(p.det, 1e-10);
        const double ga = g_con[3 * i], gb = g_con[3 * i + 1], gcc = g_con[3 * i + 2];
        double g_xx = gcc / dc, g_yy = ga / dc, g_xy = -gb / dc;
        if (p.det > 1e-10) {
          const double g_det = -(ga * p.yy - gb * p.xy + gcc * p.xx) / (dc * dc);
          g_xx += g_det * p.yy, g_yy += g_det * p.xx, g_xy += g_det * (-2.0 * p.xy);
        }
        // G = d/d cov2d (symmetric: the off-diagonal entries each get half of g_xy)
        const double G[4] = {g_xx, 0.5 * g_xy, 0.5 * g_xy, g_yy};
        // d cov_c = J^T G J ; dJ = 2 G J cov_c
        double GJ[6];  // G J (2x3)
        for (int r = 0; r < 2; ++r)
          for (int c = 0; c < 3; ++c) GJ[3 * r + c] = G[2 * r] * p.J[c] + G[2 * r + 1] * p.J[3 + c];
        double g_cov_c[9];
        for (int r = 0; r < 3; ++r)
          for (int c = 0; c < 3; ++c) g_cov_c[3 * r + c] = p.J[r] * GJ[c] + p.J[3 + r] * GJ[3 + c];
        double g_J[6];
        for (int r = 0; r < 2; ++r)
          for (int c = 0; c < 3; ++c)
            g_J[3 * r + c] = 2.0 * (GJ[3 * r] * p.cov_c[c] + GJ[3 * r + 1] * p.cov_c[3 + c] + GJ[3 * r + 2] * p.cov_c[6 + c]);
        // d Sigma = R^T d cov_c R
        const double* R = cam.R;
        double T1[9];
        for (int r = 0; r < 3; ++r)
          for (int c = 0; c < 3; ++c)
            T1[3 * r + c] = R[r] * g_cov_c[c] + R[3 + r] * g_cov_c[3 + c] + R[6 + r] * g_cov_c[6 + c];
        for (int r = 0; r < 3; ++r)
          for (int c = 0; c < 3; ++c)
            gc[9 * i + 3 * r + c] = scalar_t(T1[3 * r] * R[c] + T1[3 * r + 1] * R[3 + c] + T1[3 * r + 2] * R[6 + c]);
        // the Jacobian's dependence on z (safe) and the clamped x, y
        double g_z = g_J[0] * (-cam.fx / (z * z)) + g_J[2] * (2.0 * cam.fx * p.txc / (z * z * z)) +
                     g_J[4] * (-cam.fy / (z * z)) + g_J[5] * (2.0 * cam.fy * p.tyc / (z * z * z));
        const double g_txc = g_J[2] * (-cam.fx / (z * z)), g_tyc = g_J[5] * (-cam.fy / (z * z));
        double g_mc[3] = {0.0, 0.0, 0.0};
        if (p.clamp_x == 0) g_mc[0] += g_txc;
        else g_z += g_txc * (p.clamp_x > 0 ? cam.lim_x_pos : -cam.lim_x_neg);
        if (p.clamp_y == 0) g_mc[1] += g_tyc;
        else g_z += g_tyc * (p.clamp_y > 0 ? cam.lim_y_pos : -cam.lim_y_neg);
        // means2d = K[:2, :3] (mc / z)
        const double gu = g_m2[2 * i], gv = g_m2[2 * i + 1];
        const double g_x = gu * cam.fx, g_y = gu * cam.skew + gv * cam.fy, g_one = gu * cam.cx + gv * cam.cy;
        g_mc[0] += g_x / z, g_mc[1] += g_y / z;
        g_mc[2] += g_one / z;  // the third component of mc / z
        g_z += -(g_x * p.mc[0] + g_y * p.mc[1] + g_one * p.mc[2]) / (z * z);
        if (!p.safe_moved) g_mc[2] += g_z;
        g_mc[2] += g_dep[i];  // depths are the raw camera z
        for (int j = 0; j < 3; ++j) gm[3 * i + j] = scalar_t(R[j] * g_mc[0] + R[3 + j] * g_mc[1] + R[6 + j] * g_mc[2]);
        // colours: only the SH coefficients get a gradient (directions are constants), and only where
        // the clamp at 0 let the value through
        double d[3], b[16];
        view_direction(m + 3 * i, tr != nullptr ? tr + 9 * i : nullptr, cam, d);
        const int nb = sh_basis(int(sh_degree), d[0], d[1], d[2], b);
        scalar_t* g = gs + i * K_sh * 3;
        for (int ch = 0; ch < 3; ++ch) {
          if (!(o_col[3 * i + ch] > scalar_t(0))) continue;
          const double gch = g_col[3 * i + ch];
          for (int k = 0; k < nb; ++k) g[3 * k + ch] = scalar_t(b[k] * gch);
        }
      }
    });
  });
  return {g_means, g_covars, g_sh};
}

}  // namespace
}  // namespace occfusion

TORCH_LIBRARY_FRAGMENT(occfusion_cpu, m) {
  m.def(
      "project_forward(Tensor means, Tensor covars, Tensor sh, Tensor transforms, int sh_degree, Tensor K, "
      "Tensor w2c, int width, int height, float eps2d, float near, float far) -> Tensor[]",
      &occfusion::project_forward);
  m.def(
      "project_backward(Tensor means, Tensor covars, Tensor sh, Tensor transforms, int sh_degree, Tensor K, "
      "Tensor w2c, int width, int height, float eps2d, float near, float far, Tensor colors, "
      "Tensor grad_means2d, Tensor grad_conics, Tensor grad_depths, Tensor grad_colors) -> Tensor[]",
      &occfusion::project_backward);
}
