"""Facts about pjepa_ext.metrics on synthetic embeddings with known answers."""
import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from pjepa_ext import metrics as m

K = 9
DIM = 32


def orthogonal_clusters(per_label, sigma, seed, dim=DIM, scale=10.0):
    """Nine Gaussian clusters centred at scale * e_k (k = label), one row per sample."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), per_label)
    emb = scale * np.eye(dim)[labels] + sigma * rng.normal(size=(labels.size, dim))
    return emb, labels


def rankme_from_singular_values(s):
    """The RankMe formula of the docstring, written out independently."""
    p = np.asarray(s, dtype=np.float64) / np.sum(s) + m.RANKME_EPS
    return float(np.exp(-np.sum(p * np.log(p))))


def random_rotation(dim, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


# ------------------------------------------------------------- nine separated clusters


@pytest.fixture(scope="module")
def separated():
    train_emb, train_labels = orthogonal_clusters(60, 0.1, seed=1)
    eval_emb, eval_labels = orthogonal_clusters(40, 0.1, seed=2)
    return train_emb, train_labels, eval_emb, eval_labels


def test_separated_clusters_are_classified_perfectly(separated):
    assert m.nearest_centroid_accuracy(*separated) == 1.0
    assert m.nearest_centroid_recall(*separated) == {k: 1.0 for k in range(K)}
    assert m.distinct_clusters(*separated) == K
    np.testing.assert_array_equal(m.nearest_centroid_confusion(*separated), 40 * np.eye(K))


def test_separated_clusters_distance_ratio_matches_geometry(separated):
    _, _, emb, labels = separated
    sigma, scale = 0.1, 10.0
    # Expected distances: within a cluster |n_i - n_j| ~ sigma sqrt(2 dim); across
    # clusters sqrt(2 scale^2 + 2 dim sigma^2).
    within = sigma * np.sqrt(2 * DIM)
    across = np.sqrt(2 * scale**2 + 2 * DIM * sigma**2)
    ratio = m.distance_ratio(emb, labels)
    assert ratio == pytest.approx(within / across, rel=0.03)
    assert ratio < 0.1


def test_separated_clusters_silhouette_is_near_one(separated):
    _, _, emb, labels = separated
    # Each s_i = 1 - a_i / b_i and a_i / b_i is the within/across ratio per sample.
    score = m.silhouette(emb, labels)
    assert score == pytest.approx(1.0 - m.distance_ratio(emb, labels), abs=0.01)
    assert score > 0.9


def test_effective_rank_of_orthogonal_cluster_centres_is_nine():
    emb, _ = orthogonal_clusters(20, 0.0, seed=0)
    # Nine equal singular values sqrt(20) * 10, the rest zero: min(N, dim) values.
    singular = [np.sqrt(20) * 10.0] * K + [0.0] * (DIM - K)
    assert m.effective_rank(emb) == pytest.approx(rankme_from_singular_values(singular), rel=1e-9)
    assert m.effective_rank(emb) == pytest.approx(9.0, abs=0.01)
    noisy, _ = orthogonal_clusters(20, 0.01, seed=0)
    assert 9.0 <= m.effective_rank(noisy) < 10.0


def test_effective_rank_is_not_centred():
    # Two points c + u, c - u with c orthogonal to u and |c| = |u|: the matrix has two
    # equal singular values (RankMe ~2), while centring would leave rank 1.
    c, u = np.eye(4)[0], np.eye(4)[1]
    emb = np.stack([c + u, c - u])
    assert m.effective_rank(emb) == pytest.approx(rankme_from_singular_values([1.0, 1.0]), rel=1e-9)
    assert m.effective_rank(emb) == pytest.approx(2.0, abs=1e-3)


def test_effective_rank_of_all_zero_matrix_is_one():
    assert m.effective_rank(np.zeros((10, 4))) == 1.0


# ------------------------------------------------------------- one collapsed point


@pytest.fixture(scope="module")
def collapsed():
    # Unequal label sizes so the per-label centroid means round differently.
    point = np.random.default_rng(3).normal(size=256) * 3.7
    sizes = np.arange(7, 7 + K)
    labels = np.repeat(np.arange(K), sizes)
    return np.tile(point, (labels.size, 1)), labels, sizes


def test_collapsed_point_ties_go_to_the_smallest_label(collapsed):
    emb, labels, sizes = collapsed
    assert m.nearest_centroid_accuracy(emb, labels, emb, labels) == pytest.approx(sizes[0] / sizes.sum())
    assert m.nearest_centroid_recall(emb, labels, emb, labels) == {0: 1.0, **{k: 0.0 for k in range(1, K)}}
    assert m.distinct_clusters(emb, labels, emb, labels) == 1
    confusion = m.nearest_centroid_confusion(emb, labels, emb, labels)
    np.testing.assert_array_equal(confusion[:, 0], sizes)
    assert confusion[:, 1:].sum() == 0


def test_collapsed_point_has_no_spread(collapsed):
    emb, labels, _ = collapsed
    assert m.mean_pairwise_distance(emb) == 0.0
    assert m.distance_ratio(emb, labels) == 1.0
    assert m.silhouette(emb, labels) == 0.0
    singular = [np.linalg.norm(emb)] + [0.0] * (min(emb.shape) - 1)
    assert m.effective_rank(emb) == pytest.approx(rankme_from_singular_values(singular), rel=1e-9)
    assert m.effective_rank(emb) == pytest.approx(1.0, abs=1e-3)


def test_collapsed_point_in_float32_gives_the_same_report(collapsed):
    emb, labels, sizes = collapsed
    report = m.representation_report(emb.astype(np.float32), labels, emb.astype(np.float32), labels)
    assert report["nc_accuracy"] == pytest.approx(sizes[0] / sizes.sum())
    assert report["distinct_clusters"] == 1
    assert report["mean_distance"] == 0.0
    assert report["distance_ratio"] == 1.0
    assert report["silhouette"] == 0.0


def test_collapse_with_last_bit_jitter_still_ties(collapsed):
    emb, labels, sizes = collapsed
    jitter = np.random.default_rng(11).random(emb.shape[0]) < 0.5
    jittered = np.where(jitter[:, None], np.nextafter(emb, np.inf), emb)
    assert m.nearest_centroid_accuracy(jittered, labels, jittered, labels) == pytest.approx(sizes[0] / sizes.sum())
    assert m.distinct_clusters(jittered, labels, jittered, labels) == 1


def test_exact_tie_between_two_centroids_goes_to_the_smaller_label():
    train = np.array([[-1.0], [1.0]])
    train_labels = np.array([5, 2])  # label 5 at -1, label 2 at +1
    midpoint = np.array([[0.0]])
    assert m.nearest_centroid_accuracy(train, train_labels, midpoint, [2]) == 1.0
    assert m.nearest_centroid_accuracy(train, train_labels, midpoint, [5]) == 0.0


@pytest.mark.parametrize("labels", [[2, 5], [5, 2]])
def test_tie_up_to_rounding_goes_to_the_smaller_label(labels):
    # 0.2 is halfway between 0.1 and 0.3, but in float64 the two squared distances
    # differ in the last bits; the tie rule must still apply.
    train = np.array([[0.1], [0.3]])
    assert m.nearest_centroid_accuracy(train, labels, np.array([[0.2]]), [2]) == 1.0


def test_pairs_closer_than_float64_resolution_coincide():
    rng = np.random.default_rng(10)
    base = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), 2)
    twins = np.empty((80, 16))
    twins[0::2] = base
    twins[1::2] = np.nextafter(base, np.inf)  # one ulp apart: no resolvable distance
    assert m.distance_ratio(twins, labels) == 0.0
    # A small but resolvable offset keeps its size.
    offset = np.zeros(16)
    offset[0] = 1e-4
    twins[1::2] = base + offset
    across = m.mean_pairwise_distance(base)  # the offsets barely move pairs across labels
    assert m.distance_ratio(twins, labels) == pytest.approx(1e-4 / across, rel=1e-3)


# ------------------------------------------------------------- isotropic noise, random labels


def test_random_labels_on_noise_score_chance():
    rng = np.random.default_rng(4)
    n, dim = 1800, 64
    train, train_labels = rng.normal(size=(n, dim)), rng.integers(0, K, n)
    emb, labels = rng.normal(size=(n, dim)), rng.integers(0, K, n)
    # Binomial standard error of the accuracy is sqrt((1/9)(8/9)/1800) ~ 0.0074.
    assert m.nearest_centroid_accuracy(train, train_labels, emb, labels) == pytest.approx(1 / K, abs=0.03)
    assert m.distance_ratio(emb, labels) == pytest.approx(1.0, abs=0.01)
    assert abs(m.silhouette(emb, labels)) < 0.03
    assert m.distinct_clusters(train, train_labels, emb, labels) == 0


# ------------------------------------------------------------- invariances


@pytest.fixture(scope="module")
def overlapping():
    # Overlapping clusters, so that accuracy is neither 0 nor 1 and a change would show.
    train_emb, train_labels = orthogonal_clusters(50, 0.35, seed=5, scale=1.0)
    eval_emb, eval_labels = orthogonal_clusters(50, 0.35, seed=6, scale=1.0)
    accuracy = m.nearest_centroid_accuracy(train_emb, train_labels, eval_emb, eval_labels)
    assert 0.3 < accuracy < 0.95
    return train_emb, train_labels, eval_emb, eval_labels


def test_rotation_and_shift_change_nothing(overlapping):
    train_emb, train_labels, eval_emb, eval_labels = overlapping
    rotation = random_rotation(DIM, seed=7)
    # A large shift: the distances must not lose digits to the common offset.
    shift = np.random.default_rng(8).normal(size=DIM) * 1e6
    moved_train, moved_eval = train_emb @ rotation + shift, eval_emb @ rotation + shift
    np.testing.assert_array_equal(
        m.nearest_centroid_confusion(moved_train, train_labels, moved_eval, eval_labels),
        m.nearest_centroid_confusion(train_emb, train_labels, eval_emb, eval_labels),
    )
    assert m.distance_ratio(moved_eval, eval_labels) == pytest.approx(
        m.distance_ratio(eval_emb, eval_labels), rel=1e-9
    )
    assert m.silhouette(moved_eval, eval_labels) == pytest.approx(
        m.silhouette(eval_emb, eval_labels), abs=1e-9
    )
    assert m.mean_pairwise_distance(moved_eval) == pytest.approx(m.mean_pairwise_distance(eval_emb), rel=1e-9)


@pytest.mark.parametrize("factor", [1e-3, 0.5, 40.0])
def test_scaling_keeps_ratios_and_scales_distances(overlapping, factor):
    train_emb, train_labels, eval_emb, eval_labels = overlapping
    scaled_eval = factor * eval_emb
    assert m.distance_ratio(scaled_eval, eval_labels) == pytest.approx(
        m.distance_ratio(eval_emb, eval_labels), rel=1e-9
    )
    assert m.silhouette(scaled_eval, eval_labels) == pytest.approx(
        m.silhouette(eval_emb, eval_labels), abs=1e-9
    )
    assert m.effective_rank(scaled_eval) == pytest.approx(m.effective_rank(eval_emb), rel=1e-9)
    assert m.nearest_centroid_accuracy(factor * train_emb, train_labels, scaled_eval, eval_labels) == (
        m.nearest_centroid_accuracy(train_emb, train_labels, eval_emb, eval_labels)
    )
    assert m.mean_pairwise_distance(scaled_eval) == pytest.approx(factor * m.mean_pairwise_distance(eval_emb), rel=1e-9)
    assert m.latent_norm(scaled_eval) == pytest.approx(factor * m.latent_norm(eval_emb), rel=1e-12)


# ------------------------------------------------------------- small exact cases


def test_distances_on_a_hand_computed_line():
    emb = np.array([[0.0], [1.0], [10.0], [12.0]])
    labels = np.array(["a", "a", "b", "b"])
    # within: 1, 2 (mean 1.5); across: 10, 12, 9, 11 (mean 10.5)
    assert m.distance_ratio(emb, labels) == pytest.approx(1.5 / 10.5, rel=1e-12)
    assert m.mean_pairwise_distance(emb) == pytest.approx(45.0 / 6.0, rel=1e-12)
    assert m.latent_norm(emb) == pytest.approx(23.0 / 4.0, rel=1e-12)


def test_recall_threshold_decides_distinct_clusters():
    train = np.array([[0.0], [10.0], [20.0]])
    train_labels = np.array([0, 1, 2])
    evals = np.array([[0.0], [1.0], [10.0], [18.0], [20.0]])  # 18 is nearer label 2
    eval_labels = np.array([0, 0, 1, 1, 2])
    assert m.nearest_centroid_recall(train, train_labels, evals, eval_labels) == {0: 1.0, 1: 0.5, 2: 1.0}
    assert m.distinct_clusters(train, train_labels, evals, eval_labels, min_recall=0.9) == 2
    assert m.distinct_clusters(train, train_labels, evals, eval_labels, min_recall=0.5) == 3
    assert m.nearest_centroid_accuracy(train, train_labels, evals, eval_labels) == pytest.approx(0.8)


def test_recall_keys_are_only_labels_present_in_the_evaluation_set():
    train = np.array([[0.0], [10.0], [20.0]])
    recall = m.nearest_centroid_recall(train, [0, 1, 2], np.array([[1.0], [19.0]]), [0, 2])
    assert recall == {0: 1.0, 2: 1.0}
    assert all(type(k) is int for k in recall)


def test_silhouette_agrees_with_sklearn_including_a_singleton_cluster():
    rng = np.random.default_rng(9)
    emb = rng.normal(size=(60, 5)) + np.repeat(np.arange(3), 20)[:, None]
    labels = np.repeat(np.arange(3), 20)
    labels[0] = 7  # a cluster of one sample, scored 0 by convention
    assert m.silhouette(emb, labels) == pytest.approx(silhouette_score(emb, labels), abs=1e-10)


# ------------------------------------------------------------- the report


def test_report_has_stable_keys_and_matches_the_single_metrics(overlapping):
    report = m.representation_report(*overlapping)
    train_emb, train_labels, eval_emb, eval_labels = overlapping
    assert tuple(report) == m.REPORT_KEYS
    assert isinstance(report["distinct_clusters"], int)
    assert all(isinstance(v, float) for k, v in report.items() if k != "distinct_clusters")
    assert report["nc_accuracy"] == m.nearest_centroid_accuracy(*overlapping)
    assert report["distinct_clusters"] == m.distinct_clusters(*overlapping)
    assert report["distance_ratio"] == pytest.approx(m.distance_ratio(eval_emb, eval_labels), rel=1e-12)
    assert report["silhouette"] == pytest.approx(m.silhouette(eval_emb, eval_labels), rel=1e-12)
    assert report["effective_rank"] == pytest.approx(m.effective_rank(eval_emb), rel=1e-12)
    assert report["mean_distance"] == pytest.approx(m.mean_pairwise_distance(eval_emb), rel=1e-12)
    assert report["latent_norm"] == pytest.approx(m.latent_norm(eval_emb), rel=1e-12)


def test_report_accepts_torch_tensors(overlapping):
    torch = pytest.importorskip("torch")
    expected = m.representation_report(*overlapping)
    train_emb, train_labels, eval_emb, eval_labels = overlapping
    as_tensors = [torch.tensor(a) for a in overlapping]
    assert m.representation_report(*as_tensors) == pytest.approx(expected, rel=1e-12)
    float32 = [torch.tensor(train_emb, dtype=torch.float32, requires_grad=True), torch.tensor(train_labels),
               torch.tensor(eval_emb, dtype=torch.float32, requires_grad=True), torch.tensor(eval_labels)]
    assert m.representation_report(*float32) == pytest.approx(expected, rel=1e-4)
    half = torch.tensor(eval_emb, dtype=torch.bfloat16)
    assert m.latent_norm(half) == pytest.approx(m.latent_norm(eval_emb), rel=1e-2)


# ------------------------------------------------------------- bad input


GOOD = np.arange(12.0).reshape(6, 2)
GOOD_LABELS = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: m.distance_ratio(GOOD, GOOD_LABELS[:5]), "has 5 entries but its embeddings have 6"),
        (lambda: m.silhouette(GOOD, GOOD_LABELS[:, None]), "must be a 1-D array"),
        (lambda: m.distance_ratio(GOOD[:, 0], GOOD_LABELS), "must be a 2-D array"),
        (lambda: m.effective_rank(GOOD[None]), "must be a 2-D array"),
        (lambda: m.mean_pairwise_distance(np.where(GOOD == 3.0, np.nan, GOOD)), "NaN or infinite values in 1 of 6 rows"),
        (lambda: m.latent_norm(np.where(GOOD == 3.0, np.inf, GOOD)), "NaN or infinite"),
        (lambda: m.mean_pairwise_distance(GOOD[:1]), "at least 2 rows"),
        (lambda: m.effective_rank(np.array([["a", "b"]])), "must hold real numbers"),
        (lambda: m.nearest_centroid_accuracy(GOOD, GOOD_LABELS, GOOD[:, :1], GOOD_LABELS), "dim 2 but eval_emb has dim 1"),
        (lambda: m.nearest_centroid_accuracy(GOOD, GOOD_LABELS, GOOD, GOOD_LABELS + 1), r"eval_labels \[3\] have no centroid"),
        (lambda: m.nearest_centroid_recall(GOOD[:4], GOOD_LABELS, GOOD, GOOD_LABELS), "train_labels has 6 entries"),
        (lambda: m.nearest_centroid_accuracy(GOOD, GOOD_LABELS, np.full((6, 2), np.nan), GOOD_LABELS), "eval_emb contains NaN"),
        (lambda: m.silhouette(GOOD, np.zeros(6)), "2 <= number of distinct labels <= samples - 1"),
        (lambda: m.silhouette(GOOD, np.arange(6)), "got 6 labels for 6 samples"),
        (lambda: m.distance_ratio(GOOD, np.zeros(6)), "at least 2 distinct labels"),
        (lambda: m.distance_ratio(GOOD, np.arange(6)), "no within-label pair"),
        (lambda: m.distinct_clusters(GOOD, GOOD_LABELS, GOOD, GOOD_LABELS, min_recall=1.5), r"min_recall must lie in \[0, 1\]"),
        (lambda: m.representation_report(GOOD, GOOD_LABELS, GOOD, GOOD_LABELS, min_recall=-0.1), "min_recall"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
