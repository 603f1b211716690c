"""Facts about scripts/plot_run.py and tdmpc2/plots.py: one PNG of a run's curves, panels only for data present."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tdmpc2.plots import NotARunError, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, counting: bool) -> None:
    """Write the CSV files and config of a small run; a counting run has analysis.csv and termination/auxiliary losses."""
    run_dir.mkdir(parents=True)
    updates = np.arange(250, 1251, 250)
    train = {"step": 100_000 + 0 * updates, "updates": updates, "episode_reward": np.linspace(0.2, 0.5, 5),
             "consistency_loss": np.geomspace(1e-2, 1e-4, 5), "reward_loss": np.geomspace(1, 0.1, 5),
             "value_loss": np.geomspace(2, 0.5, 5), "total_loss": np.geomspace(7, 1.5, 5), "grad_norm": np.full(5, 20.0),
             "pi_loss": -np.arange(5.0), "pi_entropy": np.full(5, -4.0), "steps_per_second": np.zeros(5),
             "updates_per_second": np.full(5, 6.5), "elapsed": 30.0 * np.arange(1, 6)}
    if counting:
        train.update(termination_loss=np.full(5, 0.1), auxiliary_loss=np.geomspace(0.2, 0.01, 5))
    pd.DataFrame(train).to_csv(run_dir / "train.csv", index=False)
    success = [0.8] if counting else [0.0]
    pd.DataFrame({"step": [100_000], "updates": [1250], "episode_reward": [1.0], "success": success,
                  "elapsed": [160.0]}).to_csv(run_dir / "eval.csv", index=False)
    if counting:
        pd.DataFrame({"updates": [1, 250, 500], "step": [100_000] * 3, "nc_accuracy": [0.2, 0.6, 0.95],
                      "distance_ratio": [0.9, 0.4, 0.15], "effective_rank": [2.0, 5.0, 6.5],
                      "distinct_clusters": [1, 5, 9], "elapsed": [1.0, 30.0, 60.0]}).to_csv(run_dir / "analysis.csv",
                                                                                           index=False)
    OmegaConf.save(OmegaConf.create({"task": "counting" if counting else "pendulum", "variant": "pjepa", "aux": "reward",
                                     "seed": 1}), run_dir / "config.yaml")


def test_counting_run_gets_every_panel_it_has_data_for(tmp_path):
    run = tmp_path / "counting_run"
    write_run(run, counting=True)
    path, panels = plot_run(run)
    assert path == run / "run_curves.png" and path.read_bytes()[:8] == PNG_MAGIC
    assert panels == ["episode reward", "evaluation success", "total loss", "model loss terms", "policy loss",
                      "policy entropy", "gradient norm (before clipping)", "updates per second",
                      "environment steps per second", "held-out nearest-centroid accuracy", "within / across distance",
                      "effective rank (RankMe)", "distinct count clusters"]


def test_stock_run_has_no_representation_or_success_panels(tmp_path):
    run = tmp_path / "stock_run"
    write_run(run, counting=False)
    (run / "config.yaml").unlink()  # the title falls back to the directory name
    path, panels = plot_run(run, out=tmp_path / "figs" / "stock.png", x="minutes")
    assert path == tmp_path / "figs" / "stock.png" and path.read_bytes()[:8] == PNG_MAGIC
    assert "evaluation success" not in panels  # never succeeded: nothing to show
    assert not any("accuracy" in p or "rank" in p for p in panels)
    assert "model loss terms" in panels and "episode reward" in panels


def test_a_run_with_only_analysis_rows(tmp_path):
    run = tmp_path / "analysis_only"
    write_run(run, counting=True)
    (run / "train.csv").unlink()
    (run / "eval.csv").write_text("step,updates,episode_reward,success,elapsed\n")  # header only: no rows yet
    _, panels = plot_run(run)
    assert panels == ["held-out nearest-centroid accuracy", "within / across distance", "effective rank (RankMe)",
                      "distinct count clusters"]


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(NotARunError, match="is not a run directory: it has none of train.csv, eval.csv, analysis.csv"):
        plot_run(tmp_path)
    with pytest.raises(NotARunError, match="run directory not found"):
        plot_run(tmp_path / "missing")
    (tmp_path / "train.csv").write_text("step,updates\n")
    with pytest.raises(NotARunError, match="has no rows yet"):
        plot_run(tmp_path)
    with pytest.raises(ValueError, match="x='epochs' is unknown; allowed values: updates, step, minutes"):
        plot_run(tmp_path, x="epochs")


def run_script(repo_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/plot_run.py", *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=120)


def test_script_writes_the_png_and_lists_the_panels(builders, tmp_path):
    run = tmp_path / "run"
    write_run(run, counting=True)
    result = run_script(builders.repo_root, f"run={run}", f"out={tmp_path / 'c.png'}", "x=step")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'c.png'}: episode reward")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_script_exits_2_for_a_directory_that_is_not_a_run(builders, tmp_path):
    result = run_script(builders.repo_root, f"run={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {tmp_path} is not a run directory")


@pytest.fixture(scope="module")
def plot_script(builders):
    """Return scripts/plot_run.py loaded as a module (its ``main(argv)`` returns the exit code)."""
    spec = importlib.util.spec_from_file_location("plot_run_script", builders.repo_root / "scripts" / "plot_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    ((), "run=RUN_DIR is required"),
    (("run=/nonexistent/run",), "run directory not found: /nonexistent/run"),
    (("run=.", "colour=red"), "unknown key 'colour'; allowed keys: run, out, x"),
    (("run=.", "x=epochs"), "x='epochs' is unknown; allowed values: updates, step, minutes"),
    (("run",), "arguments are key=value, got 'run'"),
])
def test_script_errors_exit_2_with_a_message(plot_script, capsys, args, message):
    assert plot_script.main(list(args)) == 2
    assert message in capsys.readouterr().err
