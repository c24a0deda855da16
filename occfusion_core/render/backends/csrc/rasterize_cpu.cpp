// Tile-based CPU rasterizer for projected 2D Gaussians: forward and backward.
//
// Semantics (identical to gsplat and to occfusion_core/render/backends/torch_ref.py):
//   Pixel (row r, col c) has centre (c + 0.5, r + 0.5). Gaussian i can touch it only if both radii are
//   > 0 and |px - mx| <= rx and |py - my| <= ry. Gaussians are composited front to back in ascending
//   depth (ties: lower index first). With (dx, dy) = (mx - px, my - py) and conic (a, b, c):
//   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy; skip if sigma < 0; alpha = min(0.999, o exp(-sigma));
//   skip if alpha < 1/255; next_T = T (1 - alpha); if next_T <= 1e-4 the pixel stops (this Gaussian
//   is not included); otherwise colour += alpha T c and T = next_T. Output alpha = 1 - T_final.
//
// Layout of the work:
//   1. Per Gaussian, the exact pixel rectangle it may touch (the box test above is a rectangle).
//   2. One global stable depth sort of the visible Gaussians, then binning into 16x16 tiles by counting
//      and prefix sums; filling the bins in sorted order keeps every bin depth-sorted without a per-tile
//      sort.
//   3. Tiles in parallel (OpenMP, dynamic schedule). Inside a tile the loop runs over Gaussians (front
//      to back) and, for each, only over the pixels of its rectangle and its opacity ellipse, carrying
//      per-pixel transmittance. Per-pixel order is still front to back, so results equal the per-pixel
//      formulation.
//   4. Forward keeps, per pixel, the final T and how many entries of its tile's bin it walked up to the
//      last included Gaussian. Backward walks each tile's bin back to front, recovers T by division,
//      and writes one gradient record per (Gaussian, tile) pair; records are summed per Gaussian in a
//      fixed serial order, so results do not depend on thread scheduling.
//
// Registered as torch.ops.occfusion_cpu.rasterize_forward / rasterize_backward (no pybind11: faster
// to compile). The Python wrapper is occfusion_core/render/backends/cpp.py.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace occfusion {
namespace {

constexpr int kTileSize = 16;
constexpr int kTilePixels = kTileSize * kTileSize;
// Record layout of one (Gaussian, tile) gradient: mean x, mean y, conic a, b, c, opacity, colours.
constexpr int kGradHeader = 6;

template <typename scalar_t>
struct Rule {
  static constexpr scalar_t kMinAlpha = scalar_t(1.0 / 255.0);
  static constexpr scalar_t kMaxAlpha = scalar_t(0.999);
  static constexpr scalar_t kMinTransmittance = scalar_t(1e-4);
};

// Inclusive pixel index range [lo, hi] of {i in [0, size) : |(i + 0.5) - mu| <= r}, the test evaluated
// in scalar_t exactly as the semantics state. Returns false when empty. The set is an interval because
// rounding is monotone, so a double estimate is nudged until the boundaries pass the exact test.
template <typename scalar_t>
bool pixel_range(scalar_t mu, scalar_t r, int size, int& lo, int& hi) {
  if (!std::isfinite(mu)) return false;
  auto inside = [&](int i) { return std::abs(scalar_t(i) + scalar_t(0.5) - mu) <= r; };
  const double lo_est = std::ceil(double(mu) - double(r) - 0.5);
  const double hi_est = std::floor(double(mu) + double(r) - 0.5);
  lo = int(std::min(std::max(lo_est, 0.0), double(size)));
  hi = int(std::max(std::min(hi_est, double(size - 1)), -1.0));
  while (lo > 0 && inside(lo - 1)) --lo;
  while (lo <= hi && !inside(lo)) ++lo;
  while (hi < size - 1 && inside(hi + 1)) ++hi;
  while (hi >= lo && !inside(hi)) --hi;
  return lo <= hi;
}

// Ascending depth, NaN last (like torch.sort), ties by index (the caller uses a stable sort).
template <typename scalar_t>
bool depth_less(scalar_t a, scalar_t b) {
  if (std::isnan(a)) return false;
  if (std::isnan(b)) return true;
  return a < b;
}

// One visible Gaussian, packed in depth order so that the tile loops read memory mostly in sequence.
template <typename scalar_t>
struct Packed {
  scalar_t mx, my, a, b, c, opacity;
  // sigma above which opacity * exp(-sigma) < 1/255 for certain (includes a rounding margin); used
  // only to skip pixels that the exact rule would skip anyway.
  scalar_t sigma_cut;
  int col_lo, col_hi, row_lo, row_hi;
};

// Margin added to the exact cut-off log(255 o); it absorbs the rounding of exp and of sigma.
constexpr double kCutMargin = 1e-3;

template <typename scalar_t>
scalar_t sigma_cutoff(scalar_t opacity) {
  if (!(opacity > scalar_t(0))) return -std::numeric_limits<scalar_t>::infinity();
  return scalar_t(std::log(255.0 * double(opacity)) + kCutMargin);
}

// Columns [lo, hi] within [clip_lo, clip_hi] of a row where sigma may be <= sigma_cut; false if none.
// sigma(dx) = 0.5 a dx^2 + (b dy) dx + 0.5 c dy^2 is a parabola in dx, so its sub-level set is an
// interval; it is widened by one pixel on each side, and the whole clip range is kept whenever the
// conic is not positive definite or sigma's rounding error in scalar_t could exceed half the cut
// margin, so a pixel that the exact rule keeps is never dropped.
template <typename scalar_t>
bool ellipse_row_span(const Packed<scalar_t>& g, double dy, int clip_lo, int clip_hi, int& lo, int& hi) {
  lo = clip_lo;
  hi = clip_hi;
  const double a = g.a, b = g.b, c = g.c, cut = g.sigma_cut, mx = g.mx;
  if (!(a > 0.0) || !(a * c - b * b > 0.0) || !std::isfinite(cut)) return true;
  const double dx_max = std::max(std::abs(mx - (clip_lo + 0.5)), std::abs(mx - (clip_hi + 0.5)));
  const double magnitude = a * dx_max * dx_max + c * dy * dy + 2.0 * std::abs(b * dy) * dx_max;
  if (8.0 * double(std::numeric_limits<scalar_t>::epsilon()) * magnitude > 0.5 * kCutMargin) return true;
  const double lin = b * dy;
  const double disc = lin * lin - 2.0 * a * (0.5 * c * dy * dy - cut);
  if (disc < 0.0) return false;
  const double root = std::sqrt(disc);
  // dx = mx - (col + 0.5), so the dx interval maps to a reversed column interval.
  const double dx_lo = (-lin - root) / a, dx_hi = (-lin + root) / a;
  const double span_lo = std::floor(mx - dx_hi - 0.5) - 1.0;
  const double span_hi = std::ceil(mx - dx_lo - 0.5) + 1.0;
  if (span_lo > double(clip_lo)) lo = int(std::min(span_lo, double(clip_hi) + 1.0));
  if (span_hi < double(clip_hi)) hi = int(std::max(span_hi, double(clip_lo) - 1.0));
  return lo <= hi;
}

// The exact per-pixel rule up to (and without) the transmittance test. Returns false when the
// Gaussian is skipped for this pixel; forward and backward share it so both take identical branches.
template <typename scalar_t>
inline bool pixel_alpha(const Packed<scalar_t>& g, scalar_t dx, scalar_t dy, scalar_t& sigma, scalar_t& gauss,
                        scalar_t& alpha) {
  sigma = scalar_t(0.5) * (g.a * dx * dx + g.c * dy * dy) + g.b * dx * dy;
  if (sigma < scalar_t(0) || sigma > g.sigma_cut) return false;
  gauss = std::exp(-sigma);
  alpha = std::min(Rule<scalar_t>::kMaxAlpha, g.opacity * gauss);
  return !(alpha < Rule<scalar_t>::kMinAlpha);
}

struct TileGrid {
  int width, height, tiles_x, tiles_y;
  int64_t count() const { return int64_t(tiles_x) * tiles_y; }
};

// Binning result: bin of tile t is tile_ranks[tile_offsets[t] .. tile_offsets[t+1]), entries are
// positions in depth order (indices into sorted_ids / rects).
struct Bins {
  at::Tensor sorted_ids;    // (V,) int32 original index of the k-th visible Gaussian in depth order
  at::Tensor rects;         // (V, 4) int32 col_lo, col_hi, row_lo, row_hi (inclusive pixel ranges)
  at::Tensor tile_offsets;  // (T + 1,) int32
  at::Tensor tile_ranks;    // (P,) int32
};

template <typename scalar_t>
Bins bin_gaussians(const at::Tensor& means2d, const at::Tensor& depths, const at::Tensor& radii, const TileGrid& grid) {
  const int64_t n = means2d.size(0);
  const scalar_t* mean_ptr = means2d.data_ptr<scalar_t>();
  const scalar_t* depth_ptr = depths.data_ptr<scalar_t>();
  const int32_t* radii_ptr = radii.data_ptr<int32_t>();

  std::vector<int32_t> rect_all(size_t(n) * 4);
  std::vector<uint8_t> visible(n, 0);
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int32_t rx = radii_ptr[2 * i], ry = radii_ptr[2 * i + 1];
      if (rx <= 0 || ry <= 0) continue;
      int c0, c1, r0, r1;
      if (!pixel_range<scalar_t>(mean_ptr[2 * i], scalar_t(rx), grid.width, c0, c1)) continue;
      if (!pixel_range<scalar_t>(mean_ptr[2 * i + 1], scalar_t(ry), grid.height, r0, r1)) continue;
      int32_t* rect = rect_all.data() + 4 * i;
      rect[0] = c0, rect[1] = c1, rect[2] = r0, rect[3] = r1;
      visible[i] = 1;
    }
  });

  std::vector<int32_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    if (visible[i]) order.push_back(int32_t(i));
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t x, int32_t y) { return depth_less(depth_ptr[x], depth_ptr[y]); });
  const int64_t n_visible = int64_t(order.size());

  auto int_opts = at::TensorOptions().dtype(at::kInt);
  Bins bins;
  bins.sorted_ids = at::empty({n_visible}, int_opts);
  bins.rects = at::empty({n_visible, 4}, int_opts);
  bins.tile_offsets = at::zeros({grid.count() + 1}, int_opts);
  int32_t* sorted_ptr = bins.sorted_ids.data_ptr<int32_t>();
  int32_t* rects_ptr = bins.rects.data_ptr<int32_t>();
  int32_t* offsets = bins.tile_offsets.data_ptr<int32_t>();

  // Counting pass, then exclusive prefix sum into offsets.
  int64_t n_pairs = 0;
  for (int64_t k = 0; k < n_visible; ++k) {
    const int32_t* src = rect_all.data() + 4 * int64_t(order[k]);
    int32_t* dst = rects_ptr + 4 * k;
    std::copy(src, src + 4, dst);
    sorted_ptr[k] = order[k];
    for (int ty = dst[2] / kTileSize; ty <= dst[3] / kTileSize; ++ty)
      for (int tx = dst[0] / kTileSize; tx <= dst[1] / kTileSize; ++tx) ++offsets[int64_t(ty) * grid.tiles_x + tx + 1];
  }
  for (int64_t t = 0; t < grid.count(); ++t) offsets[t + 1] += offsets[t];
  n_pairs = offsets[grid.count()];
  TORCH_CHECK(n_pairs < std::numeric_limits<int32_t>::max(), "rasterize_cpu: too many (Gaussian, tile) pairs: ", n_pairs);

  // Filling pass in depth order keeps each bin depth-sorted.
  bins.tile_ranks = at::empty({n_pairs}, int_opts);
  int32_t* ranks = bins.tile_ranks.data_ptr<int32_t>();
  std::vector<int32_t> cursor(offsets, offsets + grid.count());
  for (int64_t k = 0; k < n_visible; ++k) {
    const int32_t* rect = rects_ptr + 4 * k;
    for (int ty = rect[2] / kTileSize; ty <= rect[3] / kTileSize; ++ty)
      for (int tx = rect[0] / kTileSize; tx <= rect[1] / kTileSize; ++tx)
        ranks[cursor[int64_t(ty) * grid.tiles_x + tx]++] = int32_t(k);
  }
  return bins;
}

