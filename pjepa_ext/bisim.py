"""The paper's theory as a tool: largest bisimulations and what they forbid.

Definition 1 builds the least fixed point R* of

    F(R) = {(o, o'): p(o) != p(o')} | {(o, o'): exists a, (f(o, a), f(o', a)) in R}

and calls its complement B* the largest bisimulation over the MDP and the
auxiliary function p. Theorem 1: a well-trained P-JEPA model never maps a pair
outside B* to the same embedding.

B* is an equivalence relation, and it is the coarsest partition of the states
that (i) refines equality of p and (ii) is stable under every action: x ~ y
implies f(x, a) ~ f(y, a) for all a. (Round t of the iteration above
separates exactly the pairs that some word of at most t - 1 actions leads to
different values of p, so B* relates x and y iff p(f_w(x)) = p(f_w(y)) for
every word w.) Computing it is minimising a deterministic automaton whose
initial partition is the classes of p rather than {accepting, rejecting}:
:func:`largest_bisimulation` runs Moore's refinement rounds, but each round
only revisits the predecessors of states that changed class, and a splitting
class keeps its id for its largest part (Hopcroft's "smaller half" rule), so
every state changes class at most log2(S) times and the rounds visit
O(A S log S) states in all (each visit pays a sort's log factor).

:func:`certified_distinct` is the finite-data version (Definition 4): the
pairs of observed sources that the data already certify as non-bisimilar,
R*_D. Theorem 3: a model well-trained on the data keeps every such pair
apart, which :func:`collapse_check` measures on real embeddings.

The counting task's abstract MDP (one state per object count, actions inc and
dec, clamped at 0 and ``max_count``) and the partition each registered
auxiliary target induces on it (Appendix C) are at the end of the module.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "largest_bisimulation",
    "CertifiedDistinct",
    "certified_distinct",
    "CERTIFY_STRATEGIES",
    "CollapseReport",
    "collapse_check",
    "COUNTING_ACTIONS",
    "counting_abstract_mdp",
    "counting_aux_values",
    "predict_counting_partition",
    "classes_from_labels",
    "format_partition",
]

# Rounds that move at most this many states run as plain Python loops over
# the same buffers: on a long chain each round moves one state, and a round of
# numpy calls costs ~200 us in call overhead alone against ~4 us per state in
# Python (measured crossover near 50 states).
SMALL_ROUND = 48


# --------------------------------------------------------------------------
# Input checks and small array helpers
# --------------------------------------------------------------------------


def _int_array(name: str, values: Any, ndim: int, shape: str = "(N,)") -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape}, got shape {array.shape}")
    if array.size and (array.dtype == bool or not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _dense_labels(values: Any, name: str = "aux") -> np.ndarray:
    """Return int64 labels (n,) equal exactly where rows of ``values`` are equal.

    Entries are compared by value (so 0.0 equals -0.0, and NaN equals NaN, as
    in ``np.unique``); a 2-D array is compared row by row.
    """
    array = np.asarray(values)
    if array.ndim == 1:
        return np.unique(array, return_inverse=True)[1].astype(np.int64).reshape(-1)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n,) or (n, d), got shape {array.shape}")
    labels = np.zeros(array.shape[0], dtype=np.int64)
    for column in array.T:
        codes = np.unique(column, return_inverse=True)[1].astype(np.int64).reshape(-1)
        combined = labels * (int(codes.max()) + 1) + codes
        labels = np.unique(combined, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return labels


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber ``labels`` 0..K-1 in order of first appearance."""
    if labels.size == 0:
        return labels.astype(np.int64)
    uniq, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(uniq.size)
    return rank[inverse.reshape(-1)]


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + l)`` over the pairs (s, l)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - _exclusive_cumsum(lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a run of equal values begins."""
    starts = np.empty(sorted_values.size, dtype=bool)
    if sorted_values.size:
        starts[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return starts


# --------------------------------------------------------------------------
# Largest bisimulation of a deterministic MDP (Definition 1)
# --------------------------------------------------------------------------


class _PartitionRefiner:
    """Coarsest action-stable refinement of an initial partition.

    The states of each class sit contiguously in ``order`` (class b occupies
    ``order[start[b] : start[b] + size[b]]``; ``pos`` is the inverse), so a
    class can be listed in time proportional to its size. Invariant after
    every round: two states in one class have successors in one class of the
    previous round's partition, for every action (Moore's algorithm).
    """

    def __init__(self, next_state: np.ndarray, initial: np.ndarray, small_round: int):
        n_states, n_actions = next_state.shape
        self.n_states, self.n_actions = n_states, n_actions
        self.small_round = int(small_round)
        self.succ = np.ascontiguousarray(next_state, dtype=np.int64)
        self.succ_by_action = np.ascontiguousarray(self.succ.T)
        # Predecessors of y under any action: pred[ptr[y] : ptr[y + 1]].
        targets = self.succ.ravel()
        self.pred_ptr = np.zeros(n_states + 1, dtype=np.int64)
        np.cumsum(np.bincount(targets, minlength=n_states), out=self.pred_ptr[1:])
        self.pred = np.argsort(targets, kind="stable").astype(np.int64) // max(n_actions, 1)

        self.block = initial.astype(np.int64).copy()
        self.order = np.argsort(self.block, kind="stable").astype(np.int64)
        self.pos = np.empty(n_states, dtype=np.int64)
        self.pos[self.order] = np.arange(n_states, dtype=np.int64)
        self.n_blocks = int(self.block.max()) + 1 if n_states else 0
        sizes = np.bincount(self.block, minlength=self.n_blocks)
        self.start = np.zeros(n_states, dtype=np.int64)
        self.size = np.zeros(n_states, dtype=np.int64)
        self.start[: self.n_blocks] = _exclusive_cumsum(sizes)
        self.size[: self.n_blocks] = sizes
        self.marked = np.zeros(n_states, dtype=bool)
        self.group_of = np.zeros(n_states, dtype=np.int64)
        self.rounds = 0

    def run(self) -> np.ndarray:
        """Refine until stable; return the class of every state (ids unordered)."""
        if self.n_states == 0:
            return self.block
        moved: Any = self._round_vectorised(np.arange(self.n_states, dtype=np.int64))
        while len(moved):
            if len(moved) <= self.small_round:
                moved_list = moved if isinstance(moved, list) else moved.tolist()
                ptr = self.pred_ptr.data
                n_preds = sum(ptr[y + 1] - ptr[y] for y in moved_list)
                if n_preds <= 4 * self.small_round:
                    moved = self._round_python(moved_list)
                    continue
            moved = np.asarray(moved, dtype=np.int64)
            moved = self._round_vectorised(self._predecessors(moved))
        return self.block

    def _predecessors(self, moved: np.ndarray) -> np.ndarray:
        starts = self.pred_ptr[moved]
        return np.unique(self.pred[_ranges(starts, self.pred_ptr[moved + 1] - starts)])

    def _round_vectorised(self, dirty: np.ndarray) -> np.ndarray:
        """One Moore round over the states in ``dirty``; return the states that moved.

        A state is dirty when a successor changed class in the previous round.
        The untouched states of a class keep a common signature, and no dirty
        state shares it (a dirty state has a successor in a class created in
        the previous round, an untouched one does not), so each class splits
        into its untouched states plus one part per dirty signature.
        """
        self.rounds += 1
        n_dirty = dirty.size
        if n_dirty == 0:
            return dirty
        n_blocks = self.n_blocks
        block = self.block
        # Signature (class, class of each successor) packed into one int64
        # whose most significant part is the class; re-densify before overflow.
        key = block[dirty]
        bound = n_blocks
        for successors in self.succ_by_action:
            if bound > (1 << 62) // max(n_blocks, 1):
                key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(-1)
                bound = n_dirty
            key = key * n_blocks + block[successors[dirty]]
            bound *= n_blocks
        perm = np.argsort(key, kind="stable")
        states = dirty[perm]
        group_starts = np.flatnonzero(_run_starts(key[perm]))
        n_groups = group_starts.size
        group_size = np.diff(np.append(group_starts, n_dirty))
        group_block = block[states[group_starts]]
        run_first = _run_starts(group_block)
        run_of_group = np.cumsum(run_first) - 1
        run_starts = np.flatnonzero(run_first)
        touched = group_block[run_starts]
        groups_per_run = np.diff(np.append(run_starts, n_groups))
        dirty_per_run = np.add.reduceat(group_size, run_starts)
        largest_per_run = np.maximum.reduceat(group_size, run_starts)
        untouched = self.size[touched] - dirty_per_run
        splits = (groups_per_run > 1) | (untouched > 0)
        keep_untouched = splits & (untouched >= largest_per_run)
        keep_group = splits & ~keep_untouched

        moved_parts = []
        next_id = n_blocks
        if keep_untouched.any():
            next_id = self._split_off_dirty(
                states, group_size, run_of_group, keep_untouched, touched, dirty_per_run, next_id, moved_parts
            )
        if keep_group.any():
            is_largest = group_size == np.repeat(largest_per_run, groups_per_run)
            candidates = np.flatnonzero(is_largest)
            kept_group = candidates[_run_starts(run_of_group[candidates])]
            next_id = self._rewrite_classes(
                states, group_size, n_groups, keep_group, touched, kept_group, next_id, moved_parts
            )
        self.n_blocks = next_id
        if not moved_parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(moved_parts)

    def _split_off_dirty(
        self, states, group_size, run_of_group, runs_mask, touched, dirty_per_run, next_id, moved_parts
    ):
        """Classes whose untouched part stays: move every dirty group to the class's tail."""
        group_moves = runs_mask[run_of_group]
        moving = states[np.repeat(group_moves, group_size)]
        runs = np.flatnonzero(runs_mask)
        classes = touched[runs]
        k = dirty_per_run[runs]
        tail_start = self.start[classes] + self.size[classes] - k
        tail = _ranges(tail_start, k)
        in_head = self.pos[moving] < np.repeat(tail_start, k)
        self.marked[moving] = True
        occupants = self.order[tail]
        staying = occupants[~self.marked[occupants]]
        self.marked[moving] = False
        # Both lists are class-major with equal counts per class: swap them.
        vacated = self.pos[moving[in_head]]
        self.order[vacated] = staying
        self.pos[staying] = vacated
        self.order[tail] = moving
        self.pos[moving] = tail
        sizes = group_size[group_moves]
        ids = next_id + np.arange(sizes.size, dtype=np.int64)
        self.start[ids] = tail[_exclusive_cumsum(sizes)]
        self.size[ids] = sizes
        self.block[moving] = np.repeat(ids, sizes)
        self.size[classes] -= k
        moved_parts.append(moving)
        return next_id + sizes.size

    def _rewrite_classes(
        self, states, group_size, n_groups, runs_mask, touched, kept_group, next_id, moved_parts
    ):
        """Classes where a dirty group is largest: relay the whole class (size <= 2 x its dirty states)."""
        runs = np.flatnonzero(runs_mask)
        classes = touched[runs]
        lengths = self.size[classes]
        slots = _ranges(self.start[classes], lengths)
        members = self.order[slots]
        self.marked[states] = True
        self.group_of[states] = np.repeat(np.arange(n_groups, dtype=np.int64), group_size)
        # Part code inside a class: 0 the kept group, 1 the untouched, 2 + g group g.
        code = np.where(self.marked[members], self.group_of[members] + 2, 1)
        self.marked[states] = False
        code[code == np.repeat(kept_group[runs] + 2, lengths)] = 0
        sort_key = np.repeat(np.arange(runs.size, dtype=np.int64), lengths) * (n_groups + 2) + code
        perm = np.argsort(sort_key, kind="stable")
        sort_key, members = sort_key[perm], members[perm]
        self.order[slots] = members
        self.pos[members] = slots
        part_first = _run_starts(sort_key)
        part_starts = np.flatnonzero(part_first)
        part_sizes = np.diff(np.append(part_starts, members.size))
        is_kept = (sort_key[part_starts] % (n_groups + 2)) == 0
        self.size[classes] = part_sizes[is_kept]
        fresh = ~is_kept
        ids = next_id + np.arange(int(fresh.sum()), dtype=np.int64)
        self.start[ids] = slots[part_starts[fresh]]
        self.size[ids] = part_sizes[fresh]
        part_of_member = np.cumsum(part_first) - 1
        member_moves = fresh[part_of_member]
        fresh_index = np.cumsum(fresh) - 1
        self.block[members[member_moves]] = ids[fresh_index[part_of_member[member_moves]]]
        moved_parts.append(members[member_moves])
        return next_id + ids.size

    def _round_python(self, moved: list) -> list:
        """The same round as :meth:`_round_vectorised`, as scalar loops for tiny rounds."""
        self.rounds += 1
        ptr, pred = self.pred_ptr.data, self.pred.data
        succ, n_actions = self.succ.ravel().data, self.n_actions
        block, order, pos = self.block.data, self.order.data, self.pos.data
        start, size = self.start.data, self.size.data
        dirty = set()
        for y in moved:
            for i in range(ptr[y], ptr[y + 1]):
                dirty.add(pred[i])
        by_class: dict[int, dict[tuple, list]] = {}
        for x in sorted(dirty):
            base = x * n_actions
            signature = tuple([block[succ[base + a]] for a in range(n_actions)])
            groups = by_class.get(block[x])
            if groups is None:
                groups = by_class[block[x]] = {}
            groups.setdefault(signature, []).append(x)
        next_moved: list = []
        next_id = self.n_blocks
        for cls, groups in by_class.items():
            parts = list(groups.values())
            n_dirty = sum(len(part) for part in parts)
            untouched = size[cls] - n_dirty
            if untouched == 0 and len(parts) == 1:
                continue
            largest = max(parts, key=len)
            first, end = start[cls], start[cls] + size[cls]
            if untouched >= len(largest):
                tail_start = end - n_dirty
                staying = [order[p] for p in range(tail_start, end) if order[p] not in dirty]
                in_head = [x for part in parts for x in part if pos[x] < tail_start]
                for x, u in zip(in_head, staying):
                    p = pos[x]
                    order[p], pos[u] = u, p
                layout, slot = parts, tail_start
                size[cls] = untouched
            else:
                rest = [order[p] for p in range(first, end) if order[p] not in dirty]
                others = [part for part in parts if part is not largest]
                for x in largest:
                    order[first], pos[x] = x, first
                    first += 1
                size[cls] = len(largest)
                layout, slot = ([rest] if rest else []) + others, first
            for part in layout:
                start[next_id], size[next_id] = slot, len(part)
                for x in part:
                    order[slot], pos[x], block[x] = x, slot, next_id
                    slot += 1
                next_moved.extend(part)
                next_id += 1
        self.n_blocks = next_id
        return next_moved


