"""The decoder probe: reconstructs the image from a latent (paper, Appendix D).

The probe shows what the encoder keeps: it is trained with MSE on images
scaled to [-1, 1], on latents the caller detaches (the gradient-gating table
decides; nothing here detaches; the agent clips a probe's gradient apart from
the model's), so it never shapes the encoder.

Its output layer is linear: the black background, ~97% of a frame, sits at
-1, which a tanh reaches only at -infinity, so a tanh output is driven into
saturation and its gradient vanishes (at 64x64 it did within ~2,000 updates,
gradient norm ~2e-7, leaving the all-black image). :func:`reconstruct` clamps
to the pixel range.

Architecture for an S x S image (S a power of two, at least 16):

    Linear(latent_dim -> C * 4 * 4) -> ReLU -> reshape (C, 4, 4)
    log2(S / 4) x [ConvTranspose2d(C, C, 4, stride 2, padding 1) -> ReLU]
    Conv2d(C, out_channels, 3, padding 1)

At S=64, latent 256, C=32 that is 6 weight layers and 198,115 parameters;
the paper reports a 6-layer decoder of 202,883 parameters without printing
it (2.3% apart).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Side of the feature map the linear layer produces.
SEED_SIZE = 4
MIN_IMAGE_SIZE = 16


def upsampling_stages(image_size: int) -> int:
    """Return how many 2x upsampling stages turn a 4x4 map into ``image_size``.

    Raises ValueError unless ``image_size`` is a power of two >= 16.
    """
    valid = (isinstance(image_size, int) and image_size >= MIN_IMAGE_SIZE
             and image_size & (image_size - 1) == 0)
    if not valid:
        raise ValueError(
            f"ImageDecoder: image_size must be a power of two >= {MIN_IMAGE_SIZE} "
            f"(e.g. 16, 32, 64), got {image_size!r}"
        )
    return (image_size // SEED_SIZE).bit_length() - 1


class ImageDecoder(nn.Module):
    """Transposed-conv decoder: latents (B, latent_dim) -> images (B, C_out, S, S), pixels on the [-1, 1] scale."""

    def __init__(self, latent_dim: int = 256, image_size: int = 64,
                 out_channels: int = 3, channels: int = 32):
        super().__init__()
        stages = upsampling_stages(image_size)
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.channels = channels
        self.fc = nn.Linear(latent_dim, channels * SEED_SIZE * SEED_SIZE)
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.ReLU()]
        layers.append(nn.Conv2d(channels, out_channels, 3, 1, 1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return reconstructed images on the [-1, 1] pixel scale (unbounded), shape (B, out_channels, S, S)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"ImageDecoder expects latents of shape (B, {self.latent_dim}), got {tuple(z.shape)}"
            )
        x = F.relu(self.fc(z)).view(-1, self.channels, SEED_SIZE, SEED_SIZE)
        return self.deconv(x)


def decoder_target(obs: torch.Tensor) -> torch.Tensor:
    """Return pixels in [0, 255] (uint8 or float) mapped to float32 in [-1, 1]."""
    return obs.float().div(127.5).sub(1.0)


def decoder_loss(decoder: ImageDecoder, z: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Return the scalar MSE between ``decoder(z)`` and ``decoder_target(obs)``.

    ``z`` is used as given: detach it first to keep the probe's gradient out
    of the encoder.
    """
    target = decoder_target(obs)
    recon = decoder(z)
    if recon.shape != target.shape:
        raise ValueError(
            f"decoder_loss: decoder output {tuple(recon.shape)} does not match "
            f"observations {tuple(target.shape)}"
        )
    return F.mse_loss(recon, target)


@torch.no_grad()
def reconstruct(decoder: ImageDecoder, z: torch.Tensor) -> torch.Tensor:
    """Return the decoder's images for ``z`` as uint8 in [0, 255], shape (B, C, S, S)."""
    recon = decoder(z)
    return recon.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
