"""Weak-label confidence, filtering, verification and soft targets (the paper's future
work, Sec. V: "quantify weak-label quality" and "filter weak labels ... label correction
before the final human annotation").

Two confidences per weak label, both higher = more trusted:
  "vote_share":   the fraction of the k nearest labeled neighbours that voted for the
                  weak label (FAST-official's kNN vote fraction of the chosen class).
  "proto_margin": top-1 minus top-2 Eq. 7 prototype similarity over the present classes
                  (with one present class the runner-up is -1, the least cosine similarity).

A `WeakLabelPolicy` says what to do with them; every rule is a pure function here:
  filter="drop"    weak labels with confidence < threshold are left out of training;
  filter="weight"  they train with per-sample loss weight `low_weight` (others 1);
  verify_fraction  that share of each client's budget b_k (floored) goes to the oracle
                   for the least confident weak labels not already queried (it corrects
                   them instead of labeling the most uncertain samples; annotations are
                   counted alike);
  soft=True        weak-labeled samples train on the normalised score vector
                   (`soft_targets`) instead of the hard weak label; human labels stay
                   one-hot.

    >>> import numpy as np
    >>> keep_mask(np.array([0.9, 0.5, 0.8]), 0.8).tolist()
    [True, False, True]
    >>> least_confident(np.array([0.3, 0.1, 0.1, 0.9]), np.array([True, True, False, True]), 2).tolist()
    [0, 1]
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from fastjax.label.uncertainty import NORMALIZE

CONFIDENCES = ("vote_share", "proto_margin")
# What each confidence can take: a share of k votes; a difference of two cosine similarities.
CONFIDENCE_RANGE = {"vote_share": (0.0, 1.0), "proto_margin": (0.0, 2.0)}


def threshold_problem(confidence: str, threshold: float) -> str | None:
    """Why `threshold` cannot filter on `confidence` (outside its range, so it would keep
    or drop every weak label), or None; the config check and the policy share it."""
    if confidence not in CONFIDENCE_RANGE:
        return None
    lo, hi = CONFIDENCE_RANGE[confidence]
    if lo <= threshold <= hi:
        return None
    return (f"is outside {confidence}'s range [{lo:g}, {hi:g}]: it would "
            f"{'keep' if threshold < lo else 'drop'} every weak label")


FILTERS = ("none", "drop", "weight")


@dataclasses.dataclass(frozen=True)
class WeakLabelPolicy:
    """What happens to weak labels after the two passes (defaults: nothing, as FAST)."""

    filter: str = "none"
    confidence: str = "vote_share"
    threshold: float = 0.0
    low_weight: float = 0.5
    verify_fraction: float = 0.0
    soft: bool = False
    soft_temperature: float = 0.03  # as the config's default (see fastjax/config.py)

    def validate(self) -> "WeakLabelPolicy":
        errs = []
        if self.filter not in FILTERS:
            errs.append(f"filter={self.filter!r}; allowed: {', '.join(FILTERS)}")
        if self.confidence not in CONFIDENCES:
            errs.append(f"confidence={self.confidence!r}; allowed: {', '.join(CONFIDENCES)}")
        if not np.isfinite(self.threshold):
            errs.append(f"threshold={self.threshold} must be finite")
        elif self.filter != "none" and (why := threshold_problem(self.confidence, self.threshold)):
            errs.append(f"threshold={self.threshold} {why}")
        if not 0.0 <= self.low_weight <= 1.0:
            errs.append(f"low_weight={self.low_weight} must be in [0, 1] (0 = drop, 1 = keep)")
        if not 0.0 <= self.verify_fraction <= 1.0:
            errs.append(f"verify_fraction={self.verify_fraction} must be in [0, 1] (share of "
                        "each client's budget spent verifying weak labels)")
        if not self.soft_temperature > 0:
            errs.append(f"soft_temperature={self.soft_temperature} must be > 0")
        if errs:
            raise ValueError("invalid weak-label policy: " + "; ".join(errs))
        return self

    @property
    def active(self) -> bool:
        return self.filter != "none" or self.verify_fraction > 0 or self.soft


def vote_share(votes: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Fraction of the k neighbours that voted for each weak label: votes[i, weak[i]]."""
    votes = np.asarray(votes)
    return votes[np.arange(votes.shape[0]), np.asarray(weak)].astype(np.float64)


def proto_margin(scores: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 prototype similarity over present classes (runner-up -1 when
    only one class is present)."""
    s = np.where(np.asarray(present)[None, :], np.asarray(scores, np.float64), -np.inf)
    if s.shape[0] == 0:
        return np.zeros((0,), np.float64)
    top2 = -np.sort(-s, axis=1)[:, :2]
    second = top2[:, 1] if top2.shape[1] > 1 else np.full(s.shape[0], -1.0)
    second = np.where(np.isfinite(second), second, -1.0)
    return top2[:, 0] - second


# Vote shares arrive as float32 counts / k: 7 / 10 is 0.69999999, which a plain
# `>= 0.7` would drop. Comparisons absorb that round-off (as quality.vote_share_bins does).
THRESHOLD_TOL = 1e-6


def keep_mask(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """True where a weak label is kept: confidence >= threshold, up to float32 round-off
    (THRESHOLD_TOL), so a threshold of 0.7 keeps exactly the labels with 7 of 10 votes."""
    return np.asarray(confidence, np.float64) >= threshold - THRESHOLD_TOL


def sample_weights(confidence: np.ndarray, threshold: float, low_weight: float) -> np.ndarray:
    """Per-sample loss weights: 1 at or above the threshold, `low_weight` below (float32)."""
    return np.where(keep_mask(confidence, threshold), 1.0, low_weight).astype(np.float32)


def least_confident(confidence: np.ndarray, candidates: np.ndarray, b: int) -> np.ndarray:
    """Sorted positions of the b candidates with the lowest confidence; ties go to the
    lower position."""
    conf = np.asarray(confidence, np.float64)
    pos = np.flatnonzero(np.asarray(candidates, bool))
    if b > pos.size:
        raise ValueError(f"cannot verify {b} weak labels: only {pos.size} candidates")
    order = np.lexsort((pos, conf[pos]))
    return np.sort(pos[order[:b]]).astype(np.int64)


def soft_targets(scores: np.ndarray, present: np.ndarray, normalize: str,
                 temperature: float = 1.0) -> np.ndarray:
    """The normalised score vector as a training target (n, C) float32, rows summing to
    1 over present classes. normalize: "softmax" (of scores / temperature), "sum" (clip
    at 0, divide by the row sum) or "none" (the scores themselves; only a distribution
    for kNN vote fractions)."""
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; allowed: {', '.join(NORMALIZE)}")
    s = np.asarray(scores, np.float32)
    if s.shape[0] == 0:
        return np.zeros(s.shape, np.float32)
    if normalize == "softmax":
        s = s / np.float32(temperature)
    present = jnp.asarray(np.asarray(present, bool))[None, :]
    p = np.asarray(NORMALIZE[normalize](jnp.asarray(s), present), np.float32)
    return np.where(np.asarray(present), p, 0.0).astype(np.float32)
