"""Weak-label quality (the paper's first future-work item): precision by confidence bin,
per client and overall, and what refinement changed in each bin.

For each confidence (`filtering.CONFIDENCES`) the unlabeled pool is cut into bins:
  vote_share:   ten bins (0, 0.1], (0.1, 0.2], ..., (0.9, 1] (k = 10 puts each vote
                count in its own bin);
  proto_margin: ten equal-count bins over all clients' pools (deciles; their edges are
                reported).
Per bin: `count`, `mean_confidence`, `precision` (weak labels that equal the hidden
label), `oracle_labeled` (refinement queries and verifications that fell in the bin),
`corrected` (oracle-labeled samples whose weak label was wrong, i.e. labels the oracle
changed) and `precision_after` (labels after refinement). Precision is None for an
empty bin. "training_labels": how many samples the clients train on and the share whose
label (seed, oracle or weak; for soft targets the hard weak label) is right, plain and
weighted by the per-sample loss weights. The hidden labels come from
`Oracle.labels_for_evaluation`: evaluation only.

    >>> import numpy as np
    >>> bins = vote_share_bins(np.array([0.1, 0.30000001, 1.0]))
    >>> bins.tolist()
    [0, 2, 9]
"""

from __future__ import annotations

import math

import numpy as np

from fastjax.label.fast import LabelingResult
from fastjax.label.filtering import THRESHOLD_TOL
from fastjax.partition.types import Oracle

NUM_BINS = 10


def vote_share_bins(share: np.ndarray) -> np.ndarray:
    """Bin i holds shares in (i/10, (i+1)/10]; float32 round-off is absorbed (THRESHOLD_TOL)."""
    b = np.ceil(np.asarray(share, np.float64) * NUM_BINS - THRESHOLD_TOL).astype(np.int64) - 1
    return np.clip(b, 0, NUM_BINS - 1)


def quantile_edges(values: np.ndarray, bins: int = NUM_BINS) -> np.ndarray:
    """bins + 1 edges at equal-count quantiles (duplicates kept; empty bins allowed)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros(bins + 1)
    return np.quantile(v, np.linspace(0.0, 1.0, bins + 1))


def edge_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value for sorted edges: [e0, e1], (e1, e2], ... (last bin closed)."""
    b = np.searchsorted(edges, np.asarray(values, np.float64), side="left") - 1
    return np.clip(b, 0, len(edges) - 2)


def _bin_table(bins, conf, weak, true, asked, nbins) -> dict:
    after = np.where(asked, true, weak)

    def per_bin(x):
        return np.bincount(bins, weights=x.astype(np.float64), minlength=nbins)

    count = np.bincount(bins, minlength=nbins)
    correct = per_bin(weak == true)
    ok_after = per_bin(after == true)
    conf_sum = per_bin(conf)
    frac = lambda a: [None if c == 0 else float(x / c) for x, c in zip(a, count)]  # noqa: E731
    return {
        "count": count.tolist(),
        "mean_confidence": frac(conf_sum),
        "correct": correct.astype(np.int64).tolist(),
        "precision": frac(correct),
        "oracle_labeled": per_bin(asked).astype(np.int64).tolist(),
        "corrected": per_bin(asked & (weak != true)).astype(np.int64).tolist(),
        "precision_after": frac(ok_after),
    }


