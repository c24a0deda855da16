// Per-tile forward and backward kernels of rasterize_cpu.cpp.
//
// No include guard on purpose: rasterize_cpu.cpp includes this file once per instruction set, each
// time inside its own namespace and `#pragma GCC target` region, and picks one at run time. All the
// types and headers it uses (Packed, TileGrid, Rule, <algorithm>, ...) come from the includer.
//
// A tile row (16 pixels) is a few native SIMD vectors (GCC vector extensions; 4 SSE2, 2 AVX2 or
// 1 AVX-512 register per row of floats). Pixels are independent of each other, so the lanes of a
// vector step through the same Gaussian at once without changing any pixel's front-to-back order; the
// rule's branches become lane masks. The build uses -ffp-contract=off, so every instruction set
// rounds identically and the per-pixel arithmetic is the reference's, operation for operation.

// Native SIMD vectors of the instruction set: kVectorBytes comes from the includer (16 for SSE2,
// 32 for AVX2, 64 for AVX-512); a tile row is kChunks of them.
template <typename scalar_t>
struct Lanes;

template <>
struct Lanes<float> {
  typedef float vec __attribute__((vector_size(kVectorBytes)));
  typedef int32_t mask __attribute__((vector_size(kVectorBytes)));  // comparison result: 0 or all ones
  static constexpr int kLanes = kVectorBytes / sizeof(float);
  static constexpr int kChunks = kTileSize / kLanes;
};

template <>
struct Lanes<double> {
  typedef double vec __attribute__((vector_size(kVectorBytes)));
  typedef int64_t mask __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / sizeof(double);
  static constexpr int kChunks = kTileSize / kLanes;
};

// exp per lane. float: Cephes' expf (range reduction by ln 2, degree-5 polynomial, within 1 ulp of the
// true value on [-87, 87]) in vector arithmetic; double (the gradient-checking path) uses std::exp.
// Written for a short dependency chain, since the tile loops wait on it: n = round(x / ln 2) by the
// 1.5 * 2^23 trick (which also leaves n in the low bits of y, for the exponent) instead of two
// conversions, and the polynomial in Estrin's form instead of Horner's (6 dependent operations, not 10).
// (Measured: computing the exp twice took the forward pass at 10k Gaussians, 256^2, from 8.7 to 17 ms.)
[[gnu::always_inline]] inline Lanes<float>::vec lane_exp(Lanes<float>::vec x) {
  using vec = Lanes<float>::vec;
  using mask = Lanes<float>::mask;
  const vec zero = {};
  x = x < -87.0f ? zero - 87.0f : x;
  x = x > 87.0f ? zero + 87.0f : x;
  constexpr float kRound = 12582912.0f;         // 1.5 * 2^23: adding it rounds to an integer
  constexpr int32_t kRoundBits = 0x4B400000;    // its bit pattern
  const vec y = x * 1.44269504088896341f + kRound;
  const vec n = y - kRound;
  const vec r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  const vec r2 = r * r;
  const vec a = r * 1.9875691500e-4f + 1.3981999507e-3f;
  const vec b = r * 8.3334519073e-3f + 4.1665795894e-2f;
  const vec c = r * 1.6666665459e-1f + 5.0000001201e-1f;
  const vec p = ((a * r2 + b) * r2 + c) * r2 + r + 1.0f;
  const mask exponent_bits = ((mask)y + (127 - kRoundBits)) << 23;  // (n + 127) << 23
  return p * (vec)exponent_bits;  // reinterprets the bits
}

[[gnu::always_inline]] inline Lanes<double>::vec lane_exp(Lanes<double>::vec x) {
  Lanes<double>::vec out = {};
  for (int lane = 0; lane < Lanes<double>::kLanes; ++lane) out[lane] = std::exp(x[lane]);
  return out;
}

// Whether any lane of a comparison mask is set: one test instruction on x86 (the portable form below
// moves the vector out word by word, which the kernels' profile showed among their hottest lines).
template <typename mask>
[[gnu::always_inline]] inline bool any_lane(const mask& m) {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (sizeof(mask) == 64) {
    const __m512i v = (__m512i)m;
    return _mm512_test_epi64_mask(v, v) != 0;
  } else if constexpr (sizeof(mask) == 32) {
    const __m256i v = (__m256i)m;
    return !_mm256_testz_si256(v, v);
  } else if constexpr (sizeof(mask) == 16) {
    return _mm_movemask_epi8((__m128i)m) != 0;
  }
#endif
  uint64_t words[sizeof(mask) / sizeof(uint64_t)];
  std::memcpy(words, &m, sizeof(mask));
  uint64_t any = 0;
  for (uint64_t word : words) any |= word;
  return any != 0;
}

