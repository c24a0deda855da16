"""Pure-torch reference compositor: every (Gaussian, pixel) pair inside a Gaussian's footprint, no tiles.

Differentiable with plain autograd and fast enough to train with on a CPU, because work is spent
only where a Gaussian can be drawn:

1. (no grad) each visible Gaussian's box gives a column span and a row span of pixel centres
   (exactly the box rule); within each box row only the columns where the Gaussian's alpha can
   reach 1/255 (an ellipse, solved per row) are kept. The Gaussians are ordered by depth and
   expanded into (gaussian, pixel) pairs with ``repeat_interleave``, one band of image rows at a
   time so memory stays bounded (and a band's pixel ids fit 16-bit sort keys);
2. (no grad) the pairs are stably sorted by pixel, which keeps depth order inside each pixel, and
   get their alpha; pairs the rules skip (sigma < 0, alpha < 1/255) count as alpha = 0;
3. (no grad) transmittance by a segmented cumulative sum of log(1 - alpha) per pixel, accumulated in
   float64 because the running sum spans the whole band; pairs whose T after them is <= 1e-4 are
   dropped -- T only decreases, so that is exactly gsplat's early stop -- and so are all later
   ones, and the skipped ones;
4. (grad) alpha, T and the weights alpha * T are recomputed on the surviving pairs only and
   scattered into the image channel by channel with ``index_add``; the accumulated alpha is the
   sum of the weights (= 1 - T_final).

Peak memory of forward + backward is about 150-200 bytes per contributing pair (0.6 GB for 20k
Gaussians at 256x256); past CHECKPOINT_ABOVE_PAIRS pairs the bands are recomputed in backward so
that only one band's autograd state is held at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from . import register_pixel_backend

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
# Pairs expanded at once; ~40 bytes each in the no-grad pass.
MAX_PAIRS_PER_BAND = 1 << 22
# Pixels per band at most, so that pixel ids fit 16-bit sort keys.
SORT_KEY_PIXELS = 1 << 16
# Above this many contributing pairs in one call, each band's weighted sums are recomputed in
# backward (torch.utils.checkpoint) instead of holding their autograd state, which is ~150 bytes
# a pair: one band's worth at a time rather than the whole image's.
CHECKPOINT_ABOVE_PAIRS = 1 << 23
# Slack added to the exponent bound of the per-row alpha >= 1/255 ellipse (1% in alpha), so that
# rounding in the float32 per-pair test can never find a drawable pair the float64 row span cut
# off; the exact test still runs per pair.
SIGMA_CUT_SLACK = 1e-2


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


def _row_bands(boxes: "_Footprints", height: int, width: int) -> list[tuple[int, int]]:
    """Split [0, height) into row bands of at most about MAX_PAIRS_PER_BAND box pairs and at most
    SORT_KEY_PIXELS pixels each (so that a band's pixel ids sort as 16-bit keys)."""
    max_rows = max(1, SORT_KEY_PIXELS // width)
    span_width = boxes.col_last - boxes.col_first + 1
    total = int((span_width * (boxes.row_last - boxes.row_first + 1)).sum())
    if total <= MAX_PAIRS_PER_BAND:
        return [(start, min(start + max_rows, height)) for start in range(0, height, max_rows)]
    # Box pairs per row from a difference array over each box's rows (an upper bound on pairs).
    per_row = torch.zeros(height + 1, dtype=torch.int64, device=span_width.device)
    per_row.index_add_(0, boxes.row_first, span_width)
    per_row.index_add_(0, boxes.row_last + 1, -span_width)
    cum = per_row[:height].cumsum(0).cumsum(0)  # pairs in rows [0, r]
    bands, start = [], 0
    while start < height:
        done = int(cum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum, done + MAX_PAIRS_PER_BAND, right=True))
        end = min(max(end, start + 1), start + max_rows, height)  # an over-full row is still one band
        bands.append((start, end))
        start = end
    return bands


def _stable_sort_pixels(pixel: torch.Tensor, band_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) int32 pixel ids in [0, band_pixels) -> (sorted ids, (M,) permutation), stable."""
    if band_pixels <= SORT_KEY_PIXELS:
        # 16-bit keys sort markedly faster than 32-bit ones on CPU.
        keys, order = torch.sort((pixel - 32768).to(torch.int16), stable=True)
        return keys.to(torch.int32) + 32768, order
    return torch.sort(pixel, stable=True)


def _segment_starts(sorted_pix: torch.Tensor) -> torch.Tensor:
    """(M,) pixel ids sorted ascending -> (M,) index of the first pair of each pair's pixel."""
    is_start = torch.ones_like(sorted_pix, dtype=torch.bool)
    is_start[1:] = sorted_pix[1:] != sorted_pix[:-1]
    start_pos = torch.nonzero(is_start).squeeze(1)
    return start_pos.index_select(0, torch.cumsum(is_start, 0) - 1)


def _exclusive_log_t(log_1m_alpha: torch.Tensor, seg_start: torch.Tensor) -> torch.Tensor:
    """log T before each pair: sum of log(1 - alpha) over earlier pairs of the same pixel.

    Args:
        log_1m_alpha: (M,) log(1 - alpha), pairs grouped by pixel in compositing order.
        seg_start: (M,) index of the first pair of each pair's pixel.

    Returns:
        (M,) float64 exclusive segmented cumulative sum (differentiable). The running sum spans
        every pixel of the band, so it is accumulated in float64 before segments are subtracted.
    """
    # An explicit cast, not cumsum(dtype=float64): the latter's backward casts the gradient down
    # before its reverse cumulative sum, which cost float32 opacity gradients ~1e-4 relative.
    log_1m_alpha = log_1m_alpha.double()
    before = torch.cumsum(log_1m_alpha, 0) - log_1m_alpha
    return before - before.index_select(0, seg_start)


def _pair_alpha(
    gauss_fields: tuple[torch.Tensor, ...], pair_gauss: torch.Tensor, pixel: torch.Tensor, width: int, first_row: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian falloff per pair; the one formula both passes use, so their decisions agree.

    Args:
        gauss_fields: six (G,) tensors: mean_x, mean_y, conic_a / 2, conic_b, conic_c / 2, opacity.
        pair_gauss: (M,) int32 the pair's Gaussian (index into the fields).
        pixel: (M,) int32 the pair's pixel as (row - first_row) * width + column.

    Returns:
        (M,) sigma (the exponent), (M,) alpha = min(0.999, opacity * exp(-sigma)).
    """
    mean_x, mean_y, half_a, b, half_c, opacity = (f.index_select(0, pair_gauss) for f in gauss_fields)
    row = torch.div(pixel, width, rounding_mode="floor")
    col = pixel - row * width
    dx = mean_x - (col.to(mean_x.dtype) + 0.5)
    dy = mean_y - ((row + first_row).to(mean_x.dtype) + 0.5)
    # 0.5 (a dx^2 + c dy^2) + b dx dy, factored to save passes over the pairs.
    sigma = dx * (half_a * dx + b * dy) + half_c * dy * dy
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), ALPHA_MAX)
    return sigma, alpha


@dataclass
class _Footprints:
    """(no grad) Where each depth-ordered Gaussian may be drawn; all tensors (G,).

    Attributes:
        col_first, col_last, row_first, row_last: int64 pixel spans of the box (non-empty).
        mean_x, mean_y, conic_a, conic_b, conic_c: float64 copies of the 2D Gaussian.
        sigma_cut: float64 ln(255 * opacity) + slack: beyond it alpha < 1/255.
        bounded: the conic is positive definite, so {sigma <= sigma_cut} is an ellipse.
    """

    col_first: torch.Tensor
    col_last: torch.Tensor
    row_first: torch.Tensor
    row_last: torch.Tensor
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    conic_a: torch.Tensor
    conic_b: torch.Tensor
    conic_c: torch.Tensor
    sigma_cut: torch.Tensor
    bounded: torch.Tensor


def _expand_footprints(fp: _Footprints, band: tuple[int, int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(no grad) The candidate (Gaussian, pixel) pairs inside one row band, Gaussian by Gaussian.

    Per box row, only the columns where sigma <= sigma_cut (solved as a quadratic in dx) are
    candidates; a non-positive-definite conic keeps its full box row.

    Returns:
        (M,) int32 Gaussian index, (M,) int32 pixel as (row - band start) * width + column.
    """
    band_start, band_end = band
    device = fp.col_first.device
    top = fp.row_first.clamp(min=band_start)
    rows_in_band = (fp.row_last.clamp(max=band_end - 1) - top + 1).clamp(min=0)
    # Gaussians -> box rows -> pixels, each step one repeat_interleave.
    row_gauss = torch.repeat_interleave(torch.arange(len(top), device=device, dtype=torch.int32), rows_in_band)
    row = (torch.arange(len(row_gauss), device=device)
           - (torch.cumsum(rows_in_band, 0) - rows_in_band - top).index_select(0, row_gauss))

    a, b, c = (t.index_select(0, row_gauss) for t in (fp.conic_a, fp.conic_b, fp.conic_c))
    dy = fp.mean_y.index_select(0, row_gauss) - (row.double() + 0.5)
    b_dy = b * dy
    # 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= cut  <=>  dx in (-b dy -+ sqrt(disc)) / a.
    disc = b_dy * b_dy - a * (c * dy * dy - 2.0 * fp.sigma_cut.index_select(0, row_gauss))
    half_span = torch.sqrt(disc.clamp(min=0)) / a
    centre = fp.mean_x.index_select(0, row_gauss) + b_dy / a  # px = mean_x - dx
    box_first = fp.col_first.index_select(0, row_gauss)
    box_last = fp.col_last.index_select(0, row_gauss)
    # Clamp in float first: a thin ellipse can give spans far outside int64.
    first = torch.ceil((centre - half_span - 0.5).clamp(min=-1.0, max=width)).long()
    last = torch.floor((centre + half_span - 0.5).clamp(min=-1.0, max=width)).long()
    bounded = fp.bounded.index_select(0, row_gauss)
    first = torch.where(bounded, torch.maximum(first, box_first), box_first)
    last = torch.where(bounded, torch.where(disc >= 0, torch.minimum(last, box_last), first - 1), box_last)
    row_width = (last - first + 1).clamp(min=0)

    row_first_pixel = (row - band_start) * width + first
    row_first_pair = torch.cumsum(row_width, 0) - row_width
    pair_gauss = torch.repeat_interleave(row_gauss, row_width)
    pixel_base = (row_first_pixel - row_first_pair).to(torch.int32)
    pixel = (torch.repeat_interleave(pixel_base, row_width)
             + torch.arange(len(pair_gauss), device=device, dtype=torch.int32))
    return pair_gauss, pixel


def _contributing_pairs(
    gauss_fields: tuple[torch.Tensor, ...], footprints: _Footprints, band: tuple[int, int], width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(no grad) The pairs of one row band that the compositing rules keep, in compositing order.

    Args:
        gauss_fields: depth-ordered Gaussians, see :func:`_pair_alpha`.
        footprints: the same Gaussians' footprints.
        band: rows [start, end) handled now.

    Returns:
        (M,) int32 Gaussian index and (M,) int32 pixel ((row - band start) * width + column) of the
        pairs that add to the image, sorted by pixel and, within a pixel, front to back.
    """
    pair_gauss, pixel = _expand_footprints(footprints, band, width)
    # Pairs were generated Gaussian by Gaussian in depth order; a stable sort by pixel keeps it.
    pixel, order = _stable_sort_pixels(pixel, (band[1] - band[0]) * width)
    pair_gauss = pair_gauss.index_select(0, order)

    sigma, alpha = _pair_alpha(gauss_fields, pair_gauss, pixel, width, band[0])
    # Skipped pairs (few: the footprints already follow the alpha >= 1/255 ellipse) stay in
    # place with log(1 - 0) = 0 and are dropped together with the stopped ones below.
    drawn = (sigma >= 0) & (alpha >= ALPHA_MIN)
    log_1m_alpha = torch.where(drawn, torch.log1p(-alpha), 0.0)
    log_t_after = _exclusive_log_t(log_1m_alpha, _segment_starts(pixel)) + log_1m_alpha
    # gsplat stops a pixel at the first Gaussian whose T after it is <= 1e-4, excluding it.
    keep = torch.nonzero(drawn & (log_t_after > LOG_T_MIN)).squeeze(1)
    return pair_gauss.index_select(0, keep), pixel.index_select(0, keep)


def _footprints(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, depths: torch.Tensor,
                radii: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, _Footprints]:
    """(no grad) Drawable Gaussians in depth order and their footprints.

    Returns:
        (G,) int64 indices into the inputs, ascending depth (ties: lower index first), and their
        :class:`_Footprints`.
    """
    drawable = torch.nonzero((radii > 0).all(dim=1)).squeeze(1)
    # The stable sort over ascending indices puts depth ties lower index first.
    gauss = drawable.index_select(0, torch.sort(depths.index_select(0, drawable), stable=True).indices)
    centre = means2d.index_select(0, gauss)
    box_radii = radii.index_select(0, gauss)
    col_first, col_last = _pixel_span(centre[:, 0], box_radii[:, 0], width)
    row_first, row_last = _pixel_span(centre[:, 1], box_radii[:, 1], height)
    has_pixels = torch.nonzero((col_last >= col_first) & (row_last >= row_first)).squeeze(1)
    gauss = gauss.index_select(0, has_pixels)
    centre = centre.index_select(0, has_pixels).double()
    conic = conics.index_select(0, gauss).double()
    a, b, c = conic.unbind(1)
    opacity = opacities.index_select(0, gauss).double()
    return gauss, _Footprints(
        col_first=col_first.index_select(0, has_pixels), col_last=col_last.index_select(0, has_pixels),
        row_first=row_first.index_select(0, has_pixels), row_last=row_last.index_select(0, has_pixels),
        mean_x=centre[:, 0], mean_y=centre[:, 1], conic_a=a, conic_b=b, conic_c=c,
        sigma_cut=torch.log(255.0 * opacity.clamp(min=0)) + SIGMA_CUT_SLACK,
        bounded=(a > 0) & (a * c - b * b > 0),
    )


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
    """The plain torch reference of the pixel-backend contract
    (:class:`~occfusion_core.render.backends.PixelBackendFn`): every pair of Gaussian and pixel it touches as
    tensors, so it runs on any device and dtype and its gradients come from autograd; the compiled backends
    are tested against it."""
    with torch.no_grad():
        gauss, footprints = _footprints(means2d, conics, opacities, depths, radii, width, height)
        gauss32 = gauss.to(torch.int32)

    # Per-Gaussian (G,) fields in depth order, gathered per pair with 1D index_select, whose
    # backward is a cheap 1D index_add (column views of a packed (M, F) tensor would each
    # allocate a zero (M, F) gradient instead).
    g_means, g_conics = means2d.index_select(0, gauss32), conics.index_select(0, gauss32)
    gauss_fields = (g_means[:, 0], g_means[:, 1], 0.5 * g_conics[:, 0], g_conics[:, 1], 0.5 * g_conics[:, 2],
                    opacities.index_select(0, gauss32))
    g_colors = colors.index_select(0, gauss32).t().contiguous()  # (C, G): one contiguous row per channel

    with torch.no_grad():
        fields_nograd = tuple(f.detach() for f in gauss_fields)
        bands = _row_bands(footprints, height, width)
        band_pairs = [_contributing_pairs(fields_nograd, footprints, band, width) for band in bands]

    n_pairs = sum(len(pair_gauss) for pair_gauss, _ in band_pairs)
    recompute = torch.is_grad_enabled() and len(bands) > 1 and n_pairs > CHECKPOINT_ABOVE_PAIRS
    band_images = []
    for (band_start, band_end), (pair_gauss, pixel) in zip(bands, band_pairs):
        args = (pair_gauss, pixel, width, band_start, band_end, g_colors, *gauss_fields)
        if recompute:
            band_images.append(torch.utils.checkpoint.checkpoint(_composite_band, *args, use_reentrant=False))
        else:
            band_images.append(_composite_band(*args))
    image = band_images[0] if len(band_images) == 1 else torch.cat(band_images, dim=0)
    image = image.reshape(height, width, colors.shape[1] + 1)
    return image[..., :-1], image[..., -1:]


def _composite_band(
    pair_gauss: torch.Tensor, pixel: torch.Tensor, width: int, band_start: int, band_end: int,
    g_colors: torch.Tensor, *gauss_fields: torch.Tensor,
) -> torch.Tensor:
    """(grad) Weighted sums of one band's contributing pairs.

    Args:
        pair_gauss, pixel: (M,) int32 pairs from :func:`_contributing_pairs`.
        g_colors: (C, G) depth-ordered features, one row per channel.
        gauss_fields: see :func:`_pair_alpha`.

    Returns:
        ((band_end - band_start) * width, C + 1) features, then alpha.
    """
    _, alpha = _pair_alpha(gauss_fields, pair_gauss, pixel, width, band_start)
    with torch.no_grad():
        seg_start = _segment_starts(pixel)
    log_t_before = _exclusive_log_t(torch.log1p(-alpha), seg_start)
    # log T >= log 1e-4 here, so float32 loses nothing that matters before the exp.
    weight = alpha * torch.exp(log_t_before.to(alpha.dtype))
    zeros = weight.new_zeros((band_end - band_start) * width)
    # Channel by channel: (M,) vectors vectorise; an (M, C) block with small C does not.
    channels = [zeros.index_add(0, pixel, weight * channel.index_select(0, pair_gauss)) for channel in g_colors]
    channels.append(zeros.index_add(0, pixel, weight))
    return torch.stack(channels, dim=-1)


register_pixel_backend("torch", rasterize_to_pixels_torch)
