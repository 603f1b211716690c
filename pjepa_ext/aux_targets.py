"""Auxiliary targets p(o): named functions of an observation and its info.

P-JEPA fits a head P(z) to p(o) while the encoder learns latent dynamics
(paper, Fig. 1). Every target here is a small ``nn.Module``, so that what a
frozen target is made of (the random projection's fingerprint) travels inside
the agent's checkpoint.

To add a target, write a subclass of :class:`AuxTarget` and add one line to
:data:`AUX_TARGETS`; ``python train.py aux=NAME`` and
``python scripts/bisim.py aux=NAME`` then work with no other change.

Each target declares how it is regressed:

- ``"twohot"``: a scalar, regressed with TD-MPC2's two-hot cross-entropy
  over symlog bins (``dim`` is 1);
- ``"mse"``: a vector of size ``dim``, regressed with mean squared error.

``info`` is a mapping from info key to a float tensor of shape ``(B,)``
(for the counting task: ``count`` and ``obs_reward``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn


class AuxTarget(nn.Module):
    """Base class: a fixed function p(o) of an observation batch and its info."""

    name: str = ""
    loss: str = "twohot"
    dim: int = 1
    #: info keys this target reads; the trainer stores them in the replay.
    info_keys: tuple[str, ...] = ()

    def forward(self, obs: torch.Tensor, info: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Return the target, a float tensor of shape ``(B, dim)``."""
        raise NotImplementedError

    def _info(self, info: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        if key not in info:
            raise KeyError(
                f"auxiliary target '{self.name}' needs info['{key}'], which this task "
                f"does not report (it reports: {sorted(info)})"
            )
        return info[key].float().reshape(-1, 1)


class RewardTarget(AuxTarget):
    """p(o) = r(o), the reward of the observation itself (paper, Sec. 2.3)."""

    name, loss, dim, info_keys = "reward", "twohot", 1, ("obs_reward",)

    def forward(self, obs, info):
        return self._info(info, "obs_reward")


class CountTarget(AuxTarget):
    """p(o) = number of objects in the observation (counting task)."""

    name, loss, dim, info_keys = "count", "twohot", 1, ("count",)

    def forward(self, obs, info):
        return self._info(info, "count")


class CountParityTarget(AuxTarget):
    """p(o) = count mod 2: an example of a target that reads only part of the state.

    On its own it says nothing about the count beyond parity, but with the
    counting dynamics (clamped at 0 and max) the largest bisimulation still
    separates every count: ``python scripts/bisim.py aux=count_parity``.
    """

    name, loss, dim, info_keys = "count_parity", "twohot", 1, ("count",)

    def forward(self, obs, info):
        return torch.remainder(self._info(info, "count"), 2.0)


class RandomProjectionTarget(AuxTarget):
    """p(o) = W vec(o'), a frozen seeded Gaussian map of the pixels o' in [-0.5, 0.5].

    W has shape ``(dim, prod(obs_shape))`` with entries N(0, 1/prod(obs_shape)),
    so each output has unit variance for unit-variance inputs. It is a buffer,
    never a parameter: it receives no gradient. W is drawn again from ``seed``
    when the agent is built rather than saved (on 64x64 pixels it is 38 MB per
    checkpoint); the checkpoint holds its ``fingerprint`` (sum and sum of
    squares), and loading a checkpoint whose W drew differently is an error.
    A checkpoint that holds W itself loads it as it is.
    """

    name, loss, info_keys = "random", "mse", ()

    def __init__(self, obs_shape: Sequence[int], dim: int = 256, seed: int = 0):
        super().__init__()
        self.dim = int(dim)
        numel = 1
        for s in obs_shape:
            numel *= int(s)
        gen = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(self.dim, numel, generator=gen) / numel**0.5
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("fingerprint", self._fingerprint(weight))

    @staticmethod
    def _fingerprint(weight: torch.Tensor) -> torch.Tensor:
        w = weight.double()
        return torch.stack([w.sum(), w.square().sum()])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.pop(prefix + "weight", None)
        if saved is not None:  # written when W was saved: that W, whatever this seed draws
            self.weight.copy_(saved)
            state_dict.setdefault(prefix + "fingerprint", self._fingerprint(saved))
        expected = state_dict.get(prefix + "fingerprint")
        if saved is None and expected is not None and not torch.allclose(self.fingerprint, expected, rtol=1e-9, atol=0):
            raise RuntimeError(
                f"{prefix}weight: the random projection drawn from its seed here (fingerprint "
                f"{self.fingerprint.tolist()}) is not the one the checkpoint was trained with ({expected.tolist()}); "
                f"torch's random generator draws differently in this version, or the seed is not the run's")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, obs, info):
        x = obs.flatten(1).float()
        if obs.dtype == torch.uint8:
            x = x / 255.0 - 0.5
        return x @ self.weight.T


AUX_TARGETS: dict[str, Callable[..., AuxTarget] | None] = {
    "reward": lambda obs_shape, dim, seed: RewardTarget(),
    "random": lambda obs_shape, dim, seed: RandomProjectionTarget(obs_shape, dim, seed),
    "count": lambda obs_shape, dim, seed: CountTarget(),
    "count_parity": lambda obs_shape, dim, seed: CountParityTarget(),
    "none": None,
}


def make_aux_target(name: str, obs_shape: Sequence[int], dim: int = 256, seed: int = 0) -> AuxTarget | None:
    """Return the registered auxiliary target ``name`` (``None`` for ``none``).

    Raises ``ValueError`` naming the allowed values for an unknown name.
    """
    if name not in AUX_TARGETS:
        raise ValueError(f"unknown aux '{name}'; allowed values: {', '.join(AUX_TARGETS)}")
    factory = AUX_TARGETS[name]
    return None if factory is None else factory(obs_shape, dim, seed)