// Lane sum in a fixed order (deterministic results).
template <typename vec>
[[gnu::always_inline]] inline auto sum_lanes(const vec& v) {
  auto sum = v[0];
  for (int lane = 1; lane < int(sizeof(vec) / sizeof(v[0])); ++lane) sum += v[lane];
  return sum;
}

// Sum of per-column sums held as one row of chunks, column 0 to 15: the same order, hence the same
// bits, whatever the vector width.
template <typename scalar_t>
[[gnu::always_inline]] inline scalar_t sum_columns(const typename Lanes<scalar_t>::vec* chunks) {
  scalar_t sum = 0;
  for (int j = 0; j < Lanes<scalar_t>::kChunks; ++j)
    for (int lane = 0; lane < Lanes<scalar_t>::kLanes; ++lane) sum += chunks[j][lane];
  return sum;
}

// The rule up to the transmittance test, for one Gaussian on one chunk of a tile row, in two steps
// so that chunks with no candidate lane skip the exp: `candidates` are the lanes of `allowed` (column
// box and the caller's pixel state) with 0 <= sigma <= sigma_cut, `drawn` those of them with
// alpha >= 1/255 (sigma > sigma_cut implies alpha < 1/255, so the first step drops nothing the rule
// keeps).
template <typename scalar_t>
struct ChunkAlpha {
  typename Lanes<scalar_t>::vec dx, sigma, gauss, alpha;
  typename Lanes<scalar_t>::mask candidates, drawn;
};

template <typename scalar_t>
[[gnu::always_inline]] inline void chunk_sigma(const Packed<scalar_t>& g, const typename Lanes<scalar_t>::vec& pixel_x,
                                               scalar_t dy, const typename Lanes<scalar_t>::mask& allowed,
                                               ChunkAlpha<scalar_t>& out) {
  out.dx = g.mx - pixel_x;
  out.sigma = scalar_t(0.5) * (g.a * out.dx * out.dx + g.c * dy * dy) + g.b * out.dx * dy;
  out.candidates = allowed & (out.sigma >= scalar_t(0)) & (out.sigma <= g.sigma_cut);
}

template <typename scalar_t>
[[gnu::always_inline]] inline void chunk_alpha(const Packed<scalar_t>& g, ChunkAlpha<scalar_t>& out) {
  using vec = typename Lanes<scalar_t>::vec;
  out.gauss = lane_exp(-out.sigma);
  const vec raw_alpha = g.opacity * out.gauss;
  out.alpha = raw_alpha < Rule<scalar_t>::kMaxAlpha ? raw_alpha : vec{} + Rule<scalar_t>::kMaxAlpha;
  out.drawn = out.candidates & (out.alpha >= Rule<scalar_t>::kMinAlpha);
}

// Column index of every lane of a tile row, chunk by chunk.
template <typename scalar_t>
struct ColumnIndex {
  typename Lanes<scalar_t>::mask of_chunk[Lanes<scalar_t>::kChunks];
  ColumnIndex() {
    for (int j = 0; j < Lanes<scalar_t>::kChunks; ++j)
      for (int lane = 0; lane < Lanes<scalar_t>::kLanes; ++lane) of_chunk[j][lane] = j * Lanes<scalar_t>::kLanes + lane;
  }
};

// A Gaussian's columns within a tile: the chunks [chunk_lo, chunk_hi] it overlaps and, per chunk,
// the lanes inside its column range [lane_lo, lane_hi].
template <typename scalar_t>
struct ColumnSpan {
  int chunk_lo, chunk_hi;
  typename Lanes<scalar_t>::mask in_columns[Lanes<scalar_t>::kChunks];
};

