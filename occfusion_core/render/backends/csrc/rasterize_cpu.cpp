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
//   1. Per Gaussian, the pixel rectangle it may touch: the box test above (a rectangle, computed
//      exactly), shrunk to the bounding box of the ellipse outside which alpha < 1/255 for certain.
//   2. One global stable depth sort (radix) of the visible Gaussians, then binning into 16x16 tiles
//      by counting and prefix sums; filling the bins in sorted order keeps every bin depth-sorted
//      without a per-tile sort.
//   3. Tiles in parallel (OpenMP, dynamic schedule), kernels in tile_kernels.h: inside a tile the loop
//      runs over Gaussians front to back and, for each, over the tile rows of its rectangle, the 16
//      pixels of a row at once in SIMD lanes.
//   4. Forward keeps, per pixel, the final T and how far into its tile's bin it composited. Backward
//      walks each tile's bin back to front, recovers T by division, and writes one gradient record per
//      (Gaussian, tile) pair; records are summed per Gaussian in bin order, so results do not depend
//      on thread scheduling (nor, as every per-lane sum runs in one fixed column order, on the SIMD
//      width).
//
// Registered as torch.ops.occfusion_cpu.rasterize_forward / rasterize_backward (no pybind11: faster
// to compile). The Python wrapper is occfusion_core/render/backends/cpp.py.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace occfusion {

constexpr int kTileSize = 16;
constexpr int kTilePixels = kTileSize * kTileSize;
// Record layout of one (Gaussian, tile) gradient: mean x, mean y, conic a, b, c, opacity, colours.
constexpr int kGradHeader = 6;
// The per-Gaussian loops cost ~10-50 ns an element: below this many elements they run serially,
// since waking a thread team costs more than it saves (and much more on a busy machine).
constexpr int64_t kSerialGrain = 1 << 16;
// The per-Gaussian box (pixel ranges, ellipse, a log and square roots) costs ~100 ns: chunks of this
// many are worth a thread (10k Gaussians at 256^2 spent ~1 ms there, serially).
constexpr int64_t kBoxGrain = 2048;
// Slack added to the exact cut-off sigma = log(255 o) beyond which alpha < 1/255; it absorbs the
// rounding of exp and of sigma, so culling by the cut-off never drops a pixel the exact rule draws.
constexpr double kCutMargin = 1e-2;
// Pixels of slack around a Gaussian's cut-off ellipse when its box is shrunk to it (see shrink_to_ellipse).
constexpr double kBoxSlack = 1e-3;

template <typename scalar_t>
struct Rule {
  static constexpr scalar_t kMinAlpha = scalar_t(1.0 / 255.0);
  static constexpr scalar_t kMaxAlpha = scalar_t(0.999);
  static constexpr scalar_t kMinTransmittance = scalar_t(1e-4);
};

// One visible Gaussian, packed in depth order so that the tile loops read memory mostly in sequence.
template <typename scalar_t>
struct Packed {
  scalar_t mx, my, a, b, c, opacity;
  // Pixels with sigma above this are skipped: alpha < 1/255 there for certain.
  scalar_t sigma_cut;
  int col_lo, col_hi, row_lo, row_hi;  // inclusive pixel rectangle
};

struct TileGrid {
  int width, height, tiles_x, tiles_y;
  int64_t count() const { return int64_t(tiles_x) * tiles_y; }
};

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

// Heap array aligned to 64 bytes for the kernels' vector types. std::vector is not enough: the
// alignment GCC gives a vector type depends on the target region it is named in, while
// std::vector<T> is instantiated once for all of them.
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }
  void resize(size_t size) {
    std::free(data_);
    const size_t bytes = std::max<size_t>(64, (size * sizeof(T) + 63) / 64 * 64);
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data_ != nullptr, "rasterize_cpu: out of memory allocating ", bytes, " bytes");
    size_ = size;
  }
  T* data() { return data_; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  T& operator[](size_t i) { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// The per-tile kernels, once per instruction set (the x86 SIMD ones only on x86; elsewhere the
// baseline's 16-byte vectors map onto NEON and the like); -ffp-contract=off keeps their results
// identical. Their vector-typed helpers are always inlined, so GCC's vector-ABI notes do not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__x86_64__) || defined(__i386__)
namespace kernels_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2")
constexpr int kVectorBytes = 64;
#include "tile_kernels.h"
#pragma GCC pop_options
}  // namespace kernels_avx512

namespace kernels_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2")
constexpr int kVectorBytes = 32;
#include "tile_kernels.h"
#pragma GCC pop_options
}  // namespace kernels_avx2
#define OCCFUSION_HAVE_X86_KERNELS 1
#endif