def largest_bisimulation(next_state: Any, aux: Any, *, small_round: int = SMALL_ROUND) -> np.ndarray:
    """Return the classes of the largest bisimulation B* (Definition 1) as int64 labels (S,).

    ``next_state``: integer array (S, A) with ``next_state[s, a] = f(s, a)`` in
    ``0..S-1``. ``aux``: p(s) per state, shape (S,) or (S, d), any dtype;
    rows are compared exactly (entry by entry, by value).

    Two states get the same label iff they are in B*, i.e. iff no sequence of
    actions leads them to states with different p. Labels are numbered
    0..K-1 in order of first appearance, K being the number of classes.
    ``small_round`` only tunes speed (rounds moving at most this many states
    run as Python loops); the answer does not depend on it.
    """
    succ = _int_array("next_state", next_state, 2, "(S, A)")
    n_states, n_actions = succ.shape
    values = np.asarray(aux)
    if values.ndim not in (1, 2) or values.shape[0] != n_states:
        raise ValueError(
            f"aux must have shape ({n_states},) or ({n_states}, d) to match next_state, got {values.shape}"
        )
    if succ.size and (succ.min() < 0 or succ.max() >= n_states):
        bad = np.argwhere((succ < 0) | (succ >= n_states))[0]
        raise ValueError(
            f"next_state[{bad[0]}, {bad[1]}] = {succ[bad[0], bad[1]]} is not a state: "
            f"allowed values are 0..{n_states - 1}"
        )
    if n_states == 0:
        return np.zeros(0, dtype=np.int64)
    refiner = _PartitionRefiner(succ, _dense_labels(values), small_round=small_round)
    return _first_appearance(refiner.run())


