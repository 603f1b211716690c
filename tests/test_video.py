"""Facts about evaluation videos: each task type's frames (envs), the mp4 writer (tdmpc2/video.py), and
which episode of an evaluation is recorded (tdmpc2/trainer.py run_episodes)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from envs import MissingDependencyError, VideoUnsupportedError, make_env
from envs.frames import CAPTION_HEIGHT
from tdmpc2.trainer import run_episodes
from tdmpc2.video import pad_frame, write_mp4

# ---------------------------------------------------------------- frames of each task type


def test_counting_frame_is_the_observation_enlarged_with_its_count_under_it():
    env = make_env("counting", seed=0, obs="rgb", options={"image_size": 32}, render=True)
    strips = {}
    for count in (3, 3, 4):
        obs, info = env.reset(options={"count": count})
        frame = env.render()
        assert frame.shape == (256 + CAPTION_HEIGHT, 256, 3) and frame.dtype == np.uint8
        picture = obs.transpose(1, 2, 0).repeat(8, axis=0).repeat(8, axis=1)  # 32 -> 256, pixel for pixel
        np.testing.assert_array_equal(frame[:256], picture)
        strip = frame[256:]
        assert strip.max() == 255 and (strip == 0).mean() > 0.5  # white text on black
        strips.setdefault(info["count"], []).append(strip)
    np.testing.assert_array_equal(*strips[3])  # the same count reads the same, wherever the objects are
    assert not np.array_equal(strips[3][0], strips[4][0])


def test_counting_frames_follow_the_episode():
    env = make_env("counting", seed=1, obs="rgb", render=True)
    obs, _ = env.reset(options={"count": 0})
    obs, *_ = env.step(np.ones(1, np.float32))
    frame = env.render()
    assert frame.shape == (256 + CAPTION_HEIGHT, 256, 3)  # 64x64 enlarged 4 times
    np.testing.assert_array_equal(frame[:256], obs.transpose(1, 2, 0).repeat(4, axis=0).repeat(4, axis=1))


def test_gymnasium_frames_are_drawn_for_the_video_only():
    env = make_env("pendulum", seed=0, render=True)
    obs, _ = env.reset()
    assert obs.shape == (3,)  # observations stay states
    first = env.render()
    assert first.shape == (500, 500, 3) and first.dtype == np.uint8
    for _ in range(5):
        env.step(np.ones(1, np.float32))
    assert not np.array_equal(env.render(), first)  # the pendulum moved
    assert env.metadata["render_fps"] == 30


def test_a_gymnasium_task_without_rgb_array_rendering_says_video_is_unsupported(monkeypatch):
    import gymnasium as gym

    from envs import gym_tasks

    def without_frames(env_id, episode_length, render_mode=None):
        env = gym.make(env_id, max_episode_steps=episode_length)
        env.metadata = {**env.metadata, "render_modes": ["human"]}
        return env

    monkeypatch.setattr(gym_tasks, "make_gym_env", without_frames)
    with pytest.raises(VideoUnsupportedError, match="Pendulum-v1 cannot draw frames .* video is unsupported"):
        make_env("pendulum", render=True)


def test_an_env_made_without_render_draws_no_frames():
    env = make_env("counting", seed=0, obs="rgb")
    env.reset()
    with pytest.raises(VideoUnsupportedError, match="made without render=True"):
        env.render()


def test_gymnasium_video_without_pygame_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "pygame" else real(name, *a, **k))
    with pytest.raises(MissingDependencyError) as caught:
        make_env("mountaincar", render=True)
    message = str(caught.value)
    assert "Task 'mountaincar''s video needs the optional package 'pygame'" in message
    assert 'pip install -e ".[video]"' in message
    make_env("mountaincar")  # without video it does not need pygame


@pytest.mark.skipif(importlib.util.find_spec("dm_control") is None, reason="dm-control not installed")
def test_dm_control_state_task_renders_offscreen_with_egl():
    # A fresh interpreter: MuJoCo picks its GL back-end when dm_control is first imported.
    code = ("import json, os, numpy as np\n"
            "from envs import make_env\n"
            "env = make_env('cartpole-swingup', seed=0, render=True)\n"
            "obs, _ = env.reset()\n"
            "frame = env.render()\n"
            "print(json.dumps({'gl': os.environ.get('MUJOCO_GL'), 'obs': list(obs.shape), 'shape': list(frame.shape),"
            " 'dtype': str(frame.dtype), 'std': float(frame.std()), 'fps': env.metadata['render_fps']}))\n")
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-2000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["gl"] == "egl" and facts["obs"] == [5]
    assert facts["shape"] == [240, 320, 3] and facts["dtype"] == "uint8" and facts["std"] > 1
    assert facts["fps"] == pytest.approx(50.0)  # 0.01 s control step x action repeat 2, played in real time


# ---------------------------------------------------------------- the mp4 writer


def test_mp4_holds_every_frame_in_order(tmp_path):
    import imageio.v2 as imageio

    levels = [0, 40, 80, 120, 160, 200, 240]
    frames = [np.full((30, 50, 3), level, np.uint8) for level in levels]  # odd sizes: padded, not resized
    path = write_mp4(tmp_path / "videos" / "clip.mp4", frames, fps=4)
    with imageio.get_reader(path, format="FFMPEG") as reader:
        decoded = [frame for frame in reader]
        fps = reader.get_meta_data()["fps"]
    assert len(decoded) == len(levels) and fps == 4
    assert decoded[0].shape == (32, 64, 3)
    np.testing.assert_allclose([f[:30, :50].mean() for f in decoded], levels, atol=4)  # lossy, but close


def test_pad_frame_adds_black_to_multiples_of_16():
    frame = np.full((500, 17, 3), 9, np.uint8)
    padded = pad_frame(frame)
    assert padded.shape == (512, 32, 3)
    np.testing.assert_array_equal(padded[:500, :17], frame)
    assert padded[500:].max() == 0 and padded[:, 17:].max() == 0
    assert pad_frame(np.zeros((16, 32, 3), np.uint8)).shape == (16, 32, 3)


@pytest.mark.parametrize("frames, message", [
    ([], "no frames"),
    ([np.zeros((16, 16, 3), np.uint8), np.zeros((32, 16, 3), np.uint8)], "frames differ in size"),
    ([np.zeros((16, 16, 3), np.float32)], "must be uint8 arrays of shape"),
    ([np.zeros((16, 16), np.uint8)], "must be uint8 arrays of shape"),
])
def test_mp4_writer_rejects_bad_frames(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(tmp_path / "bad.mp4", frames, fps=10)


# ---------------------------------------------------------------- which episode is recorded


class StillAgent:
    """Always adds an object (counting) / pushes right."""

    def act(self, obs, t0: bool, eval_mode: bool) -> torch.Tensor:
        return torch.ones(1)


def test_run_episodes_records_the_first_episode_only():
    env = make_env("counting", seed=3, obs="rgb", options={"image_size": 32}, render=True)
    steps, frames = [], []
    rewards, _ = run_episodes(env, StillAgent(), 3, on_episode=lambda i, total, t: steps.append(t), frames=frames)
    assert len(rewards) == 3 and len(frames) == steps[0] + 1  # reset frame + one per step
    assert all(f.shape == (256 + CAPTION_HEIGHT, 256, 3) for f in frames)


def test_run_episodes_without_frames_does_not_render():
    env = make_env("counting", seed=3, obs="rgb")  # no render=True: any render() call would raise
    rewards, successes = run_episodes(env, StillAgent(), 2)
    assert len(rewards) == len(successes) == 2


def test_an_mp4_that_fails_midway_leaves_no_file(tmp_path):
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
    with pytest.raises(ValueError, match="frames differ in size"):
        write_mp4(tmp_path / "v.mp4", frames, 10.0)
    assert list(tmp_path.iterdir()) == []  # neither the video nor its temporary file
