"""Pure-torch reference compositor: every (Gaussian, pixel) pair inside a Gaussian's box, no tiles.

Differentiable with plain autograd and fast enough to train with on a CPU, because work is spent
only on each Gaussian's footprint:

1. (no grad) each visible Gaussian's box gives a column span and a row span of pixel centres; the
   Gaussians are ordered by depth and their boxes expanded into (gaussian, pixel) pairs with
   ``repeat_interleave``, one band of image rows at a time so memory stays bounded;
2. (no grad) alpha per pair; pairs that are skipped by the rules (sigma < 0, alpha < 1/255) are
   dropped, the rest stably sorted by pixel, which keeps depth order inside each pixel;
3. (no grad) transmittance by a segmented cumulative sum of log(1 - alpha) per pixel, done in
   float64 because the running sum spans the whole band; pairs whose T after them is <= 1e-4 are
   dropped -- T only decreases, so that is exactly gsplat's early stop -- and so are all later ones;
4. (grad) alpha, T and the weights alpha * T are recomputed on the surviving pairs only and
   scattered into the image with ``index_add_``; the accumulated alpha is the sum of the weights
   (= 1 - T_final).

Autograd memory is about a hundred bytes per contributing pair.
"""

from __future__ import annotations

import math

import torch

from . import register_pixel_backend

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
# Pairs expanded at once (before the alpha filter); ~40 bytes each in the no-grad pass.
MAX_PAIRS_PER_BAND = 1 << 22


