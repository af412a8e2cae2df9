"""Refinement-pass uncertainty over per-class score vectors (Eq. 8 and Table VII).

`uncertainty(scores, present, measure, normalize)` first maps each row of scores to a
vector p over the *present* classes (classes with at least one labeled sample; absent
ones are masked out everywhere), then applies a measure from the `UNCERTAINTY`
registry. Every measure is oriented so that HIGHER = MORE UNCERTAIN; the refinement
pass queries the largest values.

Normalisations (`NORMALIZE`):
  "softmax" (paper, Eq. 8): p = softmax(s) over present classes.
  "sum" (FAST-official `compute_entropy`: `logits / logits.sum(1)`): p = s / sum(s) over
         present classes. Negative scores (possible for cosine similarities) are clipped
         to 0 first, and a row summing to 0 becomes uniform, so p is always a
         distribution; on kNN vote fractions (non-negative, sum 1) this is exactly theirs.
  "none" (FAST-official's other measures, which take the raw vector): p = s.

Measures (`UNCERTAINTY`), as in FAST-official `src/data.py` / `ablation/data.py`
(`compute_entropy`, `compute_norm`, `compute_least_confidence`,
`compute_smallest_margin`, `compute_largest_margin`); all of theirs already increase
with uncertainty, so no sign is flipped:
  "entropy":          -sum_c p_c log p_c  (0 log 0 = 0; entries <= 0 contribute 0).
  "norm":             ||p - onehot(argmax p)||_2  (FAST-official's default measure).
  "least_confidence": 1 - max_c p_c.
  "smallest_margin":  1 - (p_(1) - p_(2)), the two largest entries.
  "largest_margin":   1 - (max_c p_c - min_c p_c).
With a single present class the margins take the missing second/min entry as 0.

`vote_uncertainty(counts, present, measure, normalize)` is the same registry evaluated
on kNN vote *counts* (FAST-official's score vector is counts / k): float64, on rows
sorted in descending order, and, for every measure but entropy under "none"/"sum", from
integer arithmetic, so score vectors that are equal up to which classes hold the votes,
or mathematically tied (norm^2 = (sum c^2 - 2 k c_max + k^2) / k^2 for counts 4,3,3 and
4,4,1,1 alike), get bit-identical values and the refinement pass's "ties go to the
lower position" holds. (In float32 such ties differ in their last bit, depending on the
classes that hold the votes.)

    >>> import numpy as np
    >>> u = uncertainty(np.zeros((1, 4), np.float32), np.ones(4, bool), "entropy")
    >>> bool(np.isclose(u[0], np.log(4)))
    True
    >>> v = vote_uncertainty(np.array([[4, 3, 3, 0], [1, 4, 1, 4]]), None, "norm", "none")
    >>> bool(v[0] == v[1])
    True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _softmax(s, present):
    s = jnp.where(present, s, -jnp.inf)
    s = s - jnp.max(s, axis=1, keepdims=True)
    e = jnp.where(present, jnp.exp(s), 0.0)
    return e / jnp.sum(e, axis=1, keepdims=True)


def _sum(s, present):
    s = jnp.where(present, jnp.maximum(s, 0.0), 0.0)
    total = jnp.sum(s, axis=1, keepdims=True)
    uniform = jnp.broadcast_to(present / jnp.sum(present), s.shape).astype(s.dtype)
    return jnp.where(total > 0, s / jnp.where(total > 0, total, 1.0), uniform)


def _none(s, present):
    return jnp.where(present, s, 0.0)


NORMALIZE = {"softmax": _softmax, "sum": _sum, "none": _none}


def entropy(p, present):
    """Eq. 8 (on softmax scores): Shannon entropy over present classes (nats)."""
    ok = present & (p > 0)
    return -jnp.sum(jnp.where(ok, p * jnp.log(jnp.where(ok, p, 1.0)), 0.0), axis=1)


def _argmax_present(p, present):
    return jnp.argmax(jnp.where(present, p, -jnp.inf), axis=1)


def norm(p, present):
    """L2 distance between p and the one-hot of its argmax (FAST-official `compute_norm`)."""
    onehot = jax.nn.one_hot(_argmax_present(p, present), p.shape[1], dtype=p.dtype)
    diff = jnp.where(present, p - onehot, 0.0)
    return jnp.sqrt(jnp.sum(diff * diff, axis=1))


def least_confidence(p, present):
    """1 - max p (FAST-official `compute_least_confidence`)."""
    return 1.0 - jnp.max(jnp.where(present, p, -jnp.inf), axis=1)


def smallest_margin(p, present):
    """1 - (top-1 - top-2) (FAST-official `compute_smallest_margin`)."""
    top2, _ = jax.lax.top_k(jnp.where(present, p, -jnp.inf), min(2, p.shape[1]))
    second = top2[:, 1] if p.shape[1] > 1 else jnp.zeros_like(top2[:, 0])
    second = jnp.where(jnp.isfinite(second), second, 0.0)
    return 1.0 - (top2[:, 0] - second)


def largest_margin(p, present):
    """1 - (max - min) (FAST-official `compute_largest_margin`)."""
    hi = jnp.max(jnp.where(present, p, -jnp.inf), axis=1)
    lo = jnp.min(jnp.where(present, p, jnp.inf), axis=1)
    lo = jnp.where(jnp.sum(present) > 1, lo, 0.0)
    return 1.0 - (hi - lo)


UNCERTAINTY = {
    "entropy": entropy,
    "norm": norm,
    "least_confidence": least_confidence,
    "smallest_margin": smallest_margin,
    "largest_margin": largest_margin,
}


@jax.jit
def _uncertainty(scores, present, measure_id, normalize_id):
    # Names are traced switch indices, not static: one compile per shape serves all.
    present = present[None, :]
    p = jax.lax.switch(normalize_id, [functools.partial(f, present=present)
                                      for f in NORMALIZE.values()], scores)
    return jax.lax.switch(measure_id, [functools.partial(f, present=present)
                                       for f in UNCERTAINTY.values()], p)


def check_names(measure: str, normalize: str) -> None:
    if measure not in UNCERTAINTY:
        raise ValueError(f"unknown uncertainty measure {measure!r}; allowed: "
                         f"{', '.join(UNCERTAINTY)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; allowed: {', '.join(NORMALIZE)}")


def uncertainty(
    scores: np.ndarray,
    present: np.ndarray | None = None,
    measure: str = "entropy",
    normalize: str = "softmax",
) -> np.ndarray:
    """Per-row uncertainty (n,) float32 of a score matrix (n, C); higher = more uncertain.

    present: (C,) bool, classes that exist in the labeled set (default: all). Absent
    classes are excluded from the normalisation and from every measure.
    """
    check_names(measure, normalize)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, C); got shape {scores.shape}")
    scores = scores.astype(np.float32, copy=False)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    present = _check_present(present, scores.shape[1])
    n = scores.shape[0]
    if n == 0:
        return np.zeros((0,), np.float32)
    rows = max(64, 1 << (n - 1).bit_length())  # power-of-two buckets share compiles
    padded = np.zeros((rows, scores.shape[1]), np.float32)
    padded[:n] = scores
    u = _uncertainty(jnp.asarray(padded), jnp.asarray(present),
                     list(UNCERTAINTY).index(measure), list(NORMALIZE).index(normalize))
    return np.asarray(u)[:n]


def _check_present(present, c):
    present = np.ones(c, bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (c,):
        raise ValueError(f"present must have shape ({c},); got {present.shape}")
    if not present.any():
        raise ValueError("no class is present; uncertainty needs at least one labeled class")
    return present


def vote_uncertainty(
    counts: np.ndarray,
    present: np.ndarray | None = None,
    measure: str = "norm",
    normalize: str = "none",
) -> np.ndarray:
    """Per-row uncertainty (n,) float64 of kNN vote counts (n, C) (integers, each row
    summing to the same k); the scores are p = counts / k, as `uncertainty` would take
    them, normalised and measured the same way (see the module docstring).

    Absent classes (present[c] False) hold no votes and are excluded, as in `uncertainty`.
    """
    check_names(measure, normalize)
    counts = np.asarray(counts)
    if counts.ndim != 2 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be a 2-D integer array (n, C); got {counts.dtype} "
                         f"{counts.shape}")
    present = _check_present(present, counts.shape[1])
    n = counts.shape[0]
    if n == 0:
        return np.zeros((0,), np.float64)
    c = counts[:, present].astype(np.int64)
    if (c < 0).any():
        raise ValueError("counts must be >= 0")
    k = c.sum(axis=1)
    if (k != k[0]).any() or k[0] == 0:
        raise ValueError("every row of counts must sum to the same k > 0 (the number of "
                         "neighbours that voted)")
    k = int(k[0])
    srt = -np.sort(-c, axis=1)  # descending: the class that holds a vote no longer matters
    top = srt[:, 0]
    second = srt[:, 1] if srt.shape[1] > 1 else np.zeros(n, np.int64)
    low = srt[:, -1] if srt.shape[1] > 1 else np.zeros(n, np.int64)
    if normalize == "softmax":
        p = np.exp(srt / k - (top / k)[:, None])
        p = p / p.sum(axis=1, keepdims=True)
        if measure == "entropy":
            return -np.sum(p * np.log(p), axis=1)
        if measure == "norm":
            return np.sqrt((p[:, 0] - 1.0) ** 2 + np.sum(p[:, 1:] ** 2, axis=1))
        hi, second_p, low_p = p[:, 0], (p[:, 1] if p.shape[1] > 1 else 0.0), p[:, -1]
        if measure == "least_confidence":
            return 1.0 - hi
        if measure == "smallest_margin":
            return 1.0 - (hi - second_p)
        return 1.0 - (hi - (low_p if p.shape[1] > 1 else 0.0))
    # "none" and "sum" agree on votes (they sum to 1): p = c / k, integer numerators.
    if measure == "entropy":
        pos = np.where(srt > 0, srt, 1).astype(np.float64)
        return np.log(k) - np.sum(np.where(srt > 0, srt * np.log(pos), 0.0), axis=1) / k
    if measure == "norm":
        return np.sqrt(np.sum(srt * srt, axis=1) - 2 * k * top + k * k) / k
    if measure == "least_confidence":
        return (k - top) / k
    if measure == "smallest_margin":
        return (k - top + second) / k
    return (k - top + low) / k