namespace kernels_baseline {
constexpr int kVectorBytes = 16;
#include "tile_kernels.h"
}  // namespace kernels_baseline
#pragma GCC diagnostic pop

namespace {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The widest kernel set this CPU runs, lowered by $OCCFUSION_CPU_ISA = baseline | avx2 (the tests use
// it to check that every set gives the same results). Read once per process.
Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kBaseline;
#ifdef OCCFUSION_HAVE_X86_KERNELS
    if (__builtin_cpu_supports("avx2")) best = Isa::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw"))
      best = Isa::kAvx512;
#endif
    const char* requested = std::getenv("OCCFUSION_CPU_ISA");
    if (requested != nullptr && std::strcmp(requested, "baseline") == 0) return Isa::kBaseline;
    if (requested != nullptr && std::strcmp(requested, "avx2") == 0) return std::min(best, Isa::kAvx2);
    return best;
  }();
  return isa;
}

// The kernel set cpu_isa() picked (the baseline one only where no x86 variant is compiled in).
template <typename scalar_t>
auto pick_forward() {
#ifdef OCCFUSION_HAVE_X86_KERNELS
  if (cpu_isa() == Isa::kAvx512) return kernels_avx512::forward_tiles<scalar_t>;
  if (cpu_isa() == Isa::kAvx2) return kernels_avx2::forward_tiles<scalar_t>;
#endif
  return kernels_baseline::forward_tiles<scalar_t>;
}

template <typename scalar_t>
auto pick_backward() {
#ifdef OCCFUSION_HAVE_X86_KERNELS
  if (cpu_isa() == Isa::kAvx512) return kernels_avx512::backward_tiles<scalar_t>;
  if (cpu_isa() == Isa::kAvx2) return kernels_avx2::backward_tiles<scalar_t>;
#endif
  return kernels_baseline::backward_tiles<scalar_t>;
}

std::string simd_level() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

template <typename scalar_t>
scalar_t sigma_cutoff(scalar_t opacity) {
  if (!(opacity > scalar_t(0))) return -std::numeric_limits<scalar_t>::infinity();
  return scalar_t(std::log(255.0 * double(opacity)) + kCutMargin);
}

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

