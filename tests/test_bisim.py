"""Facts about pjepa_ext.bisim: Definitions 1 and 4, Theorem 3's check, Appendix C."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pjepa_ext.aux_targets import AUX_TARGETS
from pjepa_ext.bisim import (
    CertifiedDistinct,
    certified_distinct,
    classes_from_labels,
    collapse_check,
    counting_abstract_mdp,
    format_partition,
    largest_bisimulation,
    predict_counting_partition,
)

ROUND_MODES = [0, 128, 10**9]  # all vectorised rounds, the default mix, all scalar rounds


# --------------------------------------------------------------------------
# Brute-force references, straight from the definitions
# --------------------------------------------------------------------------


def brute_force_R_star(next_state, aux):
    """Iterate F of Definition 1 from the empty set to its fixed point: bool (S, S)."""
    aux = np.asarray(aux).reshape(len(aux), -1)
    differ = (aux[:, None, :] != aux[None, :, :]).any(axis=2)
    relation = np.zeros_like(differ)
    while True:
        step = differ.copy()
        for a in range(next_state.shape[1]):
            f = next_state[:, a]
            step |= relation[np.ix_(f, f)]
        if np.array_equal(step, relation):
            return relation
        relation = step


def brute_force_R_star_D(sources, actions, successors, aux):
    """Iterate F_D of Definition 4 from the empty set: set of ordered id pairs."""
    f = {(int(x), int(a)): int(y) for x, a, y in zip(sources, actions, successors)}
    observed = sorted({int(x) for x in sources})
    all_actions = sorted({int(a) for a in actions})
    aux = np.asarray(aux).reshape(len(aux), -1)
    relation: set = set()
    while True:
        step = set()
        for x in observed:
            for y in observed:
                if not np.array_equal(aux[x], aux[y]):
                    step.add((x, y))
                    continue
                for a in all_actions:
                    if (x, a) in f and (y, a) in f and (f[x, a], f[y, a]) in relation:
                        step.add((x, y))
                        break
        if step == relation:
            return relation
        relation = step


def same_class_matrix(labels):
    labels = np.asarray(labels)
    return labels[:, None] == labels[None, :]


def chain(n, reward_at_end=True):
    next_state = counting_abstract_mdp(n - 1)
    aux = np.zeros(n)
    if reward_at_end:
        aux[-1] = 1.0
    return next_state, aux


# --------------------------------------------------------------------------
# largest_bisimulation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("small_round", ROUND_MODES)
def test_chain_with_reward_at_one_end_has_all_states_distinct(small_round):
    next_state, aux = chain(300)
    labels = largest_bisimulation(next_state, aux, small_round=small_round)
    assert np.array_equal(labels, np.arange(300))


@pytest.mark.parametrize("small_round", ROUND_MODES)
def test_two_identical_disjoint_copies_are_bisimilar_across(small_round):
    rng = np.random.default_rng(3)
    n = 40
    one = rng.integers(0, n, size=(n, 2))
    aux_one = rng.integers(0, 3, size=n)
    next_state = np.concatenate([one, one + n])
    aux = np.concatenate([aux_one, aux_one])
    labels = largest_bisimulation(next_state, aux, small_round=small_round)
    assert np.array_equal(labels[:n], labels[n:])
    # and the copy is no coarser than the brute-force answer on one copy
    assert np.array_equal(same_class_matrix(labels[:n]), ~brute_force_R_star(one, aux_one))


def test_constant_aux_gives_one_class():
    rng = np.random.default_rng(0)
    next_state = rng.integers(0, 50, size=(50, 3))
    assert np.array_equal(largest_bisimulation(next_state, np.full(50, 7.0)), np.zeros(50))


def test_labels_are_numbered_in_order_of_first_appearance():
    # states 0 and 2 share p and both self-loop; 1 differs
    labels = largest_bisimulation(np.array([[0], [1], [2]]), np.array([5, 3, 5]))
    assert labels.tolist() == [0, 1, 0]
    assert labels.dtype == np.int64


@pytest.mark.parametrize("small_round", ROUND_MODES)
def test_matches_brute_force_on_random_small_mdps(small_round):
    rng = np.random.default_rng(12345)
    for trial in range(150):
        n = int(rng.integers(1, 61))
        n_actions = int(rng.integers(1, 4))
        next_state = rng.integers(0, n, size=(n, n_actions))
        if trial % 3 == 0:  # long paths: mostly "step to the next state"
            forward = np.minimum(np.arange(n) + 1, n - 1)
            keep = rng.random((n, n_actions)) < 0.8
            next_state = np.where(keep, forward[:, None], next_state)
        n_values = int(rng.integers(1, 4))
        if trial % 4 == 1:
            aux = rng.integers(0, n_values, size=(n, 2)).astype(np.float32)
        else:
            aux = rng.integers(0, n_values, size=n)
        labels = largest_bisimulation(next_state, aux, small_round=small_round)
        expected_same = ~brute_force_R_star(next_state, aux)
        assert np.array_equal(same_class_matrix(labels), expected_same), f"trial {trial}"
        assert labels.max() + 1 == len(np.unique(labels))


def test_2d_aux_compares_whole_rows():
    next_state = np.array([[0], [1], [2]])
    aux = np.array([[1, 2], [1, 3], [1, 2]])
    assert largest_bisimulation(next_state, aux).tolist() == [0, 1, 0]


def test_bad_input_raises_clear_value_errors():
    with pytest.raises(ValueError, match=r"shape \(S, A\)"):
        largest_bisimulation(np.array([0, 1]), np.zeros(2))
    with pytest.raises(ValueError, match=r"allowed values are 0\.\.1"):
        largest_bisimulation(np.array([[0], [2]]), np.zeros(2))
    with pytest.raises(ValueError, match="integers"):
        largest_bisimulation(np.array([[0.0], [1.0]]), np.zeros(2))
    with pytest.raises(ValueError, match=r"aux must have shape \(2,\)"):
        largest_bisimulation(np.array([[0], [1]]), np.zeros(3))


# --------------------------------------------------------------------------
# The counting task (Appendix C)
# --------------------------------------------------------------------------


def test_counting_mdp_has_nine_classes_for_every_reward_target():
    next_state = counting_abstract_mdp(8)
    for target in range(9):
        reward = (np.arange(9) == target).astype(float)
        assert largest_bisimulation(next_state, reward).tolist() == list(range(9))
        classes = predict_counting_partition("reward", target=target)
        assert classes == [[k] for k in range(9)]


def test_counting_mdp_with_constant_aux_has_one_class():
    assert predict_counting_partition("none") == [list(range(9))]
    assert format_partition(predict_counting_partition("none")) == "1 class: {0 1 2 3 4 5 6 7 8}"


def test_count_parity_separates_every_count_because_of_clamping():
    # Parity alone has two values, but inc at 8 stays at 8 (even) while inc at
    # 6 reaches 7 (odd): the clamped ends break the symmetry and the split
    # propagates inward, so all nine counts are non-bisimilar.
    assert predict_counting_partition("count_parity") == [[k] for k in range(9)]
    # Without clamping (counts on a cycle of even length) parity stays two classes.
    counts = np.arange(10)
    cycle = np.stack([(counts + 1) % 10, (counts - 1) % 10], axis=1)
    assert classes_from_labels(largest_bisimulation(cycle, counts % 2)) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_every_registered_target_gives_a_partition_of_the_counts():
    for name in AUX_TARGETS:
        classes = predict_counting_partition(name, image_size=32, dim=16)
        assert sorted(k for cls in classes for k in cls) == list(range(9))
        assert len(classes) == (1 if name == "none" else 9), name


def test_format_partition():
    assert format_partition([[k] for k in range(9)]) == "9 classes: {0} {1} {2} {3} {4} {5} {6} {7} {8}"
    assert format_partition([[0, 2], [1]]) == "2 classes: {0 2} {1}"


def test_cli_prints_the_partition(capsys):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bisim.py"
    spec = importlib.util.spec_from_file_location("bisim_cli", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["aux=reward"]) == 0
    assert capsys.readouterr().out == "9 classes: {0} {1} {2} {3} {4} {5} {6} {7} {8}\n"
    assert cli.main(["aux=none", "max_count=3"]) == 0
    assert capsys.readouterr().out == "1 class: {0 1 2 3}\n"
    assert cli.main(["aux=nope"]) == 2
    assert "allowed values: reward" in capsys.readouterr().err


# --------------------------------------------------------------------------
# certified_distinct (Definition 4)
# --------------------------------------------------------------------------


def random_dataset(rng, n_obs, n_sources, n_actions, coverage):
    sources, actions, successors = [], [], []
    for x in rng.choice(n_obs, size=n_sources, replace=False):
        for a in range(n_actions):
            if rng.random() < coverage:
                y = int(rng.integers(0, n_obs))  # may fall outside the sources
                sources.append(int(x))
                actions.append(a)
                successors.append(y)
                if rng.random() < 0.2:  # an exact repeat is allowed
                    sources.append(int(x))
                    actions.append(a)
                    successors.append(y)
    return np.array(sources), np.array(actions), np.array(successors)


@pytest.mark.parametrize("strategy", ["auto", "dense", "sparse"])
def test_certified_distinct_matches_brute_force_definition_4(strategy):
    rng = np.random.default_rng(7)
    for trial in range(60):
        n_obs = int(rng.integers(2, 26))
        n_sources = int(rng.integers(1, n_obs + 1))
        n_actions = int(rng.integers(1, 4))
        sources, actions, successors = random_dataset(rng, n_obs, n_sources, n_actions, coverage=rng.uniform(0.3, 1.0))
        if sources.size == 0:
            continue
        aux = rng.integers(0, int(rng.integers(1, 4)), size=n_obs)
        result = certified_distinct(sources, actions, successors, aux, strategy=strategy)
        expected = brute_force_R_star_D(sources, actions, successors, aux)
        assert result.obs_ids.tolist() == sorted(set(sources.tolist()))
        got = {(int(result.obs_ids[i]), int(result.obs_ids[j])) for i, j in zip(*np.nonzero(result.matrix))}
        assert got == expected, f"trial {trial}"
        assert result.n_pairs == len(expected) // 2


def test_partly_co_observed_actions_make_the_relation_non_transitive():
    # x0 and x1 share action 0, x1 and x2 share action 1; only x0 -0-> a and
    # x1 -0-> b with p(a) != p(b) certifies anything.
    aux = np.array([0, 0, 0, 0, 1])  # ids 0..2 sources, 3 and 4 targets
    sources = [0, 1, 1, 2, 3, 4]
    actions = [0, 0, 1, 1, 2, 2]
    successors = [3, 4, 3, 3, 3, 4]
    result = certified_distinct(sources, actions, successors, aux)
    ids = result.obs_ids.tolist()
    assert ids == [0, 1, 2, 3, 4]
    pairs = {tuple(p) for p in result.pairs().tolist()}
    assert (0, 1) in pairs and (1, 2) not in pairs and (0, 2) not in pairs


def test_successors_outside_the_sources_certify_nothing():
    # p(3) != p(4), but 3 and 4 are never sources: (0, 1) stays uncertified.
    aux = np.array([0, 0, 0, 0, 1])
    result = certified_distinct([0, 1], [0, 0], [3, 4], aux)
    assert result.n_pairs == 0
    assert result.obs_ids.tolist() == [0, 1]


def test_full_coverage_matches_the_largest_bisimulation():
    rng = np.random.default_rng(1)
    n = 40
    next_state = rng.integers(0, n, size=(n, 2))
    aux = rng.integers(0, 2, size=n)
    sources = np.repeat(np.arange(n), 2)
    actions = np.tile([0, 1], n)
    result = certified_distinct(sources, actions, next_state.ravel(), aux)
    labels = largest_bisimulation(next_state, aux)
    assert np.array_equal(result.matrix, ~same_class_matrix(labels))


def test_certified_distinct_bad_input():
    with pytest.raises(ValueError, match="not deterministic"):
        certified_distinct([0, 0], [1, 1], [1, 2], np.zeros(3))
    with pytest.raises(ValueError, match=r"ids must lie in 0\.\.2"):
        certified_distinct([0], [0], [3], np.zeros(3))
    with pytest.raises(ValueError, match="same length"):
        certified_distinct([0, 1], [0], [1, 2], np.zeros(3))
    with pytest.raises(ValueError, match="integers"):
        certified_distinct([0.5], [0], [1], np.zeros(3))
    with pytest.raises(ValueError, match="strategy"):
        certified_distinct([0], [0], [1], np.zeros(3), strategy="fast")


# --------------------------------------------------------------------------
# collapse_check (Theorem 3)
# --------------------------------------------------------------------------


def test_collapse_check_reports_a_collapsed_pair():
    rng = np.random.default_rng(0)
    counts = np.repeat(np.arange(4), 10)
    embeddings = counts[:, None] * 10.0 + rng.normal(size=(40, 8))
    pairs = np.array([(i, j) for i in range(40) for j in range(i + 1, 40) if counts[i] != counts[j]])
    healthy = collapse_check(embeddings, pairs, labels=counts)
    assert healthy.respects_lower_bound and healthy.n_close == 0
    assert healthy.n_pairs == len(pairs)
    assert healthy.min_distance > healthy.tol > 0
    embeddings[15] = embeddings[3]  # counts 1 and 0 collapse onto one vector
    broken = collapse_check(embeddings, pairs, labels=counts)
    assert not broken.respects_lower_bound
    assert broken.n_close >= 1 and broken.min_distance == 0.0
    assert "VIOLATED" in broken.summary()
    assert broken.to_dict()["n_close"] == broken.n_close


def test_collapse_check_accepts_certified_distinct():
    aux = np.array([0, 1, 0])
    result = certified_distinct([0, 1, 2], [0, 0, 0], [0, 1, 2], aux)
    assert isinstance(result, CertifiedDistinct)
    embeddings = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])  # 0 and 1 collapsed
    report = collapse_check(embeddings, result)
    assert report.n_pairs == 2 and report.n_close == 1 and report.min_distance == 0.0


def test_collapse_check_bad_input():
    with pytest.raises(ValueError, match=r"shape \(P, 2\)"):
        collapse_check(np.zeros((3, 2)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"rows 0\.\.2"):
        collapse_check(np.zeros((3, 2)), np.array([[0, 3]]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        collapse_check(np.zeros((3, 2)), np.array([[0, 1]]), labels=[0, 1])
