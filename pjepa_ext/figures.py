"""Figures of the representation analysis (paper, Fig. 2): PCA, distance heatmap, reconstructions, curves.

``draw_*`` functions draw into a given matplotlib ``Axes`` (so rows of the
paper's figure can be assembled); ``save_*`` functions write one PNG each.
Figures are built as ``matplotlib.figure.Figure`` objects rendered by the
Agg backend, without pyplot's global state, so they work with no display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.spatial.distance import cdist

#: metric columns of analysis.csv drawn by :func:`save_curves`, with their axis labels
CURVE_METRICS = (
    ("nc_accuracy", "held-out nearest-centroid accuracy"),
    ("distance_ratio", "within / across distance"),
    ("effective_rank", "effective rank (RankMe)"),
)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def count_colours(n_counts: int) -> np.ndarray:
    """Return ``(n_counts, 4)`` RGBA colours, one per count: tab10 up to ten counts, viridis beyond."""
    if n_counts <= 10:
        return matplotlib.colormaps["tab10"](np.arange(n_counts))
    return matplotlib.colormaps["viridis"](np.linspace(0, 1, n_counts))


def pca_2d(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(coords (N, 2), explained variance ratio (2,))`` of the first two principal components.

    Missing components (fewer than two dimensions, or no variance at all) are zeros.
    """
    x = np.asarray(emb, dtype=np.float64)
    x = x - x.mean(axis=0)
    coords = np.zeros((x.shape[0], 2))
    ratio = np.zeros(2)
    if x.shape[0] < 2:
        return coords, ratio
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(2, vt.shape[0])
    coords[:, :k] = x @ vt[:k].T
    total = float((s ** 2).sum())
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return coords, ratio


def draw_pca(ax, emb: np.ndarray, counts: np.ndarray, legend: bool = True) -> None:
    """Scatter the first two principal components of ``emb`` coloured by ``counts``."""
    coords, ratio = pca_2d(emb)
    counts = np.asarray(counts)
    present = np.unique(counts)
    colours = count_colours(int(counts.max()) + 1 if counts.size else 1)
    for k in present:
        sel = counts == k
        ax.scatter(coords[sel, 0], coords[sel, 1], s=10, color=colours[k], label=str(int(k)), alpha=0.85,
                   linewidths=0)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var.)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var.)")
    if legend:
        ax.legend(title="count", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  markerscale=1.5, frameon=False)


def draw_distances(ax, emb: np.ndarray, counts: np.ndarray):
    """Draw the pairwise L2 distance matrix of ``emb`` (rows sorted by count) with red lines at count boundaries.

    Returns the image handle (for a colour bar). Dark means close.
    """
    counts = np.asarray(counts)
    order = np.argsort(counts, kind="stable")
    x = np.asarray(emb, dtype=np.float64)[order]
    sorted_counts = counts[order]
    dist = cdist(x, x)
    image = ax.imshow(dist, cmap="viridis", interpolation="nearest")
    bounds = np.flatnonzero(np.diff(sorted_counts)) + 0.5
    for b in bounds:
        ax.axhline(b, color="red", linewidth=0.8)
        ax.axvline(b, color="red", linewidth=0.8)
    edges = np.concatenate([[-0.5], bounds, [len(sorted_counts) - 0.5]])
    centres = (edges[:-1] + edges[1:]) / 2
    labels = [str(int(k)) for k in np.unique(sorted_counts)]
    ax.set_xticks(centres, labels, fontsize=7)
    ax.set_yticks(centres, labels, fontsize=7)
    ax.set_xlabel("count")
    ax.set_ylabel("count")
    return image