// Shrinks [col_lo, col_hi] x [row_lo, row_hi] to the pixels whose centres may have sigma <= cut: the
// bounding box of the ellipse 0.5 d^T Q d = cut, |dx| <= sqrt(2 cut c / det), |dy| <= sqrt(2 cut a / det),
// widened by kBoxSlack. Returns false when no pixel can be drawn.
//
// Why this never drops a pixel the exact rule draws: outside the ellipse the exact sigma >= cut, and
// sigma evaluated in scalar_t is within rel * sigma of it, rel = 16 eps (a + c) / lambda_min(Q) (each
// of the three products rounds to within a few eps of |a| dx^2, |c| dy^2, 2 |b dx dy|). When rel * cut
// is below half the cut margin, the rounded sigma stays above log(255 o) and the rule skips the pixel.
// Poorly conditioned conics (rel too big) keep their full box.
template <typename scalar_t>
bool shrink_to_ellipse(scalar_t mx, scalar_t my, scalar_t a_, scalar_t b_, scalar_t c_, scalar_t cut_, int& col_lo,
                       int& col_hi, int& row_lo, int& row_hi) {
  const double a = a_, b = b_, c = c_, cut = cut_;
  // sigma >= 0 is required to draw, and alpha <= o < 1/255 there when cut < 0 (includes o <= 0).
  if (cut < 0.0) return false;
  const double det = a * c - b * b;
  if (!(a > 0.0) || !(c > 0.0) || !(det > 0.0) || !std::isfinite(cut)) return true;
  const double lambda_min = 0.5 * (a + c) - std::sqrt(0.25 * (a - c) * (a - c) + b * b);
  if (!(lambda_min > 0.0)) return true;
  const double rel = 16.0 * double(std::numeric_limits<scalar_t>::epsilon()) * (a + c) / lambda_min;
  if (rel * cut > 0.5 * kCutMargin) return true;
  const double extent_x = std::sqrt(2.0 * cut * c / det), extent_y = std::sqrt(2.0 * cut * a / det);
  // Centres px = i + 0.5 with |px - mx| <= extent_x + kBoxSlack. The box is exact up to double rounding
  // (~1e-12 px, a sigma change far below the half margin left after rel * cut); the slack only widens it.
  const double lo_x = std::ceil(double(mx) - extent_x - 0.5 - kBoxSlack);
  const double hi_x = std::floor(double(mx) + extent_x - 0.5 + kBoxSlack);
  const double lo_y = std::ceil(double(my) - extent_y - 0.5 - kBoxSlack);
  const double hi_y = std::floor(double(my) + extent_y - 0.5 + kBoxSlack);
  if (lo_x > col_lo) col_lo = int(std::min(lo_x, double(col_hi) + 1.0));
  if (hi_x < col_hi) col_hi = int(std::max(hi_x, double(col_lo) - 1.0));
  if (lo_y > row_lo) row_lo = int(std::min(lo_y, double(row_hi) + 1.0));
  if (hi_y < row_hi) row_hi = int(std::max(hi_y, double(row_lo) - 1.0));
  return col_lo <= col_hi && row_lo <= row_hi;
}

