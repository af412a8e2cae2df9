"""Preliminary pass: weak labels and per-class scores from frozen embeddings.

Two score sources feed the refinement pass:

* `knn_propagate`: each unlabeled embedding takes the majority label of its k nearest
  labeled embeddings (L2); the vote fractions are FAST-official's score vector
  (`get_logits_from_knn` in `src/data.py`).
* `prototype_similarity`: Eq. 7, the mean cosine similarity between an unlabeled
  embedding and the labeled embeddings of each class (FAST-official's
  `get_average_cosine_similarity_logits` in `ablation/data.py`).

Both are one jitted call over fixed-size blocks of unlabeled rows (the block loop runs
on the device, no host round trip between blocks), and kNN keeps a running top-k over
fixed-size blocks of labeled rows, so peak memory is O(block_size * labeled_block_size),
not O(n_unlabeled * n_labeled). Block sizes and block counts are rounded up to shape
buckets (`_bucket`, `_count_bucket`) and the loops run only over the real blocks, so pools
of different sizes share one compiled function per bucket and padding costs memory,
not compute.

    >>> import numpy as np
    >>> zl = np.array([[0., 0.], [1., 0.], [10., 0.]], np.float32)
    >>> yl = np.array([0, 0, 1])
    >>> weak, votes = knn_propagate(np.array([[0.2, 0.]], np.float32), zl, yl, 2, k=3)
    >>> weak.tolist(), (votes * 3).round().tolist()
    ([0], [[2.0, 1.0]])
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TIE_BREAKS = ("nearest", "lowest_class")

# Row norms below this are treated as zero vectors (cosine similarity 0, not NaN).
_NORM_EPS = 1e-12


def _check_embeddings(name: str, z: np.ndarray) -> np.ndarray:
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d); got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {z.dtype}")
    z = z.astype(np.float32, copy=False)
    # A NaN or inf anywhere makes the sum non-finite (one fast pass); only then (or on
    # an overflowing sum) look element by element.
    if not np.isfinite(z.sum()) and not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise ValueError(f"{name} has {bad} row(s) with NaN or inf; clean the embeddings first")
    return z


def _check_labeled(z_unlabeled, z_labeled, y_labeled, num_classes):
    z_unlabeled = _check_embeddings("z_unlabeled", z_unlabeled)
    z_labeled = _check_embeddings("z_labeled", z_labeled)
    y_labeled = np.asarray(y_labeled)
    if z_unlabeled.shape[1] != z_labeled.shape[1]:
        raise ValueError(
            f"embedding widths differ: z_unlabeled has d={z_unlabeled.shape[1]}, "
            f"z_labeled has d={z_labeled.shape[1]}"
        )
    if y_labeled.shape != (z_labeled.shape[0],):
        raise ValueError(
            f"y_labeled must have shape ({z_labeled.shape[0]},) to match z_labeled; "
            f"got {y_labeled.shape}"
        )
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if y_labeled.size and (not np.issubdtype(y_labeled.dtype, np.integer)
                           or y_labeled.min() < 0 or y_labeled.max() >= num_classes):
        raise ValueError(f"y_labeled must be integers in [0, {num_classes}); "
                         f"got dtype {y_labeled.dtype}, range "
                         f"[{y_labeled.min()}, {y_labeled.max()}]")
    return z_unlabeled, z_labeled, y_labeled.astype(np.int32)


def _check_block(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return int(value)


def _pad_rows(x: np.ndarray, rows: int, fill=0) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    pad = np.full((rows - x.shape[0],) + x.shape[1:], fill, dtype=x.dtype)
    return np.concatenate([x, pad])


def _bucket(n: int, cap: int) -> int:
    """Block length for n rows: a power of two (>= 8) capped at `cap`.

    Clients with different pool/seed sizes then share compiled block functions instead
    of compiling one per size; padding costs at most 2x on pools smaller than `cap`.
    """
    return min(cap, max(8, 1 << (max(n, 1) - 1).bit_length()))


def _count_bucket(m: int) -> int:
    """Number of blocks rounded up to 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (at most 1.5x)."""
    m = max(int(m), 1)
    p = 1 << (m - 1).bit_length()  # next power of two
    return 3 * p // 4 if p >= 4 and m <= 3 * p // 4 else p


def _blocks(z: np.ndarray, block: int, fill=0) -> tuple[np.ndarray, int]:
    """Rows of z padded to a bucketed number of `block`-row blocks: (blocks, real count)."""
    m = -(-z.shape[0] // block)
    return _pad_rows(z, _count_bucket(m) * block, fill).reshape((-1, block) + z.shape[1:]), m


# ---------------------------------------------------------------------------- kNN


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "tie_break"))
def _knn(zu_blocks, n_u_blocks, zl_blocks, yl_blocks, sql_blocks, n_l_blocks, *, k, num_classes,
         tie_break):
    """Weak labels and vote fractions for every block of unlabeled rows, in one call.

    zu_blocks (mu, bu, d); zl_blocks (ml, bl, d), yl/sql_blocks (ml, bl): the labeled
    set split into blocks. Only the first n_u_blocks / n_l_blocks blocks are real (the
    loops stop there); padding rows carry squared norm +inf, so they are never among
    the k nearest.
    """
    mu, bu, _ = zu_blocks.shape
    bl = zl_blocks.shape[1]
    k_blk = min(k, bl)
    yl_flat = yl_blocks.reshape(-1)

    def nearest(zu):
        squ = jnp.sum(zu * zu, axis=1, keepdims=True)

        def merge(j, carry):
            best_d, best_i = carry
            # Squared L2 via the expansion; HIGHEST keeps TF32 out of the matmul on GPUs.
            d2 = squ + sql_blocks[j][None, :] - 2.0 * jnp.dot(
                zu, zl_blocks[j].T, precision=jax.lax.Precision.HIGHEST)
            d2 = jnp.maximum(d2, 0.0)
            # The block's own k nearest, then a merge with the running k. lax.top_k puts
            # the lower position first on equal values, and the carry (lower labeled
            # indices) comes first: distance ties go to the lower labeled index.
            neg, pos = jax.lax.top_k(-d2, k_blk)
            cand_d = jnp.concatenate([best_d, -neg], axis=1)
            cand_i = jnp.concatenate([best_i, j * bl + pos.astype(jnp.int32)], axis=1)
            _, keep = jax.lax.top_k(-cand_d, k)
            return (jnp.take_along_axis(cand_d, keep, axis=1), jnp.take_along_axis(cand_i, keep, axis=1))

        init = (jnp.full((bu, k), jnp.inf, zu.dtype), jnp.zeros((bu, k), jnp.int32))
        _, nbr_i = jax.lax.fori_loop(0, n_l_blocks, merge, init)
        return yl_flat[nbr_i]

    def vote(nbr_y):
        onehot = jax.nn.one_hot(nbr_y, num_classes, dtype=jnp.int32)  # (bu, k, C)
        counts = onehot.sum(axis=1)
        if tie_break == "nearest":
            # Rank (0 = nearest) of each class's nearest neighbour; k when absent.
            rank = jnp.arange(k, dtype=jnp.int32)[None, :, None]
            first = jnp.min(jnp.where(onehot > 0, rank, k), axis=1)
            weak = jnp.argmax(counts * (k + 1) + (k - first), axis=1)
        else:
            weak = jnp.argmax(counts, axis=1)  # argmax returns the lowest tied class
        return weak.astype(jnp.int32), counts.astype(jnp.float32) / k

    def block(i, out):
        weak, votes = vote(nearest(zu_blocks[i]))
        return out[0].at[i].set(weak), out[1].at[i].set(votes)

    init = (jnp.zeros((mu, bu), jnp.int32), jnp.zeros((mu, bu, num_classes), jnp.float32))
    weak, votes = jax.lax.fori_loop(0, n_u_blocks, block, init)
    return weak.reshape(-1), votes.reshape(-1, num_classes)


def knn_propagate(
    z_unlabeled: np.ndarray,
    z_labeled: np.ndarray,
    y_labeled: np.ndarray,
    num_classes: int,
    k: int = 10,
    *,
    block_size: int = 4096,
    labeled_block_size: int = 4096,
    tie_break: str = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """kNN label propagation (preliminary pass): majority label of the k nearest (L2).

    Returns `(weak_labels (n,) int32, vote_fractions (n, C) float32)`, where
    vote_fractions[i, c] = (#neighbours of i labeled c) / k_eff and k_eff = min(k,
    n_labeled) (fewer than k labeled samples: all of them vote).

    Tie rules (deterministic):
      * distance ties among candidate neighbours go to the lower labeled index;
      * vote ties (equal counts), `tie_break="nearest"` (default): the tied class whose
        nearest member is closest, i.e. appears first in the neighbour list ordered by
        (distance, labeled index); because neighbour ranks are unique this never needs
        a further rule. `tie_break="lowest_class"`: the lowest tied class index, which
        is what FAST-official gets from `np.argmax` over vote fractions
        (`src/data.py`) and `scipy.stats.mode` (`ablation/data.py`).
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; allowed: {', '.join(TIE_BREAKS)}")
    block_size = _check_block("block_size", block_size)
    labeled_block_size = _check_block("labeled_block_size", labeled_block_size)
    zu, zl, yl = _check_labeled(z_unlabeled, z_labeled, y_labeled, num_classes)
    n, n_l = zu.shape[0], zl.shape[0]
    if n_l == 0:
        raise ValueError("knn_propagate needs at least one labeled embedding; got 0")
    if n == 0:
        return np.zeros((0,), np.int32), np.zeros((0, num_classes), np.float32)
    k_eff = min(int(k), n_l)

    bl = _bucket(n_l, labeled_block_size)
    sql = np.sum(zl.astype(np.float64) ** 2, axis=1).astype(np.float32)
    zl_b, n_lb = _blocks(zl, bl)
    yl_b, _ = _blocks(yl, bl)
    sql_b, _ = _blocks(sql, bl, np.inf)
    zu_b, n_ub = _blocks(zu, _bucket(n, block_size))
    weak, votes = _knn(zu_b, n_ub, zl_b, yl_b, sql_b, n_lb, k=k_eff, num_classes=int(num_classes),
                       tie_break=tie_break)
    return np.asarray(weak)[:n], np.asarray(votes)[:n]


