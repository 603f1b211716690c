"""Facts about the representation analysis (pjepa_ext.analysis, scripts/analyze.py) on tiny run directories."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from envs import make_task_env

from pjepa_ext import analysis
from pjepa_ext.analysis_hook import AnalysisHook
from pjepa_ext.figure2 import VARIANTS, evaluate_claims
from pjepa_ext.metrics import REPORT_KEYS
from pjepa_ext.plugin import build_agent
from tdmpc2.checkpoint import save_checkpoint
from tdmpc2.config import resolve, to_container

ROOT = Path(__file__).resolve().parents[1]
PER_COUNT = 5
MAX_COUNT = 8
N_PROBE = PER_COUNT * (MAX_COUNT + 1)
PNGS = ("pca.png", "distances.png", "reconstructions.png", "curves.png")


def _load_script():
    spec = importlib.util.spec_from_file_location("analyze_script", ROOT / "scripts" / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


analyze_script = _load_script()


def tiny_cfg(variant="pjepa", aux="reward", decoder=True):
    """Resolved counting config with a tiny encoder and probe sets of 5 observations per count."""
    overrides = ["task=counting", "size=cpu", f"variant={variant}", f"aux={aux}", f"decoder={str(decoder).lower()}",
                 "resnet.width=8", "resnet.blocks_per_stage=1", "counting.image_size=32",
                 f"analysis_per_count={PER_COUNT}", "analysis_freq=2", "device=cpu", "compile=false",
                 "mlp_dim=64", "aux_hidden=64", "latent_dim=32", "decoder_channels=8"]
    with initialize_config_dir(config_dir=str(ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.variant, cfg.size = variant, "cpu"
    env = make_task_env(cfg, cfg.seed)
    return resolve(cfg, env.task_info)


def make_run_dir(path: Path, cfg, updates=7, history=True) -> dict:
    """Write a run directory as the trainer does: config.yaml, analysis.csv, best.pt and final.pt; return best's analysis row."""
    torch.manual_seed(0)
    agent, _ = build_agent(cfg)
    agent.num_updates = updates
    path.mkdir(parents=True)
    OmegaConf.save(cfg, path / "config.yaml")
    row = {"updates": updates, "step": 100, **AnalysisHook(cfg).measure(agent), "elapsed": 12.5}
    payload = {"agent": agent.state_dict(), "cfg": to_container(cfg), "step": 100, "updates": updates,
               "elapsed": 12.5}
    save_checkpoint(path / "final.pt", payload)
    save_checkpoint(path / "best.pt", {**payload, "analysis": row})
    if history:
        rows = [{**row, "updates": u, "elapsed": 2.0 * u, "nc_accuracy": 0.1 * u} for u in (1, 2, 4, 6, 7)]
        pd.DataFrame(rows).to_csv(path / "analysis.csv", index=False)
    return row


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "reward"
    row = make_run_dir(run_dir, tiny_cfg())
    code = analyze_script.main([f"run={run_dir}"])
    return run_dir, row, code


def test_analyze_writes_every_file(reward_run):
    run_dir, _, code = reward_run
    assert code == 0
    out = run_dir / "analysis"
    for name in PNGS:
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50, name
        assert image.std() > 0, f"{name} is blank"
    assert (out / "metrics.json").stat().st_size > 0
    assert (out / "embeddings.npz").stat().st_size > 0


def test_metrics_json_contents(reward_run):
    run_dir, row, _ = reward_run
    m = json.loads((run_dir / "analysis" / "metrics.json").read_text())
    assert m["checkpoint"]["name"] == "best" and m["checkpoint"]["updates"] == 7
    report = m["report"]
    assert 0.0 <= report["nc_accuracy"] <= 1.0
    assert report["distinct_clusters"] in range(0, MAX_COUNT + 2)
    assert report["effective_rank"] >= 1.0 - 1e-6
    # same probe sets and encoder as the training-time monitor: the same numbers
    for key in REPORT_KEYS:
        assert report[key] == pytest.approx(row[key], rel=1e-5, abs=1e-9), key
    assert sorted(map(int, m["nc_recall"])) == list(range(MAX_COUNT + 1))
    assert all(0.0 <= r <= 1.0 for r in m["nc_recall"].values())
    assert m["decoder"]["available"] and m["decoder"]["mse"] > 0
    assert m["probe_sets"]["eval_size"] == N_PROBE and m["probe_sets"]["figure_size"] == N_PROBE


def test_theory_check_in_metrics(reward_run, capsys):
    run_dir, _, _ = reward_run
    theory = json.loads((run_dir / "analysis" / "metrics.json").read_text())["theory"]
    assert theory["predicted_classes"] == 9  # reward at count 4: one class per count (paper, Appx. C)
    assert theory["partition"] == [[k] for k in range(MAX_COUNT + 1)]
    # every pair of the 45 eval observations with different counts is certified distinct
    assert theory["collapse_check"]["n_pairs"] == N_PROBE * (N_PROBE - 1) // 2 - 9 * PER_COUNT * (PER_COUNT - 1) // 2
    assert theory["summary"].startswith("theory: 9 predicted classes")
    assert ("respects the lower bound" in theory["summary"]) == theory["respects_lower_bound"]


