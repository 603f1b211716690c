"""Facts about the counting environment and its batch renderer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy import ndimage

from envs.counting import (
    COLOUR_HIGH,
    COLOUR_LOW,
    SHAPES,
    CountingConfig,
    CountingEnv,
    make_counting_env,
    object_radius,
    render_batch,
    shape_masks,
)

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def components(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected non-black regions of a (3, S, S) frame."""
    return ndimage.label(frame.any(axis=0), structure=EIGHT_CONNECTED)


def env_with(**options) -> CountingEnv:
    return make_counting_env(options, seed=0)


# --------------------------------------------------------------------------
# Frames: objects are separate, complete, coloured and sized as specified
# --------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [64, 32, 18])
def test_render_batch_components_equal_counts_for_every_shape(image_size):
    rng = np.random.default_rng(1)
    per_case = 30
    counts = np.repeat(np.arange(9), len(SHAPES) * per_case)
    shapes = np.tile(np.repeat(np.arange(len(SHAPES)), per_case), 9)
    colours = rng.integers(COLOUR_LOW, COLOUR_HIGH, size=(len(counts), 3)).astype(np.uint8)
    frames = render_batch(counts, shapes, colours, rng, image_size=image_size)
    assert frames.shape == (len(counts), 3, image_size, image_size)
    assert frames.dtype == np.uint8
    mask_sizes = shape_masks(object_radius(image_size)).reshape(len(SHAPES), -1).sum(axis=1)
    for frame, count, shape, colour in zip(frames, counts, shapes, colours):
        labels, found = components(frame)
        assert found == count
        # Every object is whole (never clipped by the border) ...
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        assert np.all(sizes == mask_sizes[shape])
        # ... and every non-black pixel carries exactly the requested colour.
        lit = labels > 0
        assert np.array_equal(frame[:, lit], np.repeat(colour[:, None], lit.sum(), axis=1))


def test_zero_objects_is_all_black():
    rng = np.random.default_rng(0)
    frames = render_batch(np.zeros(20, int), np.arange(20) % 4, np.full((20, 3), 200, np.uint8), rng)
    assert not frames.any()
    env = env_with(initial_count=0)
    obs, info = env.reset()
    assert info["count"] == 0 and not obs.any()


def test_objects_span_seven_pixels_at_64_and_scale_with_size():
    rng = np.random.default_rng(2)
    for size, side in [(64, 7), (32, 5), (128, 13)]:
        frame = render_batch([1], [SHAPES.index("square")], [[100, 100, 100]], rng, image_size=size)[0]
        rows, cols = np.nonzero(frame.any(axis=0))
        assert rows.max() - rows.min() + 1 == side
        assert cols.max() - cols.min() + 1 == side


def test_bar_is_a_two_pixel_wide_diagonal_stroke():
    bar = shape_masks(3)[SHAPES.index("bar")]
    for row in range(6):
        assert np.flatnonzero(bar[row]).tolist() == [row, row + 1]
    assert np.flatnonzero(bar[6]).tolist() == [6]


