"""Device placement on CUDA, checked without a GPU: the agent built on a simulated CUDA device.

Under ``FakeTensorMode`` tensors carry a device but no data, and any op that
mixes CPU and CUDA tensors raises, as it would on a GPU. On this CPU-only
build of torch a few things need a CUDA device guard that does not exist:
Python indexing, ``Module.to``, in-place copies and autograd. The fixture
replaces the first two with equivalents made of ``narrow``/``select``/
``index_select`` and parameter replacement; the checks run the forward passes
only (the model losses with the TD target, the policy objective, and the
MPPI iterations), which is where every tensor the agent creates is placed.
They run in float32: CUDA autocast cannot be entered without a CUDA runtime
(torch disables it with a warning), and bf16 adds only casts, which keep the
device of their input.
"""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from omegaconf import open_dict
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from test_agent import PLAN

DEVICE = "cuda:0"


def _full_index(t: torch.Tensor, index) -> tuple:
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        rest = t.dim() - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * rest + index[k + 1:]
    return index


def _getitem(t: torch.Tensor, index) -> torch.Tensor:
    """Basic and integer-tensor indexing written with ops that need no device guard."""
    out, dim = t, 0
    for i in _full_index(t, index):
        if i is None:
            out, dim = out.unsqueeze(dim), dim + 1
        elif isinstance(i, int):
            out = out.select(dim, i)
        elif isinstance(i, slice):
            start, stop, step = i.indices(out.shape[dim])
            if step != 1:
                raise NotImplementedError("strided slices")
            out, dim = out.narrow(dim, start, max(stop - start, 0)), dim + 1
        elif isinstance(i, torch.Tensor) and i.dtype != torch.bool:
            out = out.select(dim, i) if i.dim() == 0 else out.index_select(dim, i.flatten()).unflatten(dim, i.shape)
            dim += i.dim()
        else:
            raise NotImplementedError(f"index {type(i).__name__}")
    return out


def _to_by_replacing(module: nn.Module, device, *args, **kwargs) -> nn.Module:
    device = torch.device(device)
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.device != device:
                m._parameters[name] = nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.device != device:
                m._buffers[name] = b.to(device)
    return module


@pytest.fixture
def fake_cuda(monkeypatch):
    """Yield a ``FakeTensorMode`` in which a simulated ``cuda:0`` works (see the module docstring)."""
    monkeypatch.setattr(torch.Tensor, "__getitem__", _getitem)
    monkeypatch.setattr(nn.Module, "to", _to_by_replacing)
    # trunc_normal_ reads its bounds back with .item(); a plain normal draw has the same placement.
    monkeypatch.setattr(nn.init, "trunc_normal_", lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: nn.init.normal_(t, mean, std))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        yield FakeTensorMode(allow_non_fake_inputs=True)


def _cuda_agent(builders, mode, *overrides, task_info=None):
    cfg = builders.tiny_config(*PLAN, *overrides, task_info=task_info or builders.toy_task_info(episodic=True))
    with open_dict(cfg):
        cfg.device = DEVICE
    batch = builders.make_batch(cfg)
    with mode:
        agent = builders.make_agent(cfg)
        batch = {k: v.to(DEVICE) for k, v in batch.items()}
    return cfg, agent, batch


@pytest.mark.parametrize("obs", ["state", "rgb"])
def test_losses_policy_objective_and_planning_stay_on_cuda(builders, fake_cuda, obs):
    info = builders.toy_task_info(episodic=True)
    if obs == "rgb":
        info = dataclasses.replace(info, obs_type="rgb", obs_shape=(3, 64, 64))
    cfg, agent, batch = _cuda_agent(builders, fake_cuda, "num_channels=4", task_info=info)
    if obs == "rgb":
        batch["obs"] = torch.zeros(cfg.horizon + 1, cfg.batch_size, 3, 64, 64, dtype=torch.uint8)
        with fake_cuda:
            batch["obs"] = batch["obs"].to(DEVICE)
    assert next(agent.model.parameters()).device == torch.device(DEVICE)
    with fake_cuda, torch.no_grad():
        agent.train()
        total, metrics, zs = agent._losses(batch)
        q, scaled_entropy, _ = agent._pi_terms(zs)
        agent.train(False)
        z = agent._encode(batch["obs"][0, :1])
        mean, std, chosen = agent._mppi(z, torch.zeros(cfg.horizon, cfg.action_dim, device=DEVICE))
    for t in (total, *metrics.values(), zs, q, scaled_entropy, mean, std, chosen):
        assert t.device == torch.device(DEVICE)
    assert total.dtype == torch.float32 and mean.dtype == torch.float32


def test_a_tensor_left_on_the_cpu_is_caught(builders, fake_cuda, monkeypatch):
    """The check can fail: a planner state created without ``device=`` mixes devices and raises."""
    cfg, agent, _ = _cuda_agent(builders, fake_cuda)
    with fake_cuda, torch.no_grad():
        z = agent._encode(torch.zeros(1, cfg.obs_shape[0], device=DEVICE))
        with pytest.raises(Exception, match="cpu and cuda:0|cuda:0 and cpu"):
            agent._mppi(z, torch.zeros(cfg.horizon, cfg.action_dim))  # the initial mean left on the CPU
