"""Refinement-pass query: per-client budgets (Eq. 5) and which samples to annotate.

    >>> client_budgets(10, [100, 2, 100]).tolist()
    [4, 2, 4]
    >>> select(np.array([0.1, 0.9, 0.5, 0.9]), 2).tolist()
    [1, 3]
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

STRATEGIES = ("uncertainty", "random")
BUDGET_OF = ("train", "pool")


def budget_count(fraction: float, of: str, num_train: int, num_pool: int) -> int:
    """The global labeling budget B as a count.

    of="train" (the paper: "a 5% budget"): round(fraction * N_train).
    of="pool" (FAST-official's `query_ratio`, src/ and ablation/ `get_data`):
    int(fraction * |unlabeled pool|), floored, as their `int(query_ratio * len(unlabeled_indices))`.
    Either way B is then shared over clients by `client_budgets` (Eq. 5).

    >>> budget_count(0.4, "pool", 50000, 49500), budget_count(0.05, "train", 50000, 49500)
    (19800, 2500)
    """
    if of not in BUDGET_OF:
        raise ValueError(f"unknown budget_of {of!r}; allowed: {', '.join(BUDGET_OF)}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"budget fraction must be in [0, 1]; got {fraction}")
    if of == "train":
        return int(round(float(fraction) * int(num_train)))
    return int(float(fraction) * int(num_pool))


def client_budgets(total_budget: int, pool_sizes: Sequence[int]) -> np.ndarray:
    """Share a global budget B over K clients: b_k = B / K (Eq. 5), water-filled.

    Rule: find the largest integer level L with sum_k min(n_k, L) <= B; client k gets
    min(n_k, L), and the r = B - sum_k min(n_k, L) remaining annotations go one each to
    the lowest-indexed clients whose pool still exceeds L. So with every pool at least
    ceil(B / K) the split is B // K each plus one for the first B % K clients, and a
    client with fewer unlabeled samples than its share gives the rest, evenly, to the
    others. The result sums to exactly B and never exceeds a pool.
    Raises ValueError if B < 0 or B > sum of pools.
    """
    sizes = np.asarray(pool_sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise ValueError(f"pool_sizes must be a 1-D list of non-negative ints; got {pool_sizes}")
    total_budget = int(total_budget)
    if total_budget < 0:
        raise ValueError(f"budget must be >= 0; got {total_budget}")
    if total_budget > sizes.sum():
        raise ValueError(f"budget {total_budget} exceeds the {int(sizes.sum())} unlabeled "
                         "samples of all clients together; lower the budget")
    if sizes.size == 0:
        return sizes
    # Binary search the level L in [0, max pool].
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= total_budget:
            lo = mid
        else:
            hi = mid - 1
    out = np.minimum(sizes, lo)
    rest = total_budget - int(out.sum())
    room = np.flatnonzero(sizes > lo)[:rest]
    out[room] += 1
    return out


def _top(u: np.ndarray, candidates: np.ndarray, b: int) -> np.ndarray:
    """The b candidates with the largest u; ties go to the lower position."""
    order = np.lexsort((candidates, -u[candidates]))
    return candidates[order[:b]]


def select(
    uncertainty: np.ndarray,
    budget: int,
    *,
    weak_labels: np.ndarray | None = None,
    num_classes: int | None = None,
    class_aware: bool = False,
    strategy: str = "uncertainty",
    key: jax.Array | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Positions (into this client's unlabeled pool) to send to the oracle, sorted.

    strategy="uncertainty", class_aware=False (paper): the `budget` largest uncertainties,
      ties by lower position.
    strategy="uncertainty", class_aware=True (FAST-official `src/data.py`, where it is
      hard-coded on): each predicted (weak-label) class c gets quota budget // num_classes
      and contributes its min(quota, #predicted c) most uncertain samples; the remainder
      is filled from the rest by global uncertainty rank. Needs weak_labels, num_classes.
    strategy="random" (ablation, Table II component 4): `budget` distinct positions drawn
      uniformly with `key` (or PRNGKey(seed) if key is None); class_aware is ignored.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.ndim != 1:
        raise ValueError(f"uncertainty must be 1-D; got shape {u.shape}")
    n = u.shape[0]
    budget = int(budget)
    if budget < 0 or budget > n:
        raise ValueError(f"budget must be in [0, {n}] (the pool size); got {budget}")
    if strategy == "random":
        key = jax.random.PRNGKey(seed) if key is None else key
        return np.sort(np.asarray(jax.random.permutation(key, n))[:budget]).astype(np.int64)
    if np.isnan(u).any():
        raise ValueError("uncertainty contains NaN")
    everyone = np.arange(n, dtype=np.int64)
    if not class_aware:
        return np.sort(_top(u, everyone, budget))
    if weak_labels is None or num_classes is None:
        raise ValueError("class_aware=True needs weak_labels and num_classes")
    weak = np.asarray(weak_labels)
    if weak.shape != (n,):
        raise ValueError(f"weak_labels must have shape ({n},); got {weak.shape}")
    quota = budget // int(num_classes)
    chosen = [_top(u, everyone[weak == c], quota) for c in range(int(num_classes))]
    chosen = np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)
    rest = np.setdiff1d(everyone, chosen)
    fill = _top(u, rest, budget - chosen.size)
    return np.sort(np.concatenate([chosen, fill])).astype(np.int64)
