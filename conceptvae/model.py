"""The model, in one file: VAEConfig, DiagonalGaussian, Encoder, Decoder and ConceptVAE.

Images are float32 NCHW in [0, 1]; the [-1, 1] mapping stays inside the encoder. Latents are
float32 (B, D). A model directory holds ``config.json`` (the :class:`VAEConfig`) and
``model.safetensors`` (the state dict, BatchNorm buffers included).

The network is built for quality per FLOP on a CPU: a pixel-unshuffle stem (so no layer runs at
full resolution), stride-2 conv stages down to a 4 x 4 bottleneck, a linear layer to
``2 * latent_dim``, and a mirrored decoder of 4 x 4 stride-2 transposed convolutions with
single-conv residual blocks at the low resolutions, ending in a conv and a pixel shuffle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from conceptvae._fs import atomic_write_bytes, atomic_write_json
from conceptvae.errors import ModelError

__all__ = [
    "CONFIG_NAME",
    "IMAGE_SIZES",
    "WEIGHTS_NAME",
    "ConceptVAE",
    "Decoder",
    "DiagonalGaussian",
    "Encoder",
    "VAEConfig",
    "region_weight_map",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
IMAGE_SIZES = (64, 128, 256)
LOGVAR_RANGE = (-30.0, 20.0)  # exp(-30/2) ~ 3e-7, exp(20/2) ~ 2e4: wide, but never inf or 0
NORMS = ("batch", "group", "none")
PIXEL_LOSSES = ("mse", "l1")
STRUCTURE_LOSSES = ("none", "laplacian", "ssim", "focal")

# Widths per resolution, from image_size / patch_size down to the 4 x 4 bottleneck (patch 2).
_DEFAULT_CHANNELS = {
    64: (16, 48, 128, 256),
    128: (16, 32, 48, 128, 256),
    256: (16, 16, 32, 48, 128, 256),
}


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class VAEConfig:
    """Everything needed to rebuild a :class:`ConceptVAE`; written as ``config.json``.

    Architecture: ``channels[i]`` is the width at resolution ``image_size / patch_size / 2**i``,
    the last one at the 4 x 4 bottleneck, so there are ``log2(image_size / patch_size / 4) + 1``
    entries; ``encoder_blocks`` / ``decoder_blocks`` give the residual blocks at each of those
    resolutions. ``None`` picks the default for the image size.

    Loss (per image, summed over pixels, mean over the batch)::

        loss = pixel_weight * sum(w * pixel_error) + structure_weight * structure_term
               + beta * sum_d max(KL_d, free_bits) + attr_weight * BCE(attr_head(mu), labels)

    ``w`` is an optional per-pixel weight map (see :func:`region_weight_map`; ``region_weight``
    and ``region_sigma`` are the strength and the width, as a fraction of ``image_size``, the
    training code uses to build it from landmarks; 0 turns it off).

    ``crop`` records the frame of the training images, for editing: the centred square (in
    pixels of CelebA's aligned 178 x 218 image) they were cut with. Training fills it in from a
    CelebA-layout cache; None means the data was not in CelebA's aligned frame.
    """

    image_size: int = 64
    latent_dim: int = 128
    channels: tuple[int, ...] | None = None
    encoder_blocks: tuple[int, ...] | None = None
    decoder_blocks: tuple[int, ...] | None = None
    patch_size: int = 2
    norm: str = "batch"
    beta: float = 0.05
    free_bits: float = 0.0
    pixel_loss: str = "mse"
    pixel_weight: float = 1.0
    structure_loss: str = "laplacian"
    structure_weight: float = 0.1
    region_weight: float = 2.0
    region_sigma: float = 0.05
    attr_dim: int = 0
    attr_weight: float = 1.0
    crop: float | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "latent_dim", "patch_size", "attr_dim"):
            _check_int(name, getattr(self, name), minimum=0 if name == "attr_dim" else 1)
        if self.image_size not in IMAGE_SIZES:
            raise ModelError(
                f"image_size {self.image_size} is not supported: use one of "
                f"{', '.join(map(str, IMAGE_SIZES))}"
            )
        p = self.patch_size
        if p & (p - 1) or not 1 <= p <= self.image_size // 4:
            raise ModelError(
                f"patch_size {p} does not work with image_size {self.image_size}: use a power "
                f"of 2 from 1 to {self.image_size // 4}"
            )
        n = self.num_stages
        if self.channels is None:
            default = _DEFAULT_CHANNELS[self.image_size]
            self.channels = (
                tuple(default[-n:])
                if n <= len(default)
                else (default[0],) * (n - len(default)) + default
            )
        if self.encoder_blocks is None:
            self.encoder_blocks = (0,) * n
        if self.decoder_blocks is None:
            self.decoder_blocks = (0,) * (n - 2) + (1,) * min(n, 2)
        for name in ("channels", "encoder_blocks", "decoder_blocks"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != n:
                res = ", ".join(str(self.image_size // p // 2**i) for i in range(n))
                raise ModelError(
                    f"{name} needs {n} entries for image_size {self.image_size} and patch_size "
                    f"{p} (one per resolution {res}), got {value!r}"
                )
            for v in value:
                _check_int(name, v, minimum=1 if name == "channels" else 0)
            setattr(self, name, tuple(int(v) for v in value))
        for name, options in (
            ("norm", NORMS),
            ("pixel_loss", PIXEL_LOSSES),
            ("structure_loss", STRUCTURE_LOSSES),
        ):
            if getattr(self, name) not in options:
                raise ModelError(
                    f"{name} {getattr(self, name)!r} is not known: use one of {', '.join(options)}"
                )
        for name in (
            "beta",
            "free_bits",
            "pixel_weight",
            "structure_weight",
            "region_weight",
            "region_sigma",
            "attr_weight",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ModelError(f"{name} must be a finite number, got {v!r}")
            if v < 0:
                raise ModelError(f"{name} must be >= 0, got {v}")
            setattr(self, name, float(v))
        if self.region_sigma <= 0:
            raise ModelError("region_sigma must be > 0 (a fraction of image_size), got 0")
        if self.crop is not None:
            c = self.crop
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 178:
                raise ModelError(
                    f"crop must be None or a size in (0, 178] pixels of CelebA's aligned frame, "
                    f"got {c!r}"
                )
            self.crop = float(c)

    @property
    def num_stages(self) -> int:
        """Resolutions from ``image_size / patch_size`` down to 4, both included."""
        return int(math.log2(self.image_size // self.patch_size // 4)) + 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`ModelError`."""
        if not isinstance(data, dict):
            raise ModelError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(
                f"unknown config key(s) {', '.join(unknown)}: a newer conceptvae may have written "
                f"it; known keys are {', '.join(sorted(known))}"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def config_hash(self) -> str:
        """First 12 hex digits of the sha256 of the canonical (sorted, compact) config JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ModelError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# the posterior


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over (B, D) latents; ``logvar`` is clamped to LOGVAR_RANGE."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
        self.mean = mean  # (B, D)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)  # (B, D)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)  # (B, D)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, eps ~ N(0, I) (drawn on the mean's device; pass a generator there)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps  # (B, D)

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) of each dimension, (B, D), in nats."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, (B,): -1/2 sum(1 + logvar - exp(logvar) - mean^2)."""
        return self.kl_per_dim().sum(-1)


# ---------------------------------------------------------------------------------------------
# layers


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0 and (c // g >= 4 or g == 1))
        return nn.GroupNorm(groups, c)
    return nn.Identity()


def _conv_norm_act(cin: int, cout: int, norm: str, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none"), _norm(norm, cout), nn.SiLU()
    )


class ResBlock(nn.Module):
    """act(x + norm(conv3x3(x))): one conv per block, the cheapest residual unit that helped."""

    def __init__(self, c: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, bias=norm == "none")
        self.norm = _norm(norm, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.norm(self.conv(x)))


class Upsample(nn.Sequential):
    """ConvTranspose2d(4x4, stride 2): a quarter of nearest-upsample + conv3x3's FLOPs."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=norm == "none"),
            _norm(norm, cout),
            nn.SiLU(),
        )


class Encoder(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> (mean, logvar), each (B, D)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c, p = config.channels, config.patch_size
        self.patch_size = p
        layers: list[nn.Module] = [_conv_norm_act(3 * p * p, c[0], config.norm)]
        for i, width in enumerate(c):
            if i:
                layers.append(_conv_norm_act(c[i - 1], width, config.norm, stride=2))
            layers += [ResBlock(width, config.norm) for _ in range(config.encoder_blocks[i])]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c[-1] * 16, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.pixel_unshuffle(x * 2.0 - 1.0, self.patch_size)  # (B, 3p^2, S/p, S/p)
        h = self.body(h).flatten(1)  # (B, C*4*4)
        mean, logvar = self.head(h).chunk(2, dim=1)  # (B, D) each
        return mean, logvar


class Decoder(nn.Module):
    """Latents (B, D) -> images (B, 3, S, S) in [0, 1]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c, p = config.channels, config.patch_size
        self.patch_size = p
        self.width = c[-1]
        self.fc = nn.Linear(config.latent_dim, c[-1] * 16)
        layers: list[nn.Module] = [_norm(config.norm, c[-1]), nn.SiLU()]
        for i in reversed(range(len(c))):
            layers += [ResBlock(c[i], config.norm) for _ in range(config.decoder_blocks[i])]
            if i:
                layers.append(Upsample(c[i], c[i - 1], config.norm))
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c[0], 3 * p * p, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).unflatten(1, (self.width, 4, 4))  # (B, C, 4, 4)
        h = self.out(self.body(h))  # (B, 3p^2, S/p, S/p)
        return torch.sigmoid(F.pixel_shuffle(h, self.patch_size))  # (B, 3, S, S)


# ---------------------------------------------------------------------------------------------
# losses


def region_weight_map(
    image_size: int,
    points: torch.Tensor | np.ndarray,
    sigma: float,
    strength: float,
) -> torch.Tensor:
    """A per-pixel loss weight: 1 plus ``strength`` times a Gaussian bump at each point.

    ``points``: (K, 2) or (B, K, 2) (x, y) in 0-based pixel coordinates (pixel centres at
    integers, as the prepared cache's landmarks). ``sigma`` is in pixels. Each map is divided by
    its mean, so the mean weight is 1 and the loss keeps its scale; the peaks sit on the points.
    Returns float32 (1, 1, S, S) or (B, 1, S, S) on the points' device (CPU for numpy).
    """
    pts = torch.as_tensor(points, dtype=torch.float32)
    if pts.ndim not in (2, 3) or pts.shape[-1] != 2:
        raise ValueError(f"points must be (K, 2) or (B, K, 2), got {tuple(pts.shape)}")
    if not sigma > 0 or not strength >= 0:
        raise ValueError(f"sigma must be > 0 and strength >= 0, got {sigma} and {strength}")
    if pts.ndim == 2:
        pts = pts[None]  # (1, K, 2)
    grid = torch.arange(image_size, dtype=torch.float32, device=pts.device)
    dx = grid[None, None, None, :] - pts[..., 0, None, None]  # (B, K, 1, S)
    dy = grid[None, None, :, None] - pts[..., 1, None, None]  # (B, K, S, 1)
    bumps = torch.exp(-(dx.square() + dy.square()) / (2.0 * sigma**2)).sum(1)  # (B, S, S)
    w = 1.0 + strength * bumps
    return (w / w.mean(dim=(1, 2), keepdim=True))[:, None]  # (B, 1, S, S)


def _laplacian_l1(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Sum over 3 band-pass levels of |L_k(x) - L_k(y)|, each level counted per unit area."""
    d = x - y  # the pyramid is linear, so one pyramid of the difference is enough
    total = d.new_zeros(())
    scale = 1.0
    for _ in range(3):
        low = F.avg_pool2d(d, 2)
        band = (d - F.interpolate(low, scale_factor=2.0, mode="nearest")).abs()
        total = total + scale * (band if w is None else band * w).sum()
        d, scale = low, scale * 4.0
        w = None if w is None else F.avg_pool2d(w, 2)
    return total


def _gauss_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    t = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return g / g.sum()


def _ssim_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Sum of (1 - SSIM map) on a 3-level pyramid (7-tap Gaussian window, valid), per unit area."""
    c1, c2 = 0.01**2, 0.03**2
    k = 5 * x.shape[1]  # five statistics per channel, filtered as separate groups
    g = _gauss_window(7, 1.5, x.device, x.dtype)
    gx, gy = g.view(1, 1, 1, 7).repeat(k, 1, 1, 1), g.view(1, 1, 7, 1).repeat(k, 1, 1, 1)
    total = x.new_zeros(())
    scale = 1.0
    for level in range(3):
        stats = torch.cat([x, y, x * x, y * y, x * y], 1)
        stats = F.conv2d(F.conv2d(stats, gx, groups=k), gy, groups=k)  # (B, k, H-6, W-6)
        mx, my, xx, yy, xy = stats.chunk(5, 1)
        vx, vy, cov = xx - mx.square(), yy - my.square(), xy - mx * my
        num = (2 * mx * my + c1) * (2 * cov + c2)
        err = 1.0 - num / ((mx.square() + my.square() + c1) * (vx + vy + c2))
        total = total + scale * (err if w is None else err * w[..., 3:-3, 3:-3]).sum()
        if level < 2:
            x, y, scale = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2), scale * 4.0
            w = None if w is None else F.avg_pool2d(w, 2)
    return total


def _focal_frequency(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Focal frequency loss (Jiang et al. 2021), alpha 1: spectrum error weighted by its size."""
    d = x - y
    if w is not None:
        d = d * w.sqrt()  # the FFT is linear: weighting the difference weights the pixels
    spec = torch.fft.rfft2(d, norm="ortho")
    dist = spec.real.square() + spec.imag.square()  # (B, C, H, W/2+1)
    focus = dist.detach().sqrt()
    focus = focus / focus.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (focus * dist).sum()


_STRUCTURE = {"laplacian": _laplacian_l1, "ssim": _ssim_loss, "focal": _focal_frequency}


# ---------------------------------------------------------------------------------------------
# the model


class ConceptVAE(nn.Module):
    """A convolutional VAE whose latent means are edited with concept vectors.

    ``encode(x)`` -> :class:`DiagonalGaussian` over (B, D); ``decode(z)`` -> images in [0, 1];
    ``loss(x, ...)`` -> dict for training; ``save_pretrained`` / ``from_pretrained`` for model
    directories. Device follows the parameters; ``model.to(memory_format=torch.channels_last)``
    is supported (and faster for training on CPU).
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else VAEConfig()
        if not isinstance(self.config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(self.config).__name__}")
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        a = self.config.attr_dim
        self.attr_head = nn.Linear(self.config.latent_dim, a) if a else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- core ---------------------------------------------------------------------------------

    def _check_images(self, x: torch.Tensor) -> None:
        s = self.config.image_size
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(
                "images must be a float tensor (B, 3, H, W) in [0, 1], got "
                + (str(x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__)
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(
                f"images must be (B, 3, {s}, {s}) for this model, got {tuple(x.shape)}: "
                f"resize or crop them to {s} x {s}"
            )

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images (B, 3, S, S) float in [0, 1] -> the posterior q(z | x) over (B, D).

        Inference tensors (made under ``torch.inference_mode``) are encoded without autograd.
        """
        self._check_images(x)
        if x.is_inference() and not torch.is_inference_mode_enabled():
            with torch.inference_mode():  # autograd cannot use inference tensors anyway
                return DiagonalGaussian(*self.encoder(x))
        return DiagonalGaussian(*self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D) -> images (B, 3, S, S) in [0, 1].

        Inference tensors (``encode_mean`` returns them) are decoded without autograd.
        """
        d = self.config.latent_dim
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != d:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"latents must be (B, {d}), got {shape}")
        if z.is_inference() and not torch.is_inference_mode_enabled():
            with torch.inference_mode():  # e.g. z from encode_mean(): decode it without autograd
                return self.decoder(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct from a posterior sample: (recon (B, 3, S, S), posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    def loss(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        beta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training objective on a batch (see :class:`VAEConfig` for the formula).

        ``weight``: optional per-pixel weights (1 or B, 1, S, S), e.g. :func:`region_weight_map`.
        ``labels``: optional (B, attr_dim) 0/1 targets for the attribute head. ``beta``
        overrides ``config.beta`` (for KL warm-up). Returns ``loss`` (scalar, differentiable) and
        detached ``recon`` (per image), ``kl`` (per image, before free bits), ``mse`` (per-pixel
        mean), ``kl_per_dim`` (D,) (batch mean) and, with labels, ``attr`` (BCE per image).
        """
        cfg = self.config
        b, s = x.shape[0], cfg.image_size
        if weight is not None and (
            weight.ndim != 4
            or weight.shape[0] not in (1, b)
            or tuple(weight.shape[1:]) != (1, s, s)
        ):
            raise ValueError(f"weight must be (1 or {b}, 1, {s}, {s}), got {tuple(weight.shape)}")
        recon, posterior = self(x, generator)
        err = recon - x  # (B, 3, S, S)
        pix = err.square() if cfg.pixel_loss == "mse" else err.abs()
        if weight is not None:
            pix = pix * weight
        recon_loss = cfg.pixel_weight * pix.sum()
        if cfg.structure_loss != "none" and cfg.structure_weight > 0:
            structure = _STRUCTURE[cfg.structure_loss](recon, x, weight)
            recon_loss = recon_loss + cfg.structure_weight * structure
        recon_loss = recon_loss / b

        kl_per_dim = posterior.kl_per_dim().mean(0)  # (D,)
        kl = kl_per_dim.sum()
        kl_term = kl_per_dim.clamp_min(cfg.free_bits).sum() if cfg.free_bits > 0 else kl
        total = recon_loss + (cfg.beta if beta is None else beta) * kl_term
        out = {
            "recon": recon_loss.detach(),
            "kl": kl.detach(),
            "mse": err.detach().square().mean(),
            "kl_per_dim": kl_per_dim.detach(),
        }
        if labels is not None:
            if self.attr_head is None:
                raise ValueError(
                    "labels were given but this model has no attribute head (attr_dim 0)"
                )
            if labels.shape != (b, cfg.attr_dim):
                raise ValueError(f"labels must be ({b}, {cfg.attr_dim}), got {tuple(labels.shape)}")
            logits = self.attr_head(posterior.mean)  # (B, A)
            attr = (
                F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")
                / b
            )
            total = total + cfg.attr_weight * attr
            out["attr"] = attr.detach()
        out["loss"] = total
        return out

    # -- inference ----------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latents: the posterior means, (B, D)."""
        return self.encode(x.to(self.device)).mean

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: images (B, 3, S, S) in [0, 1]."""
        return self.decode(self.encode(x.to(self.device)).mean)

    @torch.inference_mode()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode ``n`` draws from N(0, temperature^2 I): images (n, 3, S, S) in [0, 1]."""
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return self.decode(z * temperature)

    @torch.inference_mode()
    def predict_attributes(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute probabilities from the attribute head, (B, attr_dim)."""
        if self.attr_head is None:
            raise ValueError("this model has no attribute head (attr_dim 0)")
        return torch.sigmoid(self.attr_head(self.encode(x.to(self.device)).mean))

    def landmark_weight(self, points: torch.Tensor | np.ndarray) -> torch.Tensor | None:
        """The loss weight map this config asks for (``region_weight``, ``region_sigma``) from
        (K, 2) or (B, K, 2) landmark points, or None when ``region_weight`` is 0."""
        cfg = self.config
        if cfg.region_weight == 0:
            return None
        sigma = cfg.region_sigma * cfg.image_size
        return region_weight_map(cfg.image_size, points, sigma, cfg.region_weight)

    def model_hash(self) -> str:
        """First 16 hex digits of a sha256 over every weight and buffer (names, shapes, bytes).

        A vector bank or a latent cache records it to tell which model it was made for. Only the
        tensors count, not the config, so loss settings or a newer config format (new keys with
        defaults) do not change the hash of the same trained network.
        """
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    # -- model directories --------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (CPU, contiguous) into ``path``.

        Each file is written atomically; other files in the folder (vectors) are kept.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "pt", "config_hash": self.config.config_hash()}
        atomic_write_bytes(path / WEIGHTS_NAME, save_safetensors(state, metadata=meta))
        atomic_write_json(path / CONFIG_NAME, self.config.to_dict())
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> ConceptVAE:
        """Load a model directory written by :meth:`save_pretrained` (or the name of a shipped
        model, e.g. ``"synthfaces64"``); returns it in eval mode."""
        from conceptvae.pretrained import resolve

        path = resolve(path)
        if not path.is_dir():
            raise ModelError(
                f"model folder {path} does not exist or is not a folder: give the folder that "
                f"holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        cfg_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, weights_file):
            if not f.is_file():
                raise ModelError(
                    f"{f} is missing: a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(written by save_pretrained or conceptvae train)"
                )
        try:
            data = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{cfg_file} is not readable JSON ({e}): re-save the model") from e
        try:
            config = VAEConfig.from_dict(data)
        except (ModelError, TypeError) as e:
            raise ModelError(f"{cfg_file}: {e}") from e
        try:
            state = load_safetensors(weights_file.read_bytes())
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(
                f"{weights_file} is truncated or not a safetensors file ({e}): re-save or "
                "re-download the model"
            ) from e
        model = cls(config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ModelError(
                f"{weights_file} does not match {cfg_file}: missing tensors "
                f"{', '.join(missing[:5]) or 'none'}; unexpected tensors "
                f"{', '.join(extra[:5]) or 'none'}"
            )
        for k, v in expected.items():
            if state[k].shape != v.shape:
                raise ModelError(
                    f"{weights_file}: tensor {k} has shape {tuple(state[k].shape)} but "
                    f"{cfg_file} needs {tuple(v.shape)}: the weights belong to another config"
                )
        model.load_state_dict(state)
        return model.to(device).eval()
