"""FAST's two-pass labeling (Algorithm 1), run for every client.

Preliminary pass: weak labels for each client's unlabeled pool by kNN over the labeled
embeddings (`knn_propagate`). Refinement pass: a per-class score vector (Eq. 7
prototype similarity, or FAST-official's kNN vote fractions), its uncertainty (Eq. 8 or
a Table VII measure), and the b_k = B / K most uncertain samples (Eq. 5) go to the
oracle. The result is a plain frozen value for the federate stage.

Paper vs FAST-official (Haoyuan-L/FAST-official), as options; the paper is the default:

  option            paper (default)       FAST-official
  score_source      "prototype" (Eq. 7)   "knn_votes" (`get_logits_from_knn`, src/data.py)
  measure           "entropy" (Eq. 8)     "norm" (`get_data(..., uncertainty="norm")`)
  normalize         "softmax" (Eq. 8)     "sum" for entropy (`compute_entropy`), "none"
                                          for the other measures
  class_aware       False                 True (hard-coded `class_aware = True` in
                                          src/data.py `get_data`)
  labeled_source    "shared" (Sec. IV-C:  no clients: one central pass over the whole
                    the seed embeddings   training set from one seed drawn before the
                    go through the        split (`partition.central_seed`,
                    server)               labeling.where="central")
  budget            a fraction of the     a fraction of the unlabeled pool,
                    training set          int(query_ratio * |pool|) (`query.budget_count`)

labeled_source="own" (each client propagates from its own seed only) is a named option.
After the two passes a `WeakLabelPolicy` (`filtering.py`) may drop, down-weight, verify
or soften the weak labels; the default policy changes nothing.

Example (two clients, 2-D embeddings):

    >>> import numpy as np
    >>> from fastjax.partition.types import ClientPool, Oracle
    >>> emb = np.array([[0, 0], [0, 1], [5, 5], [5, 6], [0, 2], [5, 7]], np.float32)
    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> pools = [ClientPool(0, np.array([0, 2]), y[[0, 2]], np.array([4])),
    ...          ClientPool(1, np.array([1, 3]), y[[1, 3]], np.array([5]))]
    >>> res = label_clients(pools, emb, Oracle(y), 2, budget=1, k=1)
    >>> res.annotations, res.train_y[0].tolist(), res.weak_acc_before_overall
    (1, [0, 1, 0], 1.0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from fastjax.label import filtering
from fastjax.label.filtering import WeakLabelPolicy
from fastjax.label.propagate import TIE_BREAKS, knn_propagate, prototype_similarity
from fastjax.label.query import STRATEGIES, client_budgets, select
from fastjax.label.uncertainty import check_names, uncertainty, vote_uncertainty
from fastjax.partition.types import ClientPool, Oracle

SCORE_SOURCES = ("prototype", "knn_votes")
LABELED_SOURCES = ("shared", "own")
MERGES = ("human+weak", "human", "weak", "seed")
LABEL_BYTES = 8  # int64 labels, as PyTorch's (and so the paper's) class targets


@dataclasses.dataclass(frozen=True)
class LabelingResult:
    """Training labels per client after the two passes, plus label-quality records.

    Per client k (tuples indexed by position in `pools`):
      train_idx[k]  global train indices to train on (seed first, then pool order);
      train_y[k]    their labels (human for seed and oracle-answered samples, else weak);
      is_human[k]   True where the label is a seed label or an oracle answer;
      train_w[k]    per-sample loss weights (policy filter="weight"), else None;
      train_soft[k] (n, C) float32 soft targets (policy soft=True), else None;
      queried_idx[k] global indices sent to the oracle (refinement and verification);
      verified_idx[k] the subset of them chosen to verify low-confidence weak labels;
      pool_idx[k], weak_labels[k], vote_share[k], proto_margin[k]: the unlabeled pool,
        its weak labels before refinement and their two confidences (pool order);
      client_budgets[k] b_k in use; weak_acc_before[k] / weak_acc_after[k]: accuracy of
      the weak labels over the client's unlabeled pool before refinement and after the
      oracle's answers replace them (nan for an empty pool).
    Totals: `budget` (the global B in use; 0 for merge "weak"/"seed"), `annotations`
    (distinct oracle queries this call made), `seed_labels` (seed labels, counted apart
    from annotations), `confusion` (C, C) int64 with rows = true class and columns =
    weak label over all unlabeled pools before refinement, `shared_embedding_bytes`
    (0 unless labeled_source="shared"; see `shared_embedding_bytes`).
    """

    train_idx: tuple[np.ndarray, ...]
    train_y: tuple[np.ndarray, ...]
    is_human: tuple[np.ndarray, ...]
    queried_idx: tuple[np.ndarray, ...]
    client_budgets: np.ndarray
    weak_acc_before: np.ndarray
    weak_acc_after: np.ndarray
    weak_acc_before_overall: float
    weak_acc_after_overall: float
    confusion: np.ndarray
    budget: int
    annotations: int
    seed_labels: int
    shared_embedding_bytes: int
    num_classes: int
    options: dict
    train_w: tuple = ()
    train_soft: tuple = ()
    verified_idx: tuple = ()
    pool_idx: tuple = ()
    weak_labels: tuple = ()
    vote_share: tuple = ()
    proto_margin: tuple = ()

    @property
    def num_clients(self) -> int:
        return len(self.train_idx)


def shared_embedding_bytes(seed_counts: Sequence[int], dim: int,
                           label_bytes: int = LABEL_BYTES) -> int:
    """Bytes to pool the seeds through the server (labeled_source="shared", Sec. IV-C).

    Convention: each seed sample travels as a float32 embedding (4 * dim bytes) plus an
    int64 label (8 bytes, PyTorch's class-target dtype). Every client uploads its own
    seeds once, and the server sends the whole pooled set (own seeds included) down to
    each of the K clients: bytes = (N + K * N) * (4 * dim + 8), N = total seeds.
    Table III, CIFAR-10 (N = 500 SigLIP 768-d seeds, K = 10): 16.155 MiB, and with 100
    CNN-4 rounds 902.52 MiB against the paper's 902.54 (int32 labels, label_bytes=4:
    902.50). A transport that sends other label types passes its own label_bytes.
    """
    n = int(np.sum(seed_counts))
    return (n + len(seed_counts) * n) * (4 * int(dim) + int(label_bytes))


def _check_options(k, measure, normalize, score_source, strategy, labeled_source, merge,
                   tie_break, policy):
    if int(k) < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    check_names(measure, normalize)
    for name, value, allowed in (("score_source", score_source, SCORE_SOURCES),
                                 ("strategy", strategy, STRATEGIES),
                                 ("labeled_source", labeled_source, LABELED_SOURCES),
                                 ("merge", merge, MERGES),
                                 ("tie_break", tie_break, TIE_BREAKS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    policy.validate()
    if policy.soft and score_source == "prototype" and normalize == "none":
        raise ValueError("soft labels need a distribution: with score_source='prototype' "
                         "use normalize='softmax' or 'sum'")


def _check_pools(pools, n_train, num_classes):
    if len(pools) == 0:
        raise ValueError("label_clients needs at least one ClientPool")
    for p in pools:
        for name, ix in (("labeled_idx", p.labeled_idx), ("unlabeled_idx", p.unlabeled_idx)):
            ix = np.asarray(ix)
            if ix.ndim != 1 or (ix.size and (ix.min() < 0 or ix.max() >= n_train)):
                raise ValueError(f"client {p.client}: {name} must be 1-D indices in "
                                 f"[0, {n_train}) (rows of embeddings)")
        y = np.asarray(p.labeled_y)
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"client {p.client}: labeled_y outside [0, {num_classes})")


def _resolve_budget(budget, budget_fraction, total_pool, merge):
    if merge in ("weak", "seed"):
        return 0
    if (budget is None) == (budget_fraction is None):
        raise ValueError("give exactly one of budget (a global count) or budget_fraction "
                         f"(of all unlabeled samples); got budget={budget}, "
                         f"budget_fraction={budget_fraction}")
    if budget_fraction is not None:
        if not 0.0 <= float(budget_fraction) <= 1.0:
            raise ValueError(f"budget_fraction must be in [0, 1]; got {budget_fraction}")
        # As FAST-official: int(query_ratio * len(unlabeled_indices)).
        return int(math.floor(float(budget_fraction) * total_pool))
    budget = int(budget)
    if budget < 0 or budget > total_pool:
        raise ValueError(f"budget must be in [0, {total_pool}] (all unlabeled samples); "
                         f"got {budget}")
    return budget


def _accuracy(pred, true) -> float:
    return float(np.mean(pred == true)) if true.size else math.nan


def _scores(zu, zl, lab_y, votes, k_eff, num_classes, *, score_source, measure, normalize,
            block_size):
    """(uncertainty (n,), score vector (n, C), present (C,), prototype scores (n, C))."""
    proto, present = prototype_similarity(zu, zl, lab_y, num_classes, block_size=block_size)
    if score_source == "knn_votes":
        # Votes are counts / k_eff: from the integer counts, tied scores are bit-equal.
        counts = np.rint(votes.astype(np.float64) * k_eff).astype(np.int64)
        return vote_uncertainty(counts, present, measure, normalize), votes, present, proto
    return uncertainty(proto, present, measure, normalize), proto, present, proto


def label_clients(
    pools: Sequence[ClientPool],
    embeddings: np.ndarray,
    oracle: Oracle,
    num_classes: int,
    *,
    budget_fraction: float | None = None,
    budget: int | None = None,
    k: int = 10,
    measure: str = "entropy",
    score_source: str = "prototype",
    normalize: str = "softmax",
    class_aware: bool = False,
    strategy: str = "uncertainty",
    labeled_source: str = "shared",
    merge: str = "human+weak",
    tie_break: str = "nearest",
    policy: WeakLabelPolicy = WeakLabelPolicy(),
    block_size: int = 4096,
    seed: int = 0,
) -> LabelingResult:
    """Algorithm 1's two passes for every client; see the module docstring for options.

    embeddings: (N_train, d), row i = global train index i. budget / budget_fraction:
    the global budget B (count, or fraction of all clients' unlabeled samples, floored),
    shared over clients by `client_budgets` (Eq. 5). labeled_source: "shared" = all
    seeds pooled through the server are the labeled set for everyone, costing
    `shared_embedding_bytes(...)`; "own" = each client propagates from its own seed.
    merge: "human+weak" seed + oracle labels + weak labels for the rest; "human" seed +
    oracle labels only; "weak" seed + weak labels for the whole pool (no oracle); "seed"
    seed only. policy: what to do with the weak labels afterwards (`filtering.py`); its
    verification share of b_k goes to the least confident weak labels that the
    refinement query did not pick. Randomness (strategy="random") comes from
    PRNGKey(seed) folded with the client id.
    """
    _check_options(k, measure, normalize, score_source, strategy, labeled_source, merge,
                   tie_break, policy)
    num_classes = int(num_classes)
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N_train, d); got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or inf; clean them before labeling")
    emb = emb.astype(np.float32, copy=False)
    pools = list(pools)
    _check_pools(pools, emb.shape[0], num_classes)
    pool_sizes = [len(p.unlabeled_idx) for p in pools]
    total_budget = _resolve_budget(budget, budget_fraction, int(sum(pool_sizes)), merge)
    budgets = client_budgets(total_budget, pool_sizes)

    shared_bytes = 0
    if labeled_source == "shared":
        shared_idx = np.concatenate([np.asarray(p.labeled_idx, np.int64) for p in pools])
        shared_y = np.concatenate([np.asarray(p.labeled_y, np.int64) for p in pools])
        shared_bytes = shared_embedding_bytes([len(p.labeled_idx) for p in pools],
                                              emb.shape[1])
    for p in pools:
        n_lab = len(shared_idx) if labeled_source == "shared" else len(p.labeled_idx)
        if len(p.unlabeled_idx) and n_lab == 0:
            raise ValueError(f"client {p.client} has unlabeled samples but no labeled seed "
                             "to propagate from; use labeled_source='shared' or give it seeds")

    annotations_before = oracle.annotations
    names = ("train_idx", "train_y", "is_human", "train_w", "train_soft", "queried",
             "verified", "pool", "weak", "share", "margin", "acc_before", "acc_after")
    out = {name: [] for name in names}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    all_true, all_weak, all_after = [], [], []
    uses_oracle = merge in ("human+weak", "human")
    for p, b_k in zip(pools, budgets):
        seed_idx = np.asarray(p.labeled_idx, np.int64)
        seed_y = np.asarray(p.labeled_y, np.int64)
        pool_idx = np.asarray(p.unlabeled_idx, np.int64)
        lab_idx, lab_y = (shared_idx, shared_y) if labeled_source == "shared" else (seed_idx, seed_y)

        n = pool_idx.size
        if n:
            zu, zl = emb[pool_idx], emb[lab_idx]
            weak, votes = knn_propagate(zu, zl, lab_y, num_classes, k, block_size=block_size,
                                        tie_break=tie_break)
            weak = weak.astype(np.int64)
            u, score, present, proto = _scores(
                zu, zl, lab_y, votes, min(int(k), lab_idx.size), num_classes,
                score_source=score_source, measure=measure, normalize=normalize,
                block_size=block_size)
            share = filtering.vote_share(votes, weak)
            margin = filtering.proto_margin(proto, present)
        else:
            weak = np.zeros((0,), np.int64)
            u, share, margin = (np.zeros((0,), np.float64),) * 3
            score, present = np.zeros((0, num_classes), np.float32), np.ones(num_classes, bool)
        conf = share if policy.confidence == "vote_share" else margin

        queried_pos = verified_pos = np.zeros((0,), np.int64)
        if uses_oracle and b_k > 0:
            b_verify = int(math.floor(policy.verify_fraction * int(b_k)))
            if strategy == "random":
                u = np.zeros(n, np.float32)
            key = jax.random.fold_in(jax.random.PRNGKey(seed), int(p.client))
            queried_pos = select(u, int(b_k) - b_verify, weak_labels=weak,
                                 num_classes=num_classes, class_aware=class_aware,
                                 strategy=strategy, key=key)
            rest = np.ones(n, bool)
            rest[queried_pos] = False
            verified_pos = filtering.least_confident(conf, rest, b_verify)
        asked = np.sort(np.concatenate([queried_pos, verified_pos]))
        human = oracle.query(pool_idx[asked]).astype(np.int64)

        refined = weak.copy()
        refined[asked] = human
        from_oracle = np.zeros(n, bool)
        from_oracle[asked] = True
        weights = soft = None
        if merge in ("human+weak", "weak"):
            keep_y = refined if merge == "human+weak" else weak
            keep_h = from_oracle if merge == "human+weak" else np.zeros(n, bool)
            keep = np.ones(n, bool)
            if policy.filter == "drop":
                keep = keep_h | filtering.keep_mask(conf, policy.threshold)
            elif policy.filter == "weight":
                weights = np.where(keep_h, 1.0, filtering.sample_weights(
                    conf, policy.threshold, policy.low_weight)).astype(np.float32)
            if policy.soft:
                soft = filtering.soft_targets(score, present, normalize, policy.soft_temperature)
                soft[keep_h] = np.eye(num_classes, dtype=np.float32)[keep_y[keep_h]]
            keep_idx, keep_y, keep_h = pool_idx[keep], keep_y[keep], keep_h[keep]
            weights = None if weights is None else weights[keep]
            soft = None if soft is None else soft[keep]
        elif merge == "human":
            keep_idx, keep_y, keep_h = pool_idx[asked], human, np.ones(human.size, bool)
        else:
            keep_idx, keep_y, keep_h = (np.zeros((0,), np.int64),) * 2 + (np.zeros(0, bool),)
        out["train_idx"].append(np.concatenate([seed_idx, keep_idx]))
        out["train_y"].append(np.concatenate([seed_y, keep_y]))
        out["is_human"].append(np.concatenate([np.ones(seed_idx.size, bool), keep_h]))
        out["train_w"].append(None if weights is None else
                              np.concatenate([np.ones(seed_idx.size, np.float32), weights]))
        out["train_soft"].append(None if soft is None else np.concatenate(
            [np.eye(num_classes, dtype=np.float32)[seed_y], soft]))
        out["queried"].append(pool_idx[asked])
        out["verified"].append(pool_idx[verified_pos])
        out["pool"].append(pool_idx)
        out["weak"].append(weak)
        out["share"].append(share)
        out["margin"].append(margin)

        # Evaluation only: the hidden labels never feed back into the passes above.
        true = oracle.labels_for_evaluation(pool_idx)
        np.add.at(confusion, (true, weak), 1)
        out["acc_before"].append(_accuracy(weak, true))
        out["acc_after"].append(_accuracy(refined, true))
        all_true.append(true)
        all_weak.append(weak)
        all_after.append(refined)

    all_true = np.concatenate(all_true)
    tup = lambda name: tuple(out[name])  # noqa: E731
    return LabelingResult(
        train_idx=tup("train_idx"),
        train_y=tup("train_y"),
        is_human=tup("is_human"),
        queried_idx=tup("queried"),
        client_budgets=budgets,
        weak_acc_before=np.array(out["acc_before"]),
        weak_acc_after=np.array(out["acc_after"]),
        weak_acc_before_overall=_accuracy(np.concatenate(all_weak), all_true),
        weak_acc_after_overall=_accuracy(np.concatenate(all_after), all_true),
        confusion=confusion,
        budget=int(total_budget),
        annotations=oracle.annotations - annotations_before,
        seed_labels=int(sum(len(p.labeled_idx) for p in pools)),
        shared_embedding_bytes=int(shared_bytes),
        num_classes=num_classes,
        options=dict(k=int(k), measure=measure, score_source=score_source,
                     normalize=normalize, class_aware=bool(class_aware), strategy=strategy,
                     labeled_source=labeled_source, merge=merge, tie_break=tie_break,
                     seed=int(seed), policy=dataclasses.asdict(policy)),
        train_w=tup("train_w"),
        train_soft=tup("train_soft"),
        verified_idx=tup("verified"),
        pool_idx=tup("pool"),
        weak_labels=tup("weak"),
        vote_share=tup("share"),
        proto_margin=tup("margin"),
    )


def client_training_sets(result: LabelingResult, client_train=None):
    """Per-client (idx, y, weights or None, soft targets or None) to train on, each
    client's samples in ascending index order (the order of its partition).

    client_train: None when `result` is per client already (labeling.where="client");
    else each client's global train indices (labeling.where="central": one central
    result whose labels the clients, who keep their own samples, take over; samples the
    policy dropped stay out).
    """
    per = [(result.train_idx[k], result.train_y[k],
            result.train_w[k] if result.train_w else None,
            result.train_soft[k] if result.train_soft else None)
           for k in range(result.num_clients)]
    if client_train is None:
        def by_index(entry):
            order = np.argsort(entry[0], kind="stable")
            return tuple(None if a is None else a[order] for a in entry)
        return [by_index(e) for e in per]
    idx = np.concatenate([p[0] for p in per])
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    if np.unique(idx).size != idx.size:
        raise ValueError("a train index is labeled twice; central results must cover "
                         "each sample once")
    y = np.concatenate([p[1] for p in per])[order]
    has_w = per[0][2] is not None
    has_soft = per[0][3] is not None
    w = np.concatenate([p[2] for p in per])[order] if has_w else None
    soft = np.concatenate([p[3] for p in per])[order] if has_soft else None
    sets = []
    for ix in client_train:
        ix = np.sort(np.asarray(ix, np.int64))
        pos = np.searchsorted(idx, ix)
        pos = np.minimum(pos, max(idx.size - 1, 0))
        take = pos[idx[pos] == ix] if idx.size else pos[:0]
        sets.append((idx[take], y[take], None if w is None else w[take],
                     None if soft is None else soft[take]))
    return sets
