"""Representation analysis of a trained counting run (paper, Sec. 2.3 and Fig. 2).

Loads a run directory written by ``train.py task=counting``, embeds the same
probe sets the training-time monitor used (:mod:`pjepa_ext.probes`), computes
the representation report and the theory check, and writes the figures and
``metrics.json`` (:func:`write_analysis`). The drawing itself lives in
:mod:`pjepa_ext.figures`.

The theory check compares the trained encoder with Theorem 3: counts that
fall in different classes of the largest bisimulation predicted for the
run's auxiliary target (:func:`pjepa_ext.bisim.predict_counting_partition`)
are certified non-bisimilar, so no pair of probe observations with such
counts may share an embedding (:func:`pjepa_ext.bisim.collapse_check`).
For targets that read pixels (``aux=random``) the classes are those of one
rendered observation per count, so the check covers only pairs of different
counts, not the many same-count pairs such a target also tells apart.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pjepa_ext.bisim import CollapseReport, collapse_check, format_partition, predict_counting_partition
from pjepa_ext.decoder import decoder_target, reconstruct
from pjepa_ext.metrics import nearest_centroid_accuracy, nearest_centroid_recall, representation_report
from pjepa_ext.probes import ProbeSet, embed, run_probe_sets
from tdmpc2.config import choose_device

#: checkpoint names a run directory may hold, in the order tried when none is named
CHECKPOINTS = ("best", "final")
#: observations in the PCA scatter and the distance heatmap (the paper's 256)
FIGURE_SAMPLES = 256
#: certified pairs compared when the probe set is too large to take all of them
MAX_CERTIFIED_PAIRS = 4_000_000
#: the coarse grouping the paper reads off the reward-only heatmap: 0-2, 3-5, 6-8
COARSE_GROUPS = 3

_ROOT_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


class RunDirectoryError(ValueError):
    """A run directory cannot be analysed: missing, incomplete, or its checkpoint is unusable."""


# ---------------------------------------------------------------- loading


@dataclass
class LoadedRun:
    """A run directory with its agent restored from one checkpoint.

    ``filled_defaults`` lists config keys the checkpoint lacked (written by
    older code) and that were taken from the current root ``config.yaml``.
    """

    run_dir: Path
    cfg: DictConfig
    agent: Any
    checkpoint: str
    checkpoint_path: Path
    step: int
    updates: int
    elapsed: float
    training_analysis: dict | None
    filled_defaults: list[str] = field(default_factory=list)

    def decoder(self):
        """Return the run's decoder probe (an ``ImageDecoder``), or None if it trained without one."""
        for term in self.agent.extra_losses:
            if term.name == "decoder":
                return term.decoder
        return None


def _leaf_keys(container: Any, prefix: str = "") -> set[str]:
    if not isinstance(container, dict):
        return {prefix}
    keys: set[str] = set()
    for k, v in container.items():
        keys |= _leaf_keys(v, f"{prefix}.{k}" if prefix else str(k))
    return keys


def _with_defaults(run_cfg: dict) -> tuple[DictConfig, list[str]]:
    """Return the run's config with keys it lacks filled from the root config, and those keys."""
    base = OmegaConf.to_container(OmegaConf.load(_ROOT_CONFIG))
    base.pop("defaults", None)
    base.pop("hydra", None)
    missing = sorted(_leaf_keys(base) - _leaf_keys(run_cfg))
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(run_cfg)), missing