// Unsigned key whose ascending order is the depth's ascending order, with -0 equal to +0 and every
// NaN last, as torch.sort orders them.
inline uint32_t depth_key(float depth) {
  if (std::isnan(depth)) return 0xFFFFFFFFu;
  const uint32_t bits = std::bit_cast<uint32_t>(depth == 0.0f ? 0.0f : depth);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

inline uint64_t depth_key(double depth) {
  if (std::isnan(depth)) return ~uint64_t(0);
  const uint64_t bits = std::bit_cast<uint64_t>(depth == 0.0 ? 0.0 : depth);
  return (bits & (uint64_t(1) << 63)) ? ~bits : bits | (uint64_t(1) << 63);
}

// Sorts `order` (ascending indices) by depth, stably, so ties keep index order: LSD radix sort on
// depth_key, 8 bits a pass, skipping the passes where all keys share the digit.
template <typename scalar_t>
void sort_by_depth(std::vector<int32_t>& order, const scalar_t* depths) {
  using Key = decltype(depth_key(scalar_t(0)));
  const size_t n = order.size();
  std::vector<Key> keys(n), keys_tmp(n);
  std::vector<int32_t> order_tmp(n);
  for (size_t k = 0; k < n; ++k) keys[k] = depth_key(depths[order[k]]);
  for (int shift = 0; shift < int(8 * sizeof(Key)); shift += 8) {
    size_t count[257] = {0};
    for (size_t k = 0; k < n; ++k) ++count[((keys[k] >> shift) & 0xFF) + 1];
    if (std::any_of(count + 1, count + 257, [n](size_t c) { return c == n; })) continue;  // one digit value
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (size_t k = 0; k < n; ++k) {
      const size_t dst = count[(keys[k] >> shift) & 0xFF]++;
      keys_tmp[dst] = keys[k];
      order_tmp[dst] = order[k];
    }
    keys.swap(keys_tmp);
    order.swap(order_tmp);
  }
}

// Binning result: bin of tile t is tile_ranks[tile_offsets[t] .. tile_offsets[t+1]), entries are
// positions in depth order (indices into sorted_ids / rects).
struct Bins {
  at::Tensor sorted_ids;    // (V,) int32 original index of the k-th visible Gaussian in depth order
  at::Tensor rects;         // (V, 4) int32 col_lo, col_hi, row_lo, row_hi (inclusive pixel ranges)
  at::Tensor tile_offsets;  // (T + 1,) int32
  at::Tensor tile_ranks;    // (P,) int32
};

template <typename scalar_t>
Bins bin_gaussians(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                   const at::Tensor& depths, const at::Tensor& radii, const TileGrid& grid) {
  const int64_t n = means2d.size(0);
  const scalar_t* mean_ptr = means2d.data_ptr<scalar_t>();
  const scalar_t* conic_ptr = conics.data_ptr<scalar_t>();
  const scalar_t* opacity_ptr = opacities.data_ptr<scalar_t>();
  const scalar_t* depth_ptr = depths.data_ptr<scalar_t>();
  const int32_t* radii_ptr = radii.data_ptr<int32_t>();

  std::vector<int32_t> rect_all(size_t(n) * 4);
  std::vector<uint8_t> visible(n, 0);
  at::parallel_for(0, n, kBoxGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int32_t rx = radii_ptr[2 * i], ry = radii_ptr[2 * i + 1];
      if (rx <= 0 || ry <= 0) continue;
      const scalar_t mx = mean_ptr[2 * i], my = mean_ptr[2 * i + 1];
      int c0, c1, r0, r1;
      if (!pixel_range<scalar_t>(mx, scalar_t(rx), grid.width, c0, c1)) continue;
      if (!pixel_range<scalar_t>(my, scalar_t(ry), grid.height, r0, r1)) continue;
      if (!shrink_to_ellipse<scalar_t>(mx, my, conic_ptr[3 * i], conic_ptr[3 * i + 1], conic_ptr[3 * i + 2],
                                       sigma_cutoff(opacity_ptr[i]), c0, c1, r0, r1))
        continue;
      int32_t* rect = rect_all.data() + 4 * i;
      rect[0] = c0, rect[1] = c1, rect[2] = r0, rect[3] = r1;
      visible[i] = 1;
    }
  });

  std::vector<int32_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    if (visible[i]) order.push_back(int32_t(i));
  sort_by_depth(order, depth_ptr);
  const int64_t n_visible = int64_t(order.size());

  auto int_opts = at::TensorOptions().dtype(at::kInt);
  Bins bins;
  bins.sorted_ids = at::empty({n_visible}, int_opts);
  bins.rects = at::empty({n_visible, 4}, int_opts);
  bins.tile_offsets = at::zeros({grid.count() + 1}, int_opts);
  int32_t* sorted_ptr = bins.sorted_ids.data_ptr<int32_t>();
  int32_t* rects_ptr = bins.rects.data_ptr<int32_t>();
  int32_t* offsets = bins.tile_offsets.data_ptr<int32_t>();

  // Counting pass (64-bit, checked before narrowing), then prefix sums into offsets.
  std::vector<int64_t> counts(grid.count() + 1, 0);
  for (int64_t k = 0; k < n_visible; ++k) {
    const int32_t* src = rect_all.data() + 4 * int64_t(order[k]);
    int32_t* dst = rects_ptr + 4 * k;
    std::copy(src, src + 4, dst);
    sorted_ptr[k] = order[k];
    for (int ty = dst[2] / kTileSize; ty <= dst[3] / kTileSize; ++ty)
      for (int tx = dst[0] / kTileSize; tx <= dst[1] / kTileSize; ++tx) ++counts[int64_t(ty) * grid.tiles_x + tx + 1];
  }
  for (int64_t t = 0; t < grid.count(); ++t) counts[t + 1] += counts[t];
  const int64_t n_pairs = counts[grid.count()];
  TORCH_CHECK(n_pairs < std::numeric_limits<int32_t>::max(), "rasterize_cpu: too many (Gaussian, tile) pairs: ",
              n_pairs);
  std::copy(counts.begin(), counts.end(), offsets);

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
  at::parallel_for(0, n_visible, kSerialGrain, [&](int64_t begin, int64_t end) {
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
  at::parallel_for(0, n_visible, kSerialGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      std::copy(color_ptr + ids[k] * n_channels, color_ptr + (ids[k] + 1) * n_channels, packed.data() + k * n_channels);
  });
  return packed;
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
              "rasterize_cpu: image size must be positive and at most 2^20, got ", width, " x ", height);
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "rasterize_cpu: too many Gaussians: ", n);
}

