"""k-means in JAX: k-means++ seeding, Lloyd iterations, restarts vmapped over inits.

Written to reproduce what LoGo's macro step gets from `sklearn.cluster.KMeans(n_clusters=b)`
(LoGo `query_strategies/fal/logo.py`, sklearn 1.0.1 pinned: k-means++ init, n_init=10,
max_iter=300, tol=1e-4), on pools up to 50,000 x 256 with k up to 1,000.

Seeding (`kmeans_plusplus`, Arthur & Vassilvitskii 2007). The first centre is a point
drawn uniformly; each next centre is drawn with probability proportional to D(x)^2, the
squared distance to the nearest centre chosen so far. `local_trials=1` (the default) is
that classic D^2 sampling. sklearn's `_kmeans_plusplus` is the *greedy* variant: it draws
`2 + int(ln k)` candidates by D^2 and keeps the one that lowers the potential sum D^2 the
most; pass `local_trials=greedy_trials(k)` for it (cost x local_trials; LoGo's macro step
and ALFA-Mix do, as their references run sklearn). If every
remaining D^2 is 0 (fewer distinct points than k), the next centre is drawn uniformly:
it duplicates an existing centre and its cluster ends up empty or relocated (below).

Lloyd (`lloyd`), with sklearn's `_kmeans_single_lloyd` semantics:
  - one iteration = assign each point to its nearest centre, then move each centre to the
    mean of its points; an empty cluster is relocated to the point farthest from its
    current centre (sklearn `_relocate_empty_clusters_dense`: the n_empty farthest points,
    which also leave their old clusters' sums; sklearn's order among them is that of
    `np.argpartition`, i.e. unspecified, ours is farthest first, ties to the lower index);
  - stop when the assignment did not change ("strict convergence"), or when the summed
    squared centre shift sum_j ||c_j' - c_j||^2 <= tol * mean_f Var(x[:, f]) (sklearn's
    `_tolerance`: tol is relative to the mean per-feature variance of the data), or after
    max_iter iterations;
  - without strict convergence a last assignment step makes the labels match the centres;
  - inertia = sum_i ||x_i - c_{label_i}||^2 for the returned centres and labels.
`kmeans` runs `n_init` independent seedings + Lloyd, vmapped over inits, and keeps the
lowest inertia (the first on ties, as sklearn's `inertia < best_inertia`).

Numerics: float32 throughout (sklearn works in the input dtype, float64 in LoGo). As
sklearn, the data are centred before clustering and the mean added back to the centres.
Nearest-centre search uses ||x||^2 - 2 x.c + ||c||^2 with a HIGHEST-precision matmul,
and the new centres' sums are one-hot matmuls, both in one scan over blocks of points so
that a point-by-centre tile holds at most `block_elems` entries summed over inits
(default 2^23, 32 MiB). Nothing of size n x d is made per init: for n = 50,000, d = 256,
k = 1,000, n_init = 10, XLA's compiled temporaries are 210 MiB (4.4 GiB untiled; CPU
`memory_analysis`). The summation order is fixed (deterministic, unlike a GPU scatter-add).
The distances that enter the inertia, the relocation and the centre shift are
recomputed exactly as squared differences.
sklearn 1.0.1's default `algorithm="auto"` runs Elkan's triangle-inequality variant of
the same iterations (exact, same iterates up to rounding); this is plain Lloyd.

`mask` (n,) bool marks the real points of a padded pool; padded points take part in
nothing (seeding, means, tolerance, inertia) and get label 0. It lets a caller vmap the
jitted core over clients with pools padded to one size.

    >>> import jax, numpy as np
    >>> x = np.array([[0.0], [0.1], [10.0], [10.1]], np.float32)
    >>> centers, labels, inertia = kmeans(x, 2, jax.random.key(0), n_init=3)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3]), round(float(inertia), 4)
    (True, 0.01)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------ validation


def _concrete(x):
    """x as a numpy array, or None when it is a tracer (inside jit / vmap)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_points(x, k, mask):
    """Validates (x, k, mask) before any compute; returns x as float32 and the mask
    (numpy for host inputs: no device op, hence no compile, per pool size)."""
    host = _concrete(x)
    x = jnp.asarray(x) if host is None else host
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"k-means: points must be a non-empty 2-D array (n, d); got shape "
                         f"{tuple(x.shape)}. Reshape the features to (num_points, dim).")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k-means: k (number of clusters) must be an integer >= 1; got {k!r}.")
    n = x.shape[0]
    if mask is None:
        mask = np.ones((n,), bool)
    m = _concrete(mask)
    if np.shape(mask) != (n,):
        raise ValueError(f"k-means: mask must have shape ({n},) to match the points; got "
                         f"{tuple(np.shape(mask))}.")
    n_valid = n if m is None else int(np.sum(m.astype(bool)))
    if k > n_valid:
        raise ValueError(f"k-means: k={k} clusters but only {n_valid} points; k must be <= "
                         f"the number of points (lower k, e.g. the budget b, or query a "
                         f"larger pool).")
    if m is not None and host is not None:
        return np.asarray(host, np.float32), m.astype(bool)
    return jnp.asarray(x).astype(jnp.float32), jnp.asarray(mask).astype(bool)