def test_render_batch_is_reproducible_from_the_generator():
    args = (np.array([3, 8, 5]), np.array([0, 1, 3]), np.full((3, 3), 99, np.uint8))
    first = render_batch(*args, np.random.default_rng(7))
    again = render_batch(*args, np.random.default_rng(7))
    other = render_batch(*args, np.random.default_rng(8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_render_batch_frame_does_not_depend_on_the_rest_of_the_batch():
    colours = np.full((2, 3), 120, np.uint8)
    alone = render_batch([2, 2], [1, 1], colours, np.random.default_rng(3))
    mixed = render_batch([2, 8], [1, 1], colours, np.random.default_rng(3))
    assert np.array_equal(alone[0], mixed[0])


def test_positions_are_spread_over_the_image():
    rng = np.random.default_rng(4)
    frames = render_batch(np.full(400, 8), np.zeros(400, int), np.full((400, 3), 90, np.uint8), rng)
    lit = frames.any(axis=1).mean(axis=0)  # per-pixel frequency of being covered
    quadrants = [lit[:32, :32], lit[:32, 32:], lit[32:, :32], lit[32:, 32:]]
    assert all(q.mean() > 0.05 for q in quadrants)
    assert (lit > 0).mean() > 0.8  # most pixels get covered some time


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": [9]}, "counts must lie in 0..8"),
        ({"counts": [-1]}, "counts must lie in 0..8"),
        ({"counts": [1.5]}, "integers"),
        ({"shapes": [4]}, "shapes must lie in 0..3"),
        ({"colours": [[1, 2]]}, "colours must have shape"),
        ({"colours": [[1, 2, 300]]}, "0..255"),
        ({"rng": 0}, "numpy Generator"),
        ({"image_size": 16}, "do not fit"),
        ({"image_size": 8}, "image_size=8 is unsupported"),
    ],
)
def test_render_batch_rejects_bad_input(kwargs, message):
    args = {"counts": [1], "shapes": [0], "colours": [[50, 60, 70]], "rng": np.random.default_rng(0)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        render_batch(**args)


# --------------------------------------------------------------------------
# The environment: observations, episode constants, positions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [64, 32])
def test_env_frames_show_info_count_in_episode_shape_and_colour(image_size):
    env = make_counting_env({"image_size": image_size, "time_limit": 12}, seed=5)
    rng = np.random.default_rng(5)
    mask_sizes = shape_masks(object_radius(image_size)).reshape(len(SHAPES), -1).sum(axis=1)
    seen_shapes, changed, comparable = set(), 0, 0
    for _ in range(60):
        obs, info = env.reset()
        shape, colour = info["shape"], info["colour"]
        assert COLOUR_LOW <= colour.min() and colour.max() < COLOUR_HIGH
        seen_shapes.add(shape)
        done, previous = False, None
        while True:
            assert obs in env.observation_space
            labels, found = components(obs)
            assert found == info["count"]
            assert np.all(np.bincount(labels.ravel())[1:] == mask_sizes[shape])
            lit = labels > 0
            assert np.all(obs[:, lit] == colour[:, None])
            assert info["shape"] == shape and np.array_equal(info["colour"], colour)
            # Centres from info sit on the objects.
            assert info["positions"].shape == (info["count"], 2)
            ys, xs = info["positions"].T
            assert lit[ys, xs].all()
            if previous is not None and info["count"] > 0:
                comparable += 1
                changed += not np.array_equal(obs, previous)
            if done:
                break
            previous = obs.copy()
            obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
            done = terminated or truncated
    assert seen_shapes == set(range(len(SHAPES)))
    assert changed >= 0.95 * comparable  # positions are redrawn every step


def test_positions_are_redrawn_even_when_the_count_is_clamped():
    env = env_with(initial_count=8, time_limit=50)
    obs, _ = env.reset()
    frames = [obs]
    for _ in range(20):
        obs, _, _, _, info = env.step(np.ones(1, np.float32))
        assert info["count"] == 8
        frames.append(obs)
    assert len({f.tobytes() for f in frames}) == len(frames)


def test_returned_observation_is_not_modified_by_later_steps():
    env = env_with(initial_count=2, time_limit=10)
    obs, _ = env.reset()
    kept = obs.copy()
    for _ in range(5):
        env.step(np.array([-1.0], np.float32))
    assert np.array_equal(obs, kept)


def test_initial_count_is_uniform_by_default_or_fixed():
    env = env_with()
    counts = np.array([env.reset()[1]["count"] for _ in range(900)])
    histogram = np.bincount(counts, minlength=9)
    assert len(histogram) == 9 and histogram.min() > 60  # expected 100 each
    fixed = env_with(initial_count=6)
    assert {fixed.reset()[1]["count"] for _ in range(20)} == {6}


# --------------------------------------------------------------------------
# Dynamics, reward and episode ends
# --------------------------------------------------------------------------


def run(env: CountingEnv, start: int, actions: list[float]):
    """Reset at `start` objects and apply actions; return the step results."""
    env.reset(options={"count": start})
    return [env.step(np.array([a], np.float32)) for a in actions]


def test_action_sign_adds_or_removes_one_and_count_is_clamped():
    env = env_with(target=8, time_limit=20)
    results = run(env, 0, [-1.0, -0.3, 0.0, 0.7, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert [r[4]["count"] for r in results] == [0, 0, 1, 2, 3, 2, 3, 4, 5, 6, 7, 8]
    env = env_with(target=0, time_limit=20)
    results = run(env, 8, [1.0, 1.0, -0.01])
    assert [r[4]["count"] for r in results] == [8, 8, 7]


def test_out_of_range_and_scalar_actions_are_accepted():
    env = env_with(target=8, time_limit=20)
    env.reset(options={"count": 4})
    assert env.step(np.array([5.0], np.float32))[4]["count"] == 5
    assert env.step(np.array([-7.0]))[4]["count"] == 4
    assert env.step(0.2)[4]["count"] == 5
    assert env.step(np.float32(-0.5))[4]["count"] == 4
    assert env.step(np.array(1.0))[4]["count"] == 5


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.array([np.nan], np.float32), "finite"),
        (np.array([np.inf]), "finite"),
        (float("-inf"), "finite"),
        (np.zeros(2, np.float32), r"shape \(1,\)"),
        (np.zeros((1, 1), np.float32), r"shape \(1,\)"),
        (np.zeros(0, np.float32), r"shape \(1,\)"),
        ("up", "number or an array"),
    ],
)
def test_bad_actions_raise(action, message):
    env = env_with()
    env.reset()
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize("target", [0, 4, 8])
def test_reward_is_one_exactly_at_the_target(target):
    env = env_with(target=target, time_limit=20)
    for count in range(9):
        obs, info = env.reset(options={"count": count})
        assert info["obs_reward"] == float(count == target)
        assert components(obs)[1] == count
    # Walk up from 0: reward follows the count of the new observation.
    results = run(env, 0, [1.0] * min(target + 1, 8) if target else [1.0])
    for obs, reward, _, _, info in results:
        assert reward == info["obs_reward"] == float(info["count"] == target)
        assert isinstance(reward, float)


