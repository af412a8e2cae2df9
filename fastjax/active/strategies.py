"""Query strategies of iterative federated active learning, as pure functions.

Every strategy has the signature

    strategy(view: PoolView, b: int, key: jax.Array, **options) -> np.ndarray

and returns b distinct int64 positions into ONE client's unlabeled pool, sorted. The
view carries the global model's outputs on that pool (softmax, penultimate features),
the client's labeled set (features, labels) and, for ALFA-Mix, the model's final linear
layer; never the pool's hidden labels. b = 0 gives an empty array, b = n every position,
b > n a ValueError. Recipes follow the LoGo repository (raymin0223/LoGo,
`query_strategies/*.py`); where that code departs from its paper, the paper is the
default and the code's behaviour a named option.

    >>> import jax, numpy as np
    >>> p = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]], np.float32)
    >>> view = PoolView(p, None, None, np.zeros(0, np.int64))
    >>> entropy(view, 2, jax.random.key(0)).tolist()
    [1, 2]

Scoring is jitted and memory-bounded: pools and labeled sets are zero-padded on the host
to power-of-two shape buckets and masked, so one compile serves every client and AL round
whose sizes share a bucket (a compile per exact size would grow memory with every AL
round); pool x labeled distances are computed in blocks, and no n x n matrix or C*d
gradient embedding is formed. Padding changes no result: masked rows take part in
nothing, and random draws are counter-based (JAX's default partitionable threefry), so a
padded draw's first n values are the unpadded draw's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastjax.active.kmeans import greedy_trials, kmeans

_BLOCK = 256  # labeled rows per distance block: memory is (padded pool) x _BLOCK floats


@dataclasses.dataclass(frozen=True, eq=False)
class PoolView:
    """What a query strategy may see of one client (never the pool's hidden labels).

    probs:         (n, C) global-model softmax on the client's unlabeled pool.
    feats:         (n, d) penultimate features of the pool (None if the model has none).
    labeled_feats: (m, d) features of the client's labeled set (None iff feats is None).
    labeled_y:     (m,) int labels of the labeled set (oracle answers, in [0, C)).
    head_w, head_b: (d, C), (C,) final linear layer of the query model (ALFA-Mix).
    For the strategies that read more than the global model's outputs (None otherwise):
    logits:        (n, C) the global model's logits on the pool (KAFAL's KSAS).
    local_probs, local_feats, local_logits: (n, C), (n, d'), (n, C) the client's own
                   model on the pool: its local-only model (LoGo's macro step) or its
                   model after its last local update (KAFAL).
    class_counts:  (C,) the client's labeled samples per class (KAFAL's logit adjustment).
    pred_loss:     (n,) the loss-prediction module's output on the pool (LL4AL).
    Shapes are checked on construction; values are checked by the strategies.
    """

    probs: Any
    feats: Any
    labeled_feats: Any
    labeled_y: Any
    head_w: Any = None
    head_b: Any = None
    logits: Any = None
    local_probs: Any = None
    local_feats: Any = None
    local_logits: Any = None
    class_counts: Any = None
    pred_loss: Any = None

    def __post_init__(self):
        if np.ndim(self.probs) != 2:
            raise ValueError(f"probs must be 2-D (n, C); got shape {np.shape(self.probs)}")
        n, c = np.shape(self.probs)
        if c < 1:
            raise ValueError("probs has no class column; pass the (n, C) softmax of the pool")
        m = np.shape(self.labeled_y)[0] if np.ndim(self.labeled_y) == 1 else None
        if m is None:
            raise ValueError(f"labeled_y must be 1-D (m,); got shape {np.shape(self.labeled_y)}")
        if self.feats is None:
            if self.labeled_feats is not None:
                raise ValueError("labeled_feats given but feats is None; pass both or neither")
        else:
            if np.ndim(self.feats) != 2 or np.shape(self.feats)[0] != n:
                raise ValueError(f"feats must be ({n}, d) like probs' rows; got {np.shape(self.feats)}")
            d = np.shape(self.feats)[1]
            if self.labeled_feats is None or np.shape(self.labeled_feats) != (m, d):
                got = None if self.labeled_feats is None else np.shape(self.labeled_feats)
                raise ValueError(f"labeled_feats must be ({m}, {d}) (labeled_y rows, feats "
                                 f"columns); got {got}")
        for name in ("logits", "local_probs", "local_logits"):
            v = getattr(self, name)
            if v is not None and np.shape(v) != (n, c):
                raise ValueError(f"{name} must be ({n}, {c}) like probs; got {np.shape(v)}")
        if self.local_feats is not None and (np.ndim(self.local_feats) != 2 or np.shape(self.local_feats)[0] != n):
            raise ValueError(f"local_feats must be ({n}, d); got {np.shape(self.local_feats)}")
        if self.class_counts is not None and np.shape(self.class_counts) != (c,):
            raise ValueError(f"class_counts must be ({c},); got {np.shape(self.class_counts)}")
        if self.pred_loss is not None and np.shape(self.pred_loss) != (n,):
            raise ValueError(f"pred_loss must be ({n},); got {np.shape(self.pred_loss)}")
        if (self.head_w is None) != (self.head_b is None):
            raise ValueError("head_w and head_b come together; pass both or neither")
        if self.head_w is not None:
            d = None if self.feats is None else np.shape(self.feats)[1]
            if self.feats is None or np.shape(self.head_w) != (d, c) or np.shape(self.head_b) != (c,):
                raise ValueError(f"head_w/head_b must be ({d}, {c}) and ({c},) (features x classes); "
                                 f"got {np.shape(self.head_w)} and {np.shape(self.head_b)}")

    @property
    def n(self) -> int:
        return int(np.shape(self.probs)[0])

    @property
    def num_classes(self) -> int:
        return int(np.shape(self.probs)[1])

    @property
    def m(self) -> int:
        return int(np.shape(self.labeled_y)[0])


# ----------------------------------------------------------------------------- helpers


def _bucket(n: int, least: int = 64) -> int:
    """n rounded up to a power of two (at least `least`): the shapes jitted kernels see."""
    return max(least, 1 << max(int(n) - 1, 0).bit_length())


def _pad(x, rows: int, value=0.0) -> np.ndarray:
    """x padded with `value` rows to `rows` rows, on the host (no compile per size)."""
    x = np.asarray(x)
    return np.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def _valid(n: int, rows: int) -> np.ndarray:
    return np.arange(rows) < n


def _finite(name: str, x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; the query model's outputs must be finite")
    return x


@functools.partial(jax.jit, static_argnames=("rows",))
def _bits(key, rows):
    return jax.random.bits(key, (rows,), jnp.uint32)


def random_order(key: jax.Array, n: int) -> np.ndarray:
    """A uniformly random order of 0..n-1 (positions by ascending random 32-bit keys, ties
    to the lower position): its first s entries are a uniform random s-subset. One
    compile per power-of-two bucket of n; the same order as drawing exactly n keys."""
    return np.argsort(np.asarray(_bits(key, _bucket(n)))[:n], kind="stable").astype(np.int64)


def _labels(view: PoolView) -> np.ndarray:
    y = np.asarray(view.labeled_y)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= view.num_classes):
        raise ValueError(f"labeled_y must be ints in [0, {view.num_classes}); got dtype {y.dtype}, "
                         f"range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def start(view: PoolView, b, name: str, *, features=False, labeled=False, head=False):
    """Validates b and what `name` needs of the view; returns the answer when it is
    trivial (b = 0: nothing, b = n: everything), else None."""
    if not isinstance(view, PoolView):
        raise TypeError(f"{name}: view must be a PoolView; got {type(view).__name__}")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
        raise ValueError(f"{name}: b must be an int; got {b!r}")
    b, n = int(b), view.n
    if b < 0 or b > n:
        raise ValueError(f"{name}: b={b} is outside [0, {n}] (this client's unlabeled pool); "
                         "lower the per-client budget")
    if features and view.feats is None:
        raise ValueError(f"{name} needs penultimate features, but the view has none; use a model "
                         "that exposes features or a strategy that needs none (random, entropy)")
    if head and view.head_w is None:
        raise ValueError(f"{name} needs the query model's final linear layer (head_w, head_b)")
    if labeled and view.m == 0:
        raise ValueError(f"{name} needs a non-empty labeled set on the client; draw an initial "
                         "labeled set first")
    if b == 0:
        return np.zeros(0, np.int64)
    if b == n:
        return np.arange(n, dtype=np.int64)
    return None


def _top(score: np.ndarray, b: int) -> np.ndarray:
    """Positions of the b largest scores; ties go to the lower position."""
    order = np.lexsort((np.arange(score.size), -score))
    return np.sort(order[:b]).astype(np.int64)


# ----------------------------------------------------------------------------- random


def random_sampling(view: PoolView, b: int, key: jax.Array) -> np.ndarray:
    """b positions uniformly without replacement (LoGo `random_sampling.py`):
    the first b of `random_order(key, n)`, sorted."""
    done = start(view, b, "random")
    if done is not None:
        return done
    return np.sort(random_order(key, view.n)[:b])


# ----------------------------------------------------------------------------- entropy


@jax.jit
def _entropy(p, eps):
    # 0 log 0 = 0: LoGo replaces the +-inf of log(0) by 0 (`entropy_sampling.py`).
    lp = jnp.log(p + eps)
    return -jnp.sum(jnp.where(jnp.isfinite(lp), p * lp, 0.0), axis=1)


def entropy(view: PoolView, b: int, key: jax.Array, *, eps: float = 0.0) -> np.ndarray:
    """The b highest-entropy samples, H(p) = -sum_c p_c log(p_c + eps) (Shannon; LoGo
    `entropy_sampling.py`). eps = 0 (default) is the textbook entropy with 0 log 0 = 0,
    which is exactly LoGo's +-inf guard; eps = 1e-10 is FAST-official's
    `baselines/utils.py` variant. Ties go to the lower position. `key` is unused."""
    _check_entropy(eps=eps)
    done = start(view, b, "entropy")
    if done is not None:
        return done
    p = _finite("probs", view.probs)
    return _top(np.asarray(_entropy(_pad(p, _bucket(view.n)), jnp.float32(eps)), np.float64)[:view.n], b)


def _check_entropy(*, eps=0.0):
    if not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
        raise ValueError(f"entropy: eps={eps!r} must be a number in [0, 1) (0 = exact, 1e-10 = FAST-official)")


# ----------------------------------------------------------------------------- k-center


def _min_sq_dist(x, y, y_valid):
    """min_j ||x_i - y_j||^2 over the valid rows of y, in blocks of _BLOCK rows of y
    (+inf when y has no valid row). y's rows are a multiple of _BLOCK."""
    xx = jnp.sum(x * x, axis=1)
    yb = y.reshape(-1, _BLOCK, y.shape[1])
    vb = y_valid.reshape(-1, _BLOCK)

    def body(best, blk):
        yk, vk = blk
        d2 = xx[:, None] + jnp.sum(yk * yk, axis=1)[None, :] - 2.0 * (x @ yk.T)
        d2 = jnp.where(vk[None, :], jnp.maximum(d2, 0.0), jnp.inf)
        return jnp.minimum(best, jnp.min(d2, axis=1)), None

    best, _ = jax.lax.scan(body, jnp.full(x.shape[0], jnp.inf, x.dtype), (yb, vb))
    return best


@functools.partial(jax.jit, static_argnames=("slots",))
def _kcenter(x, x_valid, y, y_valid, b, slots):
    far = jnp.where(x_valid, _min_sq_dist(x, y, y_valid), -jnp.inf)
    xx = jnp.sum(x * x, axis=1)

    def step(t, carry):
        far, chosen = carry
        i = jnp.argmax(far)  # first of ties, as numpy's argmax
        # Expanded form, as sklearn's pairwise_distances: one matvec (8x faster on CPU
        # than summing (x - x_i)^2 here).
        d2 = jnp.maximum(xx + xx[i] - 2.0 * (x @ x[i]), 0.0)
        return jnp.minimum(far, d2).at[i].set(-jnp.inf), chosen.at[t].set(i)

    _, chosen = jax.lax.fori_loop(0, b, step, (far, jnp.zeros(slots, jnp.int32)))
    return chosen


def kcenter_greedy(pool_x, labeled_x, b: int) -> np.ndarray:
    """Greedy k-center (Sener & Savarese, ICLR 2018, Alg. 1; LoGo `core_set.py`
    `furthest_first`): m(u) = min_l ||x_u - x_l|| (+inf without labeled rows); b times,
    take u* = argmax m (first of ties) and set m <- min(m, ||x - x_u*||). Returns the b
    positions into pool_x in the order chosen. A chosen point is never chosen again (the
    reference could repeat one only when every remaining distance is 0).

    The points are centred first (their mean, in float64): distances do not change, but
    the float32 expanded form ||x||^2 + ||y||^2 - 2 x.y loses every digit of a small
    distance under a large common offset."""
    pool_x, labeled_x = np.asarray(pool_x, np.float64), np.asarray(labeled_x, np.float64)
    n, m = pool_x.shape[0], labeled_x.shape[0]
    if not 0 <= b <= n:
        raise ValueError(f"kcenter_greedy: b={b} must be in [0, {n}]")
    if b == 0:
        return np.zeros(0, np.int64)
    mean = np.concatenate([pool_x, labeled_x.reshape(m, pool_x.shape[1])]).mean(axis=0)
    pool_x, labeled_x = (pool_x - mean).astype(np.float32), (labeled_x - mean).astype(np.float32)
    rows, lrows = _bucket(n), _bucket(m, _BLOCK)
    chosen = _kcenter(_pad(pool_x, rows), _valid(n, rows), _pad(labeled_x, lrows), _valid(m, lrows),
                      b, _bucket(b))
    return np.asarray(chosen)[:b].astype(np.int64)


def coreset(view: PoolView, b: int, key: jax.Array) -> np.ndarray:
    """CoreSet: greedy k-center over the raw penultimate features, distances to the
    labeled set plus the points already chosen (Sener & Savarese 2018; LoGo
    `core_set.py`). `key` is unused: the greedy is deterministic."""
    done = start(view, b, "coreset", features=True)
    if done is not None:
        return done
    return np.sort(kcenter_greedy(_finite("feats", view.feats),
                                  _finite("labeled_feats", view.labeled_feats), b))


# ----------------------------------------------------------------------------- BADGE


def badge_parts(probs, feats):
    """The two factors of BADGE's gradient embedding g = q (x) h (Ash et al., ICLR 2020,
    Sec. 3): q = onehot(argmax p) - p (n, C) and h (n, d); g's block c is q_c h. The
    embedding (n, C*d) itself is never formed."""
    p = jnp.asarray(probs, jnp.float32)
    q = jax.nn.one_hot(jnp.argmax(p, axis=1), p.shape[1], dtype=p.dtype) - p
    return q, jnp.asarray(feats, jnp.float32)


def badge_sq_distances(q_a, h_a, q_b, h_b):
    """||g_i - g_j||^2 for g = q (x) h, from <g_i, g_j> = <q_i, q_j><h_i, h_j> and
    ||g_i||^2 = ||q_i||^2 ||h_i||^2: (n_a, n_b), clipped at 0."""
    na = jnp.sum(q_a * q_a, 1) * jnp.sum(h_a * h_a, 1)
    nb = jnp.sum(q_b * q_b, 1) * jnp.sum(h_b * h_b, 1)
    return jnp.maximum(na[:, None] + nb[None, :] - 2.0 * (q_a @ q_b.T) * (h_a @ h_b.T), 0.0)


@functools.partial(jax.jit, static_argnames=("slots",))
def _badge(probs, feats, valid, key, b, slots):
    q, h = badge_parts(probs, feats)
    norm2 = jnp.sum(q * q, 1) * jnp.sum(h * h, 1)
    first = jnp.argmax(jnp.where(valid, norm2, -jnp.inf))

    def to_centre(i):
        return badge_sq_distances(q, h, q[i][None], h[i][None])[:, 0]

    d2 = jnp.where(valid, to_centre(first), 0.0).at[first].set(0.0)
    taken = jnp.zeros(q.shape[0], bool).at[first].set(True)

    def step(t, carry):
        d2, taken, chosen = carry
        free = valid & ~taken
        # P(x) ~ D(x)^2 over the points not yet chosen (the reference redraws chosen ones);
        # uniform over them if every one sits on a centre (the reference stops in pdb).
        logits = jnp.where(d2 > 0, jnp.log(jnp.where(d2 > 0, d2, 1.0)), -jnp.inf)
        logits = jnp.where(jnp.sum(jnp.where(free, d2, 0.0)) > 0, logits,
                           jnp.where(free, 0.0, -jnp.inf))
        i = jax.random.categorical(jax.random.fold_in(key, t), logits)
        d2 = jnp.minimum(d2, to_centre(i)).at[i].set(0.0)
        return d2, taken.at[i].set(True), chosen.at[t].set(i)

    chosen = jnp.zeros(slots, jnp.int32).at[0].set(first)
    _, _, chosen = jax.lax.fori_loop(1, b, step, (d2, taken, chosen))
    return chosen


def badge(view: PoolView, b: int, key: jax.Array) -> np.ndarray:
    """BADGE (Ash et al., ICLR 2020, Alg. 1; LoGo `badge_sampling.py` `init_centers`):
    k-means++ *seeding* on the gradient embeddings g = (onehot(y_hat) - p) (x) h. The
    first centre is argmax ||g||; each next one is drawn with probability proportional
    to D(x)^2, the squared distance to the nearest centre so far, among points not yet
    chosen. Distances are factorised (`badge_sq_distances`): O(n (C + d)) per centre."""
    done = start(view, b, "badge", features=True)
    if done is not None:
        return done
    n, rows = view.n, _bucket(view.n)
    chosen = _badge(_pad(_finite("probs", view.probs), rows), _pad(_finite("feats", view.feats), rows),
                    _valid(n, rows), key, b, _bucket(b))
    return np.sort(np.asarray(chosen)[:b]).astype(np.int64)


# ----------------------------------------------------------------------------- ALFA-Mix

ALFA_CAPS = (0.2, 0.4, 0.6, 0.8, 1.0)  # alpha_cap += 0.2 while < 1 (LoGo `alfa_mix.py`)


def alfa_anchors(labeled_feats, labeled_y, num_classes: int, valid=None) -> jax.Array:
    """a_c = mean feature of the labeled points whose label is c; the mean of the whole
    labeled set for a class with none (ALFA-Mix anchors, LoGo `find_candidate_set`).
    valid: (m,) bool marking the real rows of a padded labeled set."""
    x = jnp.asarray(labeled_feats, jnp.float32)
    w = jnp.ones(x.shape[0], x.dtype) if valid is None else jnp.asarray(valid, x.dtype)
    onehot = jax.nn.one_hot(jnp.asarray(labeled_y), num_classes, dtype=x.dtype) * w[:, None]
    count = jnp.sum(onehot, axis=0)
    mean_c = (onehot.T @ x) / jnp.maximum(count, 1.0)[:, None]
    mean = (w @ x) / jnp.maximum(jnp.sum(w), 1.0)
    return jnp.where(count[:, None] > 0, mean_c, mean[None, :])


@functools.partial(jax.jit, static_argnames=("caps",))
def _alfa_flips(h, probs, w, bias, lab_x, lab_y, lab_valid, caps):
    """(len(caps), n) bool: does mixing with some class anchor flip the prediction?"""
    y_hat = jnp.argmax(probs, axis=1)
    anchors = alfa_anchors(lab_x, lab_y, w.shape[1], lab_valid)
    logits = h @ w + bias
    g = (jax.nn.softmax(logits) - jax.nn.one_hot(y_hat, w.shape[1], dtype=h.dtype)) @ w.T
    g_norm = jnp.linalg.norm(g, axis=1)
    eps = jnp.asarray(caps, h.dtype) / math.sqrt(h.shape[1])

    def per_class(anchor):
        z = anchor[None, :] - h
        # alpha = eps ||z|| / ||g|| * g / (z + 1e-8) and mix = h + alpha * z, so
        # W^T mix = W^T h + eps * s * W^T (g * z / (z + 1e-8)), s = ||z|| / ||g||:
        # one (n, d) x (d, C) product per class serves every cap.
        s = jnp.where(g_norm > 0, jnp.linalg.norm(z, axis=1) / jnp.where(g_norm > 0, g_norm, 1.0), 0.0)
        v = (g * (z / (z + 1e-8))) @ w
        mixed = logits[None] + eps[:, None, None] * (s[:, None] * v)[None]
        return jnp.argmax(mixed, axis=-1) != y_hat[None]

    return jnp.any(jax.lax.map(per_class, anchors), axis=0)


def alfa_mix_candidates(view: PoolView, b: int, *, caps=ALFA_CAPS) -> np.ndarray:
    """(n,) bool candidate set of ALFA-Mix (Parvaneh et al., CVPR 2022, closed-form alpha;
    LoGo `alfa_mix.py`). For eps_cap in caps (until more than b candidates), eps =
    eps_cap / sqrt(d), and for every class anchor a_c: z = a_c - h, g = dCE(W h + c,
    y_hat)/dh, alpha = (eps ||z|| / ||g||) g / (z + 1e-8) (elementwise, unclipped),
    mix = (1 - alpha) h + alpha a_c; x is a candidate if argmax(W mix + c) != y_hat for
    some class at some cap so far. y_hat = argmax of the view's probs. A sample with
    g = 0 never flips."""
    start(view, b, "alfa_mix", features=True, labeled=True, head=True)
    y = _labels(view)
    rows, lrows = _bucket(view.n), _bucket(view.m, 16)
    flips = _alfa_flips(_pad(_finite("feats", view.feats), rows), _pad(_finite("probs", view.probs), rows),
                        _finite("head_w", view.head_w), _finite("head_b", view.head_b),
                        _pad(_finite("labeled_feats", view.labeled_feats), lrows), _pad(y, lrows),
                        _valid(view.m, lrows), tuple(float(c) for c in caps))
    union = np.logical_or.accumulate(np.asarray(flips)[:, :view.n], axis=0)
    over = np.flatnonzero(union.sum(axis=1) > b)
    return union[over[0] if over.size else -1]


def alfa_mix_cluster_picks(h, b: int, key, *, kmeans_iters: int = 300, kmeans_inits: int = 10
                           ) -> np.ndarray:
    """Which of ALFA-Mix's candidates it keeps (LoGo `alfa_mix.py` `sample`), as sorted
    positions into h, the candidates' L2-normalised features (m, d).

    The reference clusters them with k = min(b, m) and keeps, per non-empty cluster, the
    member nearest its centroid (the first on ties). m > b: `kmeans` as the reference's
    sklearn 1.0.1 `KMeans` (greedy k-means++, `kmeans_inits` restarts, at most
    `kmeans_iters` Lloyd steps). m <= b: k = m gives every distinct point a cluster of
    its own and exact duplicates one between them, so the result is the first of every
    group of identical rows, without running k-means: fewer than m when rows repeat.
    """
    h = np.asarray(h, np.float32)
    m = int(h.shape[0])
    if m <= b:
        _, first = np.unique(h, axis=0, return_index=True)
        return np.sort(first).astype(np.int64)
    rows = _bucket(m)
    centers, labels, _ = kmeans(_pad(h, rows), b, key, n_init=kmeans_inits, max_iter=kmeans_iters,
                                mask=_valid(m, rows), local_trials=greedy_trials(b))
    labels = np.asarray(labels)[:m]
    d2 = np.sum((h - np.asarray(centers)[labels]) ** 2, axis=1)
    order = np.lexsort((np.arange(m), d2, labels))  # by cluster, then distance
    return np.sort(order[np.r_[True, labels[order][1:] != labels[order][:-1]]]).astype(np.int64)


def alfa_mix(view: PoolView, b: int, key: jax.Array, *, caps=ALFA_CAPS, fill: str = "distinct",
             kmeans_iters: int = 300, kmeans_inits: int = 10) -> np.ndarray:
    """ALFA-Mix (Parvaneh et al., CVPR 2022; LoGo `alfa_mix.py`, closed-form alpha).

    1. Candidates: `alfa_mix_candidates`.
    2. More than b candidates: k-means with k = b on their L2-normalised features
       (`fastjax.active.kmeans`: best of `kmeans_inits` greedy k-means++ starts by
       inertia, at most `kmeans_iters` Lloyd steps: sklearn 1.0.1's `KMeans` defaults, as
       the reference runs) and, per non-empty cluster, the candidate nearest its
       centroid. At most b candidates: one per distinct normalised feature vector, the
       first of identical ones (what k-means with k = #candidates leaves the reference;
       `alfa_mix_cluster_picks`).
    3. Shortfall filled at random from the rest of the pool: fill="distinct" (default;
       b distinct positions, as the paper's budget means) or "with_replacement" (the
       reference's `np.random.choice` default; duplicates are dropped, so fewer than b
       positions may come back, as the reference wastes that budget).
    """
    _check_alfa_mix(caps=caps, fill=fill, kmeans_iters=kmeans_iters, kmeans_inits=kmeans_inits)
    done = start(view, b, "alfa_mix", features=True, labeled=True, head=True)
    if done is not None:
        return done
    cand = np.flatnonzero(alfa_mix_candidates(view, b, caps=caps))
    k_means, k_fill = jax.random.split(key)
    h = np.asarray(view.feats, np.float32)[cand]
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), np.float32(1e-12))  # torch F.normalize
    chosen = cand[alfa_mix_cluster_picks(h, b, k_means, kmeans_iters=kmeans_iters,
                                         kmeans_inits=kmeans_inits)]
    rest = np.setdiff1d(np.arange(view.n), chosen)
    short = b - chosen.size
    if short > 0 and fill == "distinct":
        extra = rest[random_order(k_fill, rest.size)[:short]]
    elif short > 0:  # independent uniform draws: the first `short` keys, modulo the rest
        extra = rest[np.asarray(_bits(k_fill, _bucket(short)))[:short] % rest.size]
    else:
        extra = np.zeros(0, np.int64)
    return np.unique(np.concatenate([chosen, extra])).astype(np.int64)


def _check_alfa_mix(*, caps=ALFA_CAPS, fill="distinct", kmeans_iters=300, kmeans_inits=10):
    if fill not in ("distinct", "with_replacement"):
        raise ValueError(f"alfa_mix: fill={fill!r}; allowed: 'distinct' (default), 'with_replacement'")
    try:
        caps = [float(c) for c in caps]
    except TypeError:
        raise ValueError(f"alfa_mix: caps={caps!r} must be a sequence of positive numbers") from None
    if not caps or min(caps) <= 0:
        raise ValueError(f"alfa_mix: caps={caps!r} must be a non-empty sequence of positive numbers")
    for name, v in (("kmeans_iters", kmeans_iters), ("kmeans_inits", kmeans_inits)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"alfa_mix: {name}={v!r} must be an int >= 1")
