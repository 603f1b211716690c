"""The online training loop: seeding, acting, storing episodes, updating, evaluating, checkpointing."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch
from tensordict import TensorDict

from tdmpc2 import resume
from tdmpc2.agent import TDMPC2
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.config import to_container
from tdmpc2.logger import Logger
from tdmpc2.progress import RunProgress, on_terminal
from tdmpc2.video import playback_fps, write_mp4


class TrainingHook(Protocol):
    """Called by the trainer; an extension uses it for periodic analysis.

    A hook with state a resumed run must continue from also defines
    ``state_dict()`` and ``load_state_dict(state)``.
    """

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
        self._obs, self._action, self._reward, self._terminated = [], [], [], []
        self._info = {k: [] for k in self.info_keys}

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

    @property
    def last_obs(self):
        """Return the latest observation (None before the episode starts)."""
        return self._obs[-1] if self._obs else None

    def total_reward(self) -> float:
        """Return the sum of the rewards so far, added in step order."""
        total = 0.0
        for reward in self._reward[1:]:
            total += reward
        return total

    def state_dict(self) -> dict:
        """Return everything recorded so far (lists of the arrays and numbers of each step)."""
        return {"obs": list(self._obs), "action": list(self._action), "reward": list(self._reward),
                "terminated": list(self._terminated), "info": {k: list(v) for k, v in self._info.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue the episode recorded in :meth:`state_dict` output."""
        self._obs, self._action = list(state["obs"]), list(state["action"])
        self._reward, self._terminated = list(state["reward"]), list(state["terminated"])
        self._info = {k: list(v) for k, v in state["info"].items()}

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


class EvaluationInterrupted(Exception):
    """Raised by :func:`run_episodes` when its ``should_stop`` callback asks it to stop."""


