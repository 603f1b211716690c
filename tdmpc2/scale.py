"""Running scale of Q-values, used to normalise the policy objective."""
from __future__ import annotations

import torch
from torch import nn


class RunningScale(nn.Module):
    """Polyak-averaged 5th-95th percentile range of Q-values (at least 1)."""

    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau
        self.register_buffer("value", torch.ones(()))
        self.register_buffer("percentiles", torch.tensor([5.0, 95.0]) / 100)

    @torch.no_grad()
    def update(self, q: torch.Tensor) -> None:
        """Move the scale by ``tau`` toward the percentile range of ``q`` (clamped at 1)."""
        lo, hi = torch.quantile(q.detach().float().flatten(), self.percentiles.to(q.device))
        self.value.lerp_((hi - lo).clamp(min=1.0), self.tau)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """Return ``q`` divided by the running scale."""
        return q / self.value
