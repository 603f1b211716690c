"""Facts about scripts/compare.py: variants, the request's checks, the launchers' settings, the statistics and
the report on synthetic run directories with known numbers, and a tiny sweep through submitit's local executor."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.stats import trim_mean

from experiments import launch as launching
from experiments.aggregate import compare
from experiments.compare import CompareError, check, common_overrides, launcher_params, run_comparison
from experiments.report import write_report
from experiments.runs import COMPLETE, FAILED, INCOMPLETE, expected_eval_steps, find_run_dirs, read_run
from experiments.stats import area_under_curve, bootstrap_difference, bootstrap_mean
from experiments.variants import Variant, parse_variant

pytestmark = pytest.mark.filterwarnings("ignore:.*DISPLAY")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "experiments" / "conf"


def compare_config(*overrides: str):
    """Return scripts/compare.py's config composed with ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="compare", overrides=["out=unused", *overrides])


# ---------------------------------------------------------------- variants and the request


def test_a_variant_carries_its_auxiliary_target():
    assert parse_variant("pjepa") == Variant("pjepa", "reward") == parse_variant("pjepa:reward")
    assert parse_variant("stock") == Variant("stock", "none")
    assert parse_variant("pjepa:random").label == "pjepa:random"
    assert parse_variant("pjepa:random").dirname == "pjepa-random"
    assert parse_variant("pjepa:reward").label == "pjepa"
    assert parse_variant("dyn_only:none").overrides() == ["variant=dyn_only", "aux=none"]


@pytest.mark.parametrize("spec, allowed", [("jepa", "pjepa, aux_only, dyn_only, stock"),
                                           ("pjepa:colour", "reward, random, count, count_parity, none")])
def test_a_bad_variant_names_the_allowed_ones(spec, allowed):
    with pytest.raises(ValueError, match=allowed):
        parse_variant(spec)


@pytest.mark.parametrize("override, message", [
    ("tasks=[cup-cath]", "Did you mean 'cup-catch'"),
    ("variants=[stock,pjepa:colour]", "allowed targets"),
    ("variants=[pjepa,pjepa:reward]", "lists a variant twice"),
    ("seeds=[1,1]", "lists a seed twice"),
    ("+train.seed=3", "train.seed is set by the comparison itself"),
    ("steps=0", "steps must be a positive integer"),
    ("obs=depth", "allowed values: state, rgb"),
])
def test_bad_requests_fail_naming_what_is_allowed(override, message):
    cfg = compare_config("tasks=[pendulum]", override)
    with pytest.raises(CompareError, match=message):
        check(cfg)


def test_nothing_to_compare_is_an_error_with_an_example():
    with pytest.raises(CompareError, match="nothing to compare.*tasks=\\[cup-catch,reacher-easy\\]"):
        check(compare_config())


def test_every_run_gets_the_steps_evaluation_threads_and_train_settings():
    cfg = compare_config("tasks=[pendulum]", "steps=5000", "+train.model_size=1", "+train.lr=1e-3",
                         "+train.wandb.mode=offline", "launcher=local")
    assert common_overrides(cfg) == ["steps=5000", "eval_freq=500", "eval_episodes=10", "threads=1",
                                     "model_size=1", "lr=0.001", "wandb.mode=offline"]


# ---------------------------------------------------------------- launchers


def test_launcher_local_runs_one_job_per_core_with_one_thread_each():
    cfg = compare_config("tasks=[pendulum]", "launcher=local")
    assert (cfg.launcher.plugin, cfg.launcher.threads) == ("joblib", 1)
    assert launcher_params(cfg) == {"n_jobs": os.cpu_count()}


def test_launcher_slurm_settings_reach_the_submitit_launcher(tmp_path):
    cfg = compare_config("tasks=[pendulum]", "launcher=slurm", "launcher.params.partition=gpu",
                         "launcher.params.timeout_min=90", "launcher.params.gpus_per_node=2",
                         "launcher.params.cpus_per_task=6", "launcher.params.mem_gb=40")
    assert cfg.launcher.threads == 6
    with launching.train_app() as hydra:
        launcher = launching.sweep_config(hydra, cfg.launcher.plugin, launcher_params(cfg), tmp_path).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node, launcher.cpus_per_task,
            launcher.mem_gb) == ("gpu", 90, 2, 6, 40)