# --------------------------------------------------------------------------
# What a dataset certifies (Definition 4, Theorem 3)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CertifiedDistinct:
    """R*_D of Definition 4 over the sources O_D of a dataset.

    ``obs_ids``: the observation ids of O_D, ascending (n,).
    ``matrix``: bool (n, n), symmetric, False on the diagonal;
    ``matrix[i, j]`` is True iff the data certify ``obs_ids[i]`` and
    ``obs_ids[j]`` as non-bisimilar.
    """

    obs_ids: np.ndarray
    matrix: np.ndarray

    @property
    def n_pairs(self) -> int:
        """Return the number of unordered certified-distinct pairs."""
        return int(np.count_nonzero(self.matrix)) // 2

    def pairs(self) -> np.ndarray:
        """Return the certified-distinct pairs as observation ids, int64 (P, 2), first id < second."""
        i, j = np.nonzero(np.triu(self.matrix, 1))
        return np.stack([self.obs_ids[i], self.obs_ids[j]], axis=1).astype(np.int64)


def _transition_table(sources, actions, successors, n_obs):
    """Validate a transition list; return unique (source, action code, successor) rows."""
    src = _int_array("sources", sources, 1)
    act = np.asarray(actions)
    dst = _int_array("successors", successors, 1)
    if act.ndim != 1:
        raise ValueError(f"actions must have shape (N,), got shape {act.shape}")
    if not (src.shape == act.shape == dst.shape):
        raise ValueError(
            "sources, actions and successors must have the same length, "
            f"got {src.shape[0]}, {act.shape[0]}, {dst.shape[0]}"
        )
    for name, ids in (("sources", src), ("successors", dst)):
        if ids.size and (ids.min() < 0 or ids.max() >= n_obs):
            bad = int(ids[(ids < 0) | (ids >= n_obs)][0])
            raise ValueError(
                f"{name} holds observation id {bad}; ids must lie in 0..{n_obs - 1} (aux has {n_obs} rows)"
            )
    act_codes = _dense_labels(act, "actions") if act.size else np.zeros(0, dtype=np.int64)
    n_codes = int(act_codes.max()) + 1 if act.size else 1
    key = src * n_codes + act_codes
    perm = np.lexsort((dst, key))
    key, dst_sorted = key[perm], dst[perm]
    same_key = key[1:] == key[:-1]
    conflict = np.flatnonzero(same_key & (dst_sorted[1:] != dst_sorted[:-1]))
    if conflict.size:
        c = conflict[0]
        raise ValueError(
            f"transitions are not deterministic: observation {key[c] // n_codes} under action "
            f"{act[perm[c]]!r} leads to both {dst_sorted[c]} and {dst_sorted[c + 1]}"
        )
    first = _run_starts(key)
    key, dst_sorted = key[first], dst_sorted[first]
    return key // n_codes, key % n_codes, dst_sorted, n_codes


