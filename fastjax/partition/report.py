"""What a partition looks like: per-client class counts, a table and a heatmap."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from fastjax.partition.types import Partition


def class_counts(parts, labels, num_classes: int) -> np.ndarray:
    """K x C matrix: samples of class c held by client k."""
    y = np.asarray(labels, dtype=np.int64)
    return np.stack([np.bincount(y[np.asarray(ix, np.int64)], minlength=num_classes)
                     for ix in parts]) if len(parts) else np.zeros((0, num_classes), np.int64)


def partition_report(partition: Partition, labels, num_classes: int,
                     class_names=None, test_labels=None) -> dict:
    """Plain-JSON summary: class_counts (K x C), sizes, and heterogeneity statistics.

    summary.classes_per_client counts classes with at least one sample;
    summary.mean_tv_to_global is the mean total-variation distance between each client's
    class mix and the whole train split's (0 = iid, 1 = disjoint).
    """
    counts = class_counts(partition.train, labels, num_classes)
    sizes = counts.sum(1)
    glob = counts.sum(0) / max(counts.sum(), 1)
    mix = counts / np.maximum(sizes, 1)[:, None]
    ncls = (counts > 0).sum(1)
    report = {
        "scheme": partition.scheme,
        "num_clients": int(partition.num_clients),
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names is not None
        else [str(c) for c in range(num_classes)],
        "sizes": sizes.tolist(),
        "class_counts": counts.tolist(),
        "summary": {
            "total": int(sizes.sum()),
            "min_size": int(sizes.min()), "max_size": int(sizes.max()),
            "mean_size": float(sizes.mean()),
            "classes_per_client": ncls.tolist(),
            "mean_classes_per_client": float(ncls.mean()),
            "mean_tv_to_global": float(0.5 * np.abs(mix - glob).sum(1).mean()),
        },
    }
    if partition.test is not None and test_labels is not None:
        tc = class_counts(partition.test, test_labels, num_classes)
        report["test_class_counts"] = tc.tolist()
        report["test_sizes"] = tc.sum(1).tolist()
    return report


def format_table(report: dict, max_classes: int = 20) -> str:
    """Readable fixed-width table: one row per client, one column per class."""
    counts = np.array(report["class_counts"])
    c = counts.shape[1]
    shown = min(c, max_classes)
    names = [n[:7] for n in report["class_names"][:shown]]
    w = max(6, max((len(n) for n in names), default=0) + 1,
            len(str(counts.max() if counts.size else 0)) + 1)
    head = f"{'client':>6} " + "".join(f"{n:>{w}}" for n in names)
    head += (" ..." if shown < c else "") + f"{'total':>8}{'#cls':>6}"
    lines = [f"partition {report['scheme']}: {report['num_clients']} clients, "
             f"{report['num_classes']} classes", head]
    for k, row in enumerate(counts):
        line = f"{k:>6} " + "".join(f"{v:>{w}}" for v in row[:shown])
        line += (" ..." if shown < c else "") + f"{row.sum():>8}{(row > 0).sum():>6}"
        lines.append(line)
    s = report["summary"]
    lines.append(f"sizes min/mean/max {s['min_size']}/{s['mean_size']:.1f}/{s['max_size']}; "
                 f"mean classes per client {s['mean_classes_per_client']:.2f}; "
                 f"mean TV to global mix {s['mean_tv_to_global']:.3f}")
    if "labeled_seed" in report:
        sd = report["labeled_seed"]
        lines.append(f"labeled seed ({sd['mode']}, fraction {sd['fraction']}): "
                     f"{sum(sd['labeled_sizes'])} labeled, {sum(sd['unlabeled_sizes'])} "
                     f"unlabeled")
    return "\n".join(lines)


MAX_CLIENT_TICKS = 40  # client labels that stay legible on the heatmap's y axis


def write_report(report: dict, out_dir) -> dict[str, pathlib.Path]:
    """Writes `partition.json` and `partition.png` (clients x classes heatmap)."""
    import matplotlib
    matplotlib.use("Agg")  # headless; no display on CI or accelerator hosts
    import matplotlib.pyplot as plt

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = out / "partition.json", out / "partition.png"
    jpath.write_text(json.dumps(report, indent=1))
    counts = np.array(report["class_counts"])
    k, c = counts.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * c, 24), min(1.5 + 0.35 * k, 24)))
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_xlabel("class")
    # Every client labelled up to MAX_CLIENT_TICKS; beyond, every step-th, and the axis says so.
    step = -(-k // MAX_CLIENT_TICKS)
    ax.set_yticks(range(0, k, step), [str(i) for i in range(0, k, step)],
                  fontsize=7 if k > 20 else None)
    ax.set_ylabel("client" if step == 1 else f"client (one label every {step})")
    ax.set_title(f"{report['scheme']}: {k} clients x {c} classes")
    if c <= 20:
        ax.set_xticks(range(c), [n[:10] for n in report["class_names"]], rotation=60,
                      ha="right", fontsize=7)
    if k * c <= 400:  # annotate only while the numbers stay legible
        thresh = counts.max() / 2 if counts.size else 0
        for i in range(k):
            for j in range(c):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                        color="black" if counts[i, j] > thresh else "white")
    fig.tight_layout()
    fig.savefig(ppath, dpi=100)
    plt.close(fig)
    return {"json": jpath, "png": ppath}