template <typename scalar_t>
[[gnu::always_inline]] inline void column_span(const ColumnIndex<scalar_t>& columns, int lane_lo, int lane_hi,
                                               ColumnSpan<scalar_t>& span) {
  span.chunk_lo = lane_lo / Lanes<scalar_t>::kLanes;
  span.chunk_hi = lane_hi / Lanes<scalar_t>::kLanes;
  for (int j = span.chunk_lo; j <= span.chunk_hi; ++j)
    span.in_columns[j] = (columns.of_chunk[j] >= lane_lo) & (columns.of_chunk[j] <= lane_hi);
}

// Per-thread state of the forward pass, reused from tile to tile; entry row * kChunks + chunk.
template <typename scalar_t>
struct ForwardScratch {
  using L = Lanes<scalar_t>;
  typename L::vec T[kTileSize * L::kChunks];
  typename L::mask done[kTileSize * L::kChunks];    // all ones once the pixel has stopped
  typename L::mask walked[kTileSize * L::kChunks];  // one plus the bin position of the last Gaussian composited
  typename L::vec pixel_x[L::kChunks];
  ColumnIndex<scalar_t> columns;
  AlignedBuffer<typename L::vec> accum;  // (C, kTileSize * kChunks)
};

// Forward pass of one tile: composites its bin front to back until every pixel has stopped. Writes
// the tile's pixels of image (H,W,C), alpha (H,W,1), final_T (H,W) and n_walked (H,W) (one plus the
// bin position of the last Gaussian composited into the pixel; 0 if none).
template <typename scalar_t, int kChannels>
void forward_tile(const TileGrid& grid, int64_t tile, const int32_t* offsets, const int32_t* ranks,
                  const Packed<scalar_t>* packed, const scalar_t* packed_colors, int runtime_channels,
                  ForwardScratch<scalar_t>& s, scalar_t* image, scalar_t* alpha, scalar_t* final_T, int32_t* n_walked) {
  using L = Lanes<scalar_t>;
  using vec = typename L::vec;
  using mask = typename L::mask;
  constexpr int kChunks = L::kChunks, kRowStride = kTileSize * kChunks;
  // a compile-time channel count lets the per-channel loops unroll (0: the runtime count)
  const int n_channels = kChannels > 0 ? kChannels : runtime_channels;
  const TileBox box = tile_box(grid, tile);
  const int tile_w = box.x1 - box.x0 + 1, tile_h = box.y1 - box.y0 + 1;
  const int n_pixels = tile_w * tile_h;
  for (int i = 0; i < kRowStride; ++i) {
    s.T[i] = vec{} + scalar_t(1);
    s.done[i] = mask{};
    s.walked[i] = mask{};
  }
  std::fill(s.accum.begin(), s.accum.end(), vec{});
  for (int j = 0; j < kChunks; ++j)
    for (int lane = 0; lane < L::kLanes; ++lane) s.pixel_x[j][lane] = scalar_t(box.x0 + j * L::kLanes + lane) + scalar_t(0.5);

  mask stopped_count = {};  // minus the number of stopped pixels, per lane
  ColumnSpan<scalar_t> span;
  const int32_t begin = offsets[tile], end = offsets[tile + 1];
  for (int32_t k = begin; k < end; ++k) {
    const int32_t rank = ranks[k];
    const Packed<scalar_t>& g = packed[rank];
    const scalar_t* color = packed_colors + int64_t(rank) * n_channels;
    column_span(s.columns, std::max(g.col_lo, box.x0) - box.x0, std::min(g.col_hi, box.x1) - box.x0, span);
    const int row_lo = std::max(g.row_lo, box.y0) - box.y0, row_hi = std::min(g.row_hi, box.y1) - box.y0;
    const int32_t walked_value = k - begin + 1;
    for (int row = row_lo; row <= row_hi; ++row) {
      const scalar_t dy = g.my - (scalar_t(box.y0 + row) + scalar_t(0.5));
      for (int j = span.chunk_lo; j <= span.chunk_hi; ++j) {
        const int i = row * kChunks + j;
        ChunkAlpha<scalar_t> ca;
        chunk_sigma(g, s.pixel_x[j], dy, span.in_columns[j] & ~s.done[i], ca);
        if (!any_lane(ca.candidates)) continue;
        chunk_alpha(g, ca);
        const mask drawn = ca.drawn;
        const vec T_here = s.T[i];
        const vec next_T = T_here * (scalar_t(1) - ca.alpha);
        const mask stop = drawn & (next_T <= Rule<scalar_t>::kMinTransmittance);
        const mask take = drawn & ~stop;
        s.done[i] |= stop;
        stopped_count += stop;
        // zero outside the lanes taken: adding weight * colour then leaves the others as they are
        const vec weight = take ? ca.alpha * T_here : vec{};
        s.T[i] = take ? next_T : T_here;
        s.walked[i] = take ? mask{} + walked_value : s.walked[i];
        vec* acc = s.accum.data() + i;
        for (int ch = 0; ch < n_channels; ++ch, acc += kRowStride) *acc += weight * color[ch];
      }
    }
    if (any_lane(stopped_count) && -sum_lanes(stopped_count) >= n_pixels) break;
  }

  for (int row = 0; row < tile_h; ++row) {
    for (int col = 0; col < tile_w; ++col) {
      const int i = row * kChunks + col / L::kLanes, lane = col % L::kLanes;
      const int64_t pixel = int64_t(box.y0 + row) * grid.width + box.x0 + col;
      for (int ch = 0; ch < n_channels; ++ch) image[pixel * n_channels + ch] = s.accum[ch * kRowStride + i][lane];
      alpha[pixel] = scalar_t(1) - s.T[i][lane];
      final_T[pixel] = s.T[i][lane];
      n_walked[pixel] = int32_t(s.walked[i][lane]);
    }
  }
}

