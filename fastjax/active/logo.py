"""LoGo's query (Kim et al., "Re-thinking Federated Active Learning based on Inter-class
Diversity", CVPR 2023; reference: raymin0223/LoGo `query_strategies/fal/logo.py`).

Given one client's unlabeled pool scored by two models:

1. **Macro step** (local-only model): gradient embeddings e(x) = (1 - p_yhat(x)) h(x),
   the yhat-block of BADGE's embedding (LoGo `Strategy.get_grad_embedding_maxInd`), with
   p the local-only model's softmax, yhat = argmax p (first on ties) and h its penultimate
   features; k-means with k = b (`fastjax.active.kmeans`: sklearn's greedy k-means++
   seeding, 2 + int(ln b) D^2 candidates per centre, `n_init` restarts, Lloyd to tol
   1e-4 / 300 iterations; LoGo runs sklearn 1.0.1's `KMeans`).
2. **Micro step** (global model): in each cluster, the member with the highest entropy
   of the global model's prediction. As the reference (and Entropy sampling) the score is
   sum_c p_c log p_c with any +-inf log replaced by 0, sorted ascending; on ties we take
   the lowest pool position (the reference's `np.argsort` is not stable).
3. **Clean-up.** The reference deduplicates through a `set` and, when fewer than b points
   were picked (empty clusters: k-means found fewer distinct clusters than b), fills in
   passes: each pass adds the next `num = ceil(shortfall / #nonempty clusters)`
   most-uncertain members of every cluster, in cluster order, until it holds >= b, then
   keeps `list(set)[:b]`: which of the last pass's points survive depends on Python's set
   order (arbitrary). Here the fill is a true round-robin, deterministic: every cluster's
   members are ranked by global entropy (rank 0 = the micro step's pick), and points are
   taken in order of (rank, cluster id) until b: all rank-0 picks, then every cluster's
   second most uncertain member, and so on. The result is always one of the subsets the
   reference can return. Clusters partition the pool, so deduplication never removes
   anything; b distinct positions are guaranteed whenever b <= pool size.

The returned value is b distinct positions into the given arrays, sorted ascending.

**Query models.** `logo_select(local_probs, local_feats, global_probs, ...)` is the
paper's LoGo: local-only model for the macro step, global model for the micro step.
FAST-official's "LoGo" (`baselines/utils.py`) uses the *global* model for both steps
(`query_models="global_only"` in a config): call
`logo_select(global_probs, global_feats, global_probs, ...)`. FAST-official also runs
sklearn >= 1.4 with `n_init='auto'` (one k-means++ init) and no fill step; pass
`n_init=1` to follow the first; the fill only matters when clusters come out empty.

    >>> import jax, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
    >>> h = rng.normal(size=(20, 4)).astype(np.float32)
    >>> picked = logo_select(p, h, p, 5, jax.random.key(0), n_init=2)
    >>> picked.shape, len(set(picked.tolist()))
    ((5,), 5)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastjax.active.kmeans import greedy_trials, kmeans
from fastjax.active.strategies import _bucket, _pad, _valid


@jax.jit
def logo_embedding(probs, feats):
    """Macro-step embedding e = (1 - max_c p_c) * h, (n, d) float32."""
    probs = jnp.asarray(probs, jnp.float32)
    return (1.0 - jnp.max(probs, axis=1, keepdims=True)) * jnp.asarray(feats, jnp.float32)


@jax.jit
def neg_entropy(probs):
    """The reference's uncertainty score sum_c p_c log p_c (+-inf logs -> 0); lower = more
    uncertain."""
    probs = jnp.asarray(probs, jnp.float32)
    logp = jnp.log(probs)
    logp = jnp.where(jnp.isinf(logp), 0.0, logp)
    return jnp.sum(probs * logp, axis=1)


def logo_pick(cluster_labels, score, b: int) -> np.ndarray:
    """Micro step + clean-up given a clustering (module docstring, steps 2-3).

    Args:
      cluster_labels: (n,) int cluster id of every pool point.
      score: (n,) `neg_entropy` of the global model (lower = more uncertain).
      b: number of positions to return, 1 <= b <= n.

    Returns: (b,) sorted distinct positions; the most uncertain member of every non-empty
    cluster, then round-robin over clusters by uncertainty rank.
    """
    lab = np.asarray(cluster_labels).reshape(-1)
    s = np.asarray(score, np.float64).reshape(-1)
    n = lab.shape[0]
    if s.shape[0] != n:
        raise ValueError(f"logo_pick: {n} cluster labels but {s.shape[0]} scores.")
    if not 1 <= b <= n:
        raise ValueError(f"logo_pick: b={b} must be between 1 and the pool size {n}.")
    pos = np.arange(n)
    by_cluster = np.lexsort((pos, s, lab))  # cluster, then most uncertain, then position
    first = np.r_[0, np.flatnonzero(np.diff(lab[by_cluster])) + 1]
    start = np.repeat(first, np.diff(np.r_[first, n]))
    rank = np.empty(n, np.int64)
    rank[by_cluster] = np.arange(n) - start
    order = np.lexsort((lab, rank))  # rank 0 of every cluster, then rank 1, ...
    return np.sort(order[:b])


def logo_select(local_probs, local_feats, global_probs, b: int, key, *, n_init: int = 10,
                max_iter: int = 300, tol: float = 1e-4, local_trials: int | None = None,
                block_elems: int = 2 ** 23) -> np.ndarray:
    """LoGo's query on one client's pool (module docstring).

    Args:
      local_probs: (n, C) softmax of the local-only model on the pool (macro step).
      local_feats: (n, d) penultimate features of the local-only model.
      global_probs: (n, C) softmax of the global model (micro step).
      b: the client's budget, 1 <= b <= n (k-means uses k = b).
      key: PRNG key for k-means (seeding of its `n_init` restarts).
      n_init, max_iter, tol, local_trials, block_elems: `fastjax.active.kmeans.kmeans`;
        local_trials None = sklearn's greedy seeding (`greedy_trials(b)`), 1 = classic.

    Returns: (b,) int64 distinct pool positions, sorted ascending.
    """
    lp, lf, gp = (np.shape(a) for a in (local_probs, local_feats, global_probs))
    if len(lp) != 2 or len(lf) != 2 or len(gp) != 2:
        raise ValueError(f"logo_select: expected local_probs (n, C), local_feats (n, d), "
                         f"global_probs (n, C); got shapes {lp}, {lf}, {gp}.")
    if not lp[0] == lf[0] == gp[0]:
        raise ValueError(f"logo_select: the three arrays must score the same pool; got "
                         f"{lp[0]}, {lf[0]} and {gp[0]} rows.")
    n = lp[0]
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= n:
        raise ValueError(f"logo_select: budget b={b!r} must be an integer between 1 and the "
                         f"pool size {n} (k-means uses k = b clusters).")
    # Padded to a power-of-two bucket and masked: one compile serves every pool size in it.
    rows = _bucket(n)
    emb = logo_embedding(_pad(np.asarray(local_probs, np.float32), rows),
                         _pad(np.asarray(local_feats, np.float32), rows))
    trials = greedy_trials(int(b)) if local_trials is None else local_trials
    _, labels, _ = kmeans(emb, int(b), key, n_init=n_init, max_iter=max_iter, tol=tol,
                          local_trials=trials, mask=_valid(n, rows), block_elems=block_elems)
    score = neg_entropy(_pad(np.asarray(global_probs, np.float32), rows))
    return logo_pick(np.asarray(labels)[:n], np.asarray(score)[:n], int(b))


def logo_query(view, b: int, key, *, n_init: int = 10, max_iter: int = 300) -> np.ndarray:
    """LoGo as a query strategy of the registry: the macro step on the view's local model
    (`local_probs`, `local_feats`), the micro step on its global `probs`. With
    `active.logo_query_models=global_only` the loop passes the global model as the local
    one (FAST-official's variant)."""
    from fastjax.active.strategies import start

    done = start(view, b, "logo")
    if done is not None:
        return done
    if view.local_probs is None or view.local_feats is None:
        raise ValueError("logo needs the local-only model's outputs on the pool (local_probs, local_feats)")
    return logo_select(view.local_probs, view.local_feats, view.probs, int(b), key, n_init=n_init,
                       max_iter=max_iter)