def _pixel_span(centre: torch.Tensor, radius: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last pixel index k in [0, size) whose centre k + 0.5 satisfies |centre - (k+0.5)| <= radius.

    Args:
        centre: (G,) Gaussian centre along one axis, in the compositing dtype.
        radius: (G,) integer radius along that axis.
        size: image extent along the axis.

    Returns:
        (G,) int64 first, (G,) int64 last; last < first for an empty span.
    """
    def inside(k: torch.Tensor) -> torch.Tensor:
        # The test itself runs in the input dtype so the span is exactly the rule's pixel set.
        return (centre - (k.to(centre.dtype) + 0.5)).abs() <= radius.to(centre.dtype)

    c64, r64 = centre.double(), radius.double()
    first = torch.ceil(c64 - r64 - 0.5).clamp(0, size).long()
    last = torch.floor(c64 + r64 - 0.5).clamp(-1, size - 1).long()
    # One step either way absorbs the rounding difference between float64 and the input dtype.
    first = torch.where((first > 0) & inside(first - 1), first - 1, first)
    first = torch.where((first < size) & ~inside(first), first + 1, first)
    last = torch.where((last < size - 1) & inside(last + 1), last + 1, last)
    last = torch.where((last >= 0) & ~inside(last), last - 1, last)
    return first, last


def _row_bands(row_first: torch.Tensor, row_last: torch.Tensor, span_width: torch.Tensor, height: int) -> list[tuple[int, int]]:
    """Split [0, height) into row bands of at most about MAX_PAIRS_PER_BAND box pairs each."""
    total = int((span_width * (row_last - row_first + 1)).sum())
    if total <= MAX_PAIRS_PER_BAND:
        return [(0, height)]
    # Pairs per row from a difference array over each box's rows.
    per_row = torch.zeros(height + 1, dtype=torch.int64, device=row_first.device)
    per_row.index_add_(0, row_first, span_width)
    per_row.index_add_(0, row_last + 1, -span_width)
    cum = per_row[:height].cumsum(0).cumsum(0)  # pairs in rows [0, r]
    bands, start = [], 0
    while start < height:
        done = int(cum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum, done + MAX_PAIRS_PER_BAND, right=True))
        end = min(max(end, start + 1), height)  # a single over-full row is still one band
        bands.append((start, end))
        start = end
    return bands


def _segment_starts(sorted_pix: torch.Tensor) -> torch.Tensor:
    """(M,) pixel ids sorted ascending -> (M,) index of the first pair of each pair's pixel."""
    is_start = torch.ones_like(sorted_pix, dtype=torch.bool)
    is_start[1:] = sorted_pix[1:] != sorted_pix[:-1]
    start_pos = torch.nonzero(is_start).squeeze(1)
    return start_pos[torch.cumsum(is_start, 0) - 1]


def _exclusive_log_t(log_1m_alpha: torch.Tensor, seg_start: torch.Tensor) -> torch.Tensor:
    """log T before each pair: sum of log(1 - alpha) over earlier pairs of the same pixel.

    Args:
        log_1m_alpha: (M,) float64 log(1 - alpha), pairs grouped by pixel in compositing order.
        seg_start: (M,) index of the first pair of each pair's pixel.

    Returns:
        (M,) float64 exclusive segmented cumulative sum (differentiable).
    """
    inclusive = torch.cumsum(log_1m_alpha, 0)
    before = inclusive - log_1m_alpha
    return before - before[seg_start]


def _pair_alpha(p: torch.Tensor, pair_row: torch.Tensor, pair_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian falloff per pair.

    Args:
        p: (M, >=6) the pair's Gaussian: [mean_x, mean_y, conic_a, conic_b, conic_c, opacity, ...].
        pair_row, pair_col: (M,) the pair's pixel.

    Returns:
        (M,) sigma (the exponent), (M,) alpha = min(0.999, opacity * exp(-sigma)).
    """
    dx = p[:, 0] - (pair_col.to(p.dtype) + 0.5)
    dy = p[:, 1] - (pair_row.to(p.dtype) + 0.5)
    sigma = 0.5 * (p[:, 2] * dx * dx + p[:, 4] * dy * dy) + p[:, 3] * dx * dy
    alpha = torch.clamp_max(p[:, 5] * torch.exp(-sigma), ALPHA_MAX)
    return sigma, alpha


def _contributing_pairs(
    params: torch.Tensor, col_first: torch.Tensor, span_width: torch.Tensor, row_first: torch.Tensor,
    row_last: torch.Tensor, band: tuple[int, int], width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(no grad) The pairs of one row band that the compositing rules keep, in compositing order.

    Args:
        params: (G, >=6) depth-ordered Gaussians, see :func:`_pair_alpha`.
        col_first, span_width: (G,) first column and number of columns of each box (>= 1).
        row_first, row_last: (G,) row span of each box.
        band: rows [start, end) handled now.

    Returns:
        (M,) Gaussian (row of ``params``), (M,) pixel row, (M,) pixel column, sorted by pixel and,
        within a pixel, front to back; only pairs that add to the image.
    """
    band_start, band_end = band
    top = row_first.clamp(min=band_start)
    rows_in_band = (row_last.clamp(max=band_end - 1) - top + 1).clamp(min=0)
    counts = span_width * rows_in_band
    device = counts.device
    pair_gauss = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    offset_in_box = torch.arange(len(pair_gauss), device=device) - (torch.cumsum(counts, 0) - counts)[pair_gauss]
    box_width = span_width[pair_gauss]
    row_in_box = torch.div(offset_in_box, box_width, rounding_mode="floor")
    pair_row = top[pair_gauss] + row_in_box
    pair_col = col_first[pair_gauss] + (offset_in_box - row_in_box * box_width)

    sigma, alpha = _pair_alpha(params[pair_gauss], pair_row, pair_col)
    drawn = (sigma >= 0) & (alpha >= ALPHA_MIN)
    pair_gauss, pair_row, pair_col, alpha = pair_gauss[drawn], pair_row[drawn], pair_col[drawn], alpha[drawn]

    # Pairs were generated Gaussian by Gaussian in depth order; a stable sort by pixel keeps it.
    pixel = ((pair_row - band_start) * width + pair_col).to(torch.int32)
    pixel, order = torch.sort(pixel, stable=True)
    pair_gauss, pair_row, pair_col, alpha = pair_gauss[order], pair_row[order], pair_col[order], alpha[order]

    log_1m_alpha = torch.log1p(-alpha.double())
    log_t_after = _exclusive_log_t(log_1m_alpha, _segment_starts(pixel)) + log_1m_alpha
    # gsplat stops a pixel at the first Gaussian whose T after it is <= 1e-4, excluding it.
    keep = log_t_after > LOG_T_MIN
    return pair_gauss[keep], pair_row[keep], pair_col[keep]


def rasterize_to_pixels_torch(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing of 2D Gaussians (semantics: ``rasterize_to_pixels``).

    Args:
        means2d: (N, 2) pixel-space means (x, y).
        conics: (N, 3) inverse 2D covariances [a, b, c].
        colors: (N, C) features to composite.
        opacities: (N,) opacities.
        depths: (N,) sort keys (camera depth); not differentiated.
        radii: (N, 2) integer box half-extents; 0 on either axis = not drawn.
        width, height: image size.

    Returns:
        (H, W, C) composited features, (H, W, 1) accumulated alpha.
    """
    n_channels = colors.shape[1]
    with torch.no_grad():
        drawable = torch.nonzero((radii > 0).all(dim=1)).squeeze(1)
        # Ascending depth; the stable sort over ascending indices puts ties lower index first.
        gauss = drawable[torch.sort(depths[drawable], stable=True).indices]
        col_first, col_last = _pixel_span(means2d[gauss, 0].detach(), radii[gauss, 0], width)
        row_first, row_last = _pixel_span(means2d[gauss, 1].detach(), radii[gauss, 1], height)
        has_pixels = (col_last >= col_first) & (row_last >= row_first)
        gauss, col_first, col_last = gauss[has_pixels], col_first[has_pixels], col_last[has_pixels]
        row_first, row_last = row_first[has_pixels], row_last[has_pixels]
        span_width = col_last - col_first + 1
        params_nograd = torch.cat([means2d[gauss], conics[gauss], opacities[gauss, None]], dim=1).detach()

        bands = _row_bands(row_first, row_last, span_width, height)
        band_pairs = [
            _contributing_pairs(params_nograd, col_first, span_width, row_first, row_last, band, width)
            for band in bands
        ]

    ones = torch.ones_like(opacities)[:, None]
    # One gather per pair of everything the weights and the image need; the trailing 1 makes
    # index_add_ accumulate alpha alongside the features.
    params = torch.cat([means2d, conics, opacities[:, None], colors, ones], dim=1)[gauss]
    band_images = []
    for (band_start, band_end), (pair_gauss, pair_row, pair_col) in zip(bands, band_pairs):
        pixel = (pair_row - band_start) * width + pair_col
        pair_params = params[pair_gauss]
        _, alpha = _pair_alpha(pair_params, pair_row, pair_col)
        log_1m_alpha = torch.log1p(-alpha.double())
        with torch.no_grad():
            seg_start = _segment_starts(pixel)
        transmittance = torch.exp(_exclusive_log_t(log_1m_alpha, seg_start)).to(alpha.dtype)
        weight = alpha * transmittance
        contribution = weight[:, None] * pair_params[:, 6:]
        band_image = params.new_zeros((band_end - band_start) * width, n_channels + 1)
        band_images.append(band_image.index_add(0, pixel, contribution))
    image = band_images[0] if len(band_images) == 1 else torch.cat(band_images, dim=0)
    image = image.reshape(height, width, n_channels + 1)
    return image[..., :n_channels], image[..., n_channels:]


register_pixel_backend("torch", rasterize_to_pixels_torch)
