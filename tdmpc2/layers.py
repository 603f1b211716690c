"""Building blocks of the TD-MPC2 world model.

Every MLP is a stack of ``Linear -> LayerNorm -> Mish`` blocks ("normed
linear") with a plain ``Linear`` last layer. The Q ensemble stores its members'
weights stacked, so all members run in one batched matrix product.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax inside consecutive groups of ``dim`` features."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.reshape(*shape[:-1], -1, self.dim), dim=-1).reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NormedLinear(nn.Linear):
    """``Linear -> (Dropout) -> LayerNorm -> activation`` (Mish unless given)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, act: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = nn.Mish() if act is None else act
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, out_act: nn.Module | None = None, dropout: float = 0.0) -> nn.Sequential:
    """Return an MLP of normed-linear hidden layers and an output layer.

    The output layer is a plain ``Linear``, or, when ``out_act`` is given, a
    normed linear ending in ``out_act`` (``Linear -> LayerNorm -> SimNorm``
    for TD-MPC2's encoder and dynamics).
    """
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = [
        NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0) for i in range(len(hidden))
    ]
    layers.append(nn.Linear(dims[-1], out_dim) if out_act is None else NormedLinear(dims[-1], out_dim, act=out_act))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied in one batched product: ``(E, B, in) -> (E, B, out)``."""

    def __init__(self, num_members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        e, i, o = self.weight.shape
        return f"members={e}, in_features={i}, out_features={o}"


class EnsembleMLP(nn.Module):
    """``E`` MLPs of identical shape with stacked weights (the vectorised Q ensemble).

    Layer ``i`` is ``EnsembleLinear -> (Dropout on the first) -> LayerNorm ->
    Mish``; the last layer is a plain ``EnsembleLinear``. ``forward(x)`` takes
    ``(B, in)`` (shared by all members) or ``(E, B, in)`` and returns
    ``(E, B, out)``.
    """

    def __init__(self, num_members: int, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_members = num_members
        dims = [in_dim, *hidden, out_dim]
        self.linears = nn.ModuleList(EnsembleLinear(num_members, dims[i], dims[i + 1]) for i in range(len(dims) - 1))
        # LayerNorm affine parameters per member, shaped to broadcast over (E, B, H).
        self.ln_weight = nn.ParameterList(nn.Parameter(torch.ones(num_members, 1, h)) for h in hidden)
        self.ln_bias = nn.ParameterList(nn.Parameter(torch.zeros(num_members, 1, h)) for h in hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        """Return the outputs ``(E', B, out)`` of all members, or of the ``members`` given (an index tensor).

        ``detach=True`` uses the same weights without recording gradient for them.
        """
        def param(p: torch.Tensor) -> torch.Tensor:
            p = p.detach() if detach else p
            return p if members is None else p[members]

        n = self.num_members if members is None else len(members)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(n, *x.shape)
        last = len(self.linears) - 1
        for i, lin in enumerate(self.linears):
            x = torch.baddbmm(param(lin.bias), x, param(lin.weight))
            if i == last:
                break
            if i == 0 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
            x = F.layer_norm(x, x.shape[-1:]) * param(self.ln_weight[i]) + param(self.ln_bias[i])
            x = F.mish(x)
        return x


class ShiftAug(nn.Module):
    """Random-shift augmentation: replicate-pad by ``pad`` pixels and crop back at a random offset per image."""

    def __init__(self, pad: int = 3):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pad == 0:
            return x
        x = x.float()
        n, _, h, w = x.shape
        if h != w:
            raise ValueError(f"ShiftAug expects square images, got {h}x{w}")
        padded = F.pad(x, (self.pad,) * 4, mode="replicate")
        eps = 1.0 / (h + 2 * self.pad)
        arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * self.pad, device=x.device)[:h]
        arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
        shift = torch.randint(0, 2 * self.pad + 1, size=(n, 1, 1, 2), device=x.device, dtype=x.dtype)
        shift *= 2.0 / (h + 2 * self.pad)
        return F.grid_sample(padded, base_grid + shift, padding_mode="zeros", align_corners=False)


class PixelPreprocess(nn.Module):
    """Map pixels in [0, 255] (uint8 or float) to [-0.5, 0.5]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div(255.0).sub(0.5)


class ConvEncoder(nn.Module):
    """TD-MPC2's pixel encoder: four ReLU convolutions (7x7 s2, 5x5 s2, 3x3 s2, 3x3 s1), flattened.

    With ``padding=True`` the convolutions keep ``ceil(S / stride)`` pixels,
    so small renders (32x32) keep a spatial map. If the flattened size differs
    from ``latent_dim`` a linear projection maps it there (the public code
    instead crashes on the mismatch).
    """

    def __init__(self, obs_shape: Sequence[int], num_channels: int, latent_dim: int, shift_pad: int = 3, padding: bool = False):
        super().__init__()
        c, h, w = obs_shape
        specs = [(7, 2), (5, 2), (3, 2), (3, 1)]
        convs: list[nn.Module] = []
        in_ch = c
        for i, (k, s) in enumerate(specs):
            convs.append(nn.Conv2d(in_ch, num_channels, k, stride=s, padding=k // 2 if padding else 0))
            if i < len(specs) - 1:
                convs.append(nn.ReLU())
            in_ch = num_channels
        self.aug = ShiftAug(shift_pad)
        self.pre = PixelPreprocess()
        self.convs = nn.Sequential(*convs)
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).numel()
        if flat == 0:
            raise ValueError(f"ConvEncoder: a {h}x{w} image leaves no pixels after the convolutions; use conv_padding=true")
        self.proj = nn.Linear(flat, latent_dim) if flat != latent_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(self.pre(self.aug(x))).flatten(1))


def init_weights(module: nn.Module) -> None:
    """TD-MPC2 initialisation: truncated-normal(0.02) weights and zero biases for linear layers."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, EnsembleLinear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def zero_last_layer(module: nn.Module) -> None:
    """Zero the weights of the last (ensemble) linear layer of ``module`` (reward head and Q start at 0)."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, EnsembleLinear))][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)

