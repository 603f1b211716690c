"""Facts about the trackers (tdmpc2/trackers.py), the logger that feeds them, and a tracked training run end to end.

The run uses W&B offline (WANDB_MODE=offline, set here) and TensorBoard, with
evaluation videos on: every tracker must hold what the CSV files hold.
"""
from __future__ import annotations

import glob
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tdmpc2 import extras
from tdmpc2.config import ConfigError, resolve
from tdmpc2.extras import MissingExtraError
from tdmpc2.logger import Logger
from tdmpc2.trackers import create_trackers

TRAIN_ARGS = ("threads=1", "device=cpu", "compile=false", "task=pendulum", "model_size=1", "enc_dim=32", "mlp_dim=32",
              "latent_dim=16", "batch_size=32", "mpc=false", "steps=250", "seed_steps=200", "pretrain_updates=20",
              "eval_freq=125", "eval_episodes=1", "log_freq=25", "save_freq=0")
UPDATES = 20 + 49  # pretraining, then one per step from step 201 to 249
EVALS = {125: 0, 250: UPDATES}  # environment step of each evaluation -> updates by then
FRAMES = 201  # a pendulum episode: the reset frame and 200 steps


# ---------------------------------------------------------------- reading what the trackers wrote

def wandb_records(run_dir: Path):
    """Yield the protobuf records of the W&B transaction log in ``run_dir/wandb`` (a LevelDB-style log)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, block = Path(path).read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_dir: Path) -> dict[int, dict]:
    """Return ``{step: {key: value}}`` of the W&B run's history (videos as their JSON description)."""
    history: dict[int, dict] = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") != "history":
            continue
        row = history.setdefault(record.history.step.num, {})
        for item in record.history.item:
            keys = list(item.nested_key) or [item.key]
            if keys[0].startswith("_"):
                continue
            if len(keys) == 1:
                row[keys[0]] = json.loads(item.value_json)
            else:
                row.setdefault(keys[0], {})[keys[1]] = json.loads(item.value_json)
    return history


def tensorboard_events(run_dir: Path):
    """Return the EventAccumulator of ``run_dir/tensorboard``, loaded with every scalar and image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


# ---------------------------------------------------------------- a tracked run


@pytest.fixture(scope="module")
def tracked_run(builders, tmp_path_factory):
    """Train pendulum for 69 updates with loggers=[wandb,tensorboard] and save_video=true; return (dir, result)."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("MUJOCO_GL", None)
    result = subprocess.run([sys.executable, "train.py", *TRAIN_ARGS, "loggers=[wandb,tensorboard]", "save_video=true",
                             "exp_name=tracked", f"hydra.run.dir={run_dir}"],
                            cwd=builders.repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r.WhichOneof("record_type") for r in wandb_records(run_dir)][-1] == "exit"  # the log is complete
    return run_dir, result


def test_wandb_offline_run_holds_the_csv_rows_at_their_updates(tracked_run):
    run_dir, _ = tracked_run
    history = wandb_history(run_dir)
    for kind in ("train", "eval"):
        table = pd.read_csv(run_dir / f"{kind}.csv")
        assert len(table) == {"train": 2, "eval": 2}[kind]
        for _, row in table.iterrows():
            logged = history[int(row["updates"])]
            for column, value in row.items():
                assert logged[f"{kind}/{column}"] == pytest.approx(value), (kind, column)
    logged_keys = {k for row in history.values() for k in row}
    csv_keys = {f"{kind}/{c}" for kind in ("train", "eval") for c in pd.read_csv(run_dir / f"{kind}.csv").columns}
    assert logged_keys == csv_keys | {"eval/video"}


def test_wandb_run_is_named_and_has_the_resolved_config(tracked_run):
    run_dir, _ = tracked_run
    records = list(wandb_records(run_dir))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name) == ("pjepa-tdmpc2", "pendulum-stock-none",
                                                             "pendulum-stock-none-tracked-s1")
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["task"] == "pendulum" and config["loggers"] == ["wandb", "tensorboard"]
    assert config["discount"] == pytest.approx(0.975) and config["obs_shape"] == [3]  # derived at start
    assert config["wandb"]["group"] == "pendulum-stock-none"


def test_wandb_receives_each_evaluation_video(tracked_run):
    run_dir, _ = tracked_run
    history = wandb_history(run_dir)
    for updates in EVALS.values():
        video = history[updates]["eval/video"]
        assert video["_type"] == "video-file" and video["path"].endswith(".mp4") and video["size"] > 0