// Per-thread state of the backward pass, reused from tile to tile; entry row * kChunks + chunk.
template <typename scalar_t>
struct BackwardScratch {
  using L = Lanes<scalar_t>;
  typename L::vec T[kTileSize * L::kChunks];       // transmittance in front of the Gaussian being processed
  typename L::vec T_last[kTileSize * L::kChunks];  // final transmittance
  typename L::vec grad_alpha[kTileSize * L::kChunks];
  typename L::mask walked[kTileSize * L::kChunks];
  typename L::vec pixel_x[L::kChunks];
  ColumnIndex<scalar_t> columns;
  AlignedBuffer<typename L::vec> grad_pixel;  // (C, kTileSize * kChunks) dL/dimage
  // sum over the farther Gaussians of weight * <dL/dimage, colour>: what d image/d alpha needs of
  // them, one number per pixel instead of one per channel
  typename L::vec behind_dot[kTileSize * L::kChunks];
  // Per-column gradient sums of the current Gaussian (summed over the tile's rows): mean x, mean y,
  // conic a, b, c, opacity, then the colours; (kGradHeader + C, kChunks).
  AlignedBuffer<typename L::vec> grad_sums;
};

// Backward pass of one tile: walks its bin back to front from the farthest Gaussian any pixel used,
// recovering T by division, and writes one record (kGradHeader + C values) per Gaussian of the bin
// into pair_grads at the Gaussian's bin position. Records of Gaussians that touched no pixel are left
// as they are (zero).
template <typename scalar_t, int kChannels>
void backward_tile(const TileGrid& grid, int64_t tile, const int32_t* offsets, const int32_t* ranks,
                   const Packed<scalar_t>* packed, const scalar_t* packed_colors, int runtime_channels,
                   const scalar_t* final_T, const int32_t* n_walked, const scalar_t* grad_image,
                   const scalar_t* grad_alpha, BackwardScratch<scalar_t>& s, scalar_t* pair_grads) {
  using L = Lanes<scalar_t>;
  using vec = typename L::vec;
  using mask = typename L::mask;
  constexpr int kChunks = L::kChunks, kRowStride = kTileSize * kChunks;
  const int n_channels = kChannels > 0 ? kChannels : runtime_channels;
  const TileBox box = tile_box(grid, tile);
  const int tile_w = box.x1 - box.x0 + 1, tile_h = box.y1 - box.y0 + 1;
  const int record = kGradHeader + n_channels;
  // Lanes outside the image keep walked = 0, so no Gaussian is ever drawn there.
  for (int i = 0; i < kRowStride; ++i) {
    s.T[i] = s.T_last[i] = vec{} + scalar_t(1);
    s.grad_alpha[i] = vec{};
    s.walked[i] = mask{};
  }
  std::fill(s.grad_pixel.begin(), s.grad_pixel.end(), vec{});
  for (int i = 0; i < kRowStride; ++i) s.behind_dot[i] = vec{};
  int32_t max_walked = 0;
  for (int row = 0; row < tile_h; ++row) {
    for (int col = 0; col < tile_w; ++col) {
      const int i = row * kChunks + col / L::kLanes, lane = col % L::kLanes;
      const int64_t pixel = int64_t(box.y0 + row) * grid.width + box.x0 + col;
      s.T[i][lane] = s.T_last[i][lane] = final_T[pixel];
      s.walked[i][lane] = n_walked[pixel];
      max_walked = std::max(max_walked, n_walked[pixel]);
      s.grad_alpha[i][lane] = grad_alpha[pixel];
      for (int ch = 0; ch < n_channels; ++ch) s.grad_pixel[ch * kRowStride + i][lane] = grad_image[pixel * n_channels + ch];
    }
  }
  for (int j = 0; j < kChunks; ++j)
    for (int lane = 0; lane < L::kLanes; ++lane) s.pixel_x[j][lane] = scalar_t(box.x0 + j * L::kLanes + lane) + scalar_t(0.5);

  ColumnSpan<scalar_t> span;
  const int32_t begin = offsets[tile];
  for (int32_t local = max_walked - 1; local >= 0; --local) {
    const int32_t k = begin + local;
    const int32_t rank = ranks[k];
    const Packed<scalar_t>& g = packed[rank];
    const scalar_t* color = packed_colors + int64_t(rank) * n_channels;
    column_span(s.columns, std::max(g.col_lo, box.x0) - box.x0, std::min(g.col_hi, box.x1) - box.x0, span);
    const int row_lo = std::max(g.row_lo, box.y0) - box.y0, row_hi = std::min(g.row_hi, box.y1) - box.y0;
    std::fill(s.grad_sums.begin(), s.grad_sums.end(), vec{});
    bool any_drawn = false;
    for (int row = row_lo; row <= row_hi; ++row) {
      const scalar_t dy = g.my - (scalar_t(box.y0 + row) + scalar_t(0.5));
      for (int j = span.chunk_lo; j <= span.chunk_hi; ++j) {
        const int i = row * kChunks + j;
        // The forward rule again (identical arithmetic, so identical decisions), restricted to the
        // pixels that composited up to at least this Gaussian.
        ChunkAlpha<scalar_t> ca;
        chunk_sigma(g, s.pixel_x[j], dy, span.in_columns[j] & (local < s.walked[i]), ca);
        if (!any_lane(ca.candidates)) continue;
        chunk_alpha(g, ca);
        const mask drawn = ca.drawn;
        if (!any_lane(drawn)) continue;
        any_drawn = true;
        const vec inv_one_minus_alpha = scalar_t(1) / (scalar_t(1) - ca.alpha);
        const vec T_front = s.T[i] * inv_one_minus_alpha;
        // Zero outside the drawn lanes, so the sums below need no masks of their own.
        const vec weight = drawn ? ca.alpha * T_front : vec{};
        // d(1 - T_last)/d alpha = T_last / (1 - alpha); d image/d alpha = T_front colour - behind / (1 - alpha),
        // taken against dL/dimage: T_front <g, colour> - behind_dot / (1 - alpha).
        // Lanes not drawn get garbage here, masked out below.
        vec colour_dot = {};
        const vec* grad_pix = s.grad_pixel.data() + i;
        vec* grad_color = s.grad_sums.data() + kGradHeader * kChunks + j;
        for (int ch = 0; ch < n_channels; ++ch, grad_pix += kRowStride, grad_color += kChunks) {
          colour_dot += *grad_pix * color[ch];
          *grad_color += weight * *grad_pix;
        }
        const vec grad_alpha_here = s.grad_alpha[i] * s.T_last[i] * inv_one_minus_alpha + colour_dot * T_front -
                                    s.behind_dot[i] * inv_one_minus_alpha;
        s.behind_dot[i] += weight * colour_dot;
        s.T[i] = drawn ? T_front : s.T[i];
        // alpha = min(0.999, o exp(-sigma)): nothing flows through the clamp.
        const mask live = drawn & (g.opacity * ca.gauss <= Rule<scalar_t>::kMaxAlpha);
        const vec grad_alpha_live = live ? grad_alpha_here : vec{};
        const vec grad_sigma = -g.opacity * ca.gauss * grad_alpha_live;
        const vec dx = ca.dx;
        vec* sums = s.grad_sums.data() + j;
        sums[0 * kChunks] += (g.a * dx + g.b * dy) * grad_sigma;
        sums[1 * kChunks] += (g.b * dx + g.c * dy) * grad_sigma;
        sums[2 * kChunks] += scalar_t(0.5) * dx * dx * grad_sigma;
        sums[3 * kChunks] += dx * dy * grad_sigma;
        sums[4 * kChunks] += scalar_t(0.5) * dy * dy * grad_sigma;
        sums[5 * kChunks] += ca.gauss * grad_alpha_live;
      }
    }
    if (!any_drawn) continue;
    scalar_t* out = pair_grads + int64_t(k) * record;
    for (int r = 0; r < record; ++r) out[r] = sum_columns<scalar_t>(s.grad_sums.data() + r * kChunks);
  }
}

