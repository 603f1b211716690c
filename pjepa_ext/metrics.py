"""Representation metrics behind the paper's Figure 2 (Sec. 2.3).

Every function is a pure function of embeddings (an ``(N, D)`` array, one
row per observation) and, where it needs them, labels (an ``(N,)`` array,
e.g. the object count of each observation). Inputs may be numpy arrays,
anything ``np.asarray`` accepts, or torch tensors (detached and moved to
the CPU first); results are python floats, ints and dicts.

All arithmetic is in float64. Pairwise distances use the Gram-matrix identity
``|x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`` on embeddings centred by
their mean (distances do not change under a shift; centring removes the
cancellation a large common offset would cause), clamped at 0.

Two sets appear in the nearest-centroid metrics: the *centroid set*
(``train_emb``, ``train_labels``) from which one centroid per label is
averaged, and the *evaluation set* (``eval_emb``, ``eval_labels``) that is
classified. Passing the same set twice gives the authors' monitor, which
scored the samples that made the centroids.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

#: epsilon added to the normalised singular values in RankMe (Garrido et al., 2023)
RANKME_EPS = 1e-7

# Nearest-centroid ties: squared distances within this relative margin of the
# smallest one are treated as equal, plus an absolute margin relative to the
# embeddings' squared scale. The absolute term absorbs the last-bit rounding of
# centroid means, so a collapsed representation (every embedding the same
# point) is a tie for every sample rather than an arbitrary rounding winner.
_TIE_RTOL = 1e-9
_TIE_ATOL_SCALE = 1e-24
_GRAM_RTOL = 4.0 * np.finfo(np.float64).eps


# ---------------------------------------------------------------- validation


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()  # also covers bfloat16/half, which numpy cannot take directly
        return t.numpy()
    return np.asarray(x)


def _as_embeddings(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """Return ``x`` as a finite float64 array of shape (N, D) with N >= min_rows."""
    arr = _to_numpy(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (samples, dim), got shape {arr.shape}"
        )
    try:
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}") from err
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} needs at least one column, got shape {arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = int((~finite.all(axis=1)).sum())
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad_rows} of {arr.shape[0]} rows; "
            "all entries must be finite"
        )
    return arr


def _as_labels(y: Any, n: int, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D label array of length ``n``."""
    arr = _to_numpy(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of shape (samples,), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but its embeddings have {n} rows; "
            "they must match one to one"
        )
    return arr


def _as_labelled(emb: Any, labels: Any, prefix: str, min_rows: int = 1):
    """Validate an (embeddings, labels) pair and return both as arrays."""
    x = _as_embeddings(emb, f"{prefix}emb", min_rows)
    y = _as_labels(labels, x.shape[0], f"{prefix}labels")
    return x, y


def _python_scalar(v: Any) -> Any:
    """Return a numpy scalar as the matching python scalar (for dict keys)."""
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------- distances


def _pairwise_distances(x: np.ndarray) -> np.ndarray:
    """Return the (N, N) matrix of L2 distances between the rows of ``x`` (zero diagonal)."""
    xc = x - x.mean(axis=0)
    gram = xc @ xc.T
    sq_norms = np.diag(gram).copy()
    d2 = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    # The identity cannot resolve squared distances below the rounding of the
    # Gram entries (about dim * eps * |x_i|^2); such pairs coincide as far as
    # float64 can tell, so they are set to exactly 0 (identical rows included).
    floor = _GRAM_RTOL * x.shape[1] * (sq_norms[:, None] + sq_norms[None, :])
    d2[d2 <= floor] = 0.0
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2, out=d2)


def _mean_pairwise_from(dist: np.ndarray) -> float:
    n = dist.shape[0]
    return float(dist.sum() / (n * (n - 1)))


