"""Stages both methods share: data, partition, the clients' training inputs, evaluation
summary. Each function does one stage and returns plain values."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np


def log(msg: str):
    print(f"[fastjax] {msg}", file=sys.stderr, flush=True)


def subset(ds, limit: int, seed: int):
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


def channel_stats(images: np.ndarray):
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-3).astype(np.float32)


def load_data(config):
    """1. The dataset's train and test splits (seeded subsets when limits are set)."""
    from fastjax import data

    train, test = data.load_train_test(config.data.name, config.data.root or None)
    train = subset(train, config.data.train_limit, config.seed)
    test = subset(test, config.data.test_limit, config.seed + 1)
    log(f"{config.data.name}: {len(train)} train / {len(test)} test, {train.num_classes} classes, "
        f"{train.images.shape[1:]} images")
    return train, test


def make_partition(config, train, test, workdir):
    """2. Clients' shares of the data (report written to the work directory)."""
    from fastjax import partition

    p = config.partition
    part = partition.make_partition(p.scheme, train.labels, p.num_clients, config.seed, alpha=p.alpha,
                                    classes_per_client=p.classes_per_client, test_labels=test.labels,
                                    num_classes=train.num_classes, rounding=p.rounding)
    report = partition.partition_report(part, train.labels, train.num_classes, train.class_names,
                                        test_labels=test.labels if part.test is not None else None)
    partition.write_report(report, workdir)
    return part


def load_encoder(config):
    from fastjax import encode

    e = config.encoder
    encoder = encode.load_encoder(e.name, checkpoint=e.checkpoint or None, variant=e.variant or None,
                                  dtype=e.dtype)
    if e.image_size:
        encoder = dataclasses.replace(encoder, image_size=e.image_size)
    return encoder


def embed_split(config, encoder, ds, split: str, progress: bool):
    """3. Frozen-encoder embeddings of one split (cached on disk)."""
    from fastjax import encode

    e = config.encoder
    cache_dir = e.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "fastjax", "embeddings")
    key = {"dataset": config.data.name, "split": split, "limit": len(ds),
           "subset_seed": config.seed if split == "train" else config.seed + 1}
    z, stats = encode.embed(encoder, ds.images, batch_size=e.batch_size, dtype=e.dtype,
                            cache_dir=cache_dir, cache_key=key, progress=progress, return_stats=True)
    log(f"embedded {split}: {z.shape} "
        + ("(cache)" if stats.get("cached") else f"at {stats['images_per_sec']:.0f} images/s"))
    return z


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the federated model reads: per-sample inputs of the whole train split (pixels
    or standardised embeddings), the test inputs, the in-jit preprocessing and the shape."""

    train_x: np.ndarray
    test_x: np.ndarray
    preprocess: object
    shape: tuple


def model_inputs(config, train, test, z_train=None, z_test=None) -> ModelInputs:
    """Pixels for the CNNs; for linear probing, embeddings standardised by the statistics
    of the train embeddings (one learning rate then suits encoders whose scales differ)."""
    import jax.numpy as jnp

    if config.model.name == "linear":
        mu, sd = z_train.mean(0), np.maximum(z_train.std(0), 1e-6)
        return ModelInputs(((z_train - mu) / sd).astype(np.float32), ((z_test - mu) / sd).astype(np.float32),
                           lambda x: x, tuple(z_train.shape[1:]))
    mean, std = channel_stats(train.images)
    preprocess = lambda x: (x.astype(jnp.float32) / 255.0 - mean) / std  # noqa: E731
    return ModelInputs(train.images, test.images, preprocess, tuple(train.images.shape[1:]))


def label_options(config) -> dict:
    """`label_clients`' options from the config, besides the pools, embeddings, oracle,
    class count and budget: the one-process job and every site of a deployment label
    by these same options."""
    from fastjax import config as config_lib

    lab = config.labeling
    return dict(k=lab.k, measure=lab.measure, score_source=lab.score_source, normalize=lab.normalize,
                class_aware=lab.class_aware, strategy=lab.strategy, merge=lab.merge,
                tie_break=lab.tie_break, seed=config.seed,
                # Central labeling: one pool whose seed is everyone's (no server round trip).
                labeled_source="own" if lab.where == "central" else lab.labeled_source,
                policy=config_lib.weak_label_policy(config))


def accuracy_summary(history: list[dict], eval_every: int = 0, last_round: int = 0) -> dict:
    """Final, best and mean-of-last-5 test accuracy over a run's evaluated rounds.

    With eval_every (and last_round), only the rounds the schedule evaluates (every
    eval_every-th and the last) count: a run whose train.rounds was raised keeps the
    evaluation its old last round got, which one run straight through never makes."""
    accs = [h["accuracy"] for h in history if "accuracy" in h
            and (not eval_every or h["round"] % eval_every == 0 or h["round"] == last_round)]
    return {"final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "last5_accuracy": float(np.mean(accs[-5:])) if accs else None}


def summary_line(summary: dict, workdir) -> str:
    """A run's result in one line (a value the run could not compute shows as n/a)."""
    def num(key, fmt):
        v = summary.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "n/a"

    return (f"final accuracy {num('final_accuracy', '.4f')} (best {num('best_accuracy', '.4f')}, "
            f"mean of the last 5 evaluations {num('last5_accuracy', '.4f')}), "
            f"{summary.get('annotations', 'n/a')} annotations, {num('comm_mib', '.1f')} MiB; "
            f"summary: {os.path.join(workdir, 'summary.json')}")
