"""Label-quality report: a JSON summary and a row-normalised confusion matrix PNG (the
reliability diagram is `quality.plot_reliability`)."""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from fastjax.label.fast import LabelingResult


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)  # JSON has no NaN


def label_report(result: LabelingResult, class_names: Sequence[str],
                 quality: dict | None = None) -> dict:
    """The JSON-ready summary of a `LabelingResult` (plus `quality.weak_label_quality`
    under "weak_label_quality" when given)."""
    rep = {
        "options": dict(result.options),
        "num_classes": result.num_classes,
        "class_names": list(class_names),
        "budget": result.budget,
        "annotations": result.annotations,
        "seed_labels": result.seed_labels,
        "shared_embedding_bytes": result.shared_embedding_bytes,
        "weak_acc_before": _num(result.weak_acc_before_overall),
        "weak_acc_after": _num(result.weak_acc_after_overall),
        "clients": [
            {
                "client": k,
                "budget": int(result.client_budgets[k]),
                "queried": int(result.queried_idx[k].size),
                "train_size": int(result.train_idx[k].size),
                "human_labels": int(result.is_human[k].sum()),
                "weak_acc_before": _num(result.weak_acc_before[k]),
                "weak_acc_after": _num(result.weak_acc_after[k]),
                "verified": int(result.verified_idx[k].size) if result.verified_idx else 0,
                "pool_size": int(result.pool_idx[k].size) if result.pool_idx else None,
                "weighted_below_one": (int((result.train_w[k] < 1).sum())
                                       if result.train_w and result.train_w[k] is not None
                                       else 0),
            }
            for k in range(result.num_clients)
        ],
        "confusion_weak": {"rows": "true class", "cols": "weak label",
                           "counts": result.confusion.tolist()},
    }
    if quality is not None:
        rep["weak_label_quality"] = quality
    return rep


def write_label_report(result: LabelingResult, class_names: Sequence[str],
                       out_dir: str, quality: dict | None = None) -> tuple[str, str]:
    """Write `label_report.json` and `weak_label_confusion.png` into out_dir.

    Returns the two paths. The PNG shows each true-class row divided by its count (rows
    with no sample stay 0).
    """
    class_names = [str(c) for c in class_names]
    if len(class_names) != result.num_classes:
        raise ValueError(f"class_names has {len(class_names)} names; the result has "
                         f"{result.num_classes} classes")
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "label_report.json")
    with open(json_path, "w") as f:
        json.dump(label_report(result, class_names, quality), f, indent=2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = result.confusion.astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    c = result.num_classes
    size = min(4 + 0.35 * c, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(cm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if c <= 30:
        ax.set_xticks(range(c), class_names, rotation=90)
        ax.set_yticks(range(c), class_names)
    if c <= 15:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("weak label")
    ax.set_ylabel("true label")
    acc = result.weak_acc_before_overall
    ax.set_title(f"weak labels (row-normalised), accuracy {acc:.3f}")
    fig.tight_layout()
    png_path = os.path.join(out_dir, "weak_label_confusion.png")
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