def test_tensorboard_event_file_holds_the_csv_scalars(tracked_run):
    run_dir, _ = tracked_run
    events = tensorboard_events(run_dir)
    tags = set(events.Tags()["scalars"])
    for kind in ("train", "eval"):
        table = pd.read_csv(run_dir / f"{kind}.csv")
        assert {f"{kind}/{c}" for c in table.columns} <= tags
        for column in table.columns:
            logged = events.Scalars(f"{kind}/{column}")
            assert [e.step for e in logged] == table["updates"].tolist()
            np.testing.assert_allclose([e.value for e in logged], table[column], rtol=1e-6)
    assert tags == {f"{kind}/{c}" for kind in ("train", "eval") for c in pd.read_csv(run_dir / f"{kind}.csv").columns}
    assert "config/text_summary" in events.Tags()["tensors"]


def test_tensorboard_shows_each_video_as_an_animated_gif(tracked_run):
    from PIL import Image

    run_dir, _ = tracked_run
    images = tensorboard_events(run_dir).Images("eval/video")
    assert [i.step for i in images] == list(EVALS.values())
    for image in images:
        gif = Image.open(io.BytesIO(image.encoded_image_string))
        assert gif.format == "GIF" and gif.n_frames == FRAMES and gif.size == (256, 256)  # 500x500, shrunk


def test_each_evaluation_writes_a_video_that_decodes(tracked_run):
    import imageio.v2 as imageio

    run_dir, _ = tracked_run
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert videos == sorted(f"eval_step_{step}.mp4" for step in EVALS)
    for name in videos:
        with imageio.get_reader(run_dir / "videos" / name, format="FFMPEG") as reader:
            frames = [frame for frame in reader]
        assert len(frames) == FRAMES
        assert frames[0].shape == (512, 512, 3) and frames[0].dtype == np.uint8  # 500x500 padded to 16s
        assert frames[0][:500, :500].std() > 1  # the pendulum, not a blank frame
        assert frames[0][505:].max() < 20 and frames[0][:, 505:].max() < 20  # black padding (lossy codec)


