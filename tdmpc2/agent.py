"""The TD-MPC2 agent: model update (losses, optimisers) and MPPI planning in latent space."""
from __future__ import annotations

from typing import Iterable, Protocol

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from tdmpc2 import kernels, layers, native
from tdmpc2 import math as tmath
from tdmpc2.gating import GradientGating
from tdmpc2.precision import Precision
from tdmpc2.scale import RunningScale
from tdmpc2.world_model import WorldModel


class LatentLoss(Protocol):
    """An extra loss term on encoded latents, plugged in by an extension.

    ``name`` is its row in the gating table, ``weight`` its coefficient in the
    model loss. Called with the encoded latents of ``obs[0..H]`` (shape
    ``(H+1, B, latent_dim)``, already gated) and the batch; returns
    ``(loss, metrics)``. Its parameters join the model optimizer.
    """

    name: str
    weight: float

    def __call__(self, z: torch.Tensor, batch: TensorDict) -> tuple[torch.Tensor, dict[str, float]]: ...


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite."""


class NonFiniteWeightsError(FloatingPointError):
    """Raised instead of writing a checkpoint whose weights are not all finite."""


class TDMPC2:
    """TD-MPC2: a world model trained from replayed sub-trajectories, acting by MPPI planning.

    ``encoder`` replaces the world model's built-in encoder; ``extra_losses``
    are extension loss terms (see :class:`LatentLoss`); ``extra_rows`` names
    further gating rows an extension may set even when their term is inactive.
    Which loss reaches the encoder is decided by ``cfg.gating`` and
    ``cfg.consistency_target`` only. ``cfg.precision`` (``fp32`` or ``bf16``,
    see :mod:`tdmpc2.precision`) sets the precision of the forward passes: the
    model losses, the policy objective, the policy acting and MPPI.
    """

    def __init__(self, cfg, encoder: nn.Module | None = None, extra_losses: Iterable[nn.Module] = (),
                 extra_rows: Iterable[str] = ()):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.model = WorldModel(cfg, encoder).to(self.device)
        self.extra_losses = nn.ModuleList(extra_losses).to(self.device)
        self.gating = GradientGating.from_config(
            dict(cfg.gating), cfg.consistency_target, [t.name for t in self.extra_losses], extra_rows
        )
        # The fused Adam kernel updates each tensor in one pass (3x faster than the default loop on CPU).
        fused = self.device.type in ("cpu", "cuda")
        self.optim = torch.optim.Adam(
            [
                {"params": list(self.model.encoder.parameters()), "lr": cfg.lr * cfg.enc_lr_scale},
                {"params": self.model.head_parameters() + list(self.extra_losses.parameters())},
            ],
            lr=cfg.lr,
            fused=fused,
        )
        # A term gated off the encoder (a probe) trains only its own parameters. Each probe is clipped on its
        # own, so that its gradient cannot shrink the world model's update whenever the model's clip binds.
        probes = [t for t in self.extra_losses if not self.gating.reaches_encoder[t.name]]
        probe_ids = {id(p) for t in probes for p in t.parameters()}
        model_params = [p for g in self.optim.param_groups for p in g["params"] if id(p) not in probe_ids]
        self._clip_groups = [model_params] + [list(t.parameters()) for t in probes]
        self.pi_optim = torch.optim.Adam(self.model.policy_parameters(), lr=cfg.lr, eps=1e-5, fused=fused)
        self.scale = RunningScale(cfg.tau).to(self.device)
        self.discount = cfg.discount
        self.bins = self.model.bins
        self._rho = torch.tensor([cfg.rho**t for t in range(cfg.horizon + 1)], device=self.device)
        self._prev_mean = torch.zeros(cfg.horizon, cfg.action_dim, device=self.device)
        self.num_updates = 0
        self.precision = Precision(cfg.precision, self.device.type)
        for name in ("_losses", "_pi_terms", "_mppi", "_encode", "_policy_act"):
            setattr(self, name, self.precision.wrap(getattr(self, name)))

    # -- persistence --------------------------------------------------------
    def state_dict(self) -> dict:
        """Return everything needed to resume or evaluate: weights, optimisers, Q scale, update count, plan warm start."""
        return {
            "model": self.model.state_dict(),
            "extra_losses": self.extra_losses.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "num_updates": self.num_updates,
            "plan_mean": self._prev_mean.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the agent from :meth:`state_dict` output."""
        self.model.load_state_dict(state["model"])
        self.extra_losses.load_state_dict(state["extra_losses"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        self.scale.load_state_dict(state["scale"])
        self.num_updates = int(state["num_updates"])
        if "plan_mean" in state:  # absent from checkpoints written before it was saved
            self._prev_mean.copy_(state["plan_mean"])

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteWeightsError` naming the first parameter or buffer that holds NaN or infinity."""
        for prefix, module in (("model", self.model), ("extra_losses", self.extra_losses), ("scale", self.scale)):
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise NonFiniteWeightsError(f"non-finite values in {prefix}.{name} after {self.num_updates} updates; "
                                                f"no checkpoint is written from this model")

    def train(self, mode: bool = True) -> None:
        """Put the networks in training (dropout, augmentation on) or evaluation mode."""
        self.model.train(mode)
        self.extra_losses.train(mode)

    # -- acting -------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs, t0: bool = False, eval_mode: bool = False) -> torch.Tensor:
        """Return an action in [-1, 1] for one observation: MPPI plan, or the policy prior with ``mpc=false``."""
        self.train(False)
        obs = torch.as_tensor(obs, device=self.device).unsqueeze(0)
        if self.cfg.mpc:
            return self.plan(obs, t0=t0, eval_mode=eval_mode).cpu()
        return self._policy_act(obs, eval_mode)[0].cpu()

    def _encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the latents of observations (in the agent's precision: this method is wrapped at init)."""
        return self.model.encode(obs)

    def _policy_act(self, obs: torch.Tensor, eval_mode: bool) -> torch.Tensor:
        """Return the policy prior's actions ``(B, A)`` for observations: its mean in evaluation, else a sample."""
        action, info = self.model.pi(self.model.encode(obs))
        return info["mean"] if eval_mode else action

    def _rollout_returns(self, z: torch.Tensor, actions: torch.Tensor):
        """Return ``(returns, weight, z_H)`` of action sequences ``(H, N, A)`` from latents ``z``.

        ``returns`` ``(N, 1)`` sums the discounted predicted rewards, ``weight``
        ``(N, 1)`` is the discount (times survival, for episodic tasks) that the
        value at the last latents ``z_H`` gets. Called by :meth:`_mppi`, without gradient.
        """
        returns = torch.zeros(z.shape[0], 1, device=z.device)
        discount = 1.0
        alive = torch.ones_like(returns)
        for t in range(self.cfg.horizon):
            reward = tmath.two_hot_inv(self.model.reward(z, actions[t]), self.bins)
            z = self.model.next(z, actions[t])
            returns = returns + discount * alive * reward
            discount *= self.discount
            if self.cfg.episodic:
                alive = alive * (self.model.termination(z) <= 0.5).float()
        return returns, discount * alive, z

    def _estimate_value(self, z: torch.Tensor, actions: torch.Tensor, known=None) -> torch.Tensor:
        """Return the values ``(K + N, 1)`` of action sequences ``(H, N, A)`` from latents ``z``.

        ``known`` is the :meth:`_rollout_returns` output of ``K`` sequences
        rolled out before; their values come first. The value of a sequence is
        its discounted rewards plus the discounted Q of a policy action at its
        end. Called by :meth:`_mppi`, without gradient.
        """
        returns, weight, z = self._rollout_returns(z, actions)
        if known is not None:
            returns, weight, z = (torch.cat(pair) for pair in zip(known, (returns, weight, z)))
        action, _ = self.model.pi(z)
        return returns + weight * self.model.Q(z, action, "avg")

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, t0: bool = False, eval_mode: bool = False) -> torch.Tensor:
        """Return the first action ``(A,)`` of the MPPI plan for a batch of one observation."""
        H, A = self.cfg.horizon, self.cfg.action_dim
        z = self._encode(obs)
        mean = torch.zeros(H, A, device=self.device)
        if not t0:
            mean[:-1] = self._prev_mean[1:]  # warm start: the previous plan, shifted by one step
        mean, std, chosen = self._mppi(z, mean)
        self._prev_mean.copy_(mean)
        action = chosen[0]
        if not eval_mode:
            action = action + std[0] * torch.randn(A, device=self.device)
        return action.clamp(-1, 1)

    def _mppi(self, z: torch.Tensor, mean: torch.Tensor):
        """Return ``(mean, std, chosen)``, each ``(H, A)``: the MPPI iterations from latent ``z`` ``(1, L)``.

        ``mean`` is the initial mean of the sampling distribution; ``chosen``
        is one elite sequence drawn by its score.
        """
        cfg = self.cfg
        H, N, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.action_dim
        # A `with` block, not the no_grad decorator: compiled, the decorator's shared wrapper frame
        # would pool the compile caches of every decorated method.
        with torch.no_grad():
            known, policy_actions = None, torch.empty(H, 0, A, device=z.device)
            if P > 0:
                zp, steps = z.expand(P, -1), []
                for t in range(H):
                    steps.append(self.model.pi(zp)[0])
                    if t < H - 1:
                        zp = self.model.next(zp, steps[-1])
                policy_actions = torch.stack(steps)
                # The policy trajectories stay the same in every iteration: their rollout is computed once.
                known = self._rollout_returns(z.expand(P, -1), policy_actions)
            z = z.expand(N - P, -1)
            std = torch.full((H, A), cfg.max_std, device=z.device)
            for _ in range(cfg.iterations):
                noise = torch.randn(H, N - P, A, device=z.device)
                sampled = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
                value = self._estimate_value(z, sampled, known).nan_to_num(0.0).squeeze(1)
                elite_value, elite_idx = torch.topk(value, cfg.num_elites)
                elite_actions = torch.cat([policy_actions, sampled], 1)[:, elite_idx]
                score = torch.exp(cfg.temperature * (elite_value - elite_value.max()))
                score = score / score.sum()
                mean = (score[None, :, None] * elite_actions).sum(1)
                std = ((score[None, :, None] * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1)).sqrt()
                std = std.clamp(cfg.min_std, cfg.max_std)
            chosen = elite_actions.index_select(1, torch.multinomial(score, 1)).squeeze(1)
            return mean, std, chosen

    # -- learning -----------------------------------------------------------
    def _rollout(self, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Return latents ``(H+1, B, L)``: ``z0`` then the dynamics rolled over ``actions``."""
        zs = [z0]
        for t in range(actions.shape[0]):
            zs.append(self.model.next(zs[-1], actions[t]))
        return torch.stack(zs)

    def _encode_batch(self, obs: torch.Tensor) -> torch.Tensor:
        """Return encoded latents ``(H+1, B, L)`` of ``obs[0..H]``; later frames carry gradient only if needed."""
        needs_all = self.gating.target_has_gradient or any(
            self.gating.reaches_encoder[t.name] for t in self.extra_losses
        )
        if needs_all:
            return self.model.encode(obs)
        z0 = self.model.encode(obs[0])
        with torch.no_grad():
            rest = self.model.encode(obs[1:])
        return torch.cat([z0.unsqueeze(0), rest])

    def update(self, batch: TensorDict) -> dict[str, float]:
        """Run one gradient update on a batch of sub-trajectories ``(H+1, B)``; return its metrics.

        Raises :class:`NonFiniteLossError` (before any weight changes) if the loss is not finite.
        """
        self.train()
        total, metrics, zs = self._losses(batch)
        if not torch.isfinite(total):
            parts = {k: float(v) for k, v in metrics.items()}
            raise NonFiniteLossError(f"non-finite model loss at update {self.num_updates}: {parts}")
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self._clip_groups[0], self.cfg.grad_clip_norm)
        for probe_params in self._clip_groups[1:]:
            torch.nn.utils.clip_grad_norm_(probe_params, self.cfg.grad_clip_norm)
        self.optim.step()

        pi_loss, pi_entropy = self._update_pi(zs.detach())
        self.model.soft_update_target_Q(self.cfg.tau)
        self.num_updates += 1

        metrics.update(total_loss=total.detach(), grad_norm=grad_norm, pi_loss=pi_loss, pi_entropy=pi_entropy, pi_scale=self.scale.value)
        return {k: float(v) for k, v in metrics.items()}

    def compile(self) -> None:
        """Use compiled code (called when ``cfg.compile`` is true); what is compiled is what measured fastest on CPU:

        * the hidden blocks of every MLP, the Q ensemble and extension heads
          (LayerNorm, affine, Mish) run as fused kernels, native C++ on CPU
          (``layers.use_compiled_kernels``, ``tdmpc2.native``);
        * ``torch.compile`` of the model losses with their backward pass
          (:meth:`_losses`, the TD target included), of the policy objective
          (:meth:`_pi_terms`) and of the MPPI iterations (:meth:`_mppi`).

        The optimizer steps stay eager. Each compiled function falls back to
        eager code, with a warning, if compiling it fails.
        """
        if self.device.type == "cpu":
            native.available()  # build (or load) the native kernels now, not while tracing
        layers.use_compiled_kernels(self.model)
        layers.use_compiled_kernels(self.extra_losses)
        self._losses = kernels.CompileWithFallback(self._losses)
        self._pi_terms = kernels.CompileWithFallback(self._pi_terms)
        self._mppi = kernels.CompileWithFallback(self._mppi)

    def _td_target(self, next_z: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
        """Return the TD targets ``r + discount * (1 - terminated) * Q_target(z', pi(z'))`` (min of two members)."""
        with torch.no_grad():
            next_act, _ = self.model.pi(next_z)
            return reward + self.discount * (1 - terminated) * self.model.Q(next_z, next_act, "min", target=True)

    def _losses(self, batch: TensorDict):
        """Return ``(total model loss, per-term losses, rollout latents (H+1, B, L))`` for one batch.

        This is the one place where the gating table acts: every loss term sees
        latents that carry gradient to the encoder only if its row says so.
        """
        cfg, gate = self.cfg, self.gating
        obs = batch["obs"]
        action, reward, terminated = batch["action"][1:], batch["reward"][1:], batch["terminated"][1:]
        H = action.shape[0]
        rho = self._rho[:H]

        z_enc = self._encode_batch(obs)
        next_z = z_enc[1:] if gate.target_has_gradient else z_enc[1:].detach()
        td_target = self._td_target(z_enc[1:].detach(), reward, terminated)

        # Latent rollouts: from the live encoding, and from a detached one when consistency is gated off.
        live = self._rollout(z_enc[0], action)
        zs_cons = live if gate.reaches_encoder["consistency"] else self._rollout(z_enc[0].detach(), action)
        consistency = (F.mse_loss(zs_cons[1:], next_z, reduction="none").mean((1, 2)) * rho).sum() / H

        zs = gate.gate(live, "reward")
        reward_loss = (tmath.soft_ce(self.model.reward(zs[:-1], action), reward, self.bins).mean((1, 2)) * rho).sum() / H

        zs = gate.gate(live, "value")
        qs = self.model.Q(zs[:-1], action, "all")
        q_ce = tmath.soft_ce(qs, td_target, self.bins)  # one two-hot target, broadcast over the members
        value_loss = (q_ce.mean((2, 3)).sum(0) * rho).sum() / (H * cfg.num_q)

        total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
        metrics = {"consistency_loss": consistency.detach(), "reward_loss": reward_loss.detach(), "value_loss": value_loss.detach()}
        if cfg.episodic:
            zs = gate.gate(live, "termination")
            termination_loss = F.binary_cross_entropy_with_logits(self.model.termination(zs[1:], logits=True), terminated)
            total = total + cfg.termination_coef * termination_loss
            metrics["termination_loss"] = termination_loss.detach()

        for term in self.extra_losses:
            loss, info = term(gate.gate(z_enc, term.name), batch)
            total = total + term.weight * loss
            metrics[f"{term.name}_loss"] = loss.detach()
            metrics.update(info)
        return total, metrics, live

    def _pi_terms(self, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(Q, scaled entropy, entropy)`` of policy samples at latents ``zs``, each ``(H+1, B, 1)``.

        Q is the mean of two members, with weights that receive no gradient.
        """
        action, info = self.model.pi(zs)
        q = self.model.Q(zs, action, "avg", detach=True)
        return q, info["scaled_entropy"], info["entropy"]

    def _update_pi(self, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the policy prior on detached latents ``(H+1, B, L)``; return its loss and entropy."""
        q, scaled_entropy, entropy = self._pi_terms(zs)
        self.scale.update(q[0])
        q = self.scale(q)
        rho = self._rho[: zs.shape[0]]
        loss = (-(self.cfg.entropy_coef * scaled_entropy + q).mean((1, 2)) * rho).mean()
        self.pi_optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.policy_parameters(), self.cfg.grad_clip_norm)
        self.pi_optim.step()
        return loss.detach(), entropy.mean().detach()
