// Quaternion -> rotation matrix and its gradient, shared by the compiled covariance
// (covar_cpu.cpp) and skinning (skin_cpu.cpp). Doubles throughout: both callers accumulate in double.
//
// The torch reference is occfusion_core/render/projection.py's quat_to_rotmat (normalise (w, x, y, z)
// with F.normalize, |q| floored at 1e-12, then the usual rotation matrix).
#pragma once

#include <algorithm>
#include <cmath>

namespace occfusion {

// R(q / |q|) (row-major 3x3) from q = (w, x, y, z); writes the normalised quaternion to qn and
// returns |q|.
inline double quat_rotation(const double* q, double* R, double* qn) {
  const double norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const double s = 1.0 / std::max(norm, 1e-12);
  for (int k = 0; k < 4; ++k) qn[k] = q[k] * s;
  const double w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  R[0] = 1 - 2 * (y * y + z * z), R[1] = 2 * (x * y - w * z), R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z), R[4] = 1 - 2 * (x * x + z * z), R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y), R[7] = 2 * (y * z + w * x), R[8] = 1 - 2 * (x * x + y * y);
  return norm;
}

// dL/dq from dL/dR (G, row-major 3x3), given quat_rotation's qn and |q|: through R(qn), then through
// the normalisation (qn = q / max(|q|, 1e-12)).
inline void quat_rotation_backward(const double* qn, double qnorm, const double* G, double* g_q) {
  const double qw = qn[0], qx = qn[1], qy = qn[2], qz = qn[3];
  double g_qn[4];
  g_qn[0] = 2 * (-qz * G[1] + qy * G[2] + qz * G[3] - qx * G[5] - qy * G[6] + qx * G[7]);
  g_qn[1] = 2 * (qy * G[1] + qz * G[2] + qy * G[3] - 2 * qx * G[4] - qw * G[5] + qz * G[6] + qw * G[7] - 2 * qx * G[8]);
  g_qn[2] = 2 * (-2 * qy * G[0] + qx * G[1] + qw * G[2] + qx * G[3] + qz * G[5] - qw * G[6] + qz * G[7] - 2 * qy * G[8]);
  g_qn[3] = 2 * (-2 * qz * G[0] - qw * G[1] + qx * G[2] + qw * G[3] - 2 * qz * G[4] + qy * G[5] + qx * G[6] + qy * G[7]);
  if (qnorm > 1e-12) {
    const double dot = qw * g_qn[0] + qx * g_qn[1] + qy * g_qn[2] + qz * g_qn[3];
    for (int e = 0; e < 4; ++e) g_q[e] = (g_qn[e] - qn[e] * dot) / qnorm;
  } else {
    for (int e = 0; e < 4; ++e) g_q[e] = g_qn[e] / 1e-12;
  }
}

// Sigma = M M^T with M = R diag(scale): the covariance of a Gaussian with rotation R and standard
// deviations `scale` (row-major M and Sigma).
// M = R diag(scale): the rotation's columns scaled (what the backward needs of the forward).
inline void scaled_rotation(const double* R, const double* scale, double* M) {
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) M[3 * r + c] = R[3 * r + c] * scale[c];
}

inline void rotation_scale_covariance(const double* R, const double* scale, double* M, double* cov) {
  scaled_rotation(R, scale, M);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) cov[3 * r + c] = M[3 * r] * M[3 * c] + M[3 * r + 1] * M[3 * c + 1] + M[3 * r + 2] * M[3 * c + 2];
}

// Backward of rotation_scale_covariance: dL/dR (g_R) and dL/dscale (g_scale) from dL/dSigma (g_cov).
inline void rotation_scale_covariance_backward(const double* R, const double* M, const double* scale,
                                               const double* g_cov, double* g_R, double* g_scale) {
  double g_M[9];  // (g_cov + g_cov^T) M
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      g_M[3 * r + c] = (g_cov[3 * r] + g_cov[r]) * M[c] + (g_cov[3 * r + 1] + g_cov[3 + r]) * M[3 + c] +
                       (g_cov[3 * r + 2] + g_cov[6 + r]) * M[6 + c];
  for (int c = 0; c < 3; ++c) {
    double acc = 0.0;
    for (int r = 0; r < 3; ++r) g_R[3 * r + c] = g_M[3 * r + c] * scale[c], acc += g_M[3 * r + c] * R[3 * r + c];
    g_scale[c] = acc;
  }
}

}  // namespace occfusion