template <typename scalar_t>
std::vector<Packed<scalar_t>> pack_gaussians(const Bins& bins, const at::Tensor& means2d, const at::Tensor& conics,
                                             const at::Tensor& opacities) {
  const int64_t n_visible = bins.sorted_ids.size(0);
  const int32_t* ids = bins.sorted_ids.data_ptr<int32_t>();
  const int32_t* rects = bins.rects.data_ptr<int32_t>();
  const scalar_t* mean_ptr = means2d.data_ptr<scalar_t>();
  const scalar_t* conic_ptr = conics.data_ptr<scalar_t>();
  const scalar_t* opacity_ptr = opacities.data_ptr<scalar_t>();
  std::vector<Packed<scalar_t>> packed(n_visible);
  at::parallel_for(0, n_visible, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = ids[k];
      Packed<scalar_t>& g = packed[k];
      g.mx = mean_ptr[2 * i], g.my = mean_ptr[2 * i + 1];
      g.a = conic_ptr[3 * i], g.b = conic_ptr[3 * i + 1], g.c = conic_ptr[3 * i + 2];
      g.opacity = opacity_ptr[i];
      g.sigma_cut = sigma_cutoff(g.opacity);
      g.col_lo = rects[4 * k], g.col_hi = rects[4 * k + 1], g.row_lo = rects[4 * k + 2], g.row_hi = rects[4 * k + 3];
    }
  });
  return packed;
}

