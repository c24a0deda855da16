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


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(img1: torch.Tensor, img2: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, H, W) images in [0, 1] -> (B, C, H, W).

    Gaussian window 11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding: the 3DGS/GauHuman loss
    SSIM. (torchmetrics' SSIM crops the border instead of returning a full-size map, which a
    pixel-masked mean needs; tests hold this one to torchmetrics on the interior.)
    """
    c = img1.shape[1]
    w = _gaussian_window(window, sigma, img1.device, img1.dtype).expand(c, 1, window, window)
    pad = window // 2
    mu1 = F.conv2d(img1, w, padding=pad, groups=c)
    mu2 = F.conv2d(img2, w, padding=pad, groups=c)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = F.conv2d(img1 * img1, w, padding=pad, groups=c) - mu1_sq
    s2 = F.conv2d(img2 * img2, w, padding=pad, groups=c) - mu2_sq
    s12 = F.conv2d(img1 * img2, w, padding=pad, groups=c) - mu12
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
