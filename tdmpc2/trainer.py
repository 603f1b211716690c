"""The online training loop: seeding, acting, storing episodes, updating, evaluating, checkpointing."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch
from tensordict import TensorDict

from tdmpc2.agent import TDMPC2
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.checkpoint import save_checkpoint
from tdmpc2.config import to_container
from tdmpc2.logger import Logger
from tdmpc2.progress import RunProgress, on_terminal
from tdmpc2.video import write_mp4

#: playback speed of evaluation videos when the task does not say (``metadata["render_fps"]``)
DEFAULT_VIDEO_FPS = 30


class TrainingHook(Protocol):
    """Called by the trainer; an extension uses it for periodic analysis."""

    def on_update(self, trainer: "OnlineTrainer") -> None: ...

    def on_end(self, trainer: "OnlineTrainer") -> None: ...


class EpisodeRecorder:
    """Collects one episode as arrays and returns it as a replay TensorDict of length T+1.

    Step t holds the observation, the action and reward that led to it (NaN at
    reset), the termination flag and the task's info entries. Building one
    TensorDict per episode instead of one per step keeps collection fast.
    """

    def __init__(self, info_keys: Iterable[str], action_dim: int):
        self.info_keys, self.action_dim = list(info_keys), action_dim
        self._obs: list = []

    def start(self, obs, info: dict) -> None:
        """Begin a new episode at its reset observation."""
        nan_action = np.full(self.action_dim, np.nan, dtype=np.float32)
        self._obs, self._action, self._reward, self._terminated = [obs], [nan_action], [np.nan], [0.0]
        self._info = {k: [float(info[k])] for k in self.info_keys}

    def add(self, obs, info: dict, action, reward, terminated: bool) -> None:
        """Append one step."""
        self._obs.append(obs)
        self._action.append(np.asarray(action, dtype=np.float32).reshape(self.action_dim))
        self._reward.append(float(reward))
        self._terminated.append(float(terminated))
        for k in self.info_keys:
            self._info[k].append(float(info[k]))

    def __len__(self) -> int:
        """Return the number of observations recorded (steps + 1)."""
        return len(self._obs)

    def to_tensordict(self) -> TensorDict:
        """Return the episode as a TensorDict of length ``len(self)``."""
        n = len(self._obs)
        info = TensorDict({k: torch.tensor(v, dtype=torch.float32) for k, v in self._info.items()}, batch_size=[n])
        return TensorDict(
            {
                "obs": torch.from_numpy(np.stack(self._obs)),
                "action": torch.from_numpy(np.stack(self._action)),
                "reward": torch.tensor(self._reward, dtype=torch.float32).unsqueeze(-1),
                "terminated": torch.tensor(self._terminated, dtype=torch.float32).unsqueeze(-1),
                "info": info,
            },
            batch_size=[n],
        )


def run_episodes(env, agent: TDMPC2, episodes: int, on_episode=None,
                 frames: list | None = None) -> tuple[list[float], list[float]]:
    """Play ``episodes`` episodes with ``agent.act(eval_mode=True)``; return per-episode rewards and successes.

    ``on_episode(index, reward, steps)`` is called after each episode when given.
    When ``frames`` is a list, the first episode's video frames (``env.render()``
    at reset and after each step: steps + 1 of them) are appended to it.
    """
    rewards, successes = [], []
    for i in range(episodes):
        obs, info = env.reset()
        record = frames is not None and i == 0
        if record:
            frames.append(env.render())
        done, total, success, t = False, 0.0, 0.0, 0
        while not done:
            action = agent.act(obs, t0=t == 0, eval_mode=True)
            obs, reward, terminated, truncated, info = env.step(action.numpy())
            if record:
                frames.append(env.render())
            total += float(reward)
            success = max(success, float(info.get("success", 0.0)))
            done, t = terminated or truncated, t + 1
        rewards.append(total)
        successes.append(success)
        if on_episode is not None:
            on_episode(i, total, t)
    return rewards, successes


class RandomPolicy:
    """Uniform actions in [-1, 1], each held for ``repeat`` steps (reset at episode start)."""

    def __init__(self, action_dim: int, repeat: int, rng: np.random.Generator):
        self.action_dim, self.repeat, self.rng = action_dim, repeat, rng
        self._action, self._left = None, 0

    def reset(self) -> None:
        """Forget the held action."""
        self._left = 0

    def __call__(self) -> np.ndarray:
        """Return the next action."""
        if self._left == 0:
            self._action = self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)
            self._left = self.repeat
        self._left -= 1
        return self._action


class OnlineTrainer:
    """Runs TD-MPC2's online loop and writes ``train.csv``, ``eval.csv``, checkpoints and (``save_video``)
    evaluation videos into ``run_dir``, with one progress bar over the run on a terminal."""

    def __init__(self, cfg, env, eval_env, agent: TDMPC2, buffer: EpisodeBuffer, logger: Logger, run_dir: str | Path,
                 hooks: Iterable[TrainingHook] = ()):
        self.cfg, self.env, self.eval_env, self.agent, self.buffer, self.logger = cfg, env, eval_env, agent, buffer, logger
        self.run_dir = Path(run_dir)
        self.hooks = list(hooks)
        self.step = 0
        self.start_time = time.time()
        self.random_policy = RandomPolicy(cfg.action_dim, cfg.random_action_repeat, np.random.default_rng(cfg.seed))
        self._metrics: list[dict[str, float]] = []
        self._episode_rewards: list[float] = []
        self._last_log = (time.time(), 0, 0)
        self._stop = False
        self._last_eval: tuple[int, int] | None = None
        self.short_episodes = 0
        self.progress = RunProgress(cfg.steps, cfg.train_minutes, enabled=False)

    # -- helpers ------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Return seconds since training started."""
        return time.time() - self.start_time

    def _out_of_time(self) -> bool:
        return self.cfg.train_minutes is not None and self.elapsed >= 60 * self.cfg.train_minutes

    def _store(self, episode: EpisodeRecorder) -> None:
        # Sub-trajectories span horizon+1 observations; shorter episodes cannot be sampled.
        if len(episode) < self.cfg.horizon + 1:
            self.short_episodes += 1
            return
        self.buffer.add(episode.to_tensordict())

    def checkpoint_payload(self) -> dict:
        """Return what a checkpoint holds: agent state, resolved config, progress counters."""
        return {"agent": self.agent.state_dict(), "cfg": to_container(self.cfg), "step": self.step,
                "updates": self.agent.num_updates, "elapsed": self.elapsed}

    def save(self, name: str) -> Path:
        """Write checkpoint ``<run_dir>/<name>.pt`` atomically; return its path."""
        return save_checkpoint(self.run_dir / f"{name}.pt", self.checkpoint_payload())

    # -- evaluation ---------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_episodes`` episodes with the planner (eval mode); return mean reward and success.

        With ``save_video`` the first episode is recorded as ``videos/eval_step_<step>.mp4`` and sent to the trackers.
        """
        frames: list | None = [] if self.cfg.save_video else None
        rewards, successes = run_episodes(self.eval_env, self.agent, self.cfg.eval_episodes, frames=frames)
        if frames:
            fps = self.eval_env.metadata.get("render_fps") or DEFAULT_VIDEO_FPS
            path = write_mp4(self.run_dir / "videos" / f"eval_step_{self.step}.mp4", frames, fps)
            self.logger.log_video("eval/video", path, frames, fps, self.agent.num_updates)
        return {"episode_reward": float(np.mean(rewards)), "success": float(np.mean(successes))}

    def _log_eval(self) -> None:
        self._last_eval = (self.step, self.agent.num_updates)
        self.progress.phase("evaluating")
        row = {"step": self.step, "updates": self.agent.num_updates, **self.evaluate(), "elapsed": self.elapsed}
        self.logger.log("eval", row)
        self.progress.phase(self._phase())

    def _phase(self) -> str:
        if self.step < self.cfg.seed_steps:
            return "seeding"
        if self.step == self.cfg.seed_steps:
            return "pretraining"
        return "training"

    # -- updates ------------------------------------------------------------
    def _update(self) -> None:
        self._metrics.append(self.agent.update(self.buffer.sample()))
        for hook in self.hooks:
            hook.on_update(self)
        if self.agent.num_updates % self.cfg.log_freq == 0:
            self._log_train()
        if self._out_of_time():
            self._stop = True
        self.progress.tick(self.step, self.agent.num_updates, self.elapsed)

    def _log_train(self) -> None:
        now, last_step, last_updates = time.time(), *self._last_log[1:]
        dt = max(now - self._last_log[0], 1e-9)
        row = {"step": self.step, "updates": self.agent.num_updates}
        if self._episode_rewards:
            row["episode_reward"] = float(np.mean(self._episode_rewards[-10:]))
        if self._metrics:
            keys = self._metrics[-1].keys()
            row.update({k: float(np.mean([m[k] for m in self._metrics if k in m])) for k in keys})
        row.update(steps_per_second=(self.step - last_step) / dt, updates_per_second=(self.agent.num_updates - last_updates) / dt,
                   elapsed=self.elapsed)
        self.logger.log("train", row)
        self._metrics.clear()
        self._last_log = (now, self.step, self.agent.num_updates)

    # -- main loop ----------------------------------------------------------
    def train(self) -> None:
        """Run the loop until ``steps`` environment steps (or ``train_minutes``); write the final checkpoint."""
        cfg = self.cfg
        episode = EpisodeRecorder(cfg.info_keys, cfg.action_dim)
        done, episode_reward = True, 0.0
        obs = None
        self.progress = RunProgress(cfg.steps, cfg.train_minutes, enabled=on_terminal() and not self.logger.quiet,
                                    phase=self._phase())
        try:
            while self.step <= cfg.steps and not self._stop:
                if cfg.eval_freq and self.step > 0 and self.step % cfg.eval_freq == 0:
                    self._log_eval()
                if cfg.save_freq and self.step > 0 and self.step % cfg.save_freq == 0:
                    self.save(f"step_{self.step}")
                if done:
                    if len(episode):
                        self._store(episode)
                        self._episode_rewards.append(episode_reward)
                    obs, info = self.env.reset()
                    episode.start(obs, info)
                    episode_reward = 0.0
                    self.random_policy.reset()
                if self.step == cfg.steps:
                    break
                if self.step >= cfg.seed_steps and not cfg.random_policy:
                    action = self.agent.act(obs, t0=len(episode) == 1).numpy()
                else:
                    action = self.random_policy()
                obs, reward, terminated, truncated, info = self.env.step(action)
                done = terminated or truncated
                episode_reward += float(reward)
                episode.add(obs, info, action, reward, terminated)
                if self.step >= cfg.seed_steps:
                    if self.step == cfg.seed_steps:
                        self.progress.phase("pretraining")
                        if done:  # the last seeding episode must be in the buffer before pretraining
                            self._store(episode)
                            episode = EpisodeRecorder(cfg.info_keys, cfg.action_dim)
                        self.logger.info(f"seeding done ({cfg.seed_steps:,} steps, {len(self.buffer):,} stored, "
                                         f"{self.short_episodes:,} episodes shorter than horizon+1 skipped); "
                                         f"pretraining with {cfg.pretrain_updates:,} updates")
                    n = cfg.pretrain_updates if self.step == cfg.seed_steps else cfg.updates_per_step
                    for _ in range(n):
                        self._update()
                        if self._stop:
                            break
                self.step += 1
                if self.step == cfg.seed_steps + 1:
                    self.progress.phase("training")
                self.progress.tick(self.step, self.agent.num_updates, self.elapsed)
            self.progress.tick(self.step, self.agent.num_updates, self.elapsed, force=True)
            if self._stop:
                self.logger.info(f"stopped after train_minutes={cfg.train_minutes} at step {self.step:,}, "
                                 f"{self.agent.num_updates:,} updates")
            for hook in self.hooks:
                hook.on_end(self)
            if cfg.eval_episodes and self._last_eval != (self.step, self.agent.num_updates):
                self._log_eval()  # unless the periodic evaluation just saw this very agent
        finally:
            self.progress.close()
        path = self.save("final")
        self.logger.info(f"final checkpoint: {path}")