// Per-thread scratch, allocated before the parallel region so that an allocation failure throws here
// and not inside OpenMP (where an exception would terminate the process).
template <typename Scratch>
std::vector<std::unique_ptr<Scratch>> make_scratch(int n_threads, const std::function<void(Scratch&)>& size_buffers) {
  std::vector<std::unique_ptr<Scratch>> scratch(n_threads);
  for (auto& one : scratch) {
    one = std::make_unique<Scratch>();
    size_buffers(*one);
  }
  return scratch;
}

template <typename scalar_t>
void forward_tiles(const TileGrid& grid, const int32_t* offsets, const int32_t* ranks, const Packed<scalar_t>* packed,
                   const scalar_t* packed_colors, int n_channels, scalar_t* image, scalar_t* alpha, scalar_t* final_T,
                   int32_t* n_walked) {
  const int n_threads = std::max(1, at::get_num_threads());
  auto scratch = make_scratch<ForwardScratch<scalar_t>>(n_threads, [&](ForwardScratch<scalar_t>& s) {
    s.accum.resize(size_t(n_channels) * kTileSize * Lanes<scalar_t>::kChunks);
  });
#pragma omp parallel num_threads(n_threads)
  {
    ForwardScratch<scalar_t>& mine = *scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.count(); ++tile) {
      // RGB + depth (training renders) and RGB get unrolled kernels
      if (n_channels == 4)
        forward_tile<scalar_t, 4>(grid, tile, offsets, ranks, packed, packed_colors, 4, mine, image, alpha, final_T,
                                  n_walked);
      else if (n_channels == 3)
        forward_tile<scalar_t, 3>(grid, tile, offsets, ranks, packed, packed_colors, 3, mine, image, alpha, final_T,
                                  n_walked);
      else
        forward_tile<scalar_t, 0>(grid, tile, offsets, ranks, packed, packed_colors, n_channels, mine, image, alpha,
                                  final_T, n_walked);
    }
  }
}

