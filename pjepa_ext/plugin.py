"""How P-JEPA plugs into the TD-MPC2 core: an encoder, extra loss terms and training hooks, all from config."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from pjepa_ext.aux_targets import make_aux_target
from pjepa_ext.losses import AuxiliaryLoss, DecoderLoss
from pjepa_ext.resnet import ResNetEncoder
from tdmpc2 import math as tmath
from tdmpc2.layers import ShiftAug

#: Rows the extension adds to the gating table.
EXTENSION_LOSSES = ("auxiliary", "decoder")


@dataclass
class Extension:
    """What the extension hands to the core: encoder (None: the core's own), loss terms, hooks."""

    encoder: nn.Module | None = None
    losses: list[nn.Module] = field(default_factory=list)
    hooks: list = field(default_factory=list)


def build_encoder(cfg) -> nn.Module | None:
    """Return the P-JEPA ResNet encoder when ``cfg.encoder == 'resnet'``, else None (core encoder)."""
    if cfg.encoder != "resnet":
        return None
    if cfg.obs_type != "rgb":
        raise ValueError(f"encoder=resnet needs pixel observations; task '{cfg.task}' gives '{cfg.obs_type}'")
    r = cfg.resnet
    resnet = ResNetEncoder(cfg.obs_shape[0], r.width, r.blocks_per_stage, cfg.latent_dim,
                           stem_stride=r.stem_stride, stem_pool=r.stem_pool, stem_kernel=r.stem_kernel,
                           conv_init=r.conv_init, zero_init_residual=r.zero_init_residual)
    # Stock TD-MPC2 augments pixels with random shifts; the P-JEPA variants set shift_pad=0.
    return nn.Sequential(ShiftAug(cfg.shift_pad), resnet) if cfg.shift_pad else resnet


def build_losses(cfg) -> list[nn.Module]:
    """Return the extension's loss terms for ``cfg``: the auxiliary head and the decoder probe, when enabled."""
    losses: list[nn.Module] = []
    target = make_aux_target(cfg.aux, cfg.obs_shape, cfg.aux_dim, cfg.seed)
    if target is not None:
        missing = [k for k in target.info_keys if k not in cfg.info_keys]
        if missing:
            raise ValueError(f"aux={cfg.aux} needs info {missing}, which task '{cfg.task}' does not report "
                             f"(it reports {list(cfg.info_keys)})")
        bins = tmath.Bins(cfg.num_bins, cfg.vmin, cfg.vmax)
        losses.append(AuxiliaryLoss(target, cfg.latent_dim, cfg.aux_hidden, cfg.aux_coef, bins))
    if cfg.decoder:
        if cfg.obs_type != "rgb":
            raise ValueError("decoder=true needs pixel observations")
        losses.append(DecoderLoss(cfg.latent_dim, cfg.obs_shape[-1], cfg.decoder_channels, cfg.decoder_coef,
                                  cfg.decoder_batch))
    return losses


def build_extension(cfg) -> Extension:
    """Return everything P-JEPA adds for the resolved config ``cfg``."""
    from pjepa_ext.analysis_hook import build_hooks  # analysis pulls in the counting renderer

    return Extension(encoder=build_encoder(cfg), losses=build_losses(cfg), hooks=build_hooks(cfg))


def build_agent(cfg):
    """Return ``(agent, extension)``: a TD-MPC2 agent with everything the resolved ``cfg`` asks the extension for."""
    from tdmpc2.agent import TDMPC2

    ext = build_extension(cfg)
    agent = TDMPC2(cfg, encoder=ext.encoder, extra_losses=ext.losses, extra_rows=EXTENSION_LOSSES)
    return agent, ext
