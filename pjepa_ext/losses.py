"""P-JEPA's extra loss terms, plugged into the TD-MPC2 update as gated latent losses.

Each term receives the encoded latents of ``obs[0..H]`` (``(H+1, B, L)``)
already gated by the core (detached unless its gating row is true) and the
replay batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from pjepa_ext.aux_targets import AuxTarget
from pjepa_ext.decoder import ImageDecoder, decoder_loss
from tdmpc2 import layers
from tdmpc2 import math as tmath


def _flat_info(batch: TensorDict) -> dict[str, torch.Tensor]:
    info = batch.get("info", None)
    if info is None:
        return {}
    return {k: v.reshape(-1) for k, v in info.items()}


class AuxiliaryLoss(nn.Module):
    """The auxiliary head P(z) regressing p(o) (paper, Fig. 1): two-hot CE for scalars, MSE for vectors.

    The head is a 3-layer MLP on z (normed hidden layers of ``hidden`` units).
    """

    name = "auxiliary"

    def __init__(self, target: AuxTarget, latent_dim: int, hidden: int, weight: float, bins: tmath.Bins):
        super().__init__()
        if target.loss not in ("twohot", "mse"):
            raise ValueError(f"aux target '{target.name}' has loss '{target.loss}'; allowed: twohot, mse")
        self.target, self.weight, self.bins = target, float(weight), bins
        out = bins.num_bins if target.loss == "twohot" else target.dim
        self.head = layers.mlp(latent_dim, [hidden, hidden], out)
        self.head.apply(layers.init_weights)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Return the head's prediction of p(o) from latents ``(N, L)``: ``(N, dim)`` scalars or vectors."""
        out = self.head(z)
        return tmath.two_hot_inv(out, self.bins) if self.target.loss == "twohot" else out

    def forward(self, z: torch.Tensor, batch: TensorDict) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(loss, {})`` of the head on latents ``(T, B, L)`` against p(obs)."""
        obs = batch["obs"].reshape(-1, *batch["obs"].shape[2:])
        with torch.no_grad():
            target = self.target(obs, _flat_info(batch))
        out = self.head(z.reshape(-1, z.shape[-1]))
        if self.target.loss == "twohot":
            loss = tmath.soft_ce(out, target, self.bins).mean()
        else:
            loss = F.mse_loss(out, target)
        return loss, {}


class DecoderLoss(nn.Module):
    """The decoder probe: reconstructs o_t from z_t (MSE on pixels in [-1, 1]); gated off the encoder."""

    name = "decoder"

    def __init__(self, latent_dim: int, image_size: int, channels: int, weight: float, max_batch: int | None = None):
        super().__init__()
        self.decoder = ImageDecoder(latent_dim, image_size, channels=channels)
        self.weight = float(weight)
        self.max_batch = max_batch

    def forward(self, z: torch.Tensor, batch: TensorDict) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(MSE of the reconstruction of obs[0], {})`` on the first ``max_batch`` samples.

        The probe only has to read what the latents hold; a slice of the batch
        is enough and keeps its transposed convolutions cheap on a CPU.
        """
        n = self.max_batch or z.shape[1]
        return decoder_loss(self.decoder, z[0, :n], batch["obs"][0, :n]), {}