TileGrid make_grid(int64_t width, int64_t height) {
  TileGrid grid;
  grid.width = int(width), grid.height = int(height);
  grid.tiles_x = int((width + kTileSize - 1) / kTileSize);
  grid.tiles_y = int((height + kTileSize - 1) / kTileSize);
  return grid;
}

// Returns image (H,W,C), alpha (H,W,1) and, for the backward, final_T (H,W), n_walked (H,W) int32,
// tile_offsets (T+1,) int32, tile_ranks (P,) int32, sorted_ids (V,) int32, rects (V,4) int32.
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
    bins = bin_gaussians<scalar_t>(means2d, conics, opacities, depths, radii, grid);
    const auto packed = pack_gaussians<scalar_t>(bins, means2d, conics, opacities);
    const auto packed_colors = pack_colors<scalar_t>(bins, colors);
    auto run = pick_forward<scalar_t>();
    run(grid, bins.tile_offsets.data_ptr<int32_t>(), bins.tile_ranks.data_ptr<int32_t>(), packed.data(),
        packed_colors.data(), int(n_channels), image.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
        final_T.data_ptr<scalar_t>(), n_walked.data_ptr<int32_t>());
  });
  return {image, alpha, final_T, n_walked, bins.tile_offsets, bins.tile_ranks, bins.sorted_ids, bins.rects};
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
                  grad_image.scalar_type() == means2d.scalar_type() && grad_image.device().is_cpu(),
              "rasterize_cpu: grad_image must be a contiguous CPU (H, W, C) tensor of the input dtype, got ",
              grad_image.sizes());
  TORCH_CHECK(grad_alpha.sizes() == at::IntArrayRef({height, width, 1}) && grad_alpha.is_contiguous() &&
                  grad_alpha.scalar_type() == means2d.scalar_type() && grad_alpha.device().is_cpu(),
              "rasterize_cpu: grad_alpha must be a contiguous CPU (H, W, 1) tensor of the input dtype, got ",
              grad_alpha.sizes());
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
    auto run = pick_backward<scalar_t>();
    run(grid, tile_offsets.data_ptr<int32_t>(), tile_ranks.data_ptr<int32_t>(), packed.data(), packed_colors.data(),
        int(n_channels), final_T.data_ptr<scalar_t>(), n_walked.data_ptr<int32_t>(), grad_image.data_ptr<scalar_t>(),
        grad_alpha.data_ptr<scalar_t>(), pair_grads.data_ptr<scalar_t>());
    // Sums over each Gaussian's tiles in bin order, one record field per task: the order of every
    // sum is fixed, so gradients are bitwise reproducible whatever the thread count.
    const scalar_t* pair_ptr = pair_grads.data_ptr<scalar_t>();
    const int32_t* ranks = tile_ranks.data_ptr<int32_t>();
    const int32_t* ids = sorted_ids.data_ptr<int32_t>();
    struct Field {
      scalar_t* base;
      int64_t stride;
    };
    std::vector<Field> fields = {{grad_means.data_ptr<scalar_t>(), 2},     {grad_means.data_ptr<scalar_t>() + 1, 2},
                                 {grad_conics.data_ptr<scalar_t>(), 3},    {grad_conics.data_ptr<scalar_t>() + 1, 3},
                                 {grad_conics.data_ptr<scalar_t>() + 2, 3}, {grad_opacities.data_ptr<scalar_t>(), 1}};
    for (int64_t ch = 0; ch < n_channels; ++ch) fields.push_back({grad_colors.data_ptr<scalar_t>() + ch, n_channels});
    const int64_t grain = n_pairs * record < kSerialGrain ? record : 1;
    at::parallel_for(0, record, grain, [&](int64_t field_begin, int64_t field_end) {
      for (int64_t f = field_begin; f < field_end; ++f) {
        const Field field = fields[f];
        for (int64_t k = 0; k < n_pairs; ++k) field.base[ids[ranks[k]] * field.stride] += pair_ptr[k * record + f];
      }
    });
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
  m.def("simd_level() -> str", &occfusion::simd_level);
}