# ---------------------------------------------------------------------- prototypes


def _unit_rows(z):
    norm = jnp.linalg.norm(z, axis=1, keepdims=True)
    return jnp.where(norm > _NORM_EPS, z / jnp.maximum(norm, _NORM_EPS), 0.0)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _class_mean_directions(zl, yl, *, num_classes):
    onehot = jax.nn.one_hot(yl, num_classes, dtype=zl.dtype)  # (n_l, C)
    sums = jnp.dot(onehot.T, _unit_rows(zl), precision=jax.lax.Precision.HIGHEST)
    counts = onehot.sum(axis=0)
    means = sums / jnp.maximum(counts, 1.0)[:, None]  # absent classes: zero row
    return means, counts > 0


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _prototypes(zu_blocks, zl, yl, *, num_classes):
    """Eq. 7 scores for every block of unlabeled rows, in one call."""
    means, present = _class_mean_directions(zl, yl, num_classes=num_classes)

    def block(zu):
        s = jnp.dot(_unit_rows(zu), means.T, precision=jax.lax.Precision.HIGHEST)
        return jnp.where(present[None, :], s, 0.0)

    return jax.lax.map(block, zu_blocks).reshape(-1, num_classes), present


def prototype_similarity(
    z_unlabeled: np.ndarray,
    z_labeled: np.ndarray,
    y_labeled: np.ndarray,
    num_classes: int,
    *,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 prototype similarity: s[i, c] = mean_{j: y_j = c} cos(z_i, z_j).

    Computed as unit(z_i) . mean_j unit(z_j) (one one-hot matmul for the per-class sums).
    Returns `(s (n, C) float32, present (C,) bool)`. A class with no labeled sample has
    present[c] = False and s[:, c] = 0.0; downstream uncertainty masks it out, so no
    NaN ever appears. A zero embedding has cosine similarity 0 with everything.
    """
    block_size = _check_block("block_size", block_size)
    zu, zl, yl = _check_labeled(z_unlabeled, z_labeled, y_labeled, num_classes)
    n = zu.shape[0]
    # Padding rows get label -1, whose one-hot row is all zeros: they count nowhere.
    n_l_pad = _bucket(zl.shape[0], 1 << 62)
    zl_pad, yl_pad = _pad_rows(zl, n_l_pad), _pad_rows(yl, n_l_pad, -1)
    zu_b, _ = _blocks(zu, _bucket(n, block_size))
    s, present = _prototypes(zu_b, zl_pad, yl_pad, num_classes=int(num_classes))
    return np.asarray(s)[:n], np.asarray(present)