def weak_label_quality(result: LabelingResult, oracle: Oracle) -> dict:
    """Per-confidence bin tables, overall and per client (JSON-ready)."""
    if not result.pool_idx:
        raise ValueError("this LabelingResult carries no pool records; produce it with "
                         "label_clients")
    k = result.num_clients
    true = [oracle.labels_for_evaluation(ix) for ix in result.pool_idx]
    asked = [np.isin(ix, q) for ix, q in zip(result.pool_idx, result.queried_idx)]
    weak = list(result.weak_labels)
    out = {}
    for name, values in (("vote_share", result.vote_share), ("proto_margin", result.proto_margin)):
        if name == "vote_share":
            edges = np.linspace(0.0, 1.0, NUM_BINS + 1)
            bins = [vote_share_bins(v) for v in values]
        else:
            edges = quantile_edges(np.concatenate(values) if k else np.zeros(0))
            bins = [edge_bins(v, edges) for v in values]
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        out[name] = {
            "edges": [float(e) for e in edges],
            "overall": _bin_table(cat(bins).astype(np.int64), cat(values), cat(weak),
                                  cat(true), cat(asked).astype(bool), NUM_BINS),
            "clients": [_bin_table(bins[i], values[i], weak[i], true[i], asked[i], NUM_BINS)
                        for i in range(k)],
        }
    corrected = int(sum(out["vote_share"]["overall"]["corrected"]))
    labeled = int(sum(out["vote_share"]["overall"]["oracle_labeled"]))
    idx = np.concatenate(result.train_idx) if k else np.zeros(0, np.int64)
    ok = (np.concatenate(result.train_y) == oracle.labels_for_evaluation(idx)) if k else idx
    w = (np.concatenate([np.ones(len(i), np.float32) if wk is None else wk
                         for i, wk in zip(result.train_idx, result.train_w)])
         if result.train_w else np.ones(idx.size, np.float32))
    out["training_labels"] = {
        "samples": int(idx.size),
        "precision": float(ok.mean()) if idx.size else None,
        "weighted_precision": float((w * ok).sum() / w.sum()) if w.sum() > 0 else None,
    }
    out["refinement"] = {
        "oracle_labeled": labeled,
        "corrected": corrected,
        "confirmed": labeled - corrected,
        "verified": int(sum(v.size for v in result.verified_idx)),
    }
    return out


def summary(quality: dict) -> dict:
    """The run-summary digest: overall precision per vote-share bin and what the oracle
    changed."""
    vs = quality["vote_share"]["overall"]
    return {"vote_share_edges": quality["vote_share"]["edges"],
            "vote_share_count": vs["count"],
            "vote_share_precision": vs["precision"],
            "vote_share_corrected": vs["corrected"],
            "training_label_precision": quality["training_labels"]["precision"],
            "training_label_weighted_precision": quality["training_labels"]["weighted_precision"],
            **quality["refinement"]}


def _bin_labels(edges) -> list[str]:
    return [f"{a:.3g}-{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]


def plot_reliability(quality: dict, path: str) -> str:
    """Reliability diagram PNG: per confidence, precision of the weak labels before and
    after refinement in each bin (overall; clients as faint points), with the bin counts.
    Bins sit at equal spacing, labelled by their edges: on an easy dataset (MNIST) the
    confidences pile up in one or two bins and a value axis would squeeze them together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def nan(xs):
        return [math.nan if v is None else v for v in xs]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, name, title in zip(axes, ("vote_share", "proto_margin"),
                               ("kNN vote share", "prototype margin (deciles)")):
        q = quality[name]
        ov = q["overall"]
        pos = np.arange(len(ov["count"]))
        twin = ax.twinx()
        twin.bar(pos, ov["count"], width=0.8, color="C1", alpha=0.25)
        twin.set_ylabel("samples per bin", color="C1")
        ok = [(i, p) for cl in q["clients"] for i, p in enumerate(cl["precision"]) if p is not None]
        if ok:
            ax.scatter(*zip(*ok), s=6, color="0.6", zorder=1, label="clients")
        ax.plot(pos, nan(ov["precision"]), "o-", color="C0", label="weak labels", zorder=3)
        ax.plot(pos, nan(ov["precision_after"]), "s--", color="C2", label="after refinement",
                zorder=3)
        if name == "vote_share":  # a calibrated share: precision = the bin's centre
            ax.plot(pos, (pos + 0.5) / len(pos), ":", color="0.4", label="share = precision")
        ax.set_xticks(pos, _bin_labels(q["edges"]), rotation=45, ha="right", fontsize=7)
        ax.set(xlabel=f"{title}: bin (empty bins have no point)", ylabel="precision",
               ylim=(0, 1.02), xlim=(-0.6, len(pos) - 0.4), title=title)
        ax.grid(alpha=0.3)
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.legend(loc="best", fontsize=8)
    r = quality["refinement"]
    fig.suptitle(f"weak-label reliability; the oracle labeled {r['oracle_labeled']} "
                 f"and corrected {r['corrected']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