// Colours in depth order, (V, C), for sequential reads in the tile loops.
template <typename scalar_t>
std::vector<scalar_t> pack_colors(const Bins& bins, const at::Tensor& colors) {
  const int64_t n_visible = bins.sorted_ids.size(0), n_channels = colors.size(1);
  const int32_t* ids = bins.sorted_ids.data_ptr<int32_t>();
  const scalar_t* color_ptr = colors.data_ptr<scalar_t>();
  std::vector<scalar_t> packed(size_t(n_visible * n_channels));
  at::parallel_for(0, n_visible, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      std::copy(color_ptr + ids[k] * n_channels, color_ptr + (ids[k] + 1) * n_channels, packed.data() + k * n_channels);
  });
  return packed;
}

struct TileBox {
  int x0, y0, x1, y1;  // inclusive pixel bounds
};

inline TileBox tile_box(const TileGrid& grid, int64_t tile) {
  const int ty = int(tile / grid.tiles_x), tx = int(tile % grid.tiles_x);
  TileBox box;
  box.x0 = tx * kTileSize, box.y0 = ty * kTileSize;
  box.x1 = std::min(box.x0 + kTileSize, grid.width) - 1;
  box.y1 = std::min(box.y0 + kTileSize, grid.height) - 1;
  return box;
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                  const at::Tensor& opacities, const at::Tensor& depths, const at::Tensor& radii, int64_t width,
                  int64_t height) {
  const std::pair<const char*, const at::Tensor*> named[] = {{"means2d", &means2d}, {"conics", &conics},
                                                             {"colors", &colors},   {"opacities", &opacities},
                                                             {"depths", &depths},   {"radii", &radii}};
  for (const auto& [name, tensor] : named) {
    TORCH_CHECK(tensor->device().is_cpu(), "rasterize_cpu: ", name, " must be on the CPU, got ", tensor->device());
    TORCH_CHECK(tensor->is_contiguous(), "rasterize_cpu: ", name, " must be contiguous");
  }
  const int64_t n = means2d.dim() == 2 ? means2d.size(0) : -1;
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "rasterize_cpu: means2d must be (N, 2), got ", means2d.sizes());
  TORCH_CHECK(conics.dim() == 2 && conics.size(0) == n && conics.size(1) == 3,
              "rasterize_cpu: conics must be (N, 3) with N = ", n, ", got ", conics.sizes());
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == n && colors.size(1) >= 1,
              "rasterize_cpu: colors must be (N, C) with N = ", n, " and C >= 1, got ", colors.sizes());
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n,
              "rasterize_cpu: opacities must be (N,) with N = ", n, ", got ", opacities.sizes());
  TORCH_CHECK(depths.dim() == 1 && depths.size(0) == n,
              "rasterize_cpu: depths must be (N,) with N = ", n, ", got ", depths.sizes());
  TORCH_CHECK(radii.dim() == 2 && radii.size(0) == n && radii.size(1) == 2,
              "rasterize_cpu: radii must be (N, 2) with N = ", n, ", got ", radii.sizes());
  const auto dtype = means2d.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "rasterize_cpu: means2d must be float32 or float64, got ",
              dtype);
  TORCH_CHECK(conics.scalar_type() == dtype && colors.scalar_type() == dtype && opacities.scalar_type() == dtype &&
                  depths.scalar_type() == dtype,
              "rasterize_cpu: means2d, conics, colors, opacities and depths must share one dtype, got ", dtype, ", ",
              conics.scalar_type(), ", ", colors.scalar_type(), ", ", opacities.scalar_type(), ", ",
              depths.scalar_type());
  TORCH_CHECK(radii.scalar_type() == at::kInt, "rasterize_cpu: radii must be int32, got ", radii.scalar_type());
  TORCH_CHECK(width >= 1 && height >= 1 && width <= (1 << 20) && height <= (1 << 20),
              "rasterize_cpu: image size must be positive and below 2^20, got ", width, " x ", height);
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "rasterize_cpu: too many Gaussians: ", n);
}