def test_termination_comes_one_step_after_success():
    env = env_with(target=4, time_limit=20)
    results = run(env, 1, [1.0, 1.0, 1.0, -1.0])
    rewards = [r[1] for r in results]
    terminated = [r[2] for r in results]
    truncated = [r[3] for r in results]
    assert rewards == [0.0, 0.0, 1.0, 0.0]
    assert terminated == [False, False, False, True]
    assert truncated == [False] * 4
    assert [r[4]["reward_pre"] for r in results] == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones(1, np.float32))


@pytest.mark.parametrize("action", [1.0, -1.0])
def test_starting_at_the_target_terminates_on_the_first_step(action):
    env = env_with(target=4)
    obs, info = env.reset(options={"count": 4})
    assert info["obs_reward"] == 1.0
    _, reward, terminated, truncated, info = env.step(np.array([action], np.float32))
    assert terminated is True and truncated is False
    assert info["count"] == 4 + int(action) and reward == 0.0


def test_staying_on_the_target_by_clamping_still_terminates_next_step():
    env = env_with(target=0, time_limit=20)
    env.reset(options={"count": 1})
    _, reward, terminated, _, _ = env.step(np.array([-1.0], np.float32))
    assert reward == 1.0 and terminated is False
    _, reward, terminated, _, info = env.step(np.array([-1.0], np.float32))
    assert info["count"] == 0 and reward == 1.0 and terminated is True


def test_truncation_at_the_time_limit():
    env = env_with(target=8, time_limit=4)
    assert env.max_episode_steps == 4 and env.episodic is True
    results = run(env, 0, [-1.0] * 4)
    assert [r[3] for r in results] == [False, False, False, True]
    assert [r[2] for r in results] == [False] * 4
    assert [r[4]["elapsed_steps"] for r in results] == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones(1, np.float32))


