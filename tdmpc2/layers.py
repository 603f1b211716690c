"""Building blocks of the TD-MPC2 world model.

Every MLP is a stack of ``Linear -> LayerNorm -> Mish`` blocks ("normed
linear") with a plain ``Linear`` last layer. The Q ensemble stores its members'
weights stacked, so all members run in one batched matrix product.

A first layer may be given its input as a tuple of parts (``(z, a)``) instead
of their concatenation: it multiplies each part by its slice of the weight,
so no concatenated copy is built, no gradient is computed for parts that do
not need one, and a part that is one row broadcast over the batch (MPPI's
start latent) is multiplied once.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from tdmpc2 import kernels

#: A layer input: one tensor, or a tuple of parts standing for their concatenation on the last dim.
Input = Union[torch.Tensor, Sequence[torch.Tensor]]


def _broadcast_row(x: torch.Tensor) -> torch.Tensor:
    """Return ``x[..., :1, :]`` if every row of ``x`` is the same broadcast row (stride 0), else ``x``."""
    if x.dim() >= 2 and x.shape[-2] > 1 and x.stride(-2) == 0:
        return x[..., :1, :]
    return x


def _lead_shape(parts: Sequence[torch.Tensor]) -> torch.Size:
    return torch.broadcast_shapes(*(p.shape[:-1] for p in parts))


def _check_width(parts: Sequence[torch.Tensor], expected: int, what: str) -> None:
    width = sum(p.shape[-1] for p in parts)
    if width != expected:
        raise ValueError(f"the input parts have {width} features in all; the {what} takes {expected}")


def linear_of_parts(parts: Input, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Return ``F.linear(torch.cat(parts, -1), weight, bias)`` computed part by part (see module docstring)."""
    if isinstance(parts, torch.Tensor):
        return F.linear(parts, weight, bias)
    _check_width(parts, weight.shape[1], "layer")
    start, out = 0, None
    for x in parts:
        w = weight[:, start:start + x.shape[-1]]
        start += x.shape[-1]
        x = _broadcast_row(x)
        if out is None:
            out = F.linear(x, w, bias)
        elif x.shape[-1] == 1:
            out = torch.addcmul(out, x, w.t())  # a rank-one update: cheaper than a product with k=1
        else:
            out = out + F.linear(x, w)
    lead = _lead_shape(parts)
    return out if out.shape[:-1] == lead else out.expand(*lead, out.shape[-1])


class Mish(nn.Module):
    """Mish activation ``x * tanh(softplus(x))``; ``compiled_kernels`` switches to the compiled kernels."""

    def __init__(self):
        super().__init__()
        self.compiled_kernels = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.mish(x, self.compiled_kernels)


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax inside consecutive groups of ``dim`` features.

    ``compiled_kernels`` lets a :class:`NormedLinear` ending in SimNorm fuse it with its LayerNorm.
    """

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim
        self.compiled_kernels = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.simnorm(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NormedLinear(nn.Linear):
    """``Linear -> (Dropout) -> LayerNorm -> activation`` (Mish unless given).

    ``forward`` also takes a tuple of input parts (see :func:`linear_of_parts`).
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, act: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = Mish() if act is None else act
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: Input) -> torch.Tensor:
        x = linear_of_parts(x, self.weight, self.bias)
        if self.dropout is not None:
            x = kernels.dropout(x, self.dropout.p, self.training)
        if isinstance(self.act, Mish):
            return kernels.norm_mish(x, self.ln.weight, self.ln.bias, self.ln.eps, self.act.compiled_kernels)
        if isinstance(self.act, SimNorm):
            return kernels.norm_simnorm(x, self.ln.weight, self.ln.bias, self.ln.eps, self.act.dim, self.act.compiled_kernels)
        return self.act(self.ln(x))


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, out_act: nn.Module | None = None, dropout: float = 0.0) -> nn.Sequential:
    """Return an MLP of normed-linear hidden layers and an output layer.

    The output layer is a plain ``Linear``, or, when ``out_act`` is given, a
    normed linear ending in ``out_act`` (``Linear -> LayerNorm -> SimNorm``
    for TD-MPC2's encoder and dynamics). With hidden layers, the MLP accepts
    a tuple of input parts in place of their concatenation.
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

    def forward(self, x: Input) -> torch.Tensor:
        return _ensemble_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        e, i, o = self.weight.shape
        return f"members={e}, in_features={i}, out_features={o}"


def _ensemble_linear(parts: Input, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Return ``(E, B, out)``: each member's ``weight``/``bias`` applied to its input.

    An input of shape ``(B, in)`` is shared by all members; ``parts`` may be a
    tuple standing for the concatenation of its items on the last dim.
    """
    n = weight.shape[0]
    parts = (parts,) if isinstance(parts, torch.Tensor) else tuple(parts)
    _check_width(parts, weight.shape[1], "ensemble")
    start, out = 0, None
    for x in parts:
        w = weight[:, start:start + x.shape[-1]]
        start += x.shape[-1]
        if out is not None and x.shape[-1] == 1:
            out = torch.addcmul(out, x, w)  # rank-one update, broadcast over the members
            continue
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(n, *x.shape)
        if out is None:
            # Compiled, ``bmm + bias`` lets the bias join the next fused kernel; baddbmm would first
            # copy the broadcast bias into a full-size buffer.
            out = torch.bmm(x, w) + bias if torch.compiler.is_compiling() else torch.baddbmm(bias, x, w)
        else:
            out = torch.baddbmm(out, x, w)
    return out