def test_a_setting_the_launcher_does_not_have_is_named(tmp_path):
    with launching.train_app() as hydra, pytest.raises(ValueError, match="launcher.params.partition is not a setting "
                                                                          "of hydra/launcher=joblib; its settings:"):
        launching.sweep_config(hydra, "joblib", {"partition": "gpu"}, tmp_path)
    with launching.train_app() as hydra, pytest.raises(ValueError, match="allowed values: basic, joblib"):
        launching.sweep_config(hydra, "mpi", {}, tmp_path)


# ---------------------------------------------------------------- statistics with known answers


def test_bootstrap_intervals_with_known_answers():
    assert bootstrap_mean([5.0, 5.0, 5.0]).format(1) == "5.0 [5.0, 5.0]"
    two = bootstrap_mean([100.0, 300.0])
    assert (two.value, two.low, two.high) == (200.0, 100.0, 300.0)
    # Means of resampled [0, 0, 3] are 0, 1, 2, 3 with probabilities 8/27, 12/27, 6/27, 1/27.
    skewed = bootstrap_mean([0.0, 0.0, 3.0])
    assert (skewed.value, skewed.low, skewed.high) == (1.0, 0.0, 3.0)
    assert bootstrap_mean([1.0, 7.0, 4.0], seed=3) == bootstrap_mean([1.0, 7.0, 4.0], seed=3)
    diff = bootstrap_difference([300.0, 300.0], [100.0, 100.0])
    assert (diff.value, diff.low, diff.high) == (200.0, 200.0, 200.0)


def test_area_under_the_curve_is_the_mean_return_over_the_run():
    assert area_under_curve([10, 20, 30], [0, 100, 100]) == 75.0
    assert area_under_curve([50], [42]) == 42.0


def test_expected_evaluations_follow_the_trainer():
    assert expected_eval_steps(1000, 250) == [250, 500, 750, 1000]
    assert expected_eval_steps(1000, 300) == [300, 600, 900, 1000]
    assert expected_eval_steps(1000, 0) == [1000]


# ---------------------------------------------------------------- synthetic run directories