def _check_positive_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"k-means: {name} must be an integer >= {lo}; got {v!r}.")


def _check_tol(tol):
    if not (isinstance(tol, (int, float, np.floating)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"k-means: tol must be a finite number >= 0; got {tol!r} "
                         f"(sklearn's default is 1e-4).")


# ------------------------------------------------------------------ pieces


def _block_size(n: int, k: int, n_init: int, block_elems: int) -> int:
    return int(max(1, min(n, block_elems // max(1, k * n_init))))


def _tolerance(x, mask, tol):
    """sklearn `_tolerance`: tol * mean over features of the (population) variance."""
    w = mask.astype(x.dtype)[:, None]
    cnt = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(x * w, axis=0) / cnt
    var = jnp.sum(w * (x - mean) ** 2, axis=0) / cnt
    return tol * jnp.mean(var)


def _to_blocks(a, block, fill):
    n = a.shape[0]
    nb = -(-n // block)
    pad = nb * block - n
    a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a
    return a.reshape((nb, block) + a.shape[1:])


def _assign(xb, xsqb, wb, centers, with_sums: bool):
    """Nearest centre of every point, tiled over point blocks (one scan over the blocks).

    xb: (nb, B, d) blocked points, xsqb: (nb, B) their squared norms, wb: (nb, B) 1 for
    real points, centers: (k, d). Returns labels (nb*B,), the exact squared distance to
    the chosen centre, and (with_sums) the per-cluster sums (k, d) and counts (k,) of the
    real points, accumulated block by block as one-hot matmuls: no (n, d) array per
    restart under vmap, and a fixed summation order (unlike a scatter-add).
    """
    k, d = centers.shape
    csq = jnp.sum(centers * centers, axis=1)

    def one(carry, args):
        x, xsq, w = args
        d2 = xsq[:, None] - 2.0 * jnp.dot(x, centers.T, precision=_HIGHEST) + csq[None, :]
        lab = jnp.argmin(d2, axis=1).astype(jnp.int32)
        exact = jnp.sum((x - centers[lab]) ** 2, axis=1)
        if with_sums:
            onehot = (lab[:, None] == jnp.arange(k)).astype(x.dtype) * w[:, None]
            sums, counts = carry
            carry = (sums + jnp.dot(onehot.T, x, precision=_HIGHEST), counts + jnp.sum(onehot, 0))
        return carry, (lab, exact)

    init = (jnp.zeros((k, d), xb.dtype), jnp.zeros((k,), xb.dtype)) if with_sums else None
    carry, (lab, d2) = jax.lax.scan(one, init, (xb, xsqb, wb))
    return lab.reshape(-1), d2.reshape(-1), carry


def _sq_dist_to(xb, centers, labels):
    """Exact ||x_i - c_{label_i}||^2, tiled like `_assign`."""
    lb = labels.reshape(xb.shape[:2])
    return jax.lax.map(lambda a: jnp.sum((a[0] - centers[a[1]]) ** 2, axis=1), (xb, lb)).reshape(-1)


def _seed(x, xsq, mask, key, k: int, local_trials: int):
    """k-means++ seeding (D^2 sampling; greedy best-of-`local_trials` when > 1)."""
    w = mask.astype(x.dtype)
    uniform = jnp.where(mask, 0.0, -jnp.inf)
    key, sub = jax.random.split(key)
    first = jax.random.categorical(sub, uniform)

    def dist_to(idx):  # squared distances of all points to points idx (t,) -> (t, n)
        c = x[idx]
        d2 = xsq[None, :] - 2.0 * jnp.dot(c, x.T, precision=_HIGHEST) + xsq[idx][:, None]
        d2 = jnp.maximum(d2, 0.0) * w[None, :]
        return d2.at[jnp.arange(idx.shape[0]), idx].set(0.0)

    closest = dist_to(first[None])[0]
    chosen = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def body(i, carry):
        chosen, closest, key = carry
        key, sub = jax.random.split(key)
        pot = jnp.sum(closest)
        logits = jnp.where(closest > 0, jnp.log(jnp.where(closest > 0, closest, 1.0)), -jnp.inf)
        logits = jnp.where(pot > 0, logits, uniform)
        # One key per candidate: a draw over a padded pool equals the unpadded one.
        cand = jax.vmap(lambda k: jax.random.categorical(k, logits))(jax.random.split(sub, local_trials))
        new = jnp.minimum(closest[None, :], dist_to(cand))
        best = jnp.argmin(jnp.sum(new, axis=1))
        return chosen.at[i].set(cand[best]), new[best], key

    chosen, _, _ = jax.lax.fori_loop(1, k, body, (chosen, closest, key))
    return x[chosen], chosen


def _relocate_empty(x, d2, labels, mask, sums, counts):
    """sklearn `_relocate_empty_clusters_dense` on (sums, counts) before averaging."""
    k = sums.shape[0]
    empty = counts == 0
    n_empty = jnp.sum(empty)
    far_d, far = jax.lax.top_k(jnp.where(mask, d2, -jnp.inf), min(k, x.shape[0]))
    slot = jnp.arange(far.shape[0])
    moved = (slot < n_empty) & jnp.isfinite(far_d)
    empty_ids = jnp.argsort(~empty, stable=True)[: far.shape[0]]  # empty clusters first
    xm = x[far] * moved[:, None]
    old = labels[far]
    sums = sums - jax.ops.segment_sum(xm, old, num_segments=k)
    counts = counts - jax.ops.segment_sum(moved.astype(counts.dtype), old, num_segments=k)
    dest = jnp.where(moved, empty_ids, k)  # k = out of range: dropped
    sums = sums.at[dest].set(x[far], mode="drop")
    counts = counts.at[dest].set(1.0, mode="drop")
    return sums, counts


def _lloyd(x, xsq, mask, centers, tol_abs, max_iter, block: int):
    """Lloyd iterations from `centers` (sklearn `_kmeans_single_lloyd`); max_iter may be
    traced (a dynamic loop bound)."""
    n = x.shape[0]
    w = mask.astype(x.dtype)
    xb = _to_blocks(x, block, 0.0)
    xsqb = _to_blocks(xsq, block, 0.0)
    wb = _to_blocks(w, block, 0.0)

    def body(state):
        it, c, lab_old, _, _ = state
        lab, d2, (sums, counts) = _assign(xb, xsqb, wb, c, with_sums=True)
        lab, d2 = lab[:n], d2[:n]
        sums, counts = _relocate_empty(x, d2, lab, mask, sums, counts)
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], sums)
        shift = jnp.sum((new - c) ** 2)
        strict = jnp.all((lab == lab_old) | ~mask)
        return it + 1, new, lab, strict, strict | (shift <= tol_abs)

    def cond(state):
        it, _, _, _, done = state
        return (it < max_iter) & ~done

    init = (jnp.zeros((), jnp.int32), centers, jnp.full((n,), -1, jnp.int32),
            jnp.zeros((), bool), jnp.zeros((), bool))
    n_iter, centers, lab, strict, _ = jax.lax.while_loop(cond, body, init)
    # Without strict convergence, relabel against the final centres (sklearn does the same).
    lab_final = _assign(xb, xsqb, wb, centers, with_sums=False)[0][:n]
    lab = jnp.where(strict, lab, lab_final)
    lab = jnp.where(mask, lab, 0)
    inertia = jnp.sum(_sq_dist_to(xb, centers, _to_blocks(lab, block, 0))[:n] * w)
    return centers, lab, inertia, n_iter


# ------------------------------------------------------------------ jitted cores


@functools.partial(jax.jit, static_argnames=("k", "n_init", "local_trials", "block"))
def _kmeans_core(x, mask, key, tol, max_iter, *, k, n_init, local_trials, block):
    w = mask.astype(x.dtype)[:, None]
    mean = jnp.sum(x * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    xc = (x - mean) * w
    xsq = jnp.sum(xc * xc, axis=1)
    tol_abs = _tolerance(xc, mask, tol)

    def one(key):
        c0, _ = _seed(xc, xsq, mask, key, k, local_trials)
        c, lab, inertia, _ = _lloyd(xc, xsq, mask, c0, tol_abs, max_iter, block)
        return c, lab, inertia

    cs, labs, inertias = jax.vmap(one)(jax.random.split(key, n_init))
    best = jnp.argmin(inertias)
    return cs[best] + mean, labs[best], inertias[best]


@functools.partial(jax.jit, static_argnames=("block",))
def _lloyd_core(x, mask, centers, tol, max_iter, *, block):
    w = mask.astype(x.dtype)[:, None]
    mean = jnp.sum(x * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    xc = (x - mean) * w
    xsq = jnp.sum(xc * xc, axis=1)
    c, lab, inertia, n_iter = _lloyd(xc, xsq, mask, centers - mean, _tolerance(xc, mask, tol),
                                     max_iter, block)
    return c + mean, lab, inertia, n_iter


@functools.partial(jax.jit, static_argnames=("k", "local_trials"))
def _seed_core(x, mask, key, *, k, local_trials):
    w = mask.astype(x.dtype)[:, None]
    xc = (x - jnp.sum(x * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)) * w
    _, chosen = _seed(xc, jnp.sum(xc * xc, axis=1), mask, key, k, local_trials)
    return x[chosen], chosen


# ------------------------------------------------------------------ public API


def greedy_trials(k: int) -> int:
    """sklearn's `_kmeans_plusplus` candidates per seeding step, `2 + int(ln k)`: the
    `local_trials` that makes `kmeans` seed as the references' `KMeans` does."""
    return 2 + int(math.log(k))


def kmeans(x, k: int, key, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           local_trials: int = 1, mask=None, block_elems: int = 2 ** 23):
    """k-means++ seeding + Lloyd, best of `n_init` restarts (module docstring).

    Args:
      x: (n, d) points. k: number of clusters, 1 <= k <= number of (unmasked) points.
      key: PRNG key; init i uses `jax.random.split(key, n_init)[i]`.
      n_init: restarts (sklearn 1.0.1 default 10). max_iter: Lloyd iterations per restart.
      tol: relative tolerance (x mean feature variance) on the summed squared centre shift.
      local_trials: D^2 candidates per seeding step (1 = classic k-means++; sklearn's
        greedy default is 2 + int(ln k)).
      mask: optional (n,) bool, True for real points of a padded pool.
      block_elems: cap on the entries of one point-by-centre distance tile, summed over inits.

    Returns:
      (centers (k, d) float32, labels (n,) int32, inertia scalar float32).

    Raises:
      ValueError before any compute for k < 1, k > number of points, bad shapes/options.
    """
    x, mask = _check_points(x, k, mask)
    _check_positive_int("n_init", n_init)
    _check_positive_int("max_iter", max_iter)
    _check_positive_int("local_trials", local_trials)
    _check_positive_int("block_elems", block_elems)
    _check_tol(tol)
    block = _block_size(x.shape[0], k, n_init, block_elems)
    return _kmeans_core(x, mask, key, jnp.float32(tol), jnp.int32(max_iter), k=int(k),
                        n_init=int(n_init), local_trials=int(local_trials), block=block)


def kmeans_plusplus(x, k: int, key, *, local_trials: int = 1, mask=None):
    """k-means++ seeding only: returns (centers (k, d), indices (k,) of the chosen points).

    First centre uniform over the (unmasked) points, the next ones by D^2 sampling
    (`local_trials` > 1: sklearn's greedy variant). See the module docstring.
    """
    x, mask = _check_points(x, k, mask)
    _check_positive_int("local_trials", local_trials)
    return _seed_core(x, mask, key, k=int(k), local_trials=int(local_trials))


def lloyd(x, init_centers, *, max_iter: int = 300, tol: float = 1e-4, mask=None,
          block_elems: int = 2 ** 23):
    """Lloyd iterations from given centres (sklearn semantics, module docstring).

    Returns (centers (k, d), labels (n,), inertia, n_iter).
    """
    init_centers = jnp.asarray(init_centers, jnp.float32)
    if init_centers.ndim != 2:
        raise ValueError(f"k-means: init_centers must be (k, d); got shape "
                         f"{tuple(init_centers.shape)}.")
    x, mask = _check_points(x, init_centers.shape[0], mask)
    if init_centers.shape[1] != x.shape[1]:
        raise ValueError(f"k-means: init_centers have dimension {init_centers.shape[1]} but "
                         f"the points have {x.shape[1]}.")
    _check_positive_int("max_iter", max_iter)
    _check_tol(tol)
    block = _block_size(x.shape[0], init_centers.shape[0], 1, block_elems)
    return _lloyd_core(x, mask, init_centers, jnp.float32(tol), jnp.int32(max_iter),
                       block=block)
