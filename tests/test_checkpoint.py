"""Facts about checkpoints (tdmpc2/checkpoint.py): atomic writes, clear errors, exact agent round-trip."""
from __future__ import annotations

import os
import pickle
import sys
import types

import pytest
import torch

from tdmpc2 import checkpoint
from tdmpc2.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tdmpc2.config import to_container


def write_previous(path) -> bytes:
    """Write a good checkpoint at ``path``; return its bytes."""
    save_checkpoint(path, {"step": 7, "weights": torch.arange(5.0)})
    return path.read_bytes()


def test_round_trip_of_a_payload(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", {"step": 3, "w": torch.ones(2, 2), "cfg": {"a": [1, 2]}})
    assert path == tmp_path / "sub" / "ckpt.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["cfg"] == {"a": [1, 2]}
    assert torch.equal(loaded["w"], torch.ones(2, 2))
    assert loaded["format"] == checkpoint.FORMAT and loaded["version"] == checkpoint.VERSION
    assert os.listdir(tmp_path / "sub") == ["ckpt.pt"]


@pytest.mark.parametrize("error", [RuntimeError("No space left on device"), KeyboardInterrupt()])
def test_a_crash_during_save_keeps_the_previous_file(tmp_path, monkeypatch, error):
    path = tmp_path / "final.pt"
    previous = write_previous(path)

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        f.flush()
        raise error

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(type(error)):
        save_checkpoint(path, {"step": 8, "weights": torch.zeros(5)})
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert load_checkpoint(path)["step"] == 7
    assert os.listdir(tmp_path) == ["final.pt"], "a temporary file was left behind"


def test_a_crash_while_renaming_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "final.pt"
    previous = write_previous(path)

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 8})
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert os.listdir(tmp_path) == ["final.pt"]


def test_a_new_save_replaces_the_old_one(tmp_path):
    path = tmp_path / "final.pt"
    write_previous(path)
    save_checkpoint(path, {"step": 8})
    assert load_checkpoint(path)["step"] == 8
    assert os.listdir(tmp_path) == ["final.pt"]


# ---------------------------------------------------------------- load errors


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, bytes(range(256)) * 4, b"hello, not a checkpoint\n"],
                         ids=["empty", "zeros", "byte-ramp", "text"])
def test_corrupt_bytes(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_random_bytes(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "random.pt"
    for _ in range(20):
        # The first byte 0x95 would start a pickle frame header; those are covered separately.
        data = torch.randint(0, 256, (200,), generator=g, dtype=torch.uint8)
        data[0] = 0x80 if data[0] == 0x95 else data[0]
        path.write_bytes(bytes(data.tolist()))
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_checkpoint(tmp_path, fraction):
    path = tmp_path / "ckpt.pt"
    data = write_previous(path)
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("payload", [{"model": {"w": torch.ones(1)}}, [1, 2, 3], torch.zeros(3)],
                         ids=["other-dict", "list", "tensor"])
def test_foreign_torch_file(tmp_path, payload):
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a checkpoint written by this project"):
        load_checkpoint(path)


def test_plain_pickle_file(tmp_path):
    path = tmp_path / "foreign.pkl"
    path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "version": checkpoint.VERSION}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_other_checkpoint_version(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1}, path)
    with pytest.raises(CheckpointError, match=f"version {checkpoint.VERSION + 1}"):
        load_checkpoint(path)


def test_corrupt_frame_header(tmp_path):
    path = tmp_path / "frame.pt"
    path.write_bytes(b"\x95" + (2**63 + 5).to_bytes(8, "little") + b"\x00" * 16)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_pickle_of_an_unknown_class(tmp_path, monkeypatch):
    module = types.ModuleType("vanished_module")

    class Thing:
        pass

    Thing.__module__, Thing.__qualname__ = "vanished_module", "Thing"
    module.Thing = Thing
    monkeypatch.setitem(sys.modules, "vanished_module", module)
    path = tmp_path / "foreign.pt"
    torch.save(Thing(), path)
    monkeypatch.delitem(sys.modules, "vanished_module")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# ---------------------------------------------------------------- agent round-trip


def agent_outputs(agent, obs: torch.Tensor) -> list[torch.Tensor]:
    """Return deterministic outputs of every network of the agent (eval mode, fixed seed for the Q draw)."""
    agent.train(False)
    with torch.no_grad():
        z = agent.model.encode(obs)
        a = torch.tanh(z[:, : agent.cfg.action_dim])
        torch.manual_seed(0)
        return [z, agent.model.next(z, a), agent.model.reward(z, a), agent.model.Q(z, a, "all"),
                agent.model.Q(z, a, "all", target=True), agent.model.pi(z)[1]["mean"], agent.scale.value.clone()]


def test_agent_state_round_trips_through_a_checkpoint(builders, tmp_path):
    cfg = builders.tiny_config()
    trained = builders.make_agent(cfg, seed=0)
    for i in range(3):
        trained.update(builders.make_batch(cfg, seed=i))
    trained.scale.value.fill_(2.5)  # as after Q values have spread
    path = save_checkpoint(tmp_path / "final.pt", {"agent": trained.state_dict(), "cfg": to_container(cfg)})

    payload = load_checkpoint(path)
    assert payload["cfg"] == to_container(cfg)
    restored = builders.make_agent(cfg, seed=1)
    restored.load_state_dict(payload["agent"])
    assert restored.num_updates == 3

    obs = builders.make_batch(cfg, seed=9)["obs"][0]
    for got, expected in zip(agent_outputs(restored, obs), agent_outputs(trained, obs)):
        assert torch.equal(got, expected)

    # Optimiser state came back too: the next update is identical on both.
    batch = builders.make_batch(cfg, seed=5)
    torch.manual_seed(3)
    trained.update(batch)
    torch.manual_seed(3)
    restored.update(batch)
    for (name, p), q in zip(trained.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(p, q), name
