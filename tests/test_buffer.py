"""Facts about the episode replay buffer (tdmpc2/buffer.py)."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from tensordict import TensorDict

from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.replay_files import ReplayFilesError

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


# ---------------------------------------------------------------- the replay on disk (tdmpc2/replay_files.py)


def fill(buf: EpisodeBuffer, first: int, count: int, pixels: bool = True) -> None:
    """Add ``count`` episodes tagged ``first``, ``first+1``, ... of 3-13 steps."""
    for i, n in enumerate(episode_lengths(first, count)):
        buf.add(make_episode(first + i, n, pixels=pixels))


def snapshot(buf: EpisodeBuffer) -> dict:
    """Return a copy of the rows in use, as nested dicts of tensors."""
    buf.flush()
    return buf._rows[: len(buf)].clone().to_dict()


def assert_same_rows(a: dict, b: dict) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_a_replay_on_disk_samples_what_one_in_memory_does(tmp_path):
    on_disk = EpisodeBuffer(80, batch_size=16, horizon=HORIZON, seed=4, directory=tmp_path / "replay")
    in_memory = EpisodeBuffer(80, batch_size=16, horizon=HORIZON, seed=4)
    for i, n in enumerate(episode_lengths(0, 25)):  # wraps the 80-row ring several times
        episode = make_episode(i, n, pixels=True)
        on_disk.add(episode)
        in_memory.add(episode)
    for _ in range(3):
        a, b = on_disk.sample(), in_memory.sample()
        assert torch.equal(a["obs"], b["obs"]) and torch.equal(a["tag"], b["tag"])
    assert on_disk.content_hash() == in_memory.content_hash()


def test_pixels_stay_uint8_on_disk_and_the_ring_is_allocated_whole(tmp_path):
    buf = EpisodeBuffer(500, batch_size=4, horizon=HORIZON, directory=tmp_path / "replay")
    fill(buf, 0, 1)
    obs = tmp_path / "replay" / "ring" / "obs.memmap"
    assert obs.stat().st_size == 500 * 3 * 8 * 8  # one byte per pixel
    assert obs.stat().st_blocks * 512 >= obs.stat().st_size  # reserved on disk, not sparse
    # obs 192 + action 8 + reward 4 + terminated 4 + info 4 + tag 8 + t 8 + episode 8 bytes
    assert buf.row_bytes == 236


@pytest.mark.parametrize("disk", [True, False], ids=["disk", "memory"])
def test_restore_returns_to_the_commit_after_the_ring_wrapped(tmp_path, disk):
    directory = tmp_path / "replay" if disk else None
    buf = EpisodeBuffer(60, batch_size=16, horizon=HORIZON, seed=1, directory=directory)
    fill(buf, 0, 8)
    state, rows = buf.commit(), snapshot(buf)
    assert state["length"] == 60 and state["hash"] == buf.content_hash()
    sampled = buf.sample()
    fill(buf, 100, 12)  # overwrites every row the commit covers
    buf.sample()

    again = EpisodeBuffer(60, batch_size=16, horizon=HORIZON, seed=9, directory=directory)
    restored = again.restore(state)
    assert (restored > 0) == disk and len(again) == 60 and again.num_episodes == 8
    assert_same_rows(snapshot(again), rows)
    resampled = again.sample()  # the sampler's generator came back too
    assert torch.equal(resampled["tag"], sampled["tag"]) and torch.equal(resampled["t"], sampled["t"])


def test_undo_logs_return_the_ring_to_any_kept_commit(tmp_path):
    buf = EpisodeBuffer(50, batch_size=8, horizon=HORIZON, seed=0, directory=tmp_path / "replay")
    commits = []
    for k in range(4):
        fill(buf, 10 * k, 6)
        commits.append((buf.commit(), snapshot(buf)))
    fill(buf, 90, 6)
    buf.sample()
    state, rows = commits[1]
    again = EpisodeBuffer(50, batch_size=8, horizon=HORIZON, seed=0, directory=tmp_path / "replay")
    again.restore(state)
    assert_same_rows(snapshot(again), rows)
    assert sorted(p.name for p in (tmp_path / "replay").glob("undo_*.log")) == ["undo_1.log"]


def test_a_record_cut_short_by_a_kill_is_ignored(tmp_path):
    buf = EpisodeBuffer(40, batch_size=8, horizon=HORIZON, seed=0, directory=tmp_path / "replay")
    fill(buf, 0, 6)
    state, rows = buf.commit(), snapshot(buf)
    fill(buf, 50, 2)
    buf.flush()  # a whole record, then the rows it saved overwritten
    # The next write dies between its undo record and the ring: the record is cut, the ring untouched.
    buf.files.before_write(buf._rows, torch.arange(10, 20))
    log = tmp_path / "replay" / f"undo_{state['serial']}.log"
    log.write_bytes(log.read_bytes()[:-100])
    again = EpisodeBuffer(40, batch_size=8, horizon=HORIZON, seed=0, directory=tmp_path / "replay")
    again.restore(state)
    assert_same_rows(snapshot(again), rows)


def test_a_truncated_replay_file_is_a_clear_error(tmp_path):
    buf = EpisodeBuffer(40, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay")
    fill(buf, 0, 4)
    state = buf.commit()
    obs = tmp_path / "replay" / "ring" / "obs.memmap"
    obs.write_bytes(obs.read_bytes()[:1000])
    with pytest.raises(ReplayFilesError, match=r"obs.memmap is truncated \(1,000 of 7,680 bytes\)"):
        EpisodeBuffer(40, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay").restore(state)


def test_changed_replay_contents_do_not_match_the_commit(tmp_path):
    buf = EpisodeBuffer(40, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay")
    fill(buf, 0, 4)
    state = buf.commit()
    buf._rows["reward"][3] = 123.0
    with pytest.raises(ReplayFilesError, match="does not match the checkpoint"):
        EpisodeBuffer(40, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay").restore(state)


def test_a_disk_too_small_for_the_replay_is_reported_when_it_is_made(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    buf = EpisodeBuffer(100_000, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay")
    with pytest.raises(ReplayFilesError, match=r"not enough disk space .* needs 0.02 GB \(100,000 rows of 236 bytes\)"):
        fill(buf, 0, 1)


def test_a_new_replay_refuses_a_directory_that_holds_one(tmp_path):
    fill(EpisodeBuffer(40, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay"), 0, 1)
    with pytest.raises(ReplayFilesError, match="already holds a replay"):
        fill(EpisodeBuffer(40, batch_size=8, horizon=HORIZON, directory=tmp_path / "replay"), 0, 1)