def test_embeddings_npz_matches_probe_sets(reward_run):
    run_dir, _, _ = reward_run
    cfg = analysis.load_run(run_dir).cfg
    centroid_set, eval_set = analysis.run_probe_sets(cfg)
    with np.load(run_dir / "analysis" / "embeddings.npz") as z:
        for prefix, probe in (("centroid", centroid_set), ("eval", eval_set)):
            assert z[f"{prefix}_emb"].shape == (N_PROBE, cfg.latent_dim)
            np.testing.assert_array_equal(z[f"{prefix}_counts"], probe.counts)
            np.testing.assert_array_equal(z[f"{prefix}_shapes"], probe.shapes)
            np.testing.assert_array_equal(z[f"{prefix}_colours"], probe.colours)
        assert np.bincount(z["eval_counts"]).tolist() == [PER_COUNT] * (MAX_COUNT + 1)
        idx = z["figure_idx"]
        assert sorted(idx.tolist()) == list(range(N_PROBE))
        assert np.all(np.diff(z["eval_counts"][idx]) >= 0)  # sorted by count for the heatmap


def test_run_without_decoder_or_history_says_so(tmp_path):
    run_dir = tmp_path / "dyn"
    make_run_dir(run_dir, tiny_cfg(variant="dyn_only", aux="none", decoder=False), history=False)
    out = tmp_path / "out"
    assert analyze_script.main([f"run={run_dir}", "checkpoint=final", f"out={out}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"]["name"] == "final"
    assert not m["decoder"]["available"] and "decoder" in m["decoder"]["note"]
    assert not (out / "reconstructions.png").exists() and "no decoder" in m["files"]["reconstructions.png"]
    assert not (out / "curves.png").exists() and "analysis.csv" in m["files"]["curves.png"]
    # aux=none certifies nothing: one class, no pair to check
    assert m["theory"]["predicted_classes"] == 1 and m["theory"]["collapse_check"]["n_pairs"] == 0
    assert "nothing can violate" in m["theory"]["summary"]


def test_certified_pairs_cross_classes_only():
    counts = np.array([0, 0, 1, 2, 2])
    pairs, sampled = analysis.certified_pairs(counts, [[0, 1], [2]])
    assert not sampled
    assert sorted(map(tuple, pairs.tolist())) == [(0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4)]


def test_collapsed_embeddings_violate_the_lower_bound():
    counts = np.repeat(np.arange(9), 4)
    emb = np.zeros((36, 8))
    emb[:, 0] = counts >= 5  # counts 0-4 share one point, 5-8 another
    check = analysis.theory_check("reward", emb, counts, distinct_clusters=2)
    assert not check.respects_lower_bound
    assert "VIOLATES the lower bound" in check.summary()


@pytest.mark.parametrize("problem, expected", [
    ("missing", "run directory not found"),
    ("no_config", "no config.yaml"),
    ("no_checkpoint", "no checkpoint"),
    ("corrupt", "corrupt or truncated"),
])
def test_bad_run_dir_exits_2_with_message(tmp_path, capsys, problem, expected):
    run_dir = tmp_path / "run"
    if problem != "missing":
        run_dir.mkdir()
    if problem in ("no_checkpoint", "corrupt"):
        (run_dir / "config.yaml").write_text("task: counting\n")
    if problem == "corrupt":
        (run_dir / "best.pt").write_bytes(b"not a checkpoint at all")
    assert analyze_script.main([f"run={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expected in err


def test_bad_checkpoint_name_lists_allowed_values(reward_run, capsys):
    run_dir, _, _ = reward_run
    assert analyze_script.main([f"run={run_dir}", "checkpoint=latest"]) == 2
    assert "allowed values: best, final" in capsys.readouterr().err


def test_command_line_bad_run_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), f"run={tmp_path / 'nope'}"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "run directory not found" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- figure 2 claims and commands


def paper_like_rows():
    """Metrics rows shaped like the paper's description of each variant."""
    base = {"silhouette": 0.0, "latent_norm": 1.0, "updates": 100, "predicted_classes": 9,
            "respects_lower_bound": True}
    return {
        "reward": {**base, "nc_accuracy": 0.99, "distance_ratio": 0.2, "effective_rank": 12.0,
                   "distinct_clusters": 9, "mean_distance": 1.0, "coarse_nc_accuracy": 1.0, "decoder_mse": 0.08},
        "random": {**base, "nc_accuracy": 0.4, "distance_ratio": 0.97, "effective_rank": 60.0,
                   "distinct_clusters": 2, "mean_distance": 5.0, "coarse_nc_accuracy": 0.6, "decoder_mse": 0.03},
        "reward_only": {**base, "nc_accuracy": 0.6, "distance_ratio": 0.6, "effective_rank": 4.0,
                        "distinct_clusters": 3, "mean_distance": 0.8, "coarse_nc_accuracy": 0.9, "decoder_mse": 0.09},
        "dyn_only": {**base, "nc_accuracy": 0.11, "distance_ratio": 1.0, "effective_rank": 1.01,
                     "distinct_clusters": 1, "mean_distance": 1e-4, "coarse_nc_accuracy": 0.33,
                     "decoder_mse": 0.1, "predicted_classes": 1},
    }


def test_claims_all_reproduce_on_paper_like_numbers():
    claims = evaluate_claims(paper_like_rows())
    assert [c.reproduced for c in claims] == [True] * 5


@pytest.mark.parametrize("variant, key, value, claim_index", [
    ("reward", "nc_accuracy", 0.9, 0),          # below 0.95: not nine clusters
    ("reward", "distance_ratio", 0.35, 0),      # not at most half of reward_only's 0.6
    ("random", "distance_ratio", 0.7, 1),       # count structure present
    ("random", "nc_accuracy", 0.85, 1),         # not well below the reward run
    ("reward_only", "distinct_clusters", 9, 2),  # nine clusters, not coarse groups
    ("dyn_only", "effective_rank", 3.0, 3),     # not collapsed
    ("dyn_only", "mean_distance", 0.1, 3),      # distances not near 0 (others' smallest is 0.8)
    ("random", "decoder_mse", 0.2, 4),          # random decodes worse than reward
])
def test_each_claim_fails_when_its_number_disagrees(variant, key, value, claim_index):
    rows = paper_like_rows()
    rows[variant][key] = value
    claims = evaluate_claims(rows)
    assert claims[claim_index].reproduced is False
    assert sum(c.reproduced is False for c in claims) == 1


def test_claims_without_a_variant_are_not_evaluated():
    rows = paper_like_rows()
    del rows["random"]
    by_name = {c.name: c for c in evaluate_claims(rows)}
    assert by_name["random_no_structure"].reproduced is None
    assert by_name["decoder_random_lower"].reproduced is None
    assert by_name["reward_nine_clusters"].reproduced is True


def test_reproduce_script_trains_each_variant_with_its_own_pair(tmp_path):
    spec = importlib.util.spec_from_file_location("fig2_script", ROOT / "scripts" / "reproduce_figure2.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(["--out", str(tmp_path), "--minutes", "3", "--parallel", "2", "batch_size=64"])
    commands = {name: script.train_command(name, args) for name in args.variants}
    assert set(commands) == set(VARIANTS)
    pairs = {name: [a for a in cmd if a.startswith(("variant=", "aux="))] for name, cmd in commands.items()}
    assert pairs == {"reward": ["variant=pjepa", "aux=reward"], "random": ["variant=pjepa", "aux=random"],
                     "reward_only": ["variant=aux_only", "aux=reward"], "dyn_only": ["variant=dyn_only", "aux=none"]}
    for name, cmd in commands.items():
        assert f"hydra.run.dir={tmp_path.resolve() / name}" in cmd and f"exp_name=fig2_{name}" in cmd
        assert "resume=true" in cmd  # a stopped variant continues where it stopped
        assert "train_minutes=3.0" in cmd and "batch_size=64" in cmd and "task=counting" in cmd
        assert any(a.startswith("threads=") for a in cmd)  # two at a time: threads split between them
    with pytest.raises(SystemExit):
        script.parse_args(["aux=random"])  # the variant pairs are the script's own


@pytest.mark.parametrize("x", ["minutes", "updates"])
def test_accuracy_comparison_plots_against_minutes_or_updates(tmp_path, x):
    from pjepa_ext.figures import save_accuracy_comparison

    history = pd.DataFrame({"updates": [1, 250, 500], "elapsed": [30.0, 90.0, 150.0], "nc_accuracy": [0.25, 0.6, 0.9]})
    path = save_accuracy_comparison(tmp_path / f"{x}.png", {"a": history, "b": history.assign(nc_accuracy=0.5)}, x=x)
    assert mpimg.imread(path).shape[2] in (3, 4)
    with pytest.raises(ValueError, match="allowed values: minutes, updates"):
        save_accuracy_comparison(tmp_path / "bad.png", {"a": history}, x="steps")


def test_accuracy_comparison_gives_lines_past_the_colour_cycle_another_style(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from pjepa_ext.figures import save_accuracy_comparison

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path: saved.append(self))
    history = pd.DataFrame({"updates": [1, 250], "elapsed": [30.0, 90.0], "nc_accuracy": [0.25, 0.9]})
    colours = len(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
    save_accuracy_comparison(tmp_path / "many.png", {f"run {i}": history for i in range(colours + 2)})
    lines = saved[0].axes[0].get_lines()[:colours + 2]  # the threshold line comes after the runs
    assert [line.get_linestyle() for line in lines] == ["-"] * colours + ["--"] * 2
    first, repeat = lines[0], lines[colours]
    assert first.get_color() == repeat.get_color()  # same colour, told apart by the style
