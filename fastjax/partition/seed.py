"""The initial labeled seed per client and the oracle that holds every hidden label.

FAST (Li et al., "Federated active learning with foundation models") starts each client
with a small labeled set (FAST-official: 1% of the data, balanced by class) and keeps the
rest as an unlabeled pool whose labels only the oracle can reveal.
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