def _stretch(image: np.ndarray) -> np.ndarray:
    """Return a uint8 image (C, H, W) rescaled to span 0..255 (a constant image is returned as is)."""
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return image
    return np.round((image.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def reconstruction_mosaic(obs: np.ndarray, recon: np.ndarray, columns: int, stretch: bool = True,
                          gap: int = 2) -> np.ndarray:
    """Return an (H, W, 3) uint8 grid of pairs ``[observation | reconstruction]``, ``columns`` pairs per row.

    ``obs`` and ``recon`` are uint8 ``(K, 3, S, S)``. With ``stretch`` each
    reconstruction is contrast-stretched to 0..255 (as the paper does).
    Pairs are separated by ``gap`` white pixels; the two images of a pair by one.
    """
    obs, recon = np.asarray(obs), np.asarray(recon)
    if obs.shape != recon.shape or obs.ndim != 4:
        raise ValueError(f"obs and recon must both have shape (K, C, S, S); got {obs.shape} and {recon.shape}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    k, _, s, _ = obs.shape
    rows = -(-k // columns)
    pair_w = 2 * s + 1
    height = rows * s + (rows + 1) * gap
    width = columns * pair_w + (columns + 1) * gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(k):
        r, c = divmod(i, columns)
        top, left = gap + r * (s + gap), gap + c * (pair_w + gap)
        shown = _stretch(recon[i]) if stretch else recon[i]
        canvas[top:top + s, left:left + s] = obs[i].transpose(1, 2, 0)
        canvas[top:top + s, left + s + 1:left + pair_w] = shown.transpose(1, 2, 0)
    return canvas


def draw_reconstructions(ax, obs: np.ndarray, recon: np.ndarray, columns: int) -> None:
    """Show the :func:`reconstruction_mosaic` of ``obs`` and ``recon`` without axes."""
    ax.imshow(reconstruction_mosaic(obs, recon, columns), interpolation="nearest")
    ax.set_axis_off()


def save_pca(path: str | Path, emb: np.ndarray, counts: np.ndarray, title: str = "") -> Path:
    """Write the PCA scatter of ``emb`` coloured by count to ``path``; return it."""
    fig = _new_figure(5.6, 4.4)
    ax = fig.add_subplot()
    draw_pca(ax, emb, counts)
    ax.set_title(f"PCA of {len(counts)} eval-probe embeddings\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def save_distances(path: str | Path, emb: np.ndarray, counts: np.ndarray, title: str = "") -> Path:
    """Write the count-sorted pairwise distance heatmap of ``emb`` to ``path``; return it."""
    fig = _new_figure(5.4, 4.6)
    ax = fig.add_subplot()
    image = draw_distances(ax, emb, counts)
    fig.colorbar(image, ax=ax, label="L2 distance")
    ax.set_title(f"pairwise distances, sorted by count\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def save_reconstructions(path: str | Path, obs: np.ndarray, recon: np.ndarray, counts: Sequence[int],
                         title: str = "") -> Path:
    """Write a strip of observations (left of each pair) beside their decoder reconstructions to ``path``."""
    k = len(obs)
    mosaic = reconstruction_mosaic(obs, recon, columns=k)
    width = max(4.0, 1.3 * k)
    fig = _new_figure(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.8)
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"observation | reconstruction (contrast-stretched), counts "
                 f"{', '.join(str(int(c)) for c in counts)}\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def save_curves(path: str | Path, history, title: str = "", marker: tuple[float, float] | None = None) -> Path:
    """Write the metric curves of ``history`` (analysis.csv rows) vs updates and vs wall-clock minutes to ``path``.

    ``marker`` = (updates, elapsed seconds) of the analysed checkpoint, drawn as a dashed line.
    """
    fig = _new_figure(9.0, 7.5)
    axes = fig.subplots(len(CURVE_METRICS), 2, squeeze=False)
    minutes = history["elapsed"] / 60.0 if "elapsed" in history else None
    for row, (key, label) in enumerate(CURVE_METRICS):
        for col, (x, xlabel) in enumerate(((history.get("updates"), "updates"), (minutes, "wall-clock (min)"))):
            ax = axes[row, col]
            if x is None or key not in history:
                missing = key if key not in history else xlabel
                ax.text(0.5, 0.5, f"analysis.csv has no {missing} column", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            ax.plot(x, history[key], marker="o", markersize=2.5, linewidth=1.2)
            if marker is not None and np.isfinite(marker[col]):
                at = marker[col] if col == 0 else marker[col] / 60.0
                ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(f"representation metrics during training (dashed: analysed checkpoint)\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def save_figure_rows(path: str | Path, rows: Sequence[dict], columns: int = 3) -> Path:
    """Write the paper-style figure, one row per entry of ``rows``: PCA | distance heatmap | reconstructions.

    Each row is a dict with ``label``, ``emb``, ``counts`` and optionally
    ``obs`` and ``recon`` (no decoder: the third panel says so).
    """
    fig = _new_figure(15.0, 4.2 * len(rows))
    axes = fig.subplots(len(rows), 3, squeeze=False, gridspec_kw={"width_ratios": [1.15, 1.0, 1.25]})
    for r, row in enumerate(rows):
        draw_pca(axes[r, 0], row["emb"], row["counts"], legend=True)
        axes[r, 0].set_title(row["label"], fontsize=10, loc="left")
        image = draw_distances(axes[r, 1], row["emb"], row["counts"])
        fig.colorbar(image, ax=axes[r, 1], fraction=0.046, pad=0.04)
        if row.get("obs") is not None:
            draw_reconstructions(axes[r, 2], row["obs"], row["recon"], columns)
        else:
            axes[r, 2].set_axis_off()
            axes[r, 2].text(0.5, 0.5, "no decoder probe", ha="center", va="center", transform=axes[r, 2].transAxes)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def save_accuracy_comparison(path: str | Path, histories: dict, threshold: float = 0.95, x: str = "minutes") -> Path:
    """Write held-out accuracy vs wall-clock minutes (``x="minutes"``) or updates (``x="updates"``) to ``path``:
    one line per ``{label: analysis.csv DataFrame}``; return the path."""
    if x not in ("minutes", "updates"):
        raise ValueError(f"x={x!r}; allowed values: minutes, updates")
    fig = _new_figure(7.0, 4.5)
    ax = fig.subplots()
    colours = len(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
    for i, (label, history) in enumerate(histories.items()):
        xs = history["elapsed"] / 60.0 if x == "minutes" else history["updates"]
        style = ("-", "--", ":")[(i // colours) % 3]  # the colour cycle repeats: tell the repeats apart
        ax.plot(xs, history["nc_accuracy"], marker="o", markersize=2.5, linewidth=1.2, linestyle=style, label=label)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("wall-clock since start, incl. seeding (min)" if x == "minutes" else "gradient updates")
    ax.set_ylabel("held-out nearest-centroid accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