class EnsembleMLP(nn.Module):
    """``E`` MLPs of identical shape with stacked weights (the vectorised Q ensemble).

    Layer ``i`` is ``EnsembleLinear -> (Dropout on the first) -> LayerNorm ->
    Mish``; the last layer is a plain ``EnsembleLinear``. ``forward(x)`` takes
    ``(B, in)`` (shared by all members), ``(E, B, in)``, or a tuple of parts
    standing for their concatenation, and returns ``(E, B, out)``.
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
        self.compiled_kernels = False

    def forward(self, x: Input, members: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        """Return the outputs ``(E', B, out)`` of all members, or of the ``members`` given (an index tensor).

        ``detach=True`` uses the same weights without recording gradient for them.
        """
        def param(p: torch.Tensor) -> torch.Tensor:
            p = p.detach() if detach else p
            # index_select, not p[members]: inductor mis-handles randperm()[:k] followed by aten.index.
            return p if members is None else p.index_select(0, members)

        last = len(self.linears) - 1
        for i, lin in enumerate(self.linears):
            x = _ensemble_linear(x, param(lin.weight), param(lin.bias))
            if i == last:
                break
            if i == 0 and self.dropout and self.training:
                x = kernels.dropout(x, self.dropout)
            x = kernels.norm_mish(x, param(self.ln_weight[i]), param(self.ln_bias[i]), compiled=self.compiled_kernels)
        return x


def use_compiled_kernels(module: nn.Module, enabled: bool = True) -> int:
    """Switch every layer under ``module`` to (or from) the compiled elementwise kernels; return how many switched."""
    count = 0
    for m in module.modules():
        if hasattr(m, "compiled_kernels"):
            m.compiled_kernels = enabled
            count += 1
    return count


class ShiftAug(nn.Module):
    """Random-shift augmentation: replicate-pad by ``pad`` pixels and crop back at a random offset per image.

    The offsets are whole pixels, so the crop is gathered directly (on the
    input dtype, uint8 pixels included) rather than resampled; the output is float.
    """

    def __init__(self, pad: int = 3):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pad == 0:
            return x
        n, c, h, w = x.shape
        if h != w:
            raise ValueError(f"ShiftAug expects square images, got {h}x{w}")
        # (x, y) offsets in [0, 2 * pad], drawn exactly as TD-MPC2 draws its grid shift.
        offset = torch.randint(0, 2 * self.pad + 1, size=(n, 1, 1, 2), device=x.device, dtype=torch.float32)
        offset = offset.view(n, 2).long()
        size = h + 2 * self.pad
        padded = F.pad(x, (self.pad,) * 4, mode="replicate").reshape(n, c, size * size)
        rows = offset[:, 1:] + torch.arange(h, device=x.device)
        cols = offset[:, :1] + torch.arange(w, device=x.device)
        index = (rows[:, :, None] * size + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.gather(2, index).view(n, c, h, w).float()


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