TileGrid make_grid(int64_t width, int64_t height) {
  TileGrid grid;
  grid.width = int(width), grid.height = int(height);
  grid.tiles_x = int((width + kTileSize - 1) / kTileSize);
  grid.tiles_y = int((height + kTileSize - 1) / kTileSize);
  return grid;
}

template <typename scalar_t>
void forward_tiles(const TileGrid& grid, const Bins& bins, const std::vector<Packed<scalar_t>>& packed,
                   const std::vector<scalar_t>& packed_colors, int64_t n_channels, at::Tensor& image,
                   at::Tensor& alpha, at::Tensor& final_T, at::Tensor& n_walked) {
  const int32_t* offsets = bins.tile_offsets.data_ptr<int32_t>();
  const int32_t* ranks = bins.tile_ranks.data_ptr<int32_t>();
  scalar_t* image_ptr = image.data_ptr<scalar_t>();
  scalar_t* alpha_ptr = alpha.data_ptr<scalar_t>();
  scalar_t* final_T_ptr = final_T.data_ptr<scalar_t>();
  int32_t* walked_ptr = n_walked.data_ptr<int32_t>();
  const int C = int(n_channels);

#pragma omp parallel num_threads(std::max(1, at::get_num_threads()))
  {
    // Per-tile pixel state, indexed by (row - y0) * kTileSize + (col - x0).
    std::vector<scalar_t> T(kTilePixels), accum(size_t(kTilePixels) * C);
    std::vector<int32_t> walked(kTilePixels);
    std::vector<uint8_t> done(kTilePixels);
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.count(); ++tile) {
      const TileBox box = tile_box(grid, tile);
      const int n_pixels = (box.x1 - box.x0 + 1) * (box.y1 - box.y0 + 1);
      std::fill(T.begin(), T.end(), scalar_t(1));
      std::fill(accum.begin(), accum.end(), scalar_t(0));
      std::fill(walked.begin(), walked.end(), 0);
      std::fill(done.begin(), done.end(), uint8_t(0));
      int n_done = 0;
      const int32_t begin = offsets[tile], end = offsets[tile + 1];
      for (int32_t k = begin; k < end && n_done < n_pixels; ++k) {
        const int32_t rank = ranks[k];
        const Packed<scalar_t>& g = packed[rank];
        const scalar_t* color = packed_colors.data() + int64_t(rank) * C;
        const int row_lo = std::max(g.row_lo, box.y0), row_hi = std::min(g.row_hi, box.y1);
        const int col_lo = std::max(g.col_lo, box.x0), col_hi = std::min(g.col_hi, box.x1);
        for (int row = row_lo; row <= row_hi; ++row) {
          const scalar_t dy = g.my - (scalar_t(row) + scalar_t(0.5));
          int span_lo, span_hi;
          if (!ellipse_row_span(g, double(dy), col_lo, col_hi, span_lo, span_hi)) continue;
          const int row_base = (row - box.y0) * kTileSize - box.x0;
          for (int col = span_lo; col <= span_hi; ++col) {
            const int p = row_base + col;
            if (done[p]) continue;
            const scalar_t dx = g.mx - (scalar_t(col) + scalar_t(0.5));
            scalar_t sigma, gauss, a;
            if (!pixel_alpha(g, dx, dy, sigma, gauss, a)) continue;
            const scalar_t next_T = T[p] * (scalar_t(1) - a);
            if (next_T <= Rule<scalar_t>::kMinTransmittance) {
              done[p] = 1;
              ++n_done;
              continue;
            }
            const scalar_t weight = a * T[p];
            scalar_t* acc = accum.data() + size_t(p) * C;
            for (int ch = 0; ch < C; ++ch) acc[ch] += weight * color[ch];
            T[p] = next_T;
            walked[p] = k - begin + 1;
          }
        }
      }
      for (int row = box.y0; row <= box.y1; ++row) {
        for (int col = box.x0; col <= box.x1; ++col) {
          const int p = (row - box.y0) * kTileSize + (col - box.x0);
          const int64_t pixel = int64_t(row) * grid.width + col;
          std::copy(accum.data() + size_t(p) * C, accum.data() + size_t(p + 1) * C, image_ptr + pixel * C);
          alpha_ptr[pixel] = scalar_t(1) - T[p];
          final_T_ptr[pixel] = T[p];
          walked_ptr[pixel] = walked[p];
        }
      }
    }
  }
}