CERTIFY_STRATEGIES = ("auto", "dense", "sparse")


def certified_distinct(
    sources: Any, actions: Any, successors: Any, aux: Any, *, strategy: str = "auto"
) -> CertifiedDistinct:
    """Return R*_D (Definition 4): the pairs of sources the data certify as non-bisimilar.

    The dataset is N transitions ``sources[i] --actions[i]--> successors[i]``
    between observation ids. ``aux`` holds p per observation id, shape
    (n_obs,) or (n_obs, d) with every id in ``0..n_obs-1``; only the rows of
    sources are read (Definition 4 gives p only for O_D). Actions may be any
    values that compare exactly (ints, strings). A repeated (source, action)
    must repeat its successor (deterministic MDP), else ``ValueError``.

    A pair (x, y) of O_D is certified when p(x) != p(y), or when some action
    observed from both leads to a certified pair. Successors outside O_D can
    never be in R*_D, so transitions into them certify nothing. The relation
    is symmetric but, with actions only partly co-observed, not transitive,
    so it is computed on pairs: a backward worklist from the disagreeing
    pairs through the predecessor index, dense boolean matrices for large
    frontiers and index joins for small ones. ``strategy`` ("auto", "dense"
    or "sparse") only tunes speed; the answer does not depend on it.
    """
    if strategy not in CERTIFY_STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; allowed values: {', '.join(CERTIFY_STRATEGIES)}")
    values = np.asarray(aux)
    if values.ndim not in (1, 2):
        raise ValueError(f"aux must have shape (n_obs,) or (n_obs, d), got shape {values.shape}")
    n_obs = values.shape[0]
    src, act, dst, n_codes = _transition_table(sources, actions, successors, n_obs)
    obs_ids = np.unique(src)
    n = obs_ids.size
    index = np.full(n_obs, -1, dtype=np.int64)
    index[obs_ids] = np.arange(n, dtype=np.int64)
    labels = _dense_labels(values[obs_ids])
    distinct = labels[:, None] != labels[None, :]
    inside = index[dst] >= 0
    x, a, y = index[src[inside]], act[inside], index[dst[inside]]
    _propagate_backwards(distinct, x, a, y, n_codes, strategy)
    return CertifiedDistinct(obs_ids=obs_ids, matrix=distinct)