def find_checkpoint(run_dir: str | Path, checkpoint: str | None = None) -> tuple[str, Path]:
    """Return ``(name, path)`` of the checkpoint to analyse in ``run_dir``.

    ``checkpoint`` is ``best`` or ``final``; None takes ``best.pt`` (the most
    compact point, as the paper plots) when present, else ``final.pt``.
    Raises :class:`RunDirectoryError` naming what is missing.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirectoryError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise RunDirectoryError(f"run directory is not a directory: {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise RunDirectoryError(
            f"{run_dir} has no config.yaml: not a run directory written by train.py")
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise RunDirectoryError(f"checkpoint={checkpoint!r} is unknown; allowed values: {', '.join(CHECKPOINTS)}")
    names = CHECKPOINTS if checkpoint is None else (checkpoint,)
    for name in names:
        path = run_dir / f"{name}.pt"
        if path.is_file():
            return name, path
    wanted = " or ".join(f"{n}.pt" for n in names)
    raise RunDirectoryError(f"{run_dir} has no checkpoint ({wanted} not found); is the run still starting?")


def load_run(run_dir: str | Path, checkpoint: str | None = None, device: str = "auto") -> LoadedRun:
    """Return the :class:`LoadedRun` of ``run_dir`` restored from its ``checkpoint`` (see :func:`find_checkpoint`).

    The agent is rebuilt from the config stored in the checkpoint, with the
    training hooks off, on ``device``, in evaluation mode. Raises
    :class:`RunDirectoryError` for a missing, corrupt or mismatched checkpoint.
    """
    from pjepa_ext.plugin import build_agent
    from tdmpc2.checkpoint import CheckpointError, load_checkpoint

    run_dir = Path(run_dir)
    name, path = find_checkpoint(run_dir, checkpoint)
    chosen = choose_device(device)
    try:
        payload = load_checkpoint(path, map_location=chosen)
    except CheckpointError as err:
        raise RunDirectoryError(str(err)) from err
    missing = [k for k in ("agent", "cfg") if k not in payload]
    if missing:
        raise RunDirectoryError(f"checkpoint {path} lacks {missing}: not written by the trainer")
    cfg, filled = _with_defaults(payload["cfg"])
    if cfg.get("task") != "counting":
        raise RunDirectoryError(
            f"{run_dir} is a run of task '{cfg.get('task')}'; the representation analysis needs task=counting")
    with open_dict(cfg):
        cfg.analysis_freq = 0
        cfg.device = str(chosen)
        cfg.compile = False
        # Latents are measured in float32 whatever the run trained in, as the training-time hook does.
        cfg.precision, cfg.precision_reason = "fp32", "analysis"
    try:
        agent, _ = build_agent(cfg)
        agent.load_state_dict(payload["agent"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise RunDirectoryError(
            f"checkpoint {path} does not match the agent its config builds ({type(err).__name__}: {err})") from err
    agent.train(False)
    return LoadedRun(
        run_dir=run_dir, cfg=cfg, agent=agent, checkpoint=name, checkpoint_path=path,
        step=int(payload.get("step", -1)), updates=int(payload.get("updates", agent.num_updates)),
        elapsed=float(payload.get("elapsed", float("nan"))), training_analysis=payload.get("analysis"),
        filled_defaults=filled,
    )


# ---------------------------------------------------------------- probe embeddings


@dataclass
class ProbeEmbeddings:
    """Both probe sets of a run and their embeddings ``(N, latent_dim)`` float32."""

    centroid_set: ProbeSet
    eval_set: ProbeSet
    centroid_emb: np.ndarray
    eval_emb: np.ndarray


@torch.no_grad()
def embed_probe_sets(run: LoadedRun) -> ProbeEmbeddings:
    """Return the run's probe sets embedded by its encoder (evaluation mode)."""
    centroid_set, eval_set = run_probe_sets(run.cfg)
    encode, device = run.agent.model.encode, run.agent.device
    return ProbeEmbeddings(centroid_set, eval_set,
                           embed(encode, centroid_set.obs, device), embed(encode, eval_set.obs, device))


def figure_sample(counts: np.ndarray, n: int = FIGURE_SAMPLES, seed: int = 0) -> np.ndarray:
    """Return indices of ``min(n, len(counts))`` observations drawn without replacement, sorted by count.

    Within a count the indices are in increasing order, so the same seed
    always gives the same heatmap.
    """
    counts = np.asarray(counts)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(counts), size=min(n, len(counts)), replace=False)
    return chosen[np.lexsort((chosen, counts[chosen]))]