std::vector<at::Tensor> rasterize_forward(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                          const at::Tensor& opacities, const at::Tensor& depths,
                                          const at::Tensor& radii, int64_t width, int64_t height) {
  check_inputs(means2d, conics, colors, opacities, depths, radii, width, height);
  const TileGrid grid = make_grid(width, height);
  const int64_t n_channels = colors.size(1);
  const auto float_opts = means2d.options();
  at::Tensor image = at::empty({height, width, n_channels}, float_opts);
  at::Tensor alpha = at::empty({height, width, 1}, float_opts);
  at::Tensor final_T = at::empty({height, width}, float_opts);
  at::Tensor n_walked = at::empty({height, width}, float_opts.dtype(at::kInt));
  Bins bins;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_cpu_forward", [&] {
    bins = bin_gaussians<scalar_t>(means2d, depths, radii, grid);
    const auto packed = pack_gaussians<scalar_t>(bins, means2d, conics, opacities);
    const auto packed_colors = pack_colors<scalar_t>(bins, colors);
    forward_tiles<scalar_t>(grid, bins, packed, packed_colors, n_channels, image, alpha, final_T, n_walked);
  });
  return {image, alpha, final_T, n_walked, bins.tile_offsets, bins.tile_ranks, bins.sorted_ids, bins.rects};
}