def _propagate_backwards(distinct: np.ndarray, x, a, y, n_codes: int, strategy: str) -> None:
    """Close ``distinct`` in place under: (y1, y2) distinct, x1 -a-> y1, x2 -a-> y2 => (x1, x2) distinct."""
    n = distinct.shape[0]
    if x.size == 0 or n < 2:
        return
    # Transitions sorted by (successor, action): predecessors of t under a are
    # one contiguous run; those of t under any action are the run of t.
    into = y * n_codes + a
    perm = np.argsort(into, kind="stable")
    into, pred = into[perm], x[perm]
    ptr = np.searchsorted(into, np.arange(n + 1, dtype=np.int64) * n_codes)
    in_degree = np.diff(ptr)
    action_order = np.argsort(a, kind="stable")
    cuts = np.flatnonzero(_run_starts(a[action_order]))[1:]
    by_action = list(zip(np.split(x[action_order], cuts), np.split(y[action_order], cuts)))
    dense_cost = sum(src.size**2 for src, _ in by_action)

    frontier_matrix = distinct.copy()
    frontier_pairs = None
    while True:
        if frontier_pairs is None:
            n_frontier = int(np.count_nonzero(frontier_matrix)) // 2
            sparse_cost = n_frontier * (x.size / n)
        else:
            n_frontier = frontier_pairs[0].size
            sparse_cost = float(in_degree[frontier_pairs[0]].sum())
        if n_frontier == 0:
            return
        use_dense = 32 * sparse_cost > dense_cost if strategy == "auto" else strategy == "dense"
        if use_dense:
            if frontier_matrix is None:
                frontier_matrix = np.zeros((n, n), dtype=bool)
                frontier_matrix[frontier_pairs] = True
                frontier_matrix[frontier_pairs[::-1]] = True
            new = np.zeros((n, n), dtype=bool)
            for src, dst in by_action:
                new[np.ix_(src, src)] |= frontier_matrix[np.ix_(dst, dst)]
            new &= ~distinct
            distinct |= new
            frontier_matrix, frontier_pairs = new, None
        else:
            if frontier_pairs is None:
                frontier_pairs = np.nonzero(np.triu(frontier_matrix, 1))
            u, v = frontier_pairs
            starts = ptr[u]
            rows = _ranges(starts, ptr[u + 1] - starts)
            pair_of_row = np.repeat(np.arange(u.size), ptr[u + 1] - starts)
            first_pred = pred[rows]
            wanted = v[pair_of_row] * n_codes + into[rows] % n_codes
            lo = np.searchsorted(into, wanted, side="left")
            hi = np.searchsorted(into, wanted, side="right")
            first_pred = np.repeat(first_pred, hi - lo)
            second_pred = pred[_ranges(lo, hi - lo)]
            i = np.minimum(first_pred, second_pred)
            j = np.maximum(first_pred, second_pred)
            flat = i * n + j
            flat = np.unique(flat[~distinct.ravel()[flat]])
            i, j = flat // n, flat % n
            distinct[i, j] = True
            distinct[j, i] = True
            frontier_matrix, frontier_pairs = None, (i, j)


