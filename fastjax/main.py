"""The FAST one-shot job: dataset -> partition -> encode -> label -> federate -> evaluate.

    python -m fastjax.main --config configs/cifar10.py --workdir runs/cifar10 \
        [--config.train.rounds=5 ...]

The work directory receives config.json (the resolved config), partition.json/png,
label_report.json + weak_label_confusion.png, metrics.jsonl, accuracy.png,
checkpoints/ and summary.json. Re-running the same command resumes from the last
checkpoint; embeddings come from the on-disk cache when they were computed before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastjax import config as config_lib


def _subset(ds, limit: int, seed: int):
    """A seeded, class-stratified subset of `limit` samples (all when limit is 0)."""
    if not limit or limit >= len(ds):
        return ds
    rng = np.random.default_rng([seed, limit])
    order = rng.permutation(len(ds))
    # Round-robin over classes keeps the class mix of the full set.
    by_class = [order[ds.labels[order] == c] for c in range(ds.num_classes)]
    take, i = [], 0
    while len(take) < limit:
        for ix in by_class:
            if i < len(ix) and len(take) < limit:
                take.append(ix[i])
        i += 1
    take = np.sort(np.asarray(take))
    return dataclasses.replace(ds, images=ds.images[take], labels=ds.labels[take])


def _channel_stats(images: np.ndarray):
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-3).astype(np.float32)


def _log(msg: str):
    print(f"[fastjax] {msg}", file=sys.stderr, flush=True)


def run(config, workdir, *, progress: bool = True) -> dict:
    """Run the whole job; returns (and writes) the summary."""
    config_lib.validate(config)
    import jax.numpy as jnp

    from fastjax import data, encode, label, partition
    from fastjax.federate import engine, models

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    t_start = time.perf_counter()

    # 1. dataset
    root = config.data.root or None
    train, test = data.load_train_test(config.data.name, root)
    train = _subset(train, config.data.train_limit, config.seed)
    test = _subset(test, config.data.test_limit, config.seed + 1)
    c = train.num_classes
    _log(f"{config.data.name}: {len(train)} train / {len(test)} test, {c} classes, "
         f"{train.images.shape[1:]} images")

    # 2. partition and the initial labeled seed
    p = config.partition
    part = partition.make_partition(p.scheme, train.labels, p.num_clients, config.seed, alpha=p.alpha,
                                    classes_per_client=p.classes_per_client, test_labels=test.labels,
                                    num_classes=c)
    report = partition.partition_report(part, train.labels, c, train.class_names,
                                        test_labels=test.labels if part.test is not None else None)
    partition.write_report(report, workdir)
    pools, oracle = partition.split_seed(part, train.labels, config.seed_labels.fraction,
                                         mode=config.seed_labels.mode, seed=config.seed)

    # 3. encode (frozen foundation model; cached on disk)
    t0 = time.perf_counter()
    e = config.encoder
    encoder = encode.load_encoder(e.name, checkpoint=e.checkpoint or None, variant=e.variant or None,
                                  dtype=e.dtype)
    if e.image_size:
        encoder = dataclasses.replace(encoder, image_size=e.image_size)
    cache_dir = e.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "fastjax", "embeddings")

    def embed(ds, split):
        key = {"dataset": config.data.name, "split": split, "limit": len(ds),
               "subset_seed": config.seed if split == "train" else config.seed + 1}
        z, stats = encode.embed(encoder, ds.images, batch_size=e.batch_size, dtype=e.dtype,
                                cache_dir=cache_dir, cache_key=key, progress=progress, return_stats=True)
        _log(f"embedded {split}: {z.shape} "
             + ("(cache)" if stats.get("cached") else f"at {stats['images_per_sec']:.0f} images/s"))
        return z

    z_train = embed(train, "train")
    z_test = embed(test, "test") if config.model.name == "linear" else None
    t_encode = time.perf_counter() - t0

    # 4. label: preliminary pass (weak labels, uncertainty) and refinement (oracle)
    t0 = time.perf_counter()
    lab = config.labeling
    budget = int(round(lab.budget * len(train)))
    label_pools = pools
    if lab.where == "central":  # FAST-official: one pool, one seed, before partitioning
        label_pools = (partition.ClientPool(
            0, np.concatenate([q.labeled_idx for q in pools]), np.concatenate([q.labeled_y for q in pools]),
            np.concatenate([q.unlabeled_idx for q in pools])),)
    result = label.label_clients(
        label_pools, z_train, oracle, c, budget=budget, k=lab.k, measure=lab.measure,
        score_source=lab.score_source, normalize=lab.normalize, class_aware=lab.class_aware,
        strategy=lab.strategy, labeled_source=lab.labeled_source, merge=lab.merge,
        tie_break=lab.tie_break, seed=config.seed)
    from fastjax.label import report as label_report

    label_report.write_label_report(result, train.class_names, workdir)
    # Per-client training sets (central labeling: each client keeps its own samples).
    idx_all = np.concatenate(result.train_idx)
    y_all = np.concatenate(result.train_y)
    label_of = dict(zip(idx_all.tolist(), y_all.tolist()))
    client_idx = [np.array([i for i in ix.tolist() if i in label_of], np.int64) for ix in part.train]
    client_y = [np.array([label_of[i] for i in ix.tolist()], np.int64) for ix in client_idx]
    t_label = time.perf_counter() - t0
    _log(f"labels: {result.annotations} oracle annotations (budget {budget}), weak-label accuracy "
         f"{result.weak_acc_before_overall:.4f} -> {result.weak_acc_after_overall:.4f} after refinement")

    # 5. federate
    model = models.make_model(config.model.name, c, config.model.conv_impl)
    if config.model.name == "linear":
        # Standardised features (statistics of the unlabeled train embeddings) keep one
        # learning rate good across encoders whose embedding scales differ widely.
        mu, sd = z_train.mean(0), np.maximum(z_train.std(0), 1e-6)
        xs = [((z_train[ix] - mu) / sd).astype(np.float32) for ix in client_idx]
        test_x, preprocess = ((z_test - mu) / sd).astype(np.float32), (lambda x: x)
        shape = z_train.shape[1:]
    else:
        xs = [train.images[ix] for ix in client_idx]
        test_x = test.images
        mean, std = _channel_stats(train.images)
        preprocess = lambda x: (x.astype(jnp.float32) / 255.0 - mean) / std  # noqa: E731
        shape = train.images.shape[1:]
    clients = engine.stack_clients(xs, client_y)
    variables = models.init_variables(model, shape, config.seed)
    spec = config_lib.train_spec(config)
    fit = engine.fit(model, variables, clients, test_x, test.labels, spec, preprocess, workdir=workdir,
                     client_test=part.test, extra_comm_bytes=result.shared_embedding_bytes,
                     progress=progress, log=_log)

    accs = [h["accuracy"] for h in fit.history if "accuracy" in h]
    summary = {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "annotations": int(result.annotations),
        "seed_labels": int(result.seed_labels),
        "labeling_budget": budget,
        "weak_label_accuracy": float(result.weak_acc_after_overall),
        "weak_label_accuracy_before_refinement": float(result.weak_acc_before_overall),
        "comm_mib": fit.comm_mib,
        "shared_embedding_mib": result.shared_embedding_bytes / engine.MIB,
        "wall_seconds": {"encode": t_encode, "label": t_label, "train": fit.train_seconds,
                         "total": time.perf_counter() - t_start},
        "rounds": len(fit.history),
        "padding_waste": fit.padding_waste,
        "train_samples": int(sum(len(y) for y in client_y)),
        "encoder": {"name": encoder.name, "variant": encoder.variant, "digest": encoder.digest,
                    "image_size": encoder.image_size, "note": encoder.note},
        "variant": {"score_source": lab.score_source, "normalize": lab.normalize, "measure": lab.measure,
                    "class_aware": lab.class_aware, "where": lab.where, "labeled_source": lab.labeled_source,
                    "merge": lab.merge, "strategy": lab.strategy},
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log(f"final accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}), "
         f"{summary['annotations']} annotations, {summary['comm_mib']:.1f} MiB; summary: "
         f"{workdir / 'summary.json'}")
    return summary


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/<experiment>.py", lock_config=True)
    flags.DEFINE_string("workdir", None, "work directory (default: runs/<config name>)")
    flags.DEFINE_bool("progress", True, "show progress bars")

    def _main(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        cfg = flags.FLAGS.config
        if cfg is None:
            raise app.UsageError("--config is required, e.g. --config configs/demo.py")
        name = Path(flags.FLAGS["config"].config_filename).stem
        workdir = flags.FLAGS.workdir or os.path.join("runs", name)
        from fastjax import compile_cache

        compile_cache.enable(cfg.compilation_cache_dir)
        try:
            run(cfg, workdir, progress=flags.FLAGS.progress)
        except (ValueError, FileNotFoundError) as e:
            print(f"fastjax: error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