def run_episodes(env, agent: TDMPC2, episodes: int, on_episode=None, should_stop=None,
                 frames: list | None = None) -> tuple[list[float], list[float]]:
    """Play ``episodes`` episodes with ``agent.act(eval_mode=True)``; return per-episode rewards and successes.

    ``on_episode(index, reward, steps)`` is called after each episode when given;
    :class:`EvaluationInterrupted` is raised as soon as ``should_stop()`` is true.
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
            if should_stop is not None and should_stop():
                raise EvaluationInterrupted
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

    def state_dict(self) -> dict:
        """Return the generator's state and the held action."""
        return {"rng": self.rng.bit_generator.state, "action": self._action, "left": self._left}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` output."""
        self.rng.bit_generator.state = state["rng"]
        self._action, self._left = state["action"], state["left"]


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
        self._last_save: int | None = None
        self.short_episodes = 0
        self.stop_signal: str | None = None  # the signal that asked the run to stop
        self._step_open = False  # a stop came while the current step still owed updates
        self._update_base = agent.num_updates
        self.checkpoints: dict[str, int] = {}  # resumable checkpoints kept: name -> replay commit (tdmpc2.resume)
        self.resume_loop: dict | None = None  # the episode a resumed run continues (tdmpc2.resume.restore)
        self.progress = RunProgress(cfg.steps, cfg.train_minutes, enabled=False)

    # -- helpers ------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Return seconds since training started."""
        return time.time() - self.start_time

    def _out_of_time(self) -> bool:
        return self.cfg.train_minutes is not None and self.elapsed >= 60 * self.cfg.train_minutes

    def request_stop(self, signal_name: str) -> None:
        """Stop after the current update and write a resumable checkpoint (called on SIGTERM/SIGINT)."""
        self.stop_signal, self._stop = signal_name, True

    def _updates_owed(self) -> int:
        """Return the updates the current step still owes: the pretraining burst at the end of seeding, then ``updates_per_step``."""
        cfg = self.cfg
        if self.step < cfg.seed_steps:
            return 0
        due = cfg.pretrain_updates + (self.step - cfg.seed_steps) * cfg.updates_per_step
        return due - (self.agent.num_updates - self._update_base)

    def _finish_step(self) -> None:
        """Run the updates the step owes, then count it; a stop that comes first leaves the step open."""
        while not self._stop and self._updates_owed() > 0:
            self._update()
        self._step_open = self._updates_owed() > 0
        if not self._step_open:
            self.step += 1
            if self.step == self.cfg.seed_steps + 1:
                self.progress.phase("training")
        self.progress.tick(self.step, self.agent.num_updates, self.elapsed)

    def _store(self, episode: EpisodeRecorder) -> None:
        # Sub-trajectories span horizon+1 observations; shorter episodes cannot be sampled.
        if len(episode) < self.cfg.horizon + 1:
            self.short_episodes += 1
            return
        self.buffer.add(episode.to_tensordict())

    def checkpoint_payload(self) -> dict:
        """Return what a checkpoint holds: agent state, resolved config, progress counters.

        Raises :class:`~tdmpc2.agent.NonFiniteWeightsError` if a weight is NaN or infinite: no checkpoint
        (``best.pt``, ``final.pt`` or periodic) is ever written from such a model.
        """
        self.agent.check_finite()
        return {"agent": self.agent.state_dict(), "cfg": to_container(self.cfg), "step": self.step,
                "updates": self.agent.num_updates, "elapsed": self.elapsed}

    def save(self, name: str, episode: EpisodeRecorder | None = None, done: bool = True) -> Path:
        """Write checkpoint ``<run_dir>/<name>.pt`` atomically, resumable from this point of the loop; return its path.

        ``episode`` is the episode in progress and ``done`` whether it has ended (see :mod:`tdmpc2.resume`).
        """
        return resume.save(self, name, episode, done)

    def _save_stopped(self, episode: EpisodeRecorder, done: bool) -> None:
        """Write the resumable checkpoint of a run a signal stopped, and say so."""
        path = self.save(f"step_{self.step}", episode, done)
        self.logger.info(f"stopped by {self.stop_signal} at step {self.step:,} ({self.agent.num_updates:,} updates); "
                         f"resumable checkpoint: {path}", "yellow")

    def state_dict(self) -> dict:
        """Return the loop's counters and running statistics, from which a resumed run continues."""
        return {"step": self.step, "step_open": self._step_open, "update_base": self._update_base,
                "last_eval": self._last_eval, "last_save": self._last_save, "short_episodes": self.short_episodes,
                "episode_rewards": self._episode_rewards[-10:], "metrics": list(self._metrics),
                "last_log": self._last_log[1:], "elapsed": self.elapsed, "random_policy": self.random_policy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` output (the elapsed time counts on from where it was)."""
        self.step, self._step_open, self._update_base = state["step"], state["step_open"], state["update_base"]
        self._last_eval, self._last_save = state["last_eval"], state["last_save"]
        self.short_episodes = state["short_episodes"]
        self._episode_rewards, self._metrics = list(state["episode_rewards"]), list(state["metrics"])
        now = time.time()
        self._last_log = (now, *state["last_log"])
        self.start_time = now - state["elapsed"]
        self.random_policy.load_state_dict(state["random_policy"])
        self._stop = self._out_of_time()

    # -- evaluation ---------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_episodes`` episodes with the planner (eval mode); return mean reward and success.

        Evaluation draws from torch's generators forked for it, so it never changes what training draws.
        With ``save_video`` the first episode is recorded as ``videos/eval_step_<step>.mp4`` and sent to the trackers.
        Raises :class:`EvaluationInterrupted` when a stop is requested (no video is written then).
        """
        frames: list | None = [] if self.cfg.save_video else None
        cuda = [self.agent.device.index or 0] if self.agent.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            rewards, successes = run_episodes(self.eval_env, self.agent, self.cfg.eval_episodes,
                                              should_stop=lambda: self.stop_signal is not None, frames=frames)
        if frames:
            fps = playback_fps(self.eval_env)
            path = write_mp4(self.run_dir / "videos" / f"eval_step_{self.step}.mp4", frames, fps)
            self.logger.log_video("eval/video", path, frames, fps, self.agent.num_updates)
        return {"episode_reward": float(np.mean(rewards)), "success": float(np.mean(successes))}

    def _log_eval(self) -> None:
        start = self.eval_env.rng_state()
        self.progress.phase("evaluating")
        try:
            result = self.evaluate()
        except EvaluationInterrupted:
            self.eval_env.set_rng_state(start)  # a resumed run evaluates these episodes again
            return
        finally:
            self.progress.phase(self._phase())
        self._last_eval = (self.step, self.agent.num_updates)
        row = {"step": self.step, "updates": self.agent.num_updates, **result, "elapsed": self.elapsed}
        self.logger.log("eval", row)

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
        """Run the loop until ``steps`` environment steps (or ``train_minutes``); write the final checkpoint.

        After :meth:`request_stop` (SIGTERM, SIGINT) it stops after the current update and writes a
        resumable ``step_<N>.pt`` instead; ``stop_signal`` then names the signal.
        """
        cfg = self.cfg
        episode, done = EpisodeRecorder(cfg.info_keys, cfg.action_dim), True
        if self.resume_loop is not None:  # continuing a checkpoint's episode (tdmpc2.resume.restore)
            episode.load_state_dict(self.resume_loop["episode"])
            done, self.resume_loop = self.resume_loop["done"], None
        obs, episode_reward = episode.last_obs, episode.total_reward()
        # A resumed run's bar starts where the run was: its step (or minutes of train_minutes) and updates.
        self.progress = RunProgress(cfg.steps, cfg.train_minutes, enabled=on_terminal() and not self.logger.quiet,
                                    phase=self._phase(), step=self.step, updates=self.agent.num_updates,
                                    elapsed=self.elapsed)
        try:
            if self._step_open:  # resumed from a checkpoint written in the middle of a step's updates
                self._finish_step()
            while self.step <= cfg.steps and not self._stop:
                if (cfg.eval_freq and self.step > 0 and self.step % cfg.eval_freq == 0
                        and self._last_eval != (self.step, self.agent.num_updates)):
                    self._log_eval()
                if self._stop:
                    break  # a signal interrupted the evaluation: a resumed run starts with it
                if cfg.save_freq and self.step > 0 and self.step % cfg.save_freq == 0 and self._last_save != self.step:
                    self._last_save = self.step
                    self.save(f"step_{self.step}", episode, done)
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
                self._finish_step()
            self.progress.tick(self.step, self.agent.num_updates, self.elapsed, force=True)
            if self.stop_signal is None:
                if self._stop:
                    self.logger.info(f"stopped after train_minutes={cfg.train_minutes} at step {self.step:,}, "
                                     f"{self.agent.num_updates:,} updates")
                for hook in self.hooks:
                    hook.on_end(self)
                if cfg.eval_episodes and self._last_eval != (self.step, self.agent.num_updates):
                    self._log_eval()  # unless the periodic evaluation just saw this very agent
        finally:
            self.progress.close()
        if self.stop_signal is not None:  # a signal stopped the loop or interrupted the final evaluation
            return self._save_stopped(episode, done)
        path = self.save("final", episode, done)
        self.logger.info(f"final checkpoint: {path}")