def _distance_ratio_from(dist: np.ndarray, labels: np.ndarray) -> float:
    classes, idx, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n = labels.shape[0]
    within_pairs = int((counts * (counts - 1) // 2).sum())
    across_pairs = n * (n - 1) // 2 - within_pairs
    if len(classes) < 2:
        raise ValueError(
            f"distance_ratio needs at least 2 distinct labels, got {len(classes)}"
        )
    if within_pairs == 0:
        raise ValueError(
            "distance_ratio needs a label with at least 2 samples (no within-label pair exists)"
        )
    same = idx[:, None] == idx[None, :]
    total_sum = dist.sum() / 2.0
    within_sum = dist[same].sum() / 2.0  # the diagonal is zero, so it adds nothing
    across_sum = total_sum - within_sum
    if across_sum <= 0.0:
        # Every pair across labels coincides, which forces all embeddings to be one
        # point: within equals across, i.e. no separation at all.
        return 1.0
    return float((within_sum / within_pairs) / (across_sum / across_pairs))


def _silhouette_from(dist: np.ndarray, labels: np.ndarray) -> float:
    classes, idx, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n, k = labels.shape[0], len(classes)
    if not 2 <= k <= n - 1:
        raise ValueError(
            f"silhouette needs 2 <= number of distinct labels <= samples - 1 "
            f"(got {k} labels for {n} samples)"
        )
    onehot = np.zeros((n, k))
    onehot[np.arange(n), idx] = 1.0
    sums = dist @ onehot  # sums[i, c] = total distance from sample i to cluster c
    own_count = counts[idx]
    rows = np.arange(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sums[rows, idx] / (own_count - 1)
    means = sums / counts[None, :]
    means[rows, idx] = np.inf
    b = means.min(axis=1)
    denom = np.maximum(a, b)
    s = np.zeros(n)
    ok = (own_count > 1) & (denom > 0.0)  # singletons and identical points score 0
    s[ok] = (b[ok] - a[ok]) / denom[ok]
    return float(s.mean())


# ---------------------------------------------------------------- nearest centroid


def _nearest_centroid_predict(
    train_emb: Any, train_labels: Any, eval_emb: Any, eval_labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (classes, true index, predicted index) for each evaluation sample.

    ``classes`` are the sorted distinct centroid-set labels; the indices point
    into it. Ties go to the smallest label (see ``nearest_centroid_accuracy``).
    """
    tx, ty = _as_labelled(train_emb, train_labels, "train_")
    ex, ey = _as_labelled(eval_emb, eval_labels, "eval_")
    if tx.shape[1] != ex.shape[1]:
        raise ValueError(
            f"train_emb has dim {tx.shape[1]} but eval_emb has dim {ex.shape[1]}; they must match"
        )
    classes, train_idx = np.unique(ty, return_inverse=True)
    missing = np.setdiff1d(np.unique(ey), classes)
    if missing.size:
        raise ValueError(
            f"eval_labels {missing.tolist()} have no centroid: every evaluation label must "
            f"appear in train_labels (which has {classes.tolist()})"
        )
    true_idx = np.searchsorted(classes, ey)

    origin = tx.mean(axis=0)
    onehot = np.zeros((tx.shape[0], len(classes)))
    onehot[np.arange(tx.shape[0]), train_idx] = 1.0
    centroids = (onehot.T @ (tx - origin)) / onehot.sum(axis=0)[:, None]
    e = ex - origin
    d2 = (
        (e * e).sum(axis=1)[:, None]
        + (centroids * centroids).sum(axis=1)[None, :]
        - 2.0 * e @ centroids.T
    )
    np.maximum(d2, 0.0, out=d2)

    scale = float((tx * tx).sum(axis=1).mean())
    best = d2.min(axis=1, keepdims=True)
    tied = d2 <= best * (1.0 + _TIE_RTOL) + _TIE_ATOL_SCALE * scale
    pred_idx = tied.argmax(axis=1)  # first True = smallest label among the tied
    return classes, true_idx, pred_idx


def nearest_centroid_accuracy(
    train_emb: Any, train_labels: Any, eval_emb: Any, eval_labels: Any
) -> float:
    """Return the nearest-centroid (L2) classification accuracy on the evaluation set.

    Centroids ``c_k = mean{x_i : y_i = k}`` are averaged from the centroid set
    (``train_emb``, ``train_labels``); each evaluation embedding ``e_j`` is
    assigned ``argmin_k |e_j - c_k|`` and the result is
    ``(1/M) sum_j 1[argmin_k |e_j - c_k| = y_j]``, in [0, 1].

    Ties (distances equal up to rounding) go to the smallest label. Hence a
    fully collapsed representation classifies every sample as the smallest
    label and scores that label's share of the evaluation set (1/K for K
    balanced labels: chance). Every evaluation label must have a centroid.
    """
    _, true_idx, pred_idx = _nearest_centroid_predict(train_emb, train_labels, eval_emb, eval_labels)
    return float((true_idx == pred_idx).mean())


def nearest_centroid_confusion(
    train_emb: Any, train_labels: Any, eval_emb: Any, eval_labels: Any
) -> np.ndarray:
    """Return the nearest-centroid confusion matrix on the evaluation set.

    ``C[a, b]`` (int64, shape (K, K)) counts evaluation samples whose label is
    ``classes[a]`` and whose nearest centroid is ``classes[b]``, where
    ``classes = np.unique(train_labels)`` (sorted). ``trace(C) / sum(C)`` is
    :func:`nearest_centroid_accuracy`; rows of labels absent from the
    evaluation set are zero. Ties go to the smallest label.
    """
    classes, true_idx, pred_idx = _nearest_centroid_predict(
        train_emb, train_labels, eval_emb, eval_labels
    )
    k = len(classes)
    return np.bincount(true_idx * k + pred_idx, minlength=k * k).reshape(k, k).astype(np.int64)


def _recall_from(classes: np.ndarray, true_idx: np.ndarray, pred_idx: np.ndarray) -> dict:
    hits = np.bincount(true_idx, weights=(true_idx == pred_idx), minlength=len(classes))
    totals = np.bincount(true_idx, minlength=len(classes))
    return {
        _python_scalar(classes[c]): float(hits[c] / totals[c])
        for c in range(len(classes))
        if totals[c] > 0
    }


def nearest_centroid_recall(
    train_emb: Any, train_labels: Any, eval_emb: Any, eval_labels: Any
) -> dict:
    """Return per-label nearest-centroid recall on the evaluation set.

    ``{k: |{j : y_j = k and argmin_c |e_j - c_c| = k}| / |{j : y_j = k}|}``
    for every label ``k`` present in ``eval_labels`` (python scalars as keys,
    in sorted order; floats in [0, 1]). Ties go to the smallest label.
    """
    return _recall_from(*_nearest_centroid_predict(train_emb, train_labels, eval_emb, eval_labels))


def _check_min_recall(min_recall: float) -> float:
    value = float(min_recall)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_recall must lie in [0, 1], got {min_recall}")
    return value


def distinct_clusters(
    train_emb: Any,
    train_labels: Any,
    eval_emb: Any,
    eval_labels: Any,
    min_recall: float = 0.9,
) -> int:
    """Return how many labels the nearest-centroid classifier recovers.

    ``#{k : recall_k >= min_recall}`` with ``recall_k`` from
    :func:`nearest_centroid_recall`, counted over the labels present in the
    evaluation set. Nine separated counts give 9; a fully collapsed
    representation gives 1 (ties go to the smallest label, whose recall is 1).
    """
    threshold = _check_min_recall(min_recall)
    recall = nearest_centroid_recall(train_emb, train_labels, eval_emb, eval_labels)
    return int(sum(r >= threshold for r in recall.values()))


# ---------------------------------------------------------------- one-set metrics


def mean_pairwise_distance(emb: Any) -> float:
    """Return the mean L2 distance over all pairs: ``(2 / (N (N-1))) sum_{i<j} |x_i - x_j|``."""
    x = _as_embeddings(emb, "emb", min_rows=2)
    return _mean_pairwise_from(_pairwise_distances(x))


def distance_ratio(emb: Any, labels: Any) -> float:
    """Return mean within-label distance over mean across-label distance.

    ``mean_{i<j, y_i = y_j} |x_i - x_j| / mean_{i<j, y_i != y_j} |x_i - x_j|``,
    each mean pooled over all pairs of its kind. Below 1: embeddings of one
    label sit closer together than embeddings of different labels (Fig. 2's
    dark diagonal blocks); about 1: no label structure. Invariant to rotation,
    shift and scale. If all embeddings coincide the ratio is defined as 1.0.
    Needs at least 2 labels and one label with at least 2 samples.
    """
    x, y = _as_labelled(emb, labels, "", min_rows=2)
    return _distance_ratio_from(_pairwise_distances(x), y)


def silhouette(emb: Any, labels: Any) -> float:
    """Return the mean silhouette score of the label partition (L2 distances).

    For sample i in cluster A: ``a_i`` = mean distance to the other members
    of A, ``b_i = min_{B != A}`` mean distance to the members of B, and
    ``s_i = (b_i - a_i) / max(a_i, b_i)``; the result is ``mean_i s_i`` in
    [-1, 1], as ``sklearn.metrics.silhouette_score``. ``s_i = 0`` for
    singleton clusters and where ``a_i = b_i = 0``, so identical embeddings
    give 0.0. Needs 2 <= number of labels <= N - 1.
    """
    x, y = _as_labelled(emb, labels, "", min_rows=2)
    return _silhouette_from(_pairwise_distances(x), y)


def effective_rank(emb: Any) -> float:
    """Return the RankMe effective rank of the embedding matrix (Garrido et al., 2023).

    With singular values ``s_k`` of the (N, D) matrix, **not centred** (as
    RankMe), ``p_k = s_k / sum_k s_k + eps`` (eps = 1e-7) and the result is
    ``exp(-sum_k p_k log p_k)``, in [1, min(N, D)] up to the eps terms. All
    embeddings at one nonzero point give ~1 (1 + O(min(N, D) eps log(1/eps)));
    an all-zero matrix, the limit of shrinking such a point, is defined as 1.0.
    """
    x = _as_embeddings(emb, "emb")
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if total <= 0.0:
        return 1.0
    p = s / total + RANKME_EPS
    return float(np.exp(-(p * np.log(p)).sum()))


def latent_norm(emb: Any) -> float:
    """Return the mean L2 norm of the embeddings: ``(1/N) sum_i |x_i|``."""
    x = _as_embeddings(emb, "emb")
    return float(np.linalg.norm(x, axis=1).mean())


# ---------------------------------------------------------------- report

#: keys of :func:`representation_report`, in order
REPORT_KEYS = (
    "nc_accuracy",
    "distance_ratio",
    "effective_rank",
    "silhouette",
    "distinct_clusters",
    "mean_distance",
    "latent_norm",
)


def representation_report(
    train_emb: Any,
    train_labels: Any,
    eval_emb: Any,
    eval_labels: Any,
    min_recall: float = 0.9,
) -> dict[str, float]:
    """Return every metric of this module in one dict, keyed by :data:`REPORT_KEYS`.

    ``nc_accuracy`` and ``distinct_clusters`` (an int) use centroids from the
    centroid set and score the evaluation set; the one-set metrics
    (``distance_ratio``, ``effective_rank``, ``silhouette``, ``mean_distance``
    = :func:`mean_pairwise_distance`, ``latent_norm``) are computed on the
    evaluation set. The evaluation distance matrix is computed once and shared.

    BLAS runs on one thread here: the matrices are small (900 x 256 takes tens
    of milliseconds), and on a shared CPU extra BLAS threads mostly wait on
    the training process and each other (measured: seconds instead of tens of
    milliseconds on a busy 2-core machine).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _representation_report(train_emb, train_labels, eval_emb, eval_labels, min_recall)


def _representation_report(train_emb, train_labels, eval_emb, eval_labels, min_recall):
    threshold = _check_min_recall(min_recall)
    classes, true_idx, pred_idx = _nearest_centroid_predict(
        train_emb, train_labels, eval_emb, eval_labels
    )
    ex, ey = _as_labelled(eval_emb, eval_labels, "eval_", min_rows=2)
    dist = _pairwise_distances(ex)
    recall = _recall_from(classes, true_idx, pred_idx)
    return {
        "nc_accuracy": float((true_idx == pred_idx).mean()),
        "distance_ratio": _distance_ratio_from(dist, ey),
        "effective_rank": effective_rank(ex),
        "silhouette": _silhouette_from(dist, ey),
        "distinct_clusters": int(sum(r >= threshold for r in recall.values())),
        "mean_distance": _mean_pairwise_from(dist),
        "latent_norm": latent_norm(ex),
    }