def test_success_on_the_last_step_truncates_with_reward_one():
    env = env_with(target=4, time_limit=3)
    results = run(env, 1, [1.0, 1.0, 1.0])
    _, reward, terminated, truncated, _ = results[-1]
    assert reward == 1.0 and terminated is False and truncated is True


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        CountingEnv().step(np.ones(1, np.float32))


# --------------------------------------------------------------------------
# Seeding and API conformance
# --------------------------------------------------------------------------


def rollout(env: CountingEnv, seed: int | None, steps: int = 30):
    """Return the frames and infos of `steps` steps with +1/-1 alternating in pairs."""
    obs, info = env.reset(seed=seed)
    frames, infos = [obs], [info]
    for t in range(steps):
        obs, _, terminated, truncated, info = env.step(np.array([1.0 if t % 4 < 2 else -1.0], np.float32))
        frames.append(obs)
        infos.append(info)
        if terminated or truncated:
            obs, info = env.reset()
            frames.append(obs)
            infos.append(info)
    return np.stack(frames), [(i["count"], i["shape"], tuple(i["colour"])) for i in infos]


def test_seeding_reproduces_frames():
    first = rollout(CountingEnv(), seed=11)
    env = CountingEnv()
    rollout(env, seed=3)  # use the generator first: reset(seed=...) must restart it
    again = rollout(env, seed=11)
    other = rollout(CountingEnv(), seed=12)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    assert not np.array_equal(first[0], other[0])
    made = rollout(make_counting_env(seed=11), seed=None)
    assert np.array_equal(first[0], made[0])


def test_check_env_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "no spec" notice is about registration
        check_env(CountingEnv(render_mode="rgb_array"))
        check_env(make_counting_env({"image_size": 32}))


def test_render_returns_the_frame_as_hwc():
    env = CountingEnv(render_mode="rgb_array", seed=0)
    obs, _ = env.reset()
    assert np.array_equal(env.render(), obs.transpose(1, 2, 0))
    assert CountingEnv(seed=0).render() is None


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def test_config_defaults_match_the_paper():
    config = CountingConfig()
    assert (config.target, config.max_count, config.time_limit, config.image_size) == (4, 8, 4, 64)
    assert config.initial_count == "uniform"
    env = CountingEnv(config)
    assert env.observation_space.shape == (3, 64, 64)
    assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
    assert env.action_space.low[0] == -1.0 and env.action_space.high[0] == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": 9}, "target=9 must be in 0..max_count"),
        ({"target": -1}, "target=-1"),
        ({"max_count": 0, "target": 0}, "max_count=0 must be >= 1"),
        ({"max_count": 65, "target": 0}, "at most 64 fit"),
        ({"image_size": 16}, "max_count=8 objects do not fit"),
        ({"image_size": 8}, r"allowed: an int in \[16, 1024\]"),
        ({"image_size": 64.0}, "image_size must be an int"),
        ({"time_limit": 0}, "time_limit=0 must be >= 1"),
        ({"time_limit": True}, "time_limit must be an int"),
        ({"initial_count": "random"}, "'uniform' or an int"),
        ({"initial_count": 9}, "initial_count=9"),
        ({"colour": 3}, r"unknown option\(s\) \['colour'\]; allowed keys: \['target'"),
    ],
)
def test_bad_config_raises(options, message):
    with pytest.raises(ValueError, match=message):
        make_counting_env(options)


def test_small_images_fit_fewer_objects():
    env = make_counting_env({"image_size": 16, "max_count": 4, "target": 2}, seed=0)
    for count in range(5):
        obs, _ = env.reset(options={"count": count})
        assert components(obs)[1] == count


def test_bad_reset_count_raises():
    env = env_with()
    with pytest.raises(ValueError, match="count=9"):
        env.reset(options={"count": 9})