template <typename scalar_t>
void backward_tiles(const TileGrid& grid, const Bins& bins, const std::vector<Packed<scalar_t>>& packed,
                    const std::vector<scalar_t>& packed_colors, int64_t n_channels, const at::Tensor& final_T,
                    const at::Tensor& n_walked, const at::Tensor& grad_image, const at::Tensor& grad_alpha,
                    at::Tensor& pair_grads) {
  const int32_t* offsets = bins.tile_offsets.data_ptr<int32_t>();
  const int32_t* ranks = bins.tile_ranks.data_ptr<int32_t>();
  const scalar_t* final_T_ptr = final_T.data_ptr<scalar_t>();
  const int32_t* walked_ptr = n_walked.data_ptr<int32_t>();
  const scalar_t* grad_image_ptr = grad_image.data_ptr<scalar_t>();
  const scalar_t* grad_alpha_ptr = grad_alpha.data_ptr<scalar_t>();
  scalar_t* pair_ptr = pair_grads.data_ptr<scalar_t>();
  const int C = int(n_channels);
  const int record = kGradHeader + C;

#pragma omp parallel num_threads(std::max(1, at::get_num_threads()))
  {
    // T: transmittance in front of the Gaussian being processed (recovered back to front).
    // behind: sum of alpha_j T_j colour_j over the already processed (farther) Gaussians.
    std::vector<scalar_t> T(kTilePixels), behind(size_t(kTilePixels) * C), grad_pix(size_t(kTilePixels) * C);
    std::vector<scalar_t> T_last(kTilePixels), grad_alpha_pix(kTilePixels);
    std::vector<int32_t> walked(kTilePixels);
    std::vector<scalar_t> grad_color(C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.count(); ++tile) {
      const TileBox box = tile_box(grid, tile);
      const int32_t begin = offsets[tile];
      int32_t max_walked = 0;
      for (int row = box.y0; row <= box.y1; ++row) {
        for (int col = box.x0; col <= box.x1; ++col) {
          const int p = (row - box.y0) * kTileSize + (col - box.x0);
          const int64_t pixel = int64_t(row) * grid.width + col;
          T[p] = T_last[p] = final_T_ptr[pixel];
          walked[p] = walked_ptr[pixel];
          max_walked = std::max(max_walked, walked[p]);
          grad_alpha_pix[p] = grad_alpha_ptr[pixel];
          std::copy(grad_image_ptr + pixel * C, grad_image_ptr + (pixel + 1) * C, grad_pix.data() + size_t(p) * C);
          std::fill(behind.data() + size_t(p) * C, behind.data() + size_t(p + 1) * C, scalar_t(0));
        }
      }
      for (int32_t local = max_walked - 1; local >= 0; --local) {
        const int32_t k = begin + local;
        const Packed<scalar_t>& g = packed[ranks[k]];
        const scalar_t* color = packed_colors.data() + int64_t(ranks[k]) * C;
        const int row_lo = std::max(g.row_lo, box.y0), row_hi = std::min(g.row_hi, box.y1);
        const int col_lo = std::max(g.col_lo, box.x0), col_hi = std::min(g.col_hi, box.x1);
        scalar_t g_mx = 0, g_my = 0, g_a = 0, g_b = 0, g_c = 0, g_opacity = 0;
        std::fill(grad_color.begin(), grad_color.end(), scalar_t(0));
        bool touched = false;
        for (int row = row_lo; row <= row_hi; ++row) {
          const scalar_t dy = g.my - (scalar_t(row) + scalar_t(0.5));
          int span_lo, span_hi;
          if (!ellipse_row_span(g, double(dy), col_lo, col_hi, span_lo, span_hi)) continue;
          const int row_base = (row - box.y0) * kTileSize - box.x0;
          for (int col = span_lo; col <= span_hi; ++col) {
            const int p = row_base + col;
            if (local >= walked[p]) continue;
            const scalar_t dx = g.mx - (scalar_t(col) + scalar_t(0.5));
            scalar_t sigma, gauss, a;
            if (!pixel_alpha(g, dx, dy, sigma, gauss, a)) continue;
            touched = true;
            const scalar_t inv_one_minus_alpha = scalar_t(1) / (scalar_t(1) - a);
            const scalar_t T_front = T[p] * inv_one_minus_alpha;
            const scalar_t weight = a * T_front;
            const scalar_t* gi = grad_pix.data() + size_t(p) * C;
            scalar_t* acc = behind.data() + size_t(p) * C;
            // d image / d alpha = T_front colour - behind / (1 - alpha); d (1 - T_last) / d alpha = T_last / (1 - alpha).
            scalar_t grad_a = grad_alpha_pix[p] * T_last[p] * inv_one_minus_alpha;
            for (int ch = 0; ch < C; ++ch) {
              grad_color[ch] += weight * gi[ch];
              grad_a += gi[ch] * (color[ch] * T_front - acc[ch] * inv_one_minus_alpha);
              acc[ch] += weight * color[ch];
            }
            T[p] = T_front;
            // alpha = min(0.999, o G): no gradient through the clamp.
            if (g.opacity * gauss <= Rule<scalar_t>::kMaxAlpha) {
              g_opacity += gauss * grad_a;
              const scalar_t grad_sigma = -g.opacity * gauss * grad_a;
              g_a += scalar_t(0.5) * dx * dx * grad_sigma;
              g_c += scalar_t(0.5) * dy * dy * grad_sigma;
              g_b += dx * dy * grad_sigma;
              g_mx += (g.a * dx + g.b * dy) * grad_sigma;
              g_my += (g.b * dx + g.c * dy) * grad_sigma;
            }
          }
        }
        if (!touched) continue;  // pair_grads starts at zero
        scalar_t* out = pair_ptr + int64_t(k) * record;
        out[0] = g_mx, out[1] = g_my, out[2] = g_a, out[3] = g_b, out[4] = g_c, out[5] = g_opacity;
        std::copy(grad_color.begin(), grad_color.end(), out + kGradHeader);
      }
    }
  }
}