def make_run(root: Path, task: str, variant: str, aux: str, seed: int, returns: list[float], steps: int = 300,
             eval_freq: int = 100, final: bool = True, error: str | None = None) -> Path:
    """Write a run directory as train.py leaves it, with evaluation returns ``returns`` at every ``eval_freq``."""
    run_dir = root / task / f"{variant}-{aux}" / f"s{seed}"
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"task": task, "variant": variant, "aux": aux, "seed": seed, "steps": steps,
                                     "eval_freq": eval_freq, "eval_episodes": 2, "train_minutes": None}),
                   run_dir / "config.yaml")
    rows = [{"step": eval_freq * (i + 1), "updates": 10 * eval_freq * (i + 1), "episode_reward": r, "success": 0.0,
             "elapsed": 6.0 * (i + 1)} for i, r in enumerate(returns)]
    pd.DataFrame(rows).to_csv(run_dir / "eval.csv", index=False)
    if final:
        (run_dir / "final.pt").write_bytes(b"")
    if error:
        (run_dir / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return run_dir


@pytest.fixture
def synthetic_runs(tmp_path):
    """Two tasks x two variants x three seeds with known returns, plus a failed, a killed and a short run."""
    root = tmp_path / "elsewhere"
    finals = {("cartpole-swingup", "stock"): [100, 200, 600], ("cartpole-swingup", "pjepa"): [400, 500, 900],
              ("cup-catch", "stock"): [800, 800, 800], ("cup-catch", "pjepa"): [900, 1000, 950]}
    for (task, variant), values in finals.items():
        aux = "none" if variant == "stock" else "reward"
        for seed, final in enumerate(values, start=1):
            make_run(root, task, variant, aux, seed, [final / 4, final / 2, final])
    make_run(root, "pendulum", "stock", "none", 1, [-900.0, -500.0, -200.0])
    make_run(root, "pendulum", "pjepa", "reward", 1, [-800.0], error="ValueError: non-finite loss")
    make_run(root, "pendulum", "pjepa", "reward", 2, [-800.0, -400.0], final=False)
    make_run(root, "pendulum", "pjepa", "reward", 3, [-800.0, -400.0], steps=300, eval_freq=100)
    os.remove(root / "pendulum" / "pjepa-reward" / "s3" / "eval.csv")
    pd.DataFrame([{"step": 100, "updates": 1, "episode_reward": -1.0, "elapsed": 1.0},
                  {"step": 200, "updates": 2, "episode_reward": -1.0, "elapsed": 2.0}]).to_csv(
        root / "pendulum" / "pjepa-reward" / "s3" / "eval.csv", index=False)
    return root, finals


def test_run_status_is_complete_failed_or_incomplete_with_the_reason(synthetic_runs):
    root, _ = synthetic_runs
    assert read_run(root / "cup-catch" / "stock-none" / "s1").status == COMPLETE
    failed = read_run(root / "pendulum" / "pjepa-reward" / "s1")
    assert (failed.status, failed.reason) == (FAILED, "ValueError: non-finite loss")
    killed = read_run(root / "pendulum" / "pjepa-reward" / "s2")
    assert killed.status == INCOMPLETE and "no final.pt" in killed.reason and "step 200 of 300" in killed.reason
    short = read_run(root / "pendulum" / "pjepa-reward" / "s3")
    assert short.status == INCOMPLETE and "stopped early (step 200 of 300" in short.reason
    missing = read_run(root / "nowhere", "walker-walk", parse_variant("pjepa:random"), 4)
    assert (missing.status, missing.task, missing.variant, missing.seed) == (FAILED, "walker-walk", "pjepa:random", 4)


def test_aggregation_of_known_numbers(synthetic_runs):
    root, finals = synthetic_runs
    dirs, unmatched = find_run_dirs([str(root / "*"), str(tmp := root / "no-such-*")])
    assert len(dirs) == 16 and unmatched == [str(tmp)]
    result = compare([read_run(d) for d in dirs], tasks=[], variants=["stock", "pjepa"], baseline="stock")
    table = result.table.set_index(["task", "variant"])
    for key, values in finals.items():
        assert table.loc[key, "final"].value == pytest.approx(np.mean(values))
        assert table.loc[key, "seeds"] == 3
        # Returns at 1/4, 1/2 and all of the final, at steps 100, 200, 300: AUC = 0.5625 * final.
        assert table.loc[key, "auc"].value == pytest.approx(0.5625 * np.mean(values))
    low, high = table.loc[("cartpole-swingup", "stock"), "final"].low, table.loc[("cartpole-swingup", "stock"), "final"].high
    assert 100 <= low < 300 < high <= 600
    diff = table.loc[("cup-catch", "pjepa"), "diff_final"]
    assert diff.value == pytest.approx(150.0) and 100 <= diff.low <= 150 <= diff.high <= 200
    assert table.loc[("cup-catch", "stock"), "final"].format() == "800 [800, 800]"
    assert table.loc[("cup-catch", "stock"), "wall_clock_min"] == pytest.approx(18 / 60)
    assert table.loc[("cup-catch", "stock"), "updates_per_s"] == pytest.approx(3000 / 18)
    # The curve of cup-catch, stock: the three seeds agree at every step.
    curve = result.curves[("cup-catch", "stock")]
    assert list(curve.steps) == [100, 200, 300] and list(curve.mean) == [200, 400, 800]
    assert list(curve.low) == list(curve.high) == [200, 400, 800]
    # Across tasks: rliable's IQM of final / 1000 over the two dm_control tasks; pendulum has no maximum.
    assert result.aggregate_tasks == ["cartpole-swingup", "cup-catch"] and result.aggregate_runs == 3
    for variant in ("stock", "pjepa"):
        scores = np.array([[finals[(t, variant)][i] / 1000 for t in result.aggregate_tasks] for i in range(3)])
        iqm = result.aggregate[variant]
        assert iqm.value == pytest.approx(trim_mean(scores, 0.25, axis=None))
        assert scores.min() <= iqm.low <= iqm.value <= iqm.high <= scores.max()
    assert any("pendulum (the task registry gives it no maximum return)" in note for note in result.notes)


def test_the_report_lists_every_run_not_measured(synthetic_runs, tmp_path):
    root, _ = synthetic_runs
    dirs, _ = find_run_dirs([str(root)])
    result = compare([read_run(d) for d in dirs], tasks=["cup-catch"], variants=["stock", "pjepa"], baseline="stock")
    paths = write_report(result, tmp_path / "out", command="python scripts/compare.py runs=[...]")
    for name in ("report", "summary", "curves_csv", "curves", "aggregate"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0, name
    report = paths["report"].read_text()
    assert report.index("## cup-catch") < report.index("## cartpole-swingup")  # the order asked for comes first
    assert "| stock | 3 | 800 [800, 800] |" in report
    assert "| pjepa | 3 | 950 [900, 1000] |" in report
    assert "## Runs not measured" in report
    for reason in ("ValueError: non-finite loss", "no final.pt", "stopped early (step 200 of 300"):
        assert reason in report
    summary = pd.read_csv(paths["summary"])
    assert len(summary) == 16
    assert summary.status.value_counts().to_dict() == {COMPLETE: 13, INCOMPLETE: 2, FAILED: 1}
    assert summary.loc[summary.task == "cup-catch", "normalised_final"].max() == pytest.approx(1.0)


def test_aggregating_existing_runs_only(synthetic_runs, tmp_path):
    root, _ = synthetic_runs
    cfg = compare_config("tasks=[]", f"runs=[{root}/cup-catch]", "reps=200")
    paths, planned = run_comparison(cfg, tmp_path / "agg")
    assert planned == []
    summary = pd.read_csv(paths["summary"])
    assert set(summary.task) == {"cup-catch"} and len(summary) == 6


def test_runs_complete_in_the_folder_with_the_same_settings_are_reused(tmp_path, monkeypatch):
    import experiments.compare as comparing

    cfg = compare_config("tasks=[cup-catch]", "variants=[stock,pjepa]", "seeds=[1]", "steps=300", "eval_freq=100",
                         "eval_episodes=2", "reps=100")
    out = tmp_path / "cmp"
    jobs = launching.plan(["cup-catch"], [parse_variant("stock"), parse_variant("pjepa")], [1], out / "runs",
                          comparing.common_overrides(cfg))
    for job, final in zip(jobs, (500.0, 700.0)):
        job.run_dir.parent.mkdir(parents=True)
        run_dir = make_run(tmp_path / "made", "cup-catch", job.variant.preset, job.variant.aux, 1, [100.0, 300.0, final])
        os.rename(run_dir, job.run_dir)
    OmegaConf.save(OmegaConf.create(launching.job_overrides(jobs[0])), jobs[0].run_dir / launching.OVERRIDES_FILE)
    OmegaConf.save(OmegaConf.create([*launching.job_overrides(jobs[1]), "lr=1"]),
                   jobs[1].run_dir / launching.OVERRIDES_FILE)  # launched with other settings: run again
    launched = []
    monkeypatch.setattr(comparing, "launch", lambda todo, *args: launched.extend(todo) or
                        [launching.Outcome(job, "failed", "ValueError: not run in this test") for job in todo])
    paths, planned = run_comparison(cfg, out)
    assert launched == [jobs[1]]
    assert [(r.variant, r.status) for r in planned] == [("stock", COMPLETE), ("pjepa", FAILED)]
    assert list(pd.read_csv(out / "jobs.csv").launcher_status) == ["reused", "failed"]


# ---------------------------------------------------------------- a tiny sweep through submitit


# 50 steps of random seeding and two evaluations per run: the launcher path is under test here, not learning
# (tests/test_train.py trains); the processes' start-up is most of the time.
TINY_TRAIN = ["+train.model_size=1", "+train.enc_dim=32", "+train.mlp_dim=32", "+train.latent_dim=16",
              "+train.num_q=2", "+train.batch_size=8", "+train.mpc=false", "+train.compile=false",
              "+train.precision=fp32"]


def run_compare(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run ``python scripts/compare.py`` with ``overrides`` on the tiny model, into ``out``."""
    command = [sys.executable, "scripts/compare.py", "seeds=[1]", "steps=50", "eval_freq=25", "eval_episodes=1",
               "reps=200", f"out={out}", *overrides, *TINY_TRAIN]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_default_launcher_runs_one_after_another_and_lists_a_failing_run(tmp_path):
    out = tmp_path / "cmp"
    result = run_compare(out, "tasks=[pendulum]", "variants=[stock,pjepa:count]", "+train.threads=1")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # a run failed; report written
    assert (out / "runs" / "pendulum" / "stock" / "s1" / "final.pt").is_file()
    failed_dir = out / "runs" / "pendulum" / "pjepa-count" / "s1"
    assert "aux=count needs info ['count']" in (failed_dir / "error.txt").read_text()
    jobs = pd.read_csv(out / "jobs.csv")
    assert list(jobs.launcher_status) == ["completed", "failed"]
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc["stock", "status"] == COMPLETE and summary.loc["pjepa:count", "status"] == FAILED
    assert "aux=count needs info ['count'], which task 'pendulum' does not report" in summary.loc["pjepa:count", "reason"]
    report = (out / "report.md").read_text()
    assert "| pendulum | pjepa:count | 1 | failed | ValueError: aux=count needs info ['count']" in report
    assert "1 of 2 runs did not complete" in result.stdout


def test_a_tiny_sweep_through_submitit_local(tmp_path):
    out = tmp_path / "cmp"
    result = run_compare(out, "tasks=[pendulum,cartpole-balance]", "variants=[stock,pjepa]", "launcher=slurm",
                         "launcher.plugin=submitit_local", "launcher.params.cpus_per_task=1",
                         "launcher.params.gpus_per_node=0", "launcher.params.timeout_min=10")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "runs" / ".submitit").is_dir()  # the jobs went through submitit
    for task in ("pendulum", "cartpole-balance"):
        for variant in ("stock", "pjepa"):
            run_dir = out / "runs" / task / variant / "s1"
            assert (run_dir / "final.pt").is_file(), run_dir
            assert list(pd.read_csv(run_dir / "eval.csv").step) == [25, 50]
    for name in ("report.md", "summary.csv", "curves.csv", "curves.png", "aggregate.png", "jobs.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary.status == COMPLETE).all()
    assert set(pd.read_csv(out / "jobs.csv").launcher_status) == {"completed"}
    report = (out / "report.md").read_text()
    assert "## pendulum" in report and "## cartpole-balance" in report and "## Across tasks" in report
    assert report.count("| stock | 1 |") == 2 and report.count("| pjepa | 1 |") == 2


def test_a_run_left_incomplete_continues_from_its_checkpoint_when_the_comparison_is_run_again(tmp_path):
    out = tmp_path / "cmp"
    request = (out, "tasks=[pendulum]", "variants=[stock]", "+train.threads=1", "+train.save_freq=25",
               "+train.keep_checkpoints=0")
    first = run_compare(*request)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_dir = out / "runs" / "pendulum" / "stock" / "s1"
    # what a run killed after its step-25 checkpoint leaves behind (its replay file ends further on)
    (run_dir / "final.pt").unlink()
    (run_dir / "step_50.pt").unlink(missing_ok=True)
    evals = pd.read_csv(run_dir / "eval.csv")
    evals[evals.step <= 25].to_csv(run_dir / "eval.csv", index=False)
    assert (run_dir / "step_25.pt").is_file()

    again = run_compare(*request)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 of them continue the run in their folder" in again.stdout
    assert "resumed from step_25.pt" in again.stdout + again.stderr
    assert list(pd.read_csv(run_dir / "eval.csv").step) == [25, 50]
    assert (run_dir / "final.pt").is_file()
    assert list(pd.read_csv(out / "jobs.csv").launcher_status) == ["completed"]
    assert not any(o.startswith("resume=") for o in OmegaConf.load(run_dir / launching.OVERRIDES_FILE))
