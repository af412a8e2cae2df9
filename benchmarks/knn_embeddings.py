"""kNN on CIFAR-10: EfficientNet-Lite0 embeddings vs raw pixels, 1% labelled train.

A sanity check of the encode stage (FAST's weak labels are kNN votes in embedding
space): with a class-balanced 1% of train as the labelled set, cosine kNN (k=10) on
frozen-encoder embeddings should beat kNN on raw pixels by a wide margin.

    .venv/bin/python benchmarks/knn_embeddings.py --data-root $FASTJAX_DATA_ROOT   # 1% train + full test
    .venv/bin/python benchmarks/knn_embeddings.py --embed-all-train                # also time all 50k

CIFAR-10 is read by `fastjax.data` from --data-root (default: $FASTJAX_DATA_ROOT) in any
of its release formats. About 10 minutes on a 2-core CPU: 10,500 images at 224 px, measured
at 14-23 images/s (benchmarks/RESULTS.md); a progress bar shows the time left.

By default only the labelled 1% of train (the kNN's whole reference set, 500 images) and
the test set are embedded: the accuracy is then exact, and the run fits a 2-core CPU.
``--n-test`` takes a class-balanced test subset instead of all 10,000.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_cifar10(data_root: str | None):
    """{split: (images uint8 (N,32,32,3), labels)} by fastjax.data, and where they came from."""
    from fastjax.data import load_dataset

    out = {}
    for split in ("train", "test"):
        ds = load_dataset("cifar10", split, data_root=data_root or None)
        out[split] = (ds.images, ds.labels)
    return out, "fastjax.data.load_dataset"


def balanced_subset(labels, per_class, rng):
    idx = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
           for c in range(labels.max() + 1)]
    return np.sort(np.concatenate(idx))


def knn_predict(train, train_y, test, k, num_classes, chunk=2048):
    """Cosine kNN, majority vote; ties broken by summed similarity."""
    def unit(a):
        a = a.astype(np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    train, test = unit(train), unit(test)
    preds = []
    for s in range(0, len(test), chunk):
        sim = test[s:s + chunk] @ train.T
        nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nn_sim = np.take_along_axis(sim, nn_idx, 1)
        votes = np.zeros((len(sim), num_classes))
        np.add.at(votes, (np.arange(len(sim))[:, None], train_y[nn_idx]), 1.0)
        simsum = np.zeros_like(votes)
        np.add.at(simsum, (np.arange(len(sim))[:, None], train_y[nn_idx]), nn_sim)
        preds.append(np.argmax(votes + 1e-3 * simsum, axis=1))
    return np.concatenate(preds)


def main(argv=None):
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default="", help="CIFAR-10's files (empty: $FASTJAX_DATA_ROOT)")
    p.add_argument("--label-fraction", type=float, default=0.01)
    p.add_argument("--n-test", type=int, default=0, help="class-balanced test subset; 0 = all")
    p.add_argument("--k", type=int, nargs="+", default=[10, 1, 20])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--embed-all-train", action="store_true")
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/knn_embeddings.json")
    args = p.parse_args(argv)
    missing = common.dataset_problem("cifar10", args.data_root)
    if missing:
        p.error(missing)
    print(common.device_line(), flush=True)

    import jax

    from fastjax.encode import embed, load_encoder

    t0 = time.time()
    data, source = load_cifar10(args.data_root)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    print(f"CIFAR-10 via {source}: train {xtr.shape}, test {xte.shape} ({time.time() - t0:.0f} s)")
    rng = np.random.default_rng(args.seed)
    per_class = int(round(args.label_fraction * len(ytr) / 10))
    lab = balanced_subset(ytr, per_class, rng)
    te = np.arange(len(yte)) if args.n_test <= 0 else balanced_subset(yte, args.n_test // 10, rng)

    enc = load_encoder("efficientnet_lite0", dtype=args.dtype)
    print(f"encoder {enc.name} ({enc.note}), dim {enc.dim}, {enc.image_size}px, "
          f"digest {enc.digest}, device {jax.devices()[0]}")
    _, probe = embed(enc, xtr[:512], batch_size=args.batch_size, return_stats=True)
    print(f"throughput probe (512 images): {probe['images_per_sec']:.1f} img/s "
          f"(first batch incl. compile {probe['first_batch_seconds']:.1f} s)")

    kw = dict(batch_size=args.batch_size, cache_dir=args.cache_dir, return_stats=True)
    split_tag = f"train[labelled {args.label_fraction:g} seed {args.seed}]"
    if args.embed_all_train:
        ztr_all, st_tr = embed(enc, xtr, cache_key={"dataset": "cifar10", "split": "train"}, **kw)
        ztr = ztr_all[lab]
    else:
        ztr, st_tr = embed(enc, xtr[lab], cache_key={"dataset": "cifar10", "split": split_tag}, **kw)
    zte, st_te = embed(enc, xte[te], cache_key={"dataset": "cifar10",
                                                 "split": f"test[{len(te)} seed {args.seed}]"}, **kw)

    results = {"k": {}}
    for k in args.k:
        acc_e = float(np.mean(knn_predict(ztr, ytr[lab], zte, k, 10) == yte[te]))
        acc_p = float(np.mean(knn_predict(xtr[lab].reshape(len(lab), -1), ytr[lab],
                                          xte[te].reshape(len(te), -1), k, 10) == yte[te]))
        results["k"][str(k)] = {"efficientnet_lite0": acc_e, "raw_pixels": acc_p}
        print(f"kNN k={k:>2} cosine | EfficientNet-Lite0 {acc_e:.4f} | raw pixels {acc_p:.4f}")

    rates = [s["images_per_sec"] for s in (probe, st_tr, st_te) if s.get("images_per_sec")]
    report = {
        "benchmark": "knn_embeddings", "date": datetime.now(timezone.utc).isoformat(),
        "device": str(jax.devices()[0]), "platform": platform.platform(),
        "python": sys.version.split()[0], "jax": jax.__version__, "data_source": source,
        "encoder": {"name": enc.name, "digest": enc.digest, "dim": enc.dim,
                    "image_size": enc.image_size, "dtype": args.dtype, "note": enc.note},
        "n_labelled": int(len(lab)), "labelled_per_class": per_class, "n_test": int(len(te)),
        "embedded_all_train": args.embed_all_train, "seed": args.seed,
        "images_per_sec": {"probe_512": probe["images_per_sec"], "train": st_tr["images_per_sec"],
                           "test": st_te["images_per_sec"],
                           "cached": [s["cached"] for s in (st_tr, st_te)]},
        "best_images_per_sec": max(rates) if rates else None,
        "accuracy": results["k"], "wall_seconds": time.time() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