// Returns gradients (means2d (N,2), conics (N,3), colors (N,C), opacities (N,)).
std::vector<at::Tensor> rasterize_backward(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                           const at::Tensor& opacities, const at::Tensor& final_T,
                                           const at::Tensor& n_walked, const at::Tensor& tile_offsets,
                                           const at::Tensor& tile_ranks, const at::Tensor& sorted_ids,
                                           const at::Tensor& rects, const at::Tensor& grad_image,
                                           const at::Tensor& grad_alpha) {
  const int64_t n = means2d.size(0), n_channels = colors.size(1);
  const int64_t height = final_T.size(0), width = final_T.size(1);
  const TileGrid grid = make_grid(width, height);
  TORCH_CHECK(grad_image.sizes() == at::IntArrayRef({height, width, n_channels}) && grad_image.is_contiguous() &&
                  grad_image.scalar_type() == means2d.scalar_type(),
              "rasterize_cpu: grad_image must be contiguous (H, W, C) of the input dtype, got ", grad_image.sizes());
  TORCH_CHECK(grad_alpha.sizes() == at::IntArrayRef({height, width, 1}) && grad_alpha.is_contiguous() &&
                  grad_alpha.scalar_type() == means2d.scalar_type(),
              "rasterize_cpu: grad_alpha must be contiguous (H, W, 1) of the input dtype, got ", grad_alpha.sizes());
  TORCH_CHECK(tile_offsets.numel() == grid.count() + 1, "rasterize_cpu: saved tile offsets do not match the image");

  Bins bins{sorted_ids, rects, tile_offsets, tile_ranks};
  const int64_t n_pairs = tile_ranks.size(0);
  const auto float_opts = means2d.options();
  at::Tensor grad_means = at::zeros({n, 2}, float_opts);
  at::Tensor grad_conics = at::zeros({n, 3}, float_opts);
  at::Tensor grad_colors = at::zeros({n, n_channels}, float_opts);
  at::Tensor grad_opacities = at::zeros({n}, float_opts);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_cpu_backward", [&] {
    const auto packed = pack_gaussians<scalar_t>(bins, means2d, conics, opacities);
    const auto packed_colors = pack_colors<scalar_t>(bins, colors);
    const int64_t record = kGradHeader + n_channels;
    at::Tensor pair_grads = at::zeros({n_pairs, record}, float_opts);
    backward_tiles<scalar_t>(grid, bins, packed, packed_colors, n_channels, final_T, n_walked, grad_image, grad_alpha,
                             pair_grads);
    // Serial reduction in bin order: the sum order is fixed, so gradients are bitwise reproducible.
    const scalar_t* pair_ptr = pair_grads.data_ptr<scalar_t>();
    const int32_t* ranks = tile_ranks.data_ptr<int32_t>();
    const int32_t* ids = sorted_ids.data_ptr<int32_t>();
    scalar_t* gm = grad_means.data_ptr<scalar_t>();
    scalar_t* gq = grad_conics.data_ptr<scalar_t>();
    scalar_t* gc = grad_colors.data_ptr<scalar_t>();
    scalar_t* go = grad_opacities.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n_pairs; ++k) {
      const scalar_t* src = pair_ptr + k * record;
      const int64_t i = ids[ranks[k]];
      gm[2 * i] += src[0], gm[2 * i + 1] += src[1];
      gq[3 * i] += src[2], gq[3 * i + 1] += src[3], gq[3 * i + 2] += src[4];
      go[i] += src[5];
      for (int64_t ch = 0; ch < n_channels; ++ch) gc[i * n_channels + ch] += src[kGradHeader + ch];
    }
  });
  return {grad_means, grad_conics, grad_colors, grad_opacities};
}

}  // namespace
}  // namespace occfusion

TORCH_LIBRARY(occfusion_cpu, m) {
  m.def(
      "rasterize_forward(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor depths, "
      "Tensor radii, int width, int height) -> Tensor[]",
      &occfusion::rasterize_forward);
  m.def(
      "rasterize_backward(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor final_T, "
      "Tensor n_walked, Tensor tile_offsets, Tensor tile_ranks, Tensor sorted_ids, Tensor rects, "
      "Tensor grad_image, Tensor grad_alpha) -> Tensor[]",
      &occfusion::rasterize_backward);
}
