"""Facts about the episode replay buffer (tdmpc2/buffer.py)."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tdmpc2.buffer import EpisodeBuffer

HORIZON = 3


def make_episode(tag: int, steps: int, pixels: bool = False) -> TensorDict:
    """Return an episode of ``steps`` transitions (``steps + 1`` rows) whose rows name their episode and step.

    ``obs`` encodes ``(tag, t)`` so that a sample can be checked against what was stored.
    """
    n = steps + 1
    t = torch.arange(n)
    if pixels:
        obs = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
        obs[:, 0] = tag % 256
        obs[:, 1] = t.view(n, 1, 1).to(torch.uint8)
        obs[:, 2] = 200 + (t % 50).view(n, 1, 1).to(torch.uint8)
    else:
        obs = torch.stack([torch.full((n,), float(tag)), t.float()], -1)
    action = torch.rand(n, 2) * 2 - 1
    reward = t.float().unsqueeze(-1) + 1000 * tag
    action[0], reward[0] = float("nan"), float("nan")
    return TensorDict(
        {"obs": obs, "action": action, "reward": reward, "terminated": torch.zeros(n, 1),
         "info": TensorDict({"count": t.float()}, batch_size=[n]), "tag": torch.full((n,), tag), "t": t},
        batch_size=[n],
    )


def assert_slices_stay_in_one_episode(batch: TensorDict) -> None:
    """Assert every column of a ``(H+1, B)`` batch is consecutive steps of one stored episode."""
    assert batch.batch_size == (HORIZON + 1, batch.batch_size[1])
    tag, t = batch["tag"], batch["t"]
    assert (tag == tag[0]).all(), "a slice crosses an episode boundary"
    assert (batch["episode"] == batch["episode"][0]).all()
    assert (t.diff(dim=0) == 1).all(), "steps inside a slice are not consecutive"
    assert (batch["info", "count"] == t.float()).all()
    valid = ~torch.isnan(batch["reward"].squeeze(-1))
    assert (batch["reward"].squeeze(-1)[valid] == (t + 1000 * tag).float()[valid]).all()
    assert (valid == (t > 0)).all()


def episode_lengths(seed: int, count: int, low: int = HORIZON, high: int = 14) -> list[int]:
    """Return ``count`` random episode lengths (transitions) in ``[low, high)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (count,), generator=g).tolist()


def test_sample_shape_and_fields():
    buf = EpisodeBuffer(1000, batch_size=16, horizon=HORIZON, seed=0)
    for i, n in enumerate(episode_lengths(0, 5, low=10)):
        buf.add(make_episode(i, n))
    batch = buf.sample()
    assert batch.batch_size == (HORIZON + 1, 16)
    assert batch["obs"].shape == (HORIZON + 1, 16, 2)
    assert batch["action"].shape == (HORIZON + 1, 16, 2)
    assert batch["reward"].shape == batch["terminated"].shape == (HORIZON + 1, 16, 1)
    assert batch.device == torch.device("cpu")


@pytest.mark.parametrize("seed", range(3))
def test_slices_never_cross_episodes_of_different_lengths(seed):
    buf = EpisodeBuffer(10_000, batch_size=64, horizon=HORIZON, seed=seed)
    # Many short episodes (down to exactly H+1 rows) so that most slices sit next to a boundary.
    for i, n in enumerate(episode_lengths(seed, 60)):
        buf.add(make_episode(i, n))
        if i % 7 == 6:
            assert_slices_stay_in_one_episode(buf.sample())
    for _ in range(5):
        assert_slices_stay_in_one_episode(buf.sample())


@pytest.mark.parametrize("sample_while_adding", [True, False])
def test_wrap_around_keeps_slices_within_episodes(sample_while_adding):
    capacity = 50
    buf = EpisodeBuffer(capacity, batch_size=64, horizon=HORIZON, seed=1)
    lengths = episode_lengths(1, 40)
    assert sum(n + 1 for n in lengths) > 4 * capacity
    for i, n in enumerate(lengths):
        buf.add(make_episode(i, n))
        if sample_while_adding and i >= 2:
            assert_slices_stay_in_one_episode(buf.sample())
    assert len(buf) == capacity and buf.num_episodes == 40
    seen = set()
    for _ in range(10):
        batch = buf.sample()
        assert_slices_stay_in_one_episode(batch)
        seen.update(batch["tag"][0].tolist())
    # Only episodes that still fit in the last `capacity` rows can be sampled, and the newest one is.
    rows, recent = 0, set()
    for i in reversed(range(len(lengths))):
        rows += lengths[i] + 1
        recent.add(i)
        if rows >= capacity:
            break
    assert seen <= recent
    assert len(lengths) - 1 in seen


def test_pixel_observations_stay_uint8():
    buf = EpisodeBuffer(500, batch_size=32, horizon=HORIZON, seed=0)
    for i, n in enumerate(episode_lengths(2, 8, low=5)):
        buf.add(make_episode(i, n, pixels=True))
    batch = buf.sample()
    obs = batch["obs"]
    assert obs.dtype == torch.uint8
    assert obs.shape == (HORIZON + 1, 32, 3, 8, 8)
    # The stored bytes come back unchanged.
    assert (obs[:, :, 0] == (batch["tag"] % 256).to(torch.uint8).view(HORIZON + 1, 32, 1, 1)).all()
    assert (obs[:, :, 1] == batch["t"].to(torch.uint8).view(HORIZON + 1, 32, 1, 1)).all()
    assert (obs[:, :, 2] == (200 + batch["t"] % 50).to(torch.uint8).view(HORIZON + 1, 32, 1, 1)).all()


def test_episode_ids_count_added_episodes():
    buf = EpisodeBuffer(1000, batch_size=32, horizon=HORIZON, seed=0)
    for i in range(6):
        assert buf.num_episodes == i
        buf.add(make_episode(10 + i, 8))
    batch = buf.sample()
    assert (batch["episode"] == batch["tag"] - 10).all()
    assert len(buf) == 6 * 9


def test_add_does_not_modify_the_callers_episode():
    buf = EpisodeBuffer(100, batch_size=4, horizon=HORIZON)
    episode = make_episode(0, 6)
    buf.add(episode)
    assert "episode" not in episode.keys()


def test_same_seed_same_samples():
    def sample(seed):
        buf = EpisodeBuffer(1000, batch_size=16, horizon=HORIZON, seed=seed)
        for i, n in enumerate(episode_lengths(3, 10)):
            buf.add(make_episode(i, n))
        return buf.sample()

    a, b, c = sample(5), sample(5), sample(6)
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["tag"], b["tag"])
    assert not (torch.equal(a["t"], c["t"]) and torch.equal(a["tag"], c["tag"]))


def test_rejects_short_or_batched_episodes():
    buf = EpisodeBuffer(100, batch_size=4, horizon=HORIZON)
    with pytest.raises(ValueError, match="shorter than horizon"):
        buf.add(make_episode(0, HORIZON - 1))
    with pytest.raises(ValueError, match="1-D"):
        buf.add(make_episode(0, 6).unsqueeze(0))
    assert buf.num_episodes == 0 and len(buf) == 0
