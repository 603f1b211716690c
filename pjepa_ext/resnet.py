"""The P-JEPA deep ResNet encoder (paper, Appendix D).

A ResNet-style CNN without normalisation layers and without conv biases:

    pixels in [0, 255] -> x / 255 - 0.5
    stem: conv 7x7 stride 2 (C channels) -> ReLU -> max-pool 3x3 stride 2
    four stages of ``blocks_per_stage`` basic blocks, widths C, 2C, 4C, 8C,
    strides 1, 2, 2, 2 (a 1x1 stride-2 projection on the shortcut where the
    shape changes)
    global average pool -> Linear(8C -> latent_dim)

The paper's preset (C=32, 8 blocks per stage, latent 256) has 69 weight
layers and 12,260,192 parameters, the figures printed in the paper.
"""
from __future__ import annotations

import torch
from torch import nn

from tdmpc2.layers import PixelPreprocess

#: Channel multipliers and strides of the four stages.
STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)
STAGE_STRIDES = (1, 2, 2, 2)

#: The pools the stem may end in (``stem_pool``).
STEM_POOLS = ("max", "avg", "none")

#: How the convolutions' weights start (``conv_init``): PyTorch's default
#: (kaiming-uniform with a=sqrt(5), which shrinks the variance ~3x per layer) or
#: He-normal with fan_out and the ReLU gain, torchvision's ResNet initialisation.
CONV_INITS = ("torch", "kaiming")

#: The paper's encoder: ResNetEncoder(**PAPER_RESNET).
PAPER_RESNET = dict(width=32, blocks_per_stage=8, latent_dim=256)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection, ReLU after each
    of the first conv and the sum (He et al., 2016, without batch norm)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(conv2(relu(conv1(x))) + shortcut(x))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.relu(self.conv1(x))) + shortcut)


class ResNetEncoder(nn.Module):
    """Deep residual image encoder: (B, in_channels, S, S) pixels -> (B, latent_dim).

    Input pixels are in [0, 255], as uint8 (what the replay buffer stores)
    or float; they are always preprocessed as ``x / 255 - 0.5``.

    Args:
        in_channels: image channels (3 for RGB).
        width: channels C of the first stage; stages have C, 2C, 4C, 8C.
        blocks_per_stage: basic blocks in each of the four stages.
        latent_dim: size of the output latent.
        stem_kernel: side of the stem convolution's square kernel (paper: 7);
            it is padded by ``(stem_kernel - 1) // 2``.
        stem_stride: stride of the stem convolution (paper: 2).
        stem_pool: the 3x3 stride-2 pool the stem ends in: ``"max"`` (the
            paper's), ``"avg"`` or ``"none"``; True and False mean ``"max"``
            and ``"none"``. ``stem_stride=1, stem_pool=False`` keeps more
            spatial resolution for small (e.g. 32x32) inputs.
        conv_init: how every convolution's weights start, one of ``CONV_INITS``:
            ``"torch"`` (PyTorch's default) or ``"kaiming"`` (He-normal,
            fan_out, ReLU gain, as torchvision's ResNet).
        zero_init_residual: start the second conv of every block at zero,
            so that each block is the identity (or its projection) at
            initialisation. Without normalisation the residual sum grows
            with depth; see :func:`init_statistics` for the measured effect.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        blocks_per_stage: int = 8,
        latent_dim: int = 256,
        stem_stride: int = 2,
        stem_pool: bool | str = True,
        stem_kernel: int = 7,
        conv_init: str = "torch",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        for name, value in dict(in_channels=in_channels, width=width,
                                blocks_per_stage=blocks_per_stage, latent_dim=latent_dim,
                                stem_stride=stem_stride, stem_kernel=stem_kernel).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ResNetEncoder: {name} must be a positive int, got {value!r}")
        if conv_init not in CONV_INITS:
            raise ValueError(f"ResNetEncoder: conv_init must be one of {', '.join(CONV_INITS)}, got {conv_init!r}")
        self.pre = PixelPreprocess()
        stem = [nn.Conv2d(in_channels, width, stem_kernel, stem_stride, (stem_kernel - 1) // 2, bias=False),
                nn.ReLU()]
        pool = {True: "max", False: "none"}[stem_pool] if isinstance(stem_pool, bool) else stem_pool
        if pool not in STEM_POOLS:
            raise ValueError(f"ResNetEncoder: stem_pool must be one of {', '.join(STEM_POOLS)} (or true/false), "
                             f"got {stem_pool!r}")
        if pool == "max":
            stem.append(nn.MaxPool2d(3, 2, 1))
        elif pool == "avg":
            # count_include_pad=False: a border cell averages its in-image neighbours only, as the max-pool sees them.
            stem.append(nn.AvgPool2d(3, 2, 1, count_include_pad=False))
        self.stem = nn.Sequential(*stem)
        stages, channels = [], width
        for multiplier, stride in zip(STAGE_WIDTH_MULTIPLIERS, STAGE_STRIDES):
            out_channels = width * multiplier
            blocks = [_BasicBlock(channels, out_channels, stride)]
            blocks += [_BasicBlock(out_channels, out_channels, 1)
                       for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(channels, latent_dim)
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        if conv_init == "kaiming":
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for block in self.blocks():
                nn.init.zeros_(block.conv2.weight)

    def blocks(self) -> list[_BasicBlock]:
        """Return the residual blocks in order, stage by stage."""
        return [block for stage in self.stages for block in stage]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the latents, float tensor of shape (B, latent_dim)."""
        if obs.ndim != 4 or obs.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNetEncoder expects images of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(obs.shape)}"
            )
        x = self.stages(self.stem(self.pre(obs)))
        return self.proj(self.avgpool(x).flatten(1))


def parameter_count(module: nn.Module) -> int:
    """Return the number of scalar parameters in ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_layers(module: nn.Module) -> int:
    """Return the number of weight layers (Conv2d, ConvTranspose2d, Linear) in ``module``."""
    layer_types = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    return sum(isinstance(m, layer_types) for m in module.modules())


@torch.no_grad()
def init_statistics(encoder: ResNetEncoder, images: torch.Tensor) -> dict[str, float]:
    """Return activation statistics of ``encoder`` on ``images``.

    Keys: ``input_std`` (preprocessed pixels), ``pooled_std`` (features
    after global pooling), ``latent_std`` (over all entries),
    ``latent_norm`` (mean L2 norm of one latent vector) and
    ``latent_spread`` (mean L2 distance of a latent from the batch mean:
    how much the latent depends on the image, as opposed to the bias).
    """
    x = encoder.pre(images)
    input_std = x.std().item()
    pooled = encoder.avgpool(encoder.stages(encoder.stem(x))).flatten(1)
    z = encoder.proj(pooled)
    return dict(
        input_std=input_std,
        pooled_std=pooled.std().item(),
        latent_std=z.std().item(),
        latent_norm=z.norm(dim=1).mean().item(),
        latent_spread=(z - z.mean(0)).norm(dim=1).mean().item(),
    )
