"""Time pjepa_ext.bisim on large MDPs and datasets; print a table.

    python scripts/bench_bisim.py            # up to S = 10^6 (about a minute)
    python scripts/bench_bisim.py quick=1    # up to S = 10^5

Cases for largest_bisimulation (A = 2): ``random`` (uniform next states,
4 aux values: almost every state ends up alone), ``lifted`` (a random
1,000-state MDP blown up so that its S / 1,000 copies of each state stay
bisimilar: at most 1,000 large classes) and ``chain`` (inc/dec clamped at the ends, reward
at one end: S classes found one per round, the worst case for round count).
certified_distinct runs on counting-task data: observations with random
counts 0..8, each a source of one or both actions (half each), successors
drawn among observations with the resulting count, aux the reward of count 4.
Times are the median of several repeats below S = 10^6, one run above.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pjepa_ext.bisim import certified_distinct, counting_abstract_mdp, largest_bisimulation  # noqa: E402


def random_mdp(n_states: int, rng: np.random.Generator):
    """Uniform random next states (S, 2) and 4 aux values."""
    return rng.integers(0, n_states, size=(n_states, 2)), rng.integers(0, 4, size=n_states)


def lifted_mdp(n_states: int, rng: np.random.Generator, n_abstract: int = 1000):
    """A random abstract MDP whose states each get S / n_abstract bisimilar copies."""
    abstract_next = rng.integers(0, n_abstract, size=(n_abstract, 2))
    abstract_aux = rng.integers(0, 4, size=n_abstract)
    kind = rng.integers(0, n_abstract, size=n_states)
    kind[:n_abstract] = np.arange(n_abstract)
    members = np.argsort(kind, kind="stable")
    first = np.searchsorted(kind[members], np.arange(n_abstract))
    count = np.bincount(kind, minlength=n_abstract)
    target_kind = abstract_next[kind]
    pick = first[target_kind] + (rng.random(target_kind.shape) * count[target_kind]).astype(np.int64)
    return members[pick], abstract_aux[kind]


def chain_mdp(n_states: int, rng: np.random.Generator):
    """inc/dec on 0..S-1, clamped, with p = 1 only at the last state."""
    aux = np.zeros(n_states)
    aux[-1] = 1.0
    return counting_abstract_mdp(n_states - 1), aux


def counting_dataset(n_obs: int, rng: np.random.Generator):
    """Transitions between observation ids under the counting task's dynamics."""
    counts = rng.integers(0, 9, size=n_obs)
    dynamics = counting_abstract_mdp(8)
    by_count = [np.flatnonzero(counts == k) for k in range(9)]
    first_action = rng.integers(0, 2, size=n_obs)
    both = rng.random(n_obs) < 0.5
    sources = np.concatenate([np.arange(n_obs), np.flatnonzero(both)])
    actions = np.concatenate([first_action, 1 - first_action[both]])
    next_counts = dynamics[counts[sources], actions]
    successors = np.array([rng.choice(by_count[k]) for k in next_counts])
    return sources, actions, successors, (counts == 4).astype(float)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str]) -> None:
    quick = "quick=1" in argv
    sizes = [10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    repeats = {10**4: 5, 10**5: 3, 10**6: 1}
    rng = np.random.default_rng(0)
    print(f"{'function':<22}{'case':<9}{'size':>10}{'classes / pairs':>18}{'seconds':>10}")
    for make in (random_mdp, lifted_mdp, chain_mdp):
        for n in sizes:
            next_state, aux = make(n, rng)
            seconds, labels = timed(lambda: largest_bisimulation(next_state, aux), repeats[n])
            name = make.__name__.replace("_mdp", "")
            row = f"{'largest_bisimulation':<22}{name:<9}{n:>10}{int(labels.max()) + 1:>18}{seconds:>10.3f}"
            print(row, flush=True)
    for n_obs in (1000, 5000):
        sources, actions, successors, aux = counting_dataset(n_obs, rng)
        seconds, result = timed(lambda: certified_distinct(sources, actions, successors, aux), 3)
        print(f"{'certified_distinct':<22}{'counting':<9}{n_obs:>10}{result.n_pairs:>18}{seconds:>10.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