def test_a_run_off_a_terminal_draws_no_progress_bar(tracked_run):
    _, result = tracked_run
    output = result.stdout + result.stderr
    assert "%|" not in output and "steps [" not in output
    assert "train " in result.stdout and "eval " in result.stdout  # the log lines suffice


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize("override, message", [
    ("loggers=[wandb,mlflow]", "loggers: unknown name\\(s\\) 'mlflow'; allowed names: wandb, tensorboard"),
    ("loggers=wandb", "loggers must be a list such as loggers=\\[wandb,tensorboard\\]"),
    ("loggers=[tensorboard,tensorboard]", "tensorboard more than once"),
    ("wandb.mode=cloud", "wandb.mode='cloud'; allowed values: online, offline, null"),
    ("save_video=yes", "save_video='yes'; allowed values: true, false"),
])
def test_bad_tracking_settings_raise_config_error(builders, override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(builders.compose_config(override), builders.toy_task_info())


def test_a_video_needs_an_evaluation_episode(builders):
    with pytest.raises(ConfigError, match="save_video=true records evaluation episodes, but eval_episodes=0"):
        resolve(builders.compose_config("save_video=true", "eval_episodes=0"), builders.toy_task_info())


def test_resolve_names_the_wandb_run(builders):
    cfg = resolve(builders.compose_config("task=pendulum", "seed=3"), builders.toy_task_info())
    assert (cfg.wandb.group, cfg.wandb.name) == ("pendulum-stock-none", "pendulum-stock-none-s3")
    cfg = resolve(builders.compose_config("wandb.group=mine", "wandb.name=run7"), builders.toy_task_info())
    assert (cfg.wandb.group, cfg.wandb.name) == ("mine", "run7")


def hide_modules(monkeypatch, *hidden: str) -> None:
    """Make ``importlib.util.find_spec`` report ``hidden`` modules as not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("extra, module, distribution", [
    ("wandb", "wandb", "wandb"), ("tensorboard", "tensorboard", "tensorboard"),
    ("video", "imageio_ffmpeg", "imageio-ffmpeg"),
])
def test_a_missing_extra_names_the_package_and_the_install_command(monkeypatch, extra, module, distribution):
    hide_modules(monkeypatch, module)
    with pytest.raises(MissingExtraError) as caught:
        extras.require(extra, f"asking for {extra}")
    message = str(caught.value)
    assert f"asking for {extra} needs the optional package '{distribution}'" in message
    assert f'Install it with: pip install -e ".[{extra}]"' in message
    assert isinstance(caught.value, ImportError)


def test_create_trackers_checks_the_package_before_starting_anything(builders, monkeypatch, tmp_path):
    hide_modules(monkeypatch, "wandb")
    cfg = builders.compose_config("loggers=[tensorboard,wandb]")
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[wandb\]"'):
        create_trackers(cfg, tmp_path)
    with pytest.raises(ValueError, match="allowed names: wandb, tensorboard"):
        create_trackers(builders.compose_config("loggers=[neptune]"), tmp_path)


def test_train_py_stops_at_start_when_a_tracker_is_not_installed(builders, tmp_path):
    run_dir = tmp_path / "run"
    hide_wandb = (
        "import importlib.util, runpy, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a, **k: None if name.split('.')[0] == 'wandb' else real(name, *a, **k)\n"
        "sys.argv = ['train.py', *sys.argv[1:]]\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", hide_wandb, *TRAIN_ARGS, "loggers=[wandb]",
                             f"hydra.run.dir={run_dir}"],
                            cwd=builders.repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "loggers=[wandb] needs the optional package 'wandb'" in result.stderr
    assert 'pip install -e ".[wandb]"' in result.stderr and "Traceback" not in result.stderr
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "train.csv").exists()  # nothing ran


# ---------------------------------------------------------------- the logger feeds the trackers


class RecordingTracker:
    """A tracker that remembers every call."""

    def __init__(self):
        self.calls = []

    def log_scalars(self, kind, values, step):
        self.calls.append(("scalars", kind, dict(values), step))

    def log_video(self, name, path, frames, fps, step):
        self.calls.append(("video", name, Path(path).name, len(frames), fps, step))

    def attach_config(self, config):
        self.calls.append(("config", config))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


def test_logger_forwards_each_row_at_its_updates(tmp_path):
    tracker = RecordingTracker()
    logger = Logger(tmp_path, quiet=True, trackers=[tracker])
    logger.log("train", {"step": 205, "updates": 25, "total_loss": 0.5, "success": float("nan"), "note": "text",
                         "episode_reward": None})
    logger.log("eval", {"step": 300, "episode_reward": -3.0})  # no updates column: x falls back to the step
    logger.log_video("eval/video", tmp_path / "v.mp4", [np.zeros((4, 4, 3), np.uint8)] * 3, 30.0, 25)
    logger.close()
    logger.close()  # closing twice closes the trackers once
    (kind, train_kind, values, step), eval_call, video_call, close_call = tracker.calls
    assert (kind, train_kind, step) == ("scalars", "train", 25)
    assert set(values) == {"step", "updates", "total_loss", "success"} and np.isnan(values["success"])
    assert values["total_loss"] == 0.5
    assert eval_call == ("scalars", "eval", {"step": 300.0, "episode_reward": -3.0}, 300)
    assert video_call == ("video", "eval/video", "v.mp4", 3, 30.0, 25)
    assert close_call == ("close",)
    assert pd.read_csv(tmp_path / "train.csv").columns.tolist() == ["step", "updates", "total_loss", "success", "note",
                                                                      "episode_reward"]


def test_tensorboard_tracker_in_process(builders, tmp_path):
    cfg = builders.compose_config("loggers=[tensorboard]")
    (tracker,) = create_trackers(cfg, tmp_path, config={"task": "pendulum", "lr": 3e-4})
    logger = Logger(tmp_path, quiet=True, trackers=[tracker])
    for updates, loss in ((10, 2.0), (20, 1.5)):
        logger.log("train", {"updates": updates, "total_loss": loss})
    logger.close()
    events = tensorboard_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("train/total_loss")] == [(10, 2.0), (20, 1.5)]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "task: pendulum" in text and "lr: 0.0003" in text


def test_a_resumed_run_continues_its_wandb_run(builders, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = resolve(builders.compose_config("loggers=[wandb]", "task=pendulum"), builders.toy_task_info())

    def start(run_dir, resumed_at):
        (tracker,) = create_trackers(cfg, run_dir, resumed_at=resumed_at)
        tracker.log_scalars("train", {"total_loss": 1.0}, 10 if resumed_at is None else resumed_at + 10)
        tracker.close()
        return tracker.run_id

    first = start(tmp_path / "run", None)
    assert (tmp_path / "run" / "wandb" / "run_id").read_text().strip() == first
    assert start(tmp_path / "run", 10) == first  # the resumed process logs to the same W&B run
    assert {p.name.rsplit("-", 1)[1] for p in (tmp_path / "run" / "wandb").glob("offline-run-*")} == {first}
    assert start(tmp_path / "other", None) != first  # a new run gets a new W&B run