# --------------------------------------------------------------------------
# Do trained embeddings respect the lower bound? (Theorem 3)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CollapseReport:
    """How close the certified-distinct pairs come in embedding space.

    Distances are L2. ``reference_distance`` is the median distance within a
    class (``reference`` says which median was used); ``tol`` is the distance
    at or below which a pair counts as collapsed; ``respects_lower_bound``
    is True iff no certified-distinct pair is that close (``n_close == 0``).
    """

    n_pairs: int
    min_distance: float
    p1_distance: float
    reference_distance: float
    reference: str
    tol: float
    n_close: int
    respects_lower_bound: bool

    def to_dict(self) -> dict:
        """Return the report as a plain dict."""
        return asdict(self)

    def summary(self) -> str:
        """Return the report as one line."""
        verdict = "lower bound respected" if self.respects_lower_bound else "LOWER BOUND VIOLATED"
        return (
            f"{self.n_pairs} certified-distinct pairs: min distance {self.min_distance:.4g} "
            f"(1st pct {self.p1_distance:.4g}) vs {self.reference} {self.reference_distance:.4g}; "
            f"{self.n_close} at <= tol {self.tol:.3g}: {verdict}"
        )

    def __str__(self) -> str:
        return self.summary()


def _pair_distances(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    chunk = max(1, (1 << 22) // max(embeddings.shape[1], 1))
    out = np.empty(pairs.shape[0], dtype=np.float64)
    for lo in range(0, pairs.shape[0], chunk):
        block = pairs[lo : lo + chunk]
        diff = embeddings[block[:, 0]] - embeddings[block[:, 1]]
        out[lo : lo + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _class_pairs(labels: np.ndarray, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """All pairs (i < j) with equal labels, or ``max_pairs`` of them drawn uniformly."""
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(_run_starts(labels[order]))
    sizes = np.diff(np.append(starts, labels.size))
    n_pairs = sizes * (sizes - 1) // 2
    total = int(n_pairs.sum())
    if total == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if total <= max_pairs:
        parts = []
        for s, m in zip(starts[sizes > 1], sizes[sizes > 1]):
            i, j = np.triu_indices(int(m), 1)
            parts.append(np.stack([order[s + i], order[s + j]], axis=1))
        return np.concatenate(parts)
    cls = rng.choice(sizes.size, size=max_pairs, p=n_pairs / total)
    first = rng.integers(0, sizes[cls])
    second = rng.integers(0, sizes[cls] - 1)
    second += second >= first
    return np.stack([order[starts[cls] + first], order[starts[cls] + second]], axis=1)


def collapse_check(
    embeddings: Any,
    distinct_pairs: Any,
    labels: Any = None,
    tol: float | None = None,
    rel_tol: float = 0.01,
    max_reference_pairs: int = 1_000_000,
    seed: int = 0,
) -> CollapseReport:
    """Return a :class:`CollapseReport` on the certified-distinct pairs' embedding distances.

    ``embeddings``: (n, dim) array (or tensor), row i the embedding of
    observation id i. ``distinct_pairs``: a :class:`CertifiedDistinct`
    (its ids index the rows) or an int array (P, 2) of row indices.
    ``labels``: optional (n,) classes (e.g. object counts) for the reference
    scale, the median within-class distance; without labels all rows form one
    class. If that median is 0 (classes fully collapsed), the median over all
    pairs of rows is used instead. ``tol`` defaults to ``rel_tol`` times the
    reference. Reference pairs beyond ``max_reference_pairs`` are sampled
    with ``seed``. Distances are computed in the embeddings' float dtype
    (float32 stays float32; identical rows give exactly 0). Theorem 3: a
    model well-trained on the data has no certified-distinct pair at
    distance 0.
    """
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    emb = np.asarray(embeddings)
    if emb.dtype not in (np.float32, np.float64):
        emb = emb.astype(np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must have shape (n, dim), got shape {emb.shape}")
    n = emb.shape[0]
    pairs = distinct_pairs.pairs() if isinstance(distinct_pairs, CertifiedDistinct) else distinct_pairs
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        pairs = np.zeros((0, 2), dtype=np.int64)
    pairs = _int_array("distinct_pairs", pairs, 2, "(P, 2)")
    if pairs.shape[1] != 2:
        raise ValueError(f"distinct_pairs must have shape (P, 2), got shape {pairs.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(
            f"distinct_pairs index rows 0..{n - 1} of embeddings, got values in {pairs.min()}..{pairs.max()}"
        )
    if labels is None:
        classes = np.zeros(n, dtype=np.int64)
        reference = "all-pairs median"
    else:
        classes = np.asarray(labels)
        if classes.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match embeddings, got {classes.shape}")
        classes = _dense_labels(classes, "labels")
        reference = "within-class median"
    rng = np.random.default_rng(seed)
    ref_pairs = _class_pairs(classes, max_reference_pairs, rng)
    ref = float(np.median(_pair_distances(emb, ref_pairs))) if ref_pairs.size else 0.0
    if ref == 0.0 and labels is not None:
        all_pairs = _class_pairs(np.zeros(n, dtype=np.int64), max_reference_pairs, rng)
        ref = float(np.median(_pair_distances(emb, all_pairs))) if all_pairs.size else 0.0
        reference = "all-pairs median"
    if tol is None:
        tol = rel_tol * ref
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    dist = _pair_distances(emb, pairs)
    n_close = int(np.count_nonzero(dist <= tol))
    return CollapseReport(
        n_pairs=int(dist.size),
        min_distance=float(dist.min()) if dist.size else float("nan"),
        p1_distance=float(np.percentile(dist, 1)) if dist.size else float("nan"),
        reference_distance=ref,
        reference=reference,
        tol=float(tol),
        n_close=n_close,
        respects_lower_bound=n_close == 0,
    )


# --------------------------------------------------------------------------
# The counting task (Appendix C)
# --------------------------------------------------------------------------

#: Action names of :func:`counting_abstract_mdp`, in column order.
COUNTING_ACTIONS = ("inc", "dec")


def _check_counting_args(max_count: int, target: int | None = None) -> None:
    if isinstance(max_count, bool) or not isinstance(max_count, (int, np.integer)) or max_count < 0:
        raise ValueError(f"max_count must be an integer >= 0, got {max_count!r}")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target <= max_count
    ):
        raise ValueError(f"target must be an integer in 0..{max_count}, got {target!r}")


def counting_abstract_mdp(max_count: int = 8) -> np.ndarray:
    """Return the counting task's dynamics on counts: int64 (max_count + 1, 2).

    Column 0 is ``inc`` (k -> min(k + 1, max_count)), column 1 ``dec``
    (k -> max(k - 1, 0)). Every observation with k objects moves to some
    observation with the count given here (Appendix C).
    """
    _check_counting_args(max_count)
    counts = np.arange(max_count + 1, dtype=np.int64)
    return np.stack([np.minimum(counts + 1, max_count), np.maximum(counts - 1, 0)], axis=1)


def _representative_frames(max_count: int, image_size: int, seed: int) -> np.ndarray:
    """One uint8 frame (3, S, S) per count 0..max_count, rendered by the counting task."""
    try:
        from envs.counting import render_batch
    except ImportError:
        warnings.warn(
            "envs.counting is not importable: using placeholder frames (k grey squares for count k)",
            stacklevel=3,
        )
        frames = np.zeros((max_count + 1, 3, image_size, image_size), dtype=np.uint8)
        cell = max(1, image_size // (max_count + 1))
        for k in range(max_count + 1):
            for i in range(k):
                frames[k, :, :cell, i * cell : i * cell + max(1, cell // 2)] = 200
        return frames
    counts = np.arange(max_count + 1)
    shapes = np.zeros(max_count + 1, dtype=np.int64)
    colours = np.full((max_count + 1, 3), 200, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    return render_batch(counts, shapes, colours, rng, image_size=image_size, max_count=max_count)


def counting_aux_values(
    aux_name: str, target: int = 4, max_count: int = 8, image_size: int = 64, dim: int = 256, seed: int = 0
) -> np.ndarray:
    """Return p(k) for each count k of the counting task: float array (max_count + 1, d).

    Evaluates the registered auxiliary target ``aux_name`` on one
    representative observation per count, with info ``count = k`` and
    ``obs_reward = 1.0 if k == target else 0.0``. Targets that read no info
    key read pixels: they see one frame per count rendered by
    ``envs.counting.render_batch`` (shape 0, a fixed colour, positions from
    ``seed``). ``aux_name = "none"`` gives a constant (max_count + 1, 1).
    ``target`` must lie in 0..max_count for targets that read ``obs_reward``.
    """
    import torch

    from pjepa_ext.aux_targets import make_aux_target

    _check_counting_args(max_count)
    aux_target = make_aux_target(aux_name, obs_shape=(3, image_size, image_size), dim=dim, seed=seed)
    n = max_count + 1
    if aux_target is None:
        return np.zeros((n, 1))
    if "obs_reward" in aux_target.info_keys:
        _check_counting_args(max_count, target)
    counts = torch.arange(n, dtype=torch.float32)
    info = {"count": counts, "obs_reward": (counts == target).float()}
    if aux_target.info_keys:
        frames = torch.zeros((n, 3, image_size, image_size), dtype=torch.uint8)
    else:
        frames = torch.from_numpy(_representative_frames(max_count, image_size, seed))
    with torch.no_grad():
        values = aux_target(frames, info)
    return values.double().numpy().reshape(n, -1)


def classes_from_labels(labels: Sequence[int]) -> list[list[int]]:
    """Return the states grouped by label, classes in order of first appearance."""
    classes: dict[int, list[int]] = {}
    for state, label in enumerate(np.asarray(labels).tolist()):
        classes.setdefault(label, []).append(state)
    return list(classes.values())


def predict_counting_partition(
    aux_name: str, target: int = 4, max_count: int = 8, image_size: int = 64, dim: int = 256, seed: int = 0
) -> list[list[int]]:
    """Return the largest bisimulation of the counting task as classes of counts.

    The abstract MDP is :func:`counting_abstract_mdp` and p is the registered
    target ``aux_name`` (see :func:`counting_aux_values`). Theorem 1 forbids a
    well-trained model to map two counts of different classes to one
    embedding. For targets that read pixels, observations with the same count
    generally differ in p as well; the classes here are over one rendered
    observation per count.
    """
    values = counting_aux_values(aux_name, target, max_count, image_size, dim, seed)
    return classes_from_labels(largest_bisimulation(counting_abstract_mdp(max_count), values))


def format_partition(classes: Sequence[Sequence[int]]) -> str:
    """Return e.g. ``"9 classes: {0} {1} ... {8}"`` or ``"1 class: {0 1 2}"``."""
    noun = "class" if len(classes) == 1 else "classes"
    body = " ".join("{" + " ".join(str(s) for s in cls) + "}" for cls in classes)
    return f"{len(classes)} {noun}: {body}"
