"""The initial labeled seed and the oracle that holds every hidden label.

FAST (Li et al., "Federated active learning with foundation models") starts with a small
labeled set (1% of the data) and keeps the rest as an unlabeled pool whose labels only
the oracle can reveal. Two ways to draw it:

* `split_seed`: per client, after partitioning (the paper's clients each hold a seed);
* `central_seed`: FAST-official (`src/data.py`, `ablation/data.py` `get_data`): ONE
  class-balanced seed over the whole training set, drawn before partitioning, with
  `int(fraction * N) // C` samples of every class.
"""

from __future__ import annotations

import warnings

import numpy as np

from fastjax.partition.types import ClientPool, Oracle, Partition

SEED_MODES = ("balanced", "random")


def seed_budget(n: int, fraction: float) -> int:
    """round(fraction * n), at least one sample (and at most n)."""
    return min(n, max(1, int(round(fraction * n))))


def balanced_counts(class_counts: np.ndarray, budget: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """Spreads `budget` as evenly as the classes allow (water-filling).

    Classes present are served smallest first, each getting an equal share of what is
    left (capped at what it holds); ties, and which classes miss out when the budget is
    smaller than the number of classes, are broken at random.
    """
    out = np.zeros_like(class_counts)
    present = np.flatnonzero(class_counts)
    order = present[rng.permutation(present.size)]
    order = order[np.argsort(class_counts[order], kind="stable")]
    left = budget
    for i, c in enumerate(order):
        take = min(class_counts[c], left // (order.size - i))
        out[c] = take
        left -= take
    while left:  # the largest class was capped: top up the others, one at a time
        for c in order[::-1]:
            if left and out[c] < class_counts[c]:
                out[c] += 1
                left -= 1
    return out


def split_seed(partition: Partition, train_labels, fraction: float, *,
               mode: str = "balanced", seed: int = 0
               ) -> tuple[tuple[ClientPool, ...], Oracle]:
    """Draws each client's labeled seed; returns the pools and the oracle of all labels.

    mode="balanced": per client, round(fraction * n_k) samples (>= 1) spread evenly over
    the classes it holds, one per class at least when the budget allows.
    mode="random": round(fraction * n_k) samples (>= 1) uniformly at random.
    Seed labels are the dataset's own, not oracle queries: `Oracle.annotations` starts at 0.

    Two warnings at most, however many clients: one counting the clients whose seed
    misses classes they hold (with an example or two), and one stating the seed's real
    share of the data when the one-label minimum inflates it (many small clients).
    """
    if mode not in SEED_MODES:
        raise ValueError(f"seed mode {mode!r} not allowed; use one of {SEED_MODES}")
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"seed fraction must be in (0, 1] (e.g. 0.01 for 1%), "
                         f"got {fraction!r}")
    y = np.asarray(train_labels, dtype=np.int64)
    num_classes = int(y.max()) + 1 if y.size else 0
    rng = np.random.default_rng(seed)
    pools, short = [], []  # short: (client, classes it holds but its seed lacks)
    for k, idx in enumerate(partition.train):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and idx.max() >= y.size:
            raise ValueError(f"client {k}: index {idx.max()} is outside the "
                             f"{y.size} train labels given")
        budget = seed_budget(idx.size, fraction) if idx.size else 0
        yk = y[idx]
        if mode == "random":
            chosen = rng.choice(idx.size, size=budget, replace=False)
        else:
            want = balanced_counts(np.bincount(yk, minlength=num_classes), budget, rng)
            chosen = np.concatenate(
                [rng.choice(np.flatnonzero(yk == c), size=want[c], replace=False)
                 for c in np.flatnonzero(want)] or [np.zeros(0, np.int64)])
        labeled = np.sort(idx[chosen])
        missing = np.setdiff1d(np.unique(yk), y[labeled])
        if missing.size:
            short.append((k, labeled.size, missing.tolist()))
        pools.append(ClientPool(client=k, labeled_idx=labeled, labeled_y=y[labeled],
                                unlabeled_idx=np.setdiff1d(idx, labeled)))
    if short:
        examples = "; ".join(f"client {k}'s seed of {n} lacks classes {m}"
                             for k, n, m in short[:2])
        warnings.warn(
            f"{len(short):,} of {len(pools):,} clients have a labeled seed that misses "
            f"classes they hold (e.g. {examples}); raise the seed fraction (now "
            f"{fraction}) to cover them", stacklevel=2)
    _warn_if_inflated([len(idx) for idx in partition.train],
                      [p.labeled_idx.size for p in pools], fraction)
    return tuple(pools), Oracle(y)


# The one-label minimum is reported once it makes the seed this much larger than asked.
INFLATION_WARN = 1.1


def _warn_if_inflated(sizes, labeled, fraction: float) -> None:
    """One warning when the per-client minimum of one label, not the fraction, sets the
    seed's size: e.g. 600 clients of 10 samples at 1% get 600 labels, 10% of the data."""
    n, total = int(np.sum(sizes)), int(np.sum(labeled))
    floored = sum(1 for s in sizes if s and round(fraction * s) < 1)
    if not floored or total <= INFLATION_WARN * fraction * n:
        return
    warnings.warn(
        f"seed fraction {fraction} gives {total:,} labels = {100 * total / n:.1f}% of the "
        f"{n:,} samples, not {100 * fraction:g}%, because each client gets at least one "
        f"label and {floored:,} of the {len(sizes):,} clients hold so few samples that "
        f"{fraction} of them rounds to none; use fewer clients for a seed of "
        f"{100 * fraction:g}%", stacklevel=3)


def central_seed(train_labels, fraction: float, *, num_classes: int | None = None,
                 seed: int = 0) -> tuple[ClientPool, Oracle]:
    """FAST-official's seed: `int(fraction * N) // C` samples of each class, drawn over
    the whole training set before any partitioning; the pool is everything else.

    As FAST-official `get_data` (src/data.py with fraction 0.01, ablation/data.py with
    0.05): per class in class order, `choice(class_indices, n_per_class, replace=False)`
    from a legacy `np.random.RandomState(seed)` (their `np.random.seed(seed)` followed by
    `np.random.choice`), so the same labels and seed give their very draw. The pool
    (`unlabeled_idx`) is in ascending index order, as their `set(range(N)) - labeled`.
    Returns one ClientPool (client 0) and the oracle of all labels; the clients keep
    their own samples, so `label.client_training_sets` later maps the central labels onto them.
    A class with fewer samples than n_per_class contributes all it has (FAST-official
    would stop with an error there).
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"seed fraction must be in (0, 1] (e.g. 0.01 for 1%), "
                         f"got {fraction!r}")
    y = np.asarray(train_labels, dtype=np.int64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"train_labels must be a non-empty 1-D array; got shape {y.shape}")
    c = int(num_classes) if num_classes is not None else int(y.max()) + 1
    per_class = int(len(y) * fraction) // c
    if per_class < 1:
        raise ValueError(f"central seed: int({fraction} * {len(y)}) // {c} classes = 0 "
                         f"samples per class; raise seed_labels.fraction to at least "
                         f"{c / len(y):.3g}")
    rs = np.random.RandomState(seed)
    chosen = []
    for cls in range(c):
        members = np.flatnonzero(y == cls)
        chosen.append(rs.choice(members, min(per_class, members.size), replace=False)
                      if members.size else np.zeros(0, np.int64))
    labeled = np.concatenate(chosen).astype(np.int64)
    pool = np.setdiff1d(np.arange(len(y), dtype=np.int64), labeled)
    return ClientPool(client=0, labeled_idx=labeled, labeled_y=y[labeled],
                      unlabeled_idx=pool), Oracle(y)


SEED_WHERE = ("client", "central")


def labeled_pools(partition: Partition, train_labels, fraction: float, *,
                  where: str = "client", mode: str = "balanced", seed: int = 0,
                  num_classes: int | None = None) -> tuple[tuple[ClientPool, ...], Oracle]:
    """The pools the label stage starts from: one per client after partitioning
    (where="client", `split_seed`), or FAST-official's single central pool drawn before
    partitioning (where="central", `central_seed`; `mode` does not apply: it is always
    class-balanced)."""
    if where not in SEED_WHERE:
        raise ValueError(f"labeling where={where!r}; allowed: {', '.join(SEED_WHERE)}")
    if where == "central":
        pool, oracle = central_seed(train_labels, fraction, num_classes=num_classes, seed=seed)
        return (pool,), oracle
    return split_seed(partition, train_labels, fraction, mode=mode, seed=seed)
