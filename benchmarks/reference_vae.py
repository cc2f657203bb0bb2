"""The reference training model: PyTorch-VAE's "VanillaVAE" shape, written from its description.

Encoder: five Conv2d(3x3, stride 2, padding 1) + BatchNorm + LeakyReLU blocks with widths
(32, 64, 128, 256, 512), flatten, Linear mu and Linear logvar to a 128-d latent. Decoder:
Linear(128 -> 512*2*2), ConvTranspose2d(3x3, stride 2, padding 1, output_padding 1) + BatchNorm +
LeakyReLU blocks 512 -> 256 -> 128 -> 64 -> 32, a final ConvTranspose2d 32 -> 32 of the same kind
+ BatchNorm + LeakyReLU, Conv2d(32 -> 3, 3x3, padding 1), Tanh. Loss: MSE on [-1, 1] images plus
KL weight 0.00025 times the batch mean of the per-sample KL (summed over latent dims). Trained
with Adam, lr 0.005 decayed by 0.95 per epoch, batch 64, 64 x 64 images.

It takes and returns images in [0, 1] like ``ConceptVAE`` (the [-1, 1] mapping stays inside) and
its ``loss(x)`` returns the same keys, so one benchmark loop can drive both models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LR = 0.005
BATCH_SIZE = 64
IMAGE_SIZE = 64
KLD_WEIGHT = 0.00025
SCHEDULER_GAMMA = 0.95  # ExponentialLR, stepped once per epoch


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU()
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(),
    )


class ReferenceVAE(nn.Module):
    """VanillaVAE at 64 x 64: 2 x 2 x 512 bottleneck, latent 128."""

    def __init__(self, latent_dim: int = 128, hidden: tuple[int, ...] = (32, 64, 128, 256, 512)):
        super().__init__()
        self.latent_dim = latent_dim
        self.hidden = hidden
        widths = (3, *hidden)
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.fc_mu = nn.Linear(hidden[-1] * 4, latent_dim)
        self.fc_var = nn.Linear(hidden[-1] * 4, latent_dim)
        self.decoder_input = nn.Linear(latent_dim, hidden[-1] * 4)
        rev = hidden[::-1]
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(rev[:-1], rev[1:])])
        self.final_layer = nn.Sequential(
            _up(rev[-1], rev[-1]), nn.Conv2d(rev[-1], 3, 3, padding=1), nn.Tanh()
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) in [0, 1] -> mu, logvar, each (B, D)."""
        h = self.encoder(x * 2 - 1).flatten(1)  # (B, 512*2*2)
        return self.fc_mu(h), self.fc_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> images (B, 3, 64, 64) in [0, 1]."""
        return (self._decode_tanh(z) + 1) / 2

    def _decode_tanh(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(z).view(-1, self.hidden[-1], 2, 2)
        return self.final_layer(self.decoder(h))  # (B, 3, 64, 64) in [-1, 1]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self._decode_tanh(z), mu, logvar

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The VanillaVAE objective; keys as ``ConceptVAE.loss``. ``mse`` is in [0, 1] units."""
        recon, mu, logvar = self(x, generator)
        recon_loss = F.mse_loss(recon, x * 2 - 1)  # per-pixel mean on [-1, 1] images
        kl_per_dim = -0.5 * (1 + logvar - mu**2 - logvar.exp())  # (B, D)
        kl = kl_per_dim.sum(1).mean()
        return {
            "loss": recon_loss + KLD_WEIGHT * kl,
            "recon": recon_loss.detach(),
            "kl": kl.detach(),
            "mse": recon_loss.detach() / 4,  # the same error on [0, 1] images
            "kl_per_dim": kl_per_dim.detach().mean(0),
        }

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: (B, 3, 64, 64) in [0, 1]."""
        return self.decode(self.encode(x)[0])


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """Adam with the reference config's learning rate."""
    return torch.optim.Adam(model.parameters(), lr=LR)