def one_per_count(counts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Return, for every count present among ``candidates``, the first candidate index with that count."""
    counts = np.asarray(counts)
    picked: dict[int, int] = {}
    for i in candidates:
        picked.setdefault(int(counts[i]), int(i))
    return np.array([picked[c] for c in sorted(picked)], dtype=np.int64)


# ---------------------------------------------------------------- theory check


@dataclass(frozen=True)
class TheoryCheck:
    """Predicted bisimulation classes of counts next to what the encoder does on the probe set."""

    aux: str
    partition: list
    n_classes: int
    distinct_clusters: int
    collapse: CollapseReport
    pairs_sampled: bool

    @property
    def respects_lower_bound(self) -> bool:
        """True iff no certified non-bisimilar pair of probe observations is collapsed."""
        return self.collapse.respects_lower_bound

    def summary(self) -> str:
        """Return the check as one line: predicted classes, clusters found, the closest certified pair, the verdict."""
        noun = "class" if self.n_classes == 1 else "classes"
        found = "cluster" if self.distinct_clusters == 1 else "clusters"
        head = (f"theory: {self.n_classes} predicted {noun} (aux={self.aux}), "
                f"{self.distinct_clusters} distinct {found} found")
        c = self.collapse
        if c.n_pairs == 0:
            return f"{head}; no pair of counts is certified non-bisimilar, so nothing can violate the lower bound"
        scale = "median within-count distance" if c.reference == "within-class median" else "median distance"
        if c.respects_lower_bound:
            verdict = "respects the lower bound"
        else:
            verdict = f"VIOLATES the lower bound ({c.n_close} of {c.n_pairs} certified pairs at <= {c.tol:.3g})"
        line = (f"{head}; closest non-bisimilar pair at {c.min_distance:.3g} "
                f"({scale} {c.reference_distance:.3g}): {verdict}")
        if self.distinct_clusters < self.n_classes:
            line += "; nearest-centroid separates fewer counts than the predicted classes"
        return line

    def to_dict(self) -> dict:
        """Return the check as plain JSON-ready values, the summary line included."""
        return {
            "aux": self.aux,
            "predicted_classes": self.n_classes,
            "partition": [list(map(int, cls)) for cls in self.partition],
            "partition_text": format_partition(self.partition),
            "distinct_clusters": self.distinct_clusters,
            "respects_lower_bound": self.respects_lower_bound,
            "pairs_sampled": self.pairs_sampled,
            "collapse_check": self.collapse.to_dict(),
            "summary": self.summary(),
        }


def certified_pairs(counts: np.ndarray, partition: list, max_pairs: int = MAX_CERTIFIED_PAIRS,
                    seed: int = 0) -> tuple[np.ndarray, bool]:
    """Return ``(pairs (P, 2) int64 with i < j, sampled)``: observations whose counts lie in different classes.

    All such pairs when there are at most ``max_pairs`` candidate pairs;
    otherwise ``max_pairs`` pairs drawn uniformly (``sampled`` is True).
    """
    counts = np.asarray(counts, dtype=np.int64)
    class_of = np.full(int(counts.max()) + 1 if counts.size else 1, -1, dtype=np.int64)
    for c, members in enumerate(partition):
        class_of[np.asarray(members, dtype=np.int64)] = c
    if (class_of[counts] < 0).any():
        raise ValueError(f"counts {sorted(set(counts[class_of[counts] < 0].tolist()))} are in no class of the partition")
    cls = class_of[counts]
    n = counts.size
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
        sampled = False
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, n, size=(2, max_pairs))
        i, j = np.minimum(i, j), np.maximum(i, j)
        sampled = True
    keep = cls[i] != cls[j]
    return np.stack([i[keep], j[keep]], axis=1).astype(np.int64), sampled


def theory_check(aux: str, eval_emb: np.ndarray, eval_counts: np.ndarray, distinct_clusters: int,
                 target: int = 4, max_count: int = 8, image_size: int = 64, aux_dim: int = 256,
                 seed: int = 0) -> TheoryCheck:
    """Return the :class:`TheoryCheck` of embeddings ``eval_emb`` of observations with ``eval_counts``.

    The predicted classes come from :func:`predict_counting_partition` for
    the auxiliary target ``aux`` (with the run's ``target``, ``max_count``,
    ``image_size``, ``aux_dim`` and ``seed``, which fixes a random
    projection); ``distinct_clusters`` is the report's count of recovered
    labels. A certified pair is collapsed when its distance is at most 1% of
    the median within-count distance (``collapse_check``'s default).
    """
    partition = predict_counting_partition(aux, target, max_count, image_size, aux_dim, seed)
    pairs, sampled = certified_pairs(eval_counts, partition)
    report = collapse_check(eval_emb, pairs, labels=np.asarray(eval_counts))
    return TheoryCheck(aux=aux, partition=partition, n_classes=len(partition),
                       distinct_clusters=int(distinct_clusters), collapse=report, pairs_sampled=sampled)


def run_theory_check(cfg, eval_emb: np.ndarray, eval_counts: np.ndarray, distinct_clusters: int) -> TheoryCheck:
    """Return :func:`theory_check` with the auxiliary target and counting settings of the run config ``cfg``."""
    return theory_check(cfg.aux, eval_emb, eval_counts, distinct_clusters, target=cfg.counting.target,
                        max_count=cfg.counting.max_count, image_size=cfg.counting.image_size,
                        aux_dim=cfg.aux_dim, seed=cfg.seed)


# ---------------------------------------------------------------- the whole analysis


def coarse_labels(counts: np.ndarray, max_count: int, groups: int = COARSE_GROUPS) -> np.ndarray:
    """Return the coarse group of each count: ``floor(count * groups / (max_count + 1))`` (0-2, 3-5, 6-8 for 9 counts)."""
    return (np.asarray(counts) * groups) // (max_count + 1)


@dataclass
class Reconstructions:
    """Decoder probe outputs: one observation per count and its reconstruction (uint8, (K, 3, S, S)), and the MSE."""

    obs: np.ndarray
    recon: np.ndarray
    counts: np.ndarray
    mse: float


@torch.no_grad()
def decoder_reconstructions(run: LoadedRun, probes: ProbeEmbeddings, picks: np.ndarray,
                            batch_size: int = 256) -> Reconstructions | None:
    """Return the decoder probe's reconstructions of eval observations ``picks`` and its MSE over the eval set.

    The MSE is the training loss's, on pixels scaled to [-1, 1]. None when
    the run has no decoder.
    """
    decoder = run.decoder()
    if decoder is None:
        return None
    device = run.agent.device
    total, n = 0.0, len(probes.eval_set)
    for lo in range(0, n, batch_size):
        z = torch.as_tensor(probes.eval_emb[lo:lo + batch_size], device=device)
        target = decoder_target(torch.as_tensor(probes.eval_set.obs[lo:lo + batch_size], device=device))
        total += float(((decoder(z) - target) ** 2).sum())
    mse = total / (n * int(np.prod(probes.eval_set.obs.shape[1:])))
    recon = reconstruct(decoder, torch.as_tensor(probes.eval_emb[picks], device=device)).cpu().numpy()
    return Reconstructions(probes.eval_set.obs[picks], recon, probes.eval_set.counts[picks], mse)


@dataclass
class RunAnalysis:
    """Everything :func:`analyze` computes for one run; :meth:`metrics` is what goes into ``metrics.json``."""

    run: LoadedRun
    probes: ProbeEmbeddings
    report: dict
    recall: dict
    coarse_accuracy: float
    theory: TheoryCheck
    figure_idx: np.ndarray
    reconstructions: Reconstructions | None
    history: pd.DataFrame | None

    def metrics(self) -> dict:
        """Return the JSON-ready summary: checkpoint, probe sets, report, recall, theory check, decoder."""
        run, cfg = self.run, self.run.cfg
        rec = self.reconstructions
        return {
            "run_dir": str(run.run_dir),
            "checkpoint": {"name": run.checkpoint, "path": str(run.checkpoint_path), "step": run.step,
                           "updates": run.updates, "elapsed": run.elapsed},
            "variant": cfg.get("variant"), "aux": cfg.aux,
            "probe_sets": {"per_count": cfg.analysis_per_count, "image_size": cfg.counting.image_size,
                           "max_count": cfg.counting.max_count, "seed": cfg.analysis_seed,
                           "centroid_size": len(self.probes.centroid_set), "eval_size": len(self.probes.eval_set),
                           "figure_size": int(len(self.figure_idx))},
            "report": self.report,
            "nc_recall": {str(k): v for k, v in self.recall.items()},
            "coarse_groups": {
                "groups": [[int(k) for k in range(cfg.counting.max_count + 1)
                            if coarse_labels(k, cfg.counting.max_count) == g] for g in range(COARSE_GROUPS)],
                "nc_accuracy": self.coarse_accuracy,
            },
            "theory": self.theory.to_dict(),
            "decoder": ({"available": True, "mse": rec.mse, "mse_scale": "pixels in [-1, 1], eval probe set"}
                        if rec is not None else
                        {"available": False, "note": "the run trained no decoder probe (decoder=false)"}),
            "training_analysis_at_checkpoint": run.training_analysis,
            "filled_defaults": run.filled_defaults,
        }


def read_history(run_dir: Path) -> pd.DataFrame | None:
    """Return the run's ``analysis.csv`` as a DataFrame, or None when it is absent or empty."""
    path = Path(run_dir) / "analysis.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return frame if len(frame) else None


def analyze(run: LoadedRun) -> RunAnalysis:
    """Return the :class:`RunAnalysis` of a loaded run: probe embeddings, report, theory check, reconstructions."""
    cfg = run.cfg
    probes = embed_probe_sets(run)
    c_counts, e_counts = probes.centroid_set.counts, probes.eval_set.counts
    report = representation_report(probes.centroid_emb, c_counts, probes.eval_emb, e_counts)
    recall = nearest_centroid_recall(probes.centroid_emb, c_counts, probes.eval_emb, e_counts)
    max_count = cfg.counting.max_count
    coarse = nearest_centroid_accuracy(probes.centroid_emb, coarse_labels(c_counts, max_count),
                                       probes.eval_emb, coarse_labels(e_counts, max_count))
    theory = run_theory_check(cfg, probes.eval_emb, e_counts, report["distinct_clusters"])
    figure_idx = figure_sample(e_counts, FIGURE_SAMPLES, seed=cfg.analysis_seed)
    recon = decoder_reconstructions(run, probes, one_per_count(e_counts, figure_idx))
    return RunAnalysis(run, probes, report, recall, coarse, theory, figure_idx, recon, read_history(run.run_dir))


def save_embeddings(path: Path, probes: ProbeEmbeddings, figure_idx: np.ndarray) -> Path:
    """Write both probe sets' embeddings with count, shape and colour labels to ``path`` (npz); return it."""
    arrays = {"figure_idx": figure_idx}
    for prefix, probe, emb in (("centroid", probes.centroid_set, probes.centroid_emb),
                               ("eval", probes.eval_set, probes.eval_emb)):
        arrays.update({f"{prefix}_emb": emb, f"{prefix}_counts": probe.counts,
                       f"{prefix}_shapes": probe.shapes, f"{prefix}_colours": probe.colours})
    np.savez_compressed(path, **arrays)
    return path


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_analysis(result: RunAnalysis, out_dir: str | Path) -> dict:
    """Write pca.png, distances.png, reconstructions.png, curves.png, metrics.json and embeddings.npz into ``out_dir``.

    A figure whose input is missing (no decoder, no analysis.csv) is not
    written; ``metrics.json`` says why under ``files``. Returns the metrics dict.
    """
    from pjepa_ext import figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probes, idx = result.probes, result.figure_idx
    emb, counts = probes.eval_emb[idx], probes.eval_set.counts[idx]
    title = f"{result.run.run_dir.name} ({result.run.checkpoint}, {result.run.updates:,} updates)"
    files: dict[str, str] = {}
    figures.save_pca(out / "pca.png", emb, counts, title)
    files["pca.png"] = "written"
    figures.save_distances(out / "distances.png", emb, counts, title)
    files["distances.png"] = "written"
    if result.reconstructions is not None:
        rec = result.reconstructions
        figures.save_reconstructions(out / "reconstructions.png", rec.obs, rec.recon, rec.counts, title)
        files["reconstructions.png"] = "written"
    else:
        files["reconstructions.png"] = "not written: the run has no decoder probe"
    if result.history is not None:
        figures.save_curves(out / "curves.png", result.history, title,
                            marker=(result.run.updates, result.run.elapsed))
        files["curves.png"] = "written"
    else:
        files["curves.png"] = "not written: the run has no analysis.csv rows (analysis_freq=0?)"
    save_embeddings(out / "embeddings.npz", probes, idx)
    files["embeddings.npz"] = "written"
    metrics = result.metrics()
    metrics["files"] = files
    metrics = _json_ready(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def analyze_run(run_dir: str | Path, checkpoint: str | None = None, out_dir: str | Path | None = None,
                device: str = "auto") -> tuple[RunAnalysis, dict]:
    """Load, analyse and write one run; return ``(analysis, metrics)``. Output goes to ``out_dir`` or ``run_dir/analysis``."""
    run = load_run(run_dir, checkpoint, device)
    result = analyze(run)
    metrics = write_analysis(result, Path(out_dir) if out_dir is not None else Path(run_dir) / "analysis")
    return result, metrics
