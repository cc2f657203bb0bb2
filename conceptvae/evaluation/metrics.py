"""Image metrics of (B, C, H, W) images in [0, 1]: SSIM and PSNR, per image, batched in torch.

Why not scikit-image's ``structural_similarity`` or torchmetrics: the evaluation measures SSIM of
every decoded edit, tens of thousands of images, on the model's device (a GPU when there is one),
in batches; scikit-image works on one numpy image at a time on the CPU, and torchmetrics would be
a new dependency for two short functions. ``tests/test_evaluate.py`` checks that these agree with
scikit-image (Gaussian window, sigma 1.5, population covariance) to 1e-4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def _gauss_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    t = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) images in [0, 1]: (B,).

    Gaussian window (11 x 11, sigma 1.5; shrunk to the image for images under 11 px), the
    standard constants C1 = 0.01^2, C2 = 0.03^2 for data range 1, valid filtering, the SSIM map
    averaged over pixels and channels.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"ssim takes two (B, C, H, W) tensors of one shape, got {x.shape}, {y.shape}"
        )
    x, y = x.float(), y.float()
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd
    c = x.shape[1]
    k = 5 * c
    g = _gauss_window(size, sigma, x.device, x.dtype)
    gx, gy = g.view(1, 1, 1, size).repeat(k, 1, 1, 1), g.view(1, 1, size, 1).repeat(k, 1, 1, 1)
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    stats = F.conv2d(F.conv2d(stats, gx, groups=k), gy, groups=k)
    mx, my, xx, yy, xy = stats.chunk(5, 1)
    vx, vy, cov = xx - mx.square(), yy - my.square(), xy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx.square() + my.square() + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [0, 1]: (B,) (MSE floored at 1e-10)."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
