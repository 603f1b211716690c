"""Facts about config resolution (tdmpc2/config.py), the trainer and train.py run end to end."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from envs import UnknownTaskError
from pjepa_ext.plugin import build_agent
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.checkpoint import load_checkpoint
from tdmpc2.config import ConfigError, resolve, set_threads, to_container, validate
from tdmpc2.logger import Logger
from tdmpc2.trainer import OnlineTrainer
from envs import make_task_env

# ---------------------------------------------------------------- config resolution


def test_resolve_fills_derived_values_from_the_task(builders):
    cfg = builders.compose_config("task=pendulum", "device=cpu", "compile=auto")
    env = make_task_env(cfg, seed=0)
    resolved = resolve(cfg, env.task_info)
    assert resolved.obs_type == "state" and list(resolved.obs_shape) == [3]
    assert resolved.action_dim == 1 and resolved.episode_length == 200 and resolved.episodic is False
    assert resolved.discount == pytest.approx(0.975)
    assert resolved.seed_steps == 1000 and resolved.pretrain_updates == 1000
    assert resolved.buffer_capacity == min(cfg.buffer_size, cfg.steps)
    assert (resolved.enc_dim, resolved.mlp_dim, resolved.latent_dim, resolved.num_enc_layers, resolved.num_q) == (
        256, 512, 512, 2, 5)  # model_size 5
    assert resolved.device == "cpu" and resolved.compile is True  # compile=auto: measured faster on CPU too
    assert cfg.discount is None and "obs_shape" not in cfg  # the input is left untouched


def test_explicit_values_win_over_derived_ones(builders):
    cfg = builders.compose_config("model_size=1", "latent_dim=64", "discount=0.9", "seed_steps=600",
                               "pretrain_updates=5", "buffer_size=50", "device=cpu", "compile=true")
    resolved = resolve(cfg, builders.toy_task_info(episode_length=500))
    assert resolved.latent_dim == 64 and resolved.mlp_dim == 384 and resolved.num_q == 2
    assert resolved.discount == 0.9 and resolved.seed_steps == 600 and resolved.pretrain_updates == 5
    assert resolved.buffer_capacity == 50 and resolved.compile is True


def test_discount_follows_the_episode_length(builders):
    cfg = builders.compose_config("device=cpu")
    assert resolve(cfg, builders.toy_task_info(episode_length=500)).discount == pytest.approx(0.99)
    assert resolve(cfg, builders.toy_task_info(episode_length=4)).discount == pytest.approx(0.95)
    assert resolve(cfg, builders.toy_task_info(episode_length=500)).seed_steps == 2500


@pytest.mark.parametrize(
    "override, message",
    [
        ("model_size=3", "model_size=3 is unknown; allowed values: 1, 5, 19, 48, 317"),
        ("batch_size=0", "batch_size must be a positive integer, got 0"),
        ("horizon=1.5", "horizon must be a positive integer"),
        ("steps=-5", "steps must be a positive integer"),
        ("eval_freq=-1", "eval_freq must be a non-negative integer"),
        ("lr=-0.1", "lr must be a positive number"),
        ("tau=0", "tau must be a positive number"),
        ("compile=maybe", "compile='maybe'; allowed values: auto, true, false"),
        ("obs=depth", "obs='depth'; allowed values: state, rgb"),
        ("encoder=vit", "encoder='vit'; allowed values: default, resnet"),
        ("num_elites=600", r"num_elites \(600\) must not exceed num_samples \(512\)"),
        ("num_pi_trajs=512", r"num_pi_trajs \(512\) must be below num_samples \(512\)"),
        ("min_std=3", r"min_std \(3\) must not exceed max_std \(2\)"),
        ("train_minutes=0", "train_minutes must be positive or null"),
        ("device=tpu", "device='tpu' is not a device; allowed: auto, cpu, cuda, cuda:N"),
        ("latent_dim=20", r"latent_dim \(20\) must be a multiple of simnorm_dim \(8\)"),
    ],
)
def test_bad_config_values_raise_config_error(builders, override, message):
    cfg = builders.compose_config(override)
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, builders.toy_task_info())


def test_validate_accepts_the_shipped_config(builders):
    validate(builders.compose_config())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda(builders):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve(builders.compose_config("device=cuda"), builders.toy_task_info())


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("threads", [0, -2, "many"])
def test_bad_thread_count(threads):
    with pytest.raises(ConfigError, match="threads must be a positive integer or auto"):
        set_threads(threads)
    assert set_threads(1) == 1 and torch.get_num_threads() == 1


def test_unknown_task_names_the_known_ones(builders):
    with pytest.raises(UnknownTaskError, match="Unknown task 'pendulm'. Did you mean 'pendulum'?"):
        make_task_env(builders.compose_config("task=pendulm"), seed=0)


def test_train_py_exits_with_code_2_and_the_message_on_stderr(builders, tmp_path):
    result = builders.run_train_py("task=pendulm", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Unknown task 'pendulm'" in result.stderr and "Did you mean 'pendulum'?" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- a short training run

UPDATES, LOG_FREQ = 149, 25  # pretraining updates at the end of seeding, then one per step


@pytest.fixture(scope="module")
def pendulum_run(builders, tmp_path_factory):
    """Train stock TD-MPC2 on pendulum for 149 updates (model_size 1, batch 64, horizon 3, no planning)."""
    run_dir = tmp_path_factory.mktemp("pendulum") / "run"
    result = builders.run_train_py(
        "task=pendulum", "model_size=1", "batch_size=64", "horizon=3", "mpc=false",
        "steps=250", "seed_steps=200", "pretrain_updates=100", "eval_freq=0", "eval_episodes=1",
        f"log_freq={LOG_FREQ}", "save_freq=0", f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_training_run_writes_its_files(pendulum_run):
    for name in ("config.yaml", "train.csv", "eval.csv", "final.pt"):
        assert (pendulum_run / name).is_file(), name
    leftovers = [p.name for p in pendulum_run.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_training_run_saves_the_resolved_config(pendulum_run):
    cfg = OmegaConf.load(pendulum_run / "config.yaml")
    assert cfg.task == "pendulum" and cfg.variant == "stock" and cfg.size == "none" and cfg.aux == "none"
    assert cfg.discount == pytest.approx(0.975) and cfg.latent_dim == 128 and cfg.num_q == 2
    assert list(cfg.obs_shape) == [3] and cfg.action_dim == 1 and cfg.buffer_capacity == 250


def test_training_loss_falls(pendulum_run):
    train = pd.read_csv(pendulum_run / "train.csv")
    assert train["updates"].tolist() == list(range(LOG_FREQ, UPDATES + 1, LOG_FREQ))
    assert train["total_loss"].notna().all() and (train["total_loss"] > 0).all()
    first, last = train["total_loss"].iloc[0], train["total_loss"].iloc[-1]
    assert last < 0.85 * first, train["total_loss"].tolist()


def test_training_run_evaluates_at_the_end(pendulum_run):
    evaluation = pd.read_csv(pendulum_run / "eval.csv")
    assert len(evaluation) == 1
    row = evaluation.iloc[0]
    assert row["step"] == 250 and row["updates"] == UPDATES
    assert -200 * 16.3 <= row["episode_reward"] <= 0  # pendulum's reward range over 200 steps


def test_final_checkpoint_restores_the_agent(pendulum_run):
    payload = load_checkpoint(pendulum_run / "final.pt")
    saved_cfg = OmegaConf.load(pendulum_run / "config.yaml")
    assert payload["cfg"] == to_container(saved_cfg)
    assert payload["step"] == 250 and payload["updates"] == UPDATES
    agent, _ = build_agent(OmegaConf.create(payload["cfg"]))
    agent.load_state_dict(payload["agent"])
    assert agent.num_updates == UPDATES
    action = agent.act(torch.zeros(3), t0=True, eval_mode=True)
    assert action.shape == (1,) and action.abs().max() <= 1


def test_evaluate_py_plays_the_checkpoint_and_records_its_first_episode(builders, pendulum_run, tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    mp4 = tmp_path / "videos" / "episode.mp4"
    result = builders.run_evaluate_py(f"checkpoint={pendulum_run / 'final.pt'}", "eval_episodes=2", "mpc=false",
                                      f"video={mp4}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "episode   2: reward" in result.stdout and "mean episode reward" in result.stdout
    with imageio.get_reader(mp4) as reader:
        assert sum(1 for _ in reader) == 201  # the reset frame and one per step of pendulum's 200


@pytest.mark.parametrize("args, message", [
    (("video=episode.gif",), "give a path ending in .mp4"),
    (("task=cartpole",), "trained on task 'pendulum', not 'cartpole'"),
    (("episodes=3",), "unknown argument"),
])
def test_evaluate_py_rejects_bad_arguments_with_a_message(builders, pendulum_run, args, message):
    result = builders.run_evaluate_py(f"checkpoint={pendulum_run / 'final.pt'}", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- the trainer in-process

def trainer_config(builders, *overrides: str):
    """Return the composed (unresolved) pendulum config of the tiny model, without planning, with ``overrides``."""
    return builders.compose_config(*builders.tiny_model, "batch_size=8", "device=cpu", "compile=false", "task=pendulum",
                                "mpc=false", "eval_freq=0", "eval_episodes=1", *overrides)



def test_seeding_shorter_than_an_episode_is_rejected_or_works(builders, tmp_path):
    cfg = trainer_config(builders, "steps=150", "seed_steps=100", "pretrain_updates=2", "save_freq=0", "log_freq=1000")
    env, eval_env = make_task_env(cfg, 0), make_task_env(cfg, 1)
    try:
        cfg = resolve(cfg, env.task_info)
    except ConfigError as err:
        assert "seed_steps" in str(err)
        return
    agent = builders.make_agent(cfg)
    buffer = EpisodeBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, seed=0)
    OnlineTrainer(cfg, env, eval_env, agent, buffer, Logger(tmp_path, quiet=True), tmp_path).train()
    assert (tmp_path / "final.pt").is_file()


@pytest.mark.parametrize("eval_freq, steps", [(115, [115, 230]), (100, [100, 200, 230])])
def test_trainer_evaluates_periodically_and_once_at_the_end(builders, tmp_path, eval_freq, steps):
    cfg = trainer_config(builders, "steps=230", "seed_steps=200", "pretrain_updates=2", "save_freq=0",
                         "log_freq=1000", f"eval_freq={eval_freq}")
    env, eval_env = make_task_env(cfg, 0), make_task_env(cfg, 1)
    cfg = resolve(cfg, env.task_info)
    buffer = EpisodeBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, seed=0)
    OnlineTrainer(cfg, env, eval_env, builders.make_agent(cfg), buffer, Logger(tmp_path, quiet=True), tmp_path).train()
    assert pd.read_csv(tmp_path / "eval.csv")["step"].tolist() == steps


def test_trainer_in_process_seeds_pretrains_and_logs(builders, tmp_path):
    cfg = trainer_config(builders, "steps=230", "seed_steps=200", "pretrain_updates=10", "save_freq=100", "log_freq=10")
    env, eval_env = make_task_env(cfg, 0), make_task_env(cfg, 1)
    cfg = resolve(cfg, env.task_info)
    agent = builders.make_agent(cfg)
    buffer = EpisodeBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, seed=0)
    trainer = OnlineTrainer(cfg, env, eval_env, agent, buffer, Logger(tmp_path, quiet=True), tmp_path)
    trainer.train()
    assert trainer.step == 230
    assert agent.num_updates == 10 + 29  # pretraining, then one update per step after seeding
    assert buffer.num_episodes == 1 and len(buffer) == 201  # the unfinished second episode is not stored
    assert pd.read_csv(tmp_path / "train.csv")["updates"].tolist() == [10, 20, 30]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["final.pt", "step_100.pt", "step_200.pt"]
    assert load_checkpoint(tmp_path / "step_100.pt")["updates"] == 0
