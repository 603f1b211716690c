"""The TD-MPC2 world model: encoder, latent dynamics, reward, termination, policy prior, Q ensemble."""
from __future__ import annotations

import copy

import torch
from torch import nn

from tdmpc2 import layers
from tdmpc2 import math as tmath


class WorldModel(nn.Module):
    """TD-MPC2's implicit world model.

    ``cfg`` is the resolved run config (see ``tdmpc2.config``). ``encoder``
    replaces the built-in one (state MLP or TD-MPC2 conv net) when given; it
    must map an observation batch to ``(B, latent_dim)``. When ``cfg.simnorm``
    is true the encoder and dynamics outputs are SimNorm-ed, as in TD-MPC2.
    """

    def __init__(self, cfg, encoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.bins = tmath.Bins(cfg.num_bins, cfg.vmin, cfg.vmax)
        latent, act_dim, hid = cfg.latent_dim, cfg.action_dim, cfg.mlp_dim
        simnorm = (lambda: layers.SimNorm(cfg.simnorm_dim)) if cfg.simnorm else (lambda: None)

        # The state MLP normalises its own output (Linear -> LayerNorm -> SimNorm); pixel and
        # external encoders are followed by SimNorm alone, as TD-MPC2's conv encoder is.
        state_encoder = encoder is None and cfg.obs_type == "state"
        self._encoder = encoder if encoder is not None else self._default_encoder(cfg, simnorm())
        latent_norm = None if state_encoder else simnorm()
        self._latent_norm = latent_norm if latent_norm is not None else nn.Identity()
        self._dynamics = layers.mlp(latent + act_dim, [hid] * cfg.dynamics_layers, latent, out_act=simnorm())
        self._reward = layers.mlp(latent + act_dim, [hid, hid], cfg.num_bins)
        self._termination = layers.mlp(latent, [hid, hid], 1) if cfg.episodic else None
        self._pi = layers.mlp(latent, [hid, hid], 2 * act_dim)
        self._Qs = layers.EnsembleMLP(cfg.num_q, latent + act_dim, [hid, hid], cfg.num_bins, dropout=cfg.dropout)

        modules = [self._dynamics, self._reward, self._pi, self._Qs]
        if self._termination is not None:
            modules.append(self._termination)
        if encoder is None:
            modules.append(self._encoder)
        for m in modules:
            m.apply(layers.init_weights)
        layers.zero_last_layer(self._reward)
        layers.zero_last_layer(self._Qs)

        self._target_Qs = copy.deepcopy(self._Qs).requires_grad_(False)
        self._target_Qs.train(False)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def train(self, mode: bool = True) -> "WorldModel":
        """Set training mode; the target Qs always stay in evaluation mode (no dropout in TD targets)."""
        super().train(mode)
        self._target_Qs.train(False)
        return self

    @staticmethod
    def _default_encoder(cfg, out_act: nn.Module | None) -> nn.Module:
        if cfg.obs_type == "state":
            return layers.mlp(cfg.obs_shape[0], [cfg.enc_dim] * max(cfg.num_enc_layers - 1, 1), cfg.latent_dim, out_act=out_act)
        if cfg.obs_type == "rgb":
            return layers.ConvEncoder(cfg.obs_shape, cfg.num_channels, cfg.latent_dim, cfg.shift_pad, cfg.conv_padding)
        raise ValueError(f"unknown obs_type '{cfg.obs_type}'; allowed values: state, rgb")

    # -- parameter groups ---------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """Return the observation encoder (without the latent normalisation, which has no parameters)."""
        return self._encoder

    def head_parameters(self):
        """Return the parameters trained by the model optimizer other than the encoder's."""
        heads = [self._dynamics, self._reward, self._Qs]
        if self._termination is not None:
            heads.append(self._termination)
        return [p for m in heads for p in m.parameters()]

    def policy_parameters(self):
        """Return the policy prior's parameters (own optimizer)."""
        return list(self._pi.parameters())

    # -- forward pieces -----------------------------------------------------
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Return latents ``(..., latent_dim)`` of observations with leading batch dims ``...``."""
        lead = obs.shape[: obs.dim() - len(self.cfg.obs_shape)]
        z = self._encoder(obs.reshape(-1, *obs.shape[len(lead):]))
        return self._latent_norm(z).reshape(*lead, -1)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Return the predicted next latent d(z, a)."""
        return self._dynamics((z, a))

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Return reward logits ``(..., num_bins)`` of R(z, a)."""
        return self._reward((z, a))

    def termination(self, z: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Return the termination probability (or logit) of latent ``z``; zeros for non-episodic tasks."""
        if self._termination is None:
            return torch.zeros(*z.shape[:-1], 1, device=z.device)
        out = self._termination(z)
        return out if logits else torch.sigmoid(out)

    def pi(self, z: torch.Tensor):
        """Return ``(action, info)``: a squashed-Gaussian sample of the policy prior and its statistics.

        ``info`` holds ``mean`` (squashed), ``log_std``, ``entropy`` (-log prob
        of the sample) and ``scaled_entropy``, the policy objective's entropy
        term as the public TD-MPC2 computes it (see :func:`tdmpc2.math.policy_sample`).
        """
        return tmath.policy_sample(self._pi(z), self.log_std_min, self.log_std_max)

    def Q(self, z: torch.Tensor, a: torch.Tensor, return_type: str = "min", target: bool = False, detach: bool = False) -> torch.Tensor:
        """Return Q-values of ``(z, a)``.

        ``all``: logits of every member, ``(num_q, ..., num_bins)``. ``min`` /
        ``avg``: two randomly drawn members (one if ``num_q`` is 1) turned into
        scalars, then their minimum / mean, shape ``(..., 1)``. ``target`` uses
        the Polyak-averaged copy; ``detach`` the online weights without gradient.
        """
        if return_type not in ("min", "avg", "all"):
            raise ValueError(f"unknown return_type '{return_type}'; allowed values: min, avg, all")
        lead = torch.broadcast_shapes(z.shape[:-1], a.shape[:-1])
        za = (z.expand(*lead, -1).reshape(-1, z.shape[-1]), a.expand(*lead, -1).reshape(-1, a.shape[-1]))
        net = self._target_Qs if target else self._Qs
        if return_type == "all":
            return net(za, detach=detach).reshape(self.cfg.num_q, *lead, -1)
        # With two members or fewer, "two drawn at random" is all of them, and min/mean ignore the order.
        members = None if self.cfg.num_q <= 2 else torch.randperm(self.cfg.num_q, device=z.device)[:2]
        q = tmath.two_hot_inv(net(za, members=members, detach=detach), self.bins)
        q = q.min(0).values if return_type == "min" else q.mean(0)
        return q.reshape(*lead, 1)

    @torch.no_grad()
    def soft_update_target_Q(self, tau: float) -> None:
        """Move every target-Q parameter by ``tau`` toward its online value."""
        target = list(self._target_Qs.parameters())
        online = [p.detach() for p in self._Qs.parameters()]
        torch._foreach_lerp_(target, online, tau)
