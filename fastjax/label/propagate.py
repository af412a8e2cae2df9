"""Preliminary pass: weak labels and per-class scores from frozen embeddings.

Two score sources feed the refinement pass:

* `knn_propagate`: each unlabeled embedding takes the majority label of its k nearest
  labeled embeddings (L2); the vote fractions are FAST-official's score vector
  (`get_logits_from_knn` in `src/data.py`).
* `prototype_similarity`: Eq. 7, the mean cosine similarity between an unlabeled
  embedding and the labeled embeddings of each class (FAST-official's
  `get_average_cosine_similarity_logits` in `ablation/data.py`).

Both are jitted matrix ops over fixed-size blocks of unlabeled rows (a Python loop over
blocks, one compiled block function), and kNN keeps a running top-k over fixed-size
blocks of labeled rows, so peak memory is O(block_size * labeled_block_size), not
O(n_unlabeled * n_labeled).

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
    if not np.isfinite(z).all():
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


def _round_up(n: int, b: int) -> int:
    return -(-n // b) * b


def _bucket(n: int, cap: int) -> int:
    """Block length for n rows: a power of two (>= 8) capped at `cap`.

    Clients with different pool/seed sizes then share compiled block functions instead
    of compiling one per size; padding costs at most 2x on pools smaller than `cap`.
    """
    return min(cap, max(8, 1 << (max(n, 1) - 1).bit_length()))


# ---------------------------------------------------------------------------- kNN


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "tie_break"))
def _knn_block(zu, zl_blocks, yl_blocks, il_blocks, sql_blocks, *, k, num_classes, tie_break):
    """Weak labels and vote fractions for one block of unlabeled rows.

    zl_blocks (nb, bl, d), yl/il/sql_blocks (nb, bl): labeled set split into blocks;
    padding rows carry squared norm +inf, so they are never among the k nearest.
    """
    squ = jnp.sum(zu * zu, axis=1, keepdims=True)
    bu = zu.shape[0]

    def merge(carry, blk):
        best_d, best_i, best_y = carry
        zl, yl, il, sql = blk
        # Squared L2 via the expansion; HIGHEST keeps TF32 out of the matmul on GPUs.
        d2 = squ + sql[None, :] - 2.0 * jnp.dot(zu, zl.T, precision=jax.lax.Precision.HIGHEST)
        d2 = jnp.maximum(d2, 0.0)
        # Carry entries hold lower labeled indices than this block's, so lax.top_k's
        # "lower position first" on equal values gives distance ties to the lower index.
        cand_d = jnp.concatenate([best_d, d2], axis=1)
        cand_i = jnp.concatenate([best_i, jnp.broadcast_to(il, (bu, il.shape[0]))], axis=1)
        cand_y = jnp.concatenate([best_y, jnp.broadcast_to(yl, (bu, yl.shape[0]))], axis=1)
        _, pos = jax.lax.top_k(-cand_d, k)
        take = lambda a: jnp.take_along_axis(a, pos, axis=1)
        return (take(cand_d), take(cand_i), take(cand_y)), None

    init = (
        jnp.full((bu, k), jnp.inf, zu.dtype),
        jnp.full((bu, k), jnp.iinfo(jnp.int32).max, jnp.int32),
        jnp.zeros((bu, k), jnp.int32),
    )
    (_, _, nbr_y), _ = jax.lax.scan(merge, init, (zl_blocks, yl_blocks, il_blocks, sql_blocks))

    onehot = jax.nn.one_hot(nbr_y, num_classes, dtype=jnp.int32)  # (bu, k, C)
    counts = onehot.sum(axis=1)
    if tie_break == "nearest":
        # Rank (0 = nearest) of each class's nearest neighbour; k when absent.
        rank = jnp.arange(k, dtype=jnp.int32)[None, :, None]
        first = jnp.min(jnp.where(onehot > 0, rank, k), axis=1)
        key = counts * (k + 1) + (k - first)
        weak = jnp.argmax(key, axis=1)
    else:
        weak = jnp.argmax(counts, axis=1)  # argmax returns the lowest tied class
    return weak.astype(jnp.int32), counts.astype(jnp.float32) / k


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
    n_l_pad = _round_up(n_l, bl)
    sql = np.sum(zl.astype(np.float64) ** 2, axis=1).astype(np.float32)
    sql = _pad_rows(sql, n_l_pad, np.inf)
    nb = n_l_pad // bl
    zl_b = jnp.asarray(_pad_rows(zl, n_l_pad).reshape(nb, bl, -1))
    yl_b = jnp.asarray(_pad_rows(yl, n_l_pad).reshape(nb, bl))
    il_b = jnp.asarray(np.arange(n_l_pad, dtype=np.int32).reshape(nb, bl))
    sql_b = jnp.asarray(sql.reshape(nb, bl))

    bu = _bucket(n, block_size)
    zu_pad = _pad_rows(zu, _round_up(n, bu))
    weak, votes = [], []
    for start in range(0, zu_pad.shape[0], bu):
        w, v = _knn_block(jnp.asarray(zu_pad[start:start + bu]), zl_b, yl_b, il_b, sql_b,
                          k=k_eff, num_classes=int(num_classes), tie_break=tie_break)
        weak.append(np.asarray(w))
        votes.append(np.asarray(v))
    return np.concatenate(weak)[:n], np.concatenate(votes)[:n]


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


@jax.jit
def _prototype_block(zu, means, present):
    s = jnp.dot(_unit_rows(zu), means.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(present[None, :], s, 0.0)


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
    means, present = _class_mean_directions(jnp.asarray(_pad_rows(zl, n_l_pad)),
                                            jnp.asarray(_pad_rows(yl, n_l_pad, -1)),
                                            num_classes=int(num_classes))
    if n == 0:
        return np.zeros((0, num_classes), np.float32), np.asarray(present)
    bu = _bucket(n, block_size)
    zu_pad = _pad_rows(zu, _round_up(n, bu))
    out = [np.asarray(_prototype_block(jnp.asarray(zu_pad[s:s + bu]), means, present))
           for s in range(0, zu_pad.shape[0], bu)]
    return np.concatenate(out)[:n], np.asarray(present)
