"""Shared test setup: one torch thread, and builders for configs, agents and batches of the TD-MPC2 core, and train.py runs.

Configs are composed from the root ``config.yaml`` with hydra's compose API
(stock TD-MPC2 presets), then resolved against a task description, exactly
as ``train.py`` does after ``apply_presets``.
"""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from tensordict import TensorDict

from envs import TaskInfo
from tdmpc2 import layers
from tdmpc2.agent import TDMPC2
from tdmpc2.config import resolve

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The stock TD-MPC2 presets, chosen explicitly (``auto`` is resolved only by train.py).
STOCK = ("variant=stock", "size=none", "aux=none")

#: A world model small enough that a test builds and updates it in milliseconds.
TINY_MODEL = ("model_size=1", "enc_dim=32", "mlp_dim=32", "latent_dim=16", "num_q=3")

#: The tiny model with a small batch, on CPU, uncompiled.
TINY = (*TINY_MODEL, "batch_size=8", "horizon=3", "device=cpu", "compile=false", "steps=1000")

#: Tests compute in float32 whatever ``precision=auto`` would pick on the machine running them;
#: the bf16 tests ask for bf16 explicitly.
PRECISION = "precision=fp32"

#: The rows an extension may set (the stock preset sets them to false).
EXTENSION_ROWS = ("auxiliary", "decoder")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run every test on one CPU thread (the machine is shared)."""
    torch.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def _compose_cached(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO_ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=[*STOCK, PRECISION, *overrides])
    with open_dict(cfg):
        cfg.variant, cfg.size = "stock", "none"
    return cfg


def compose_config(*overrides: str) -> DictConfig:
    """Return the root config composed with the stock presets and ``overrides`` (not yet resolved)."""
    return _compose_cached(tuple(overrides)).copy()


def toy_task_info(obs_dim: int = 5, action_dim: int = 2, episodic: bool = False, episode_length: int = 100) -> TaskInfo:
    """Return a state-observation task description without building an environment."""
    return TaskInfo(name="toy", obs_type="state", obs_shape=(obs_dim,), action_dim=action_dim,
                    episode_length=episode_length, episodic=episodic, info_keys=("obs_reward", "success"),
                    action_repeat=1)


def tiny_config(*overrides: str, task_info: TaskInfo | None = None) -> DictConfig:
    """Return a resolved config of the tiny model for ``task_info`` (default: the toy task), with ``overrides``."""
    return resolve(compose_config(*TINY, *overrides), task_info or toy_task_info())


def make_agent(cfg: DictConfig, seed: int = 0, **kwargs) -> TDMPC2:
    """Return a TD-MPC2 agent for the resolved ``cfg``, its weights drawn under ``seed``."""
    torch.manual_seed(seed)
    return TDMPC2(cfg, extra_rows=kwargs.pop("extra_rows", EXTENSION_ROWS), **kwargs)


def make_batch(cfg: DictConfig, batch_size: int | None = None, seed: int = 0) -> TensorDict:
    """Return a random replay batch ``(H+1, B)`` shaped like :meth:`EpisodeBuffer.sample` output.

    Row 0 holds NaN action and reward, as at an episode's first step; the
    losses must not read them.
    """
    g = torch.Generator().manual_seed(seed)
    steps, b = cfg.horizon + 1, batch_size or cfg.batch_size
    action = torch.rand(steps, b, cfg.action_dim, generator=g) * 2 - 1
    reward = torch.randn(steps, b, 1, generator=g)
    action[0], reward[0] = float("nan"), float("nan")
    return TensorDict(
        {
            "obs": torch.randn(steps, b, *cfg.obs_shape, generator=g),
            "action": action,
            "reward": reward,
            "terminated": (torch.rand(steps, b, 1, generator=g) < 0.2).float(),
        },
        batch_size=[steps, b],
    )


def random_ensemble(seed: int = 0) -> layers.EnsembleMLP:
    """Return a 3-member Q-style ensemble (6 -> 16 -> 16 -> 5) whose parameters are all non-trivial.

    TD-MPC2's initialisation leaves biases and LayerNorm affines at 0 and 1;
    a random perturbation makes every parameter matter to the output.
    """
    torch.manual_seed(seed)
    ens = layers.EnsembleMLP(3, 6, [16, 16], 5)
    ens.apply(layers.init_weights)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ens


def run_script(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python SCRIPT threads=1 device=cpu args...`` in the repository root; return the result (output captured)."""
    return subprocess.run([sys.executable, script, "threads=1", "device=cpu", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def run_train_py(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python train.py overrides...`` in the repository root on one thread, the CPU, no compile; return the result."""
    return run_script("train.py", "compile=false", *overrides, timeout=timeout)


def run_evaluate_py(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python evaluate.py args...`` in the repository root on one thread of the CPU; return the result."""
    return run_script("evaluate.py", *args, timeout=timeout)


@pytest.fixture(scope="session")
def builders() -> SimpleNamespace:
    """Return the builders above as one namespace (tests import nothing from this file)."""
    return SimpleNamespace(compose_config=compose_config, tiny_config=tiny_config, toy_task_info=toy_task_info,
                           make_agent=make_agent, make_batch=make_batch, random_ensemble=random_ensemble,
                           run_train_py=run_train_py, run_evaluate_py=run_evaluate_py,
                           repo_root=REPO_ROOT, tiny_model=TINY_MODEL)