template <typename scalar_t>
void backward_tiles(const TileGrid& grid, const int32_t* offsets, const int32_t* ranks,
                    const Packed<scalar_t>* packed, const scalar_t* packed_colors, int n_channels,
                    const scalar_t* final_T, const int32_t* n_walked, const scalar_t* grad_image,
                    const scalar_t* grad_alpha, scalar_t* pair_grads) {
  const int n_threads = std::max(1, at::get_num_threads());
  auto scratch = make_scratch<BackwardScratch<scalar_t>>(n_threads, [&](BackwardScratch<scalar_t>& s) {
    s.grad_pixel.resize(size_t(n_channels) * kTileSize * Lanes<scalar_t>::kChunks);
    s.grad_sums.resize(size_t(kGradHeader + n_channels) * Lanes<scalar_t>::kChunks);
  });
#pragma omp parallel num_threads(n_threads)
  {
    BackwardScratch<scalar_t>& mine = *scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.count(); ++tile) {
      if (n_channels == 4)
        backward_tile<scalar_t, 4>(grid, tile, offsets, ranks, packed, packed_colors, 4, final_T, n_walked, grad_image,
                                   grad_alpha, mine, pair_grads);
      else if (n_channels == 3)
        backward_tile<scalar_t, 3>(grid, tile, offsets, ranks, packed, packed_colors, 3, final_T, n_walked, grad_image,
                                   grad_alpha, mine, pair_grads);
      else
        backward_tile<scalar_t, 0>(grid, tile, offsets, ranks, packed, packed_colors, n_channels, final_T, n_walked,
                                   grad_image, grad_alpha, mine, pair_grads);
    }
  }
}
