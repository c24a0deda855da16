"""Image losses of stages 1 and 3 (docs/method.md, "Stage-1 losses" and "Stage 3: refinement").

Masked SSIM here is the intended one (the SSIM map averaged over the masked pixels), not the
released code's (its ``stage1.py`` reshapes the (3, h, w) map to (h·w, 3) without a permute before
masking, which scrambles the pixels).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def gaussian_window_1d(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size,) normalised Gaussian weights; the SSIM window is its outer product with itself."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(img1: torch.Tensor, img2: torch.Tensor, window: int = 11, sigma: float = 1.5,
             padding: str = "zeros") -> torch.Tensor:
    """Per-pixel SSIM of (B, C, H, W) images in [0, 1] -> (B, C, H, W).

    Gaussian window 11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2. ``padding="zeros"``: the 3DGS/GauHuman
    loss SSIM. ``padding="reflect"``: torchmetrics' SSIM map (reflected border, variances clamped at
    0), whose mean is ``torchmetrics.functional.image.structural_similarity_index_measure``; the
    metrics use it so that a metrics job need not import torchmetrics (2 s: it imports transformers).
    Tests hold both to an 11x11 2D convolution and the reflect map to torchmetrics. The five local
    means are one pass of the separable window (a row then a column convolution over the five maps
    stacked as channels): the same sums as the 11x11 convolution, about five times fewer operations.
    """
    if padding not in ("zeros", "reflect"):
        raise ValueError(f"ssim_map padding must be 'zeros' or 'reflect', got {padding!r}")
    b, c, h, w = img1.shape
    g = gaussian_window_1d(window, sigma, img1.device, img1.dtype)
    pad = window // 2
    maps = torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], dim=1)  # (B, 5C, H, W)
    if padding == "reflect":
        # torchmetrics reflects the images, then squares: the same as reflecting the squares
        maps, pad = F.pad(maps, (pad, pad, pad, pad), mode="reflect"), 0
    rows = F.conv2d(maps, g.view(1, 1, 1, window).expand(5 * c, 1, 1, window), padding=(0, pad), groups=5 * c)
    means = F.conv2d(rows, g.view(1, 1, window, 1).expand(5 * c, 1, window, 1), padding=(pad, 0), groups=5 * c)
    mu1, mu2, e11, e22, e12 = means.split(c, dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    if padding == "reflect":
        s1, s2 = s1.clamp_min(0.0), s2.clamp_min(0.0)
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (H, W, C) over pixels where mask (H, W, 1) is true; 0 when the mask is empty."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def box_crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop (H, W, C) to box = (x0, y0, x1, y1), end-exclusive."""
    x0, y0, x1, y1 = box
    return x[y0:y1, x0:x1]


def region_ssim_loss(rgb: torch.Tensor, image: torch.Tensor, region: torch.Tensor, box: tuple[int, int, int, int],
                     background: torch.Tensor) -> torch.Tensor:
    """1 - SSIM over ``box``, the map averaged over ``region``, with the render set to the background
    outside ``region`` as ``image`` is.

    An SSIM window at a pixel of the region reaches 5 pixels past it. Left as rendered, the pixels
    outside (the hidden person) would be compared with the background that stands in the target there,
    and pulled towards it: on the default subject this washed the hidden torso out to near white
    (occluded-region PSNR of the true-mask control 13.9 dB, 16.6 dB with the render composited).

    Args:
        rgb: (H, W, 3) render; image: (H, W, 3) target, ``background`` outside ``region``;
        region: (H, W, 1) bool; box: (x0, y0, x1, y1) end-exclusive; background: (3,).
    """
    composited = torch.where(region, rgb, background)
    smap = ssim_map(box_crop(composited, box).permute(2, 0, 1)[None], box_crop(image, box).permute(2, 0, 1)[None])
    return 1.0 - masked_mean(smap[0].permute(1, 2, 0), box_crop(region, box))


class LPIPSLoss:
    """LPIPS-VGG where the ``lpips`` package and its weights load; otherwise unavailable with a reason.

    Never substitutes another network under the LPIPS name: another network gives another number,
    which could not be compared with published LPIPS-VGG figures.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.model = None
        self.reason = None
        try:
            import lpips  # imports torchvision; fails on machines without a working torchvision

            self.model = lpips.LPIPS(net="vgg", verbose=False).to(device).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        except Exception as err:  # ImportError, or weights that cannot be downloaded
            self.reason = f"lpips unavailable: {type(err).__name__}: {str(err).splitlines()[0][:200]}"

    @property
    def available(self) -> bool:
        return self.model is not None

    def __call__(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) images in [0, 1] -> scalar LPIPS (inputs scaled to [-1, 1], as LPIPS expects)."""
        a = img1.permute(2, 0, 1)[None] * 2 - 1
        b = img2.permute(2, 0, 1)[None] * 2 - 1
        return self.model(a, b).mean()
