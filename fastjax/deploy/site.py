"""One site of a cross-silo FAST run (a Flower SuperNode's ClientApp), without Flower.

Each handler takes the server's payload and this node's `NodeConfig`, and returns the
reply payload. They are the three phases of FAST on one client:

  preliminary  load this site's data, embed it with the frozen encoder (cached on disk),
               report sizes, feature sums (for the standardisation the one-process job
               computes over the whole train set) and, with labeled_source="shared",
               the seed embeddings and labels;
  refine       weak labels and uncertainty from the own (or the pooled) seed, the b_k
               most uncertain samples to the oracle (simulated, or a person through
               query.csv / annotations.csv in the site's work directory, see
               `fastjax.label.annotate`); the training set and the label reports
               (label_report.json, weak_label_confusion.png, weak_label_reliability.png)
               are stored in the work directory. It reads what the preliminary pass
               stored there (embeddings, labels, rows), not the data or the encoder;
  train        one local update (`fastjax.federate.local.make_local_update`, jitted, the
               same function the simulation vmaps) from the global variables, with the
               key the simulation gives this client (`engine.client_key`).

Where a site's data come from (node config): `data-folder=DIR` (a real site: an image
folder DIR/train/<class>/*.png|jpg; sample ids are positions in its sorted file list),
or the experiment's dataset under `data-root`, cut into `num-partitions` shards by
`fastjax.partition` with the experiment's seed, keeping shard `partition-id` (a
simulation across processes: the same shard the one-process job gives this client).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from fastjax import files
from fastjax.deploy import payload as pl

NODE_KEYS = ("partition-id", "num-partitions", "data-root", "data-folder", "workdir",
             "encoder-checkpoint")
TRAIN_SET = "train_set.npz"
STATE = "site_state.npz"  # the preliminary pass's results, read by the refinement pass


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """A SuperNode's own settings (`flower-supernode --node-config 'k=v ...'`)."""

    partition_id: int
    num_partitions: int
    data_root: str = ""
    data_folder: str = ""
    workdir: str = ""
    encoder_checkpoint: str = ""

    @classmethod
    def from_mapping(cls, m: Mapping) -> "NodeConfig":
        unknown = sorted(set(m) - set(NODE_KEYS))
        if unknown:
            raise ValueError(f"unknown node-config key(s) {unknown}; allowed: {', '.join(NODE_KEYS)}")
        for key in ("partition-id", "num-partitions"):
            if key not in m:
                raise ValueError(f"node-config needs {key}=INT (e.g. --node-config "
                                 "'partition-id=0 num-partitions=2 data-root=/data')")
        return cls(int(m["partition-id"]), int(m["num-partitions"]),
                   **{k.replace("-", "_"): str(m.get(k, "")) for k in NODE_KEYS[2:]})

    @property
    def site_dir(self) -> Path:
        d = self.workdir or os.path.join("~", ".cache", "fastjax", f"site-{self.partition_id}")
        return Path(os.path.expanduser(d))


@dataclasses.dataclass(frozen=True)
class Site:
    """This client's samples. labels: the dataset's labels of those samples; the seed's
    are read from them, the rest only by the simulated oracle and label reports."""

    client: int
    images: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    seed_rows: np.ndarray
    pool_rows: np.ndarray
    class_names: tuple[str, ...]
    dataset_size: int  # the whole train split's size (simulation); 0 for a site folder
    source: str


def load_site(config, node: NodeConfig) -> Site:
    from fastjax import data, partition
    from fastjax.methods import common

    k, p = node.partition_id, config.partition
    if node.num_partitions != p.num_clients:
        raise ValueError(f"node-config num-partitions={node.num_partitions} but the server's "
                         f"partition.num_clients={p.num_clients}; start one SuperNode per client "
                         "with matching num-partitions")
    if not 0 <= k < p.num_clients:
        raise ValueError(f"node-config partition-id={k} is outside [0, {p.num_clients})")
    if node.data_folder:
        folder = Path(os.path.expanduser(node.data_folder))
        if not folder.exists():
            raise FileNotFoundError(f"site {k}: data-folder {folder} does not exist; point "
                                    "node-config data-folder at DIR with DIR/train/<class>/*.png")
        train = data.load_dataset("imagefolder", "train", path=str(folder))
        own = np.arange(len(train), dtype=np.int64)
        part = partition.Partition("site", (own,))
        pools, _ = partition.split_seed(part, train.labels, config.seed_labels.fraction,
                                        mode=config.seed_labels.mode, seed=config.seed + k)
        pool, size, source = pools[0], 0, str(folder)
    else:
        if node.data_root:
            config = config.copy_and_resolve_references()
            config.data.root = node.data_root
        # The one-process job's data and partition stages (its partition report included).
        node.site_dir.mkdir(parents=True, exist_ok=True)
        train, test = common.load_data(config)
        part = common.make_partition(config, train, test, node.site_dir)
        pools, _ = partition.split_seed(part, train.labels, config.seed_labels.fraction,
                                        mode=config.seed_labels.mode, seed=config.seed)
        own, pool, size = part.train[k], pools[k], len(train)
        source = f"{config.data.name} shard {k}/{p.num_clients}"
    # Local rows keep the global order (shards, seeds and pools are sorted).
    return Site(k, train.images[own], train.labels[own], own,
                np.searchsorted(own, pool.labeled_idx), np.searchsorted(own, pool.unlabeled_idx),
                tuple(train.class_names), size, source)


def embed_site(site: Site, config, node: NodeConfig, *, progress: bool = False) -> np.ndarray:
    """The frozen encoder's embeddings of this site's images (jitted, cached on disk)."""
    import dataclasses as dc

    from fastjax import encode

    e = config.encoder
    checkpoint = node.encoder_checkpoint or e.checkpoint or None
    encoder = encode.load_encoder(e.name, checkpoint=checkpoint, variant=e.variant or None,
                                  dtype=e.dtype)
    if e.image_size:
        encoder = dc.replace(encoder, image_size=e.image_size)
    ids = hashlib.sha256(np.ascontiguousarray(site.sample_ids).tobytes()).hexdigest()[:16]
    cache_dir = e.cache_dir or str(node.site_dir / "embeddings")
    return encode.embed(encoder, site.images, batch_size=e.batch_size, dtype=e.dtype,
                        cache_dir=cache_dir, progress=progress,
                        cache_key={"site": site.source, "ids": ids, "n": len(site.sample_ids)})


def preliminary(config, node: NodeConfig) -> dict:
    """Phase 1 reply: sizes, class names, sums for the global standardisation, and the
    seeds' embeddings + labels when they are pooled (labeled_source="shared")."""
    site = load_site(config, node)
    reply = {"client": site.client, "n": len(site.sample_ids), "pool": len(site.pool_rows),
             "seeds": len(site.seed_rows), "dataset_size": site.dataset_size,
             "class_names": json.dumps(site.class_names)}
    z = embed_site(site, config, node)
    if config.model.name == "linear":
        z64 = z.astype(np.float64)
        reply.update(dim=z.shape[1], sum=z64.sum(0), sumsq=np.square(z64).sum(0), count=len(z))
    else:
        x = site.images.reshape(-1, site.images.shape[-1]).astype(np.float64) / 255.0
        reply.update(shape=json.dumps(list(site.images.shape[1:])), sum=x.sum(0),
                     sumsq=np.square(x).sum(0), count=len(x))
    if config.labeling.labeled_source == "shared":
        # int64 labels: the simulation's byte count (`shared_embedding_bytes`) assumes them.
        reply.update(seed_z=z[site.seed_rows], seed_y=site.labels[site.seed_rows].astype(np.int64))
    _save_state(site, z, config, node)
    return reply


def _save_state(site: Site, z: np.ndarray, config, node: NodeConfig) -> None:
    """What the refinement pass needs, under this run's signature: the embeddings and
    rows (and the images when the model trains on pixels)."""
    images = site.images if config.model.name != "linear" else np.zeros((0,), np.uint8)
    node.site_dir.mkdir(parents=True, exist_ok=True)
    fields = {f.name: getattr(site, f.name) for f in dataclasses.fields(Site)} | {"images": images}
    files.atomic_write(node.site_dir / STATE, lambda f: np.savez(
        f, z=z, signature=pl.signature(pl.config_to_json(config)),
        **{k: json.dumps(v) if isinstance(v, tuple) else v for k, v in fields.items()}))


def _load_state(config, node: NodeConfig) -> tuple[Site, np.ndarray]:
    """This site and its embeddings as the preliminary pass of this run left them."""
    signature = pl.signature(pl.config_to_json(config))
    path = node.site_dir / STATE
    if not path.exists():
        raise FileNotFoundError(f"site {node.partition_id}: no {path}; the preliminary pass must "
                                "run on this node first (restart the run)")
    with np.load(path) as d:
        if str(d["signature"]) != signature:
            raise ValueError(f"site {node.partition_id}: {path} belongs to another run; restart the run")
        kw = {f.name: d[f.name] for f in dataclasses.fields(Site)}
        z = d["z"]
    kw.update(client=int(kw["client"]), class_names=tuple(json.loads(str(kw["class_names"]))),
              dataset_size=int(kw["dataset_size"]), source=str(kw["source"]))
    site = Site(**kw)
    if site.images.ndim == 1:  # linear probing: images only for a person's contact sheets
        site = dataclasses.replace(site, images=None)
    return site, z


def _images(site: Site, rows, config, node: NodeConfig) -> np.ndarray:
    return (site.images if site.images is not None else load_site(config, node).images)[rows]


class _ByRow:
    """An oracle keyed by sample id, asked by this site's local rows."""

    def __init__(self, oracle, sample_ids: np.ndarray, eval_labels: np.ndarray):
        self._oracle, self._ids, self._eval = oracle, sample_ids, eval_labels

    @property
    def annotations(self) -> int:
        return self._oracle.annotations

    def query(self, rows):
        return self._oracle.query(self._ids[np.asarray(rows, np.int64)])

    def labels_for_evaluation(self, rows):
        return self._eval[np.asarray(rows, np.int64)].copy()


def _label(site: Site, z: np.ndarray, config, msg: dict, oracle):
    """label_clients on this site alone: its pool, budget b_k from the server, and its
    own seed or the pooled seeds (placed in client order, as the one-process job has them)."""
    from fastjax.label import label_clients
    from fastjax.methods.common import label_options
    from fastjax.partition import ClientPool

    lab, k = config.labeling, site.client
    own = ClientPool(k, site.seed_rows, site.labels[site.seed_rows], site.pool_rows)
    pools, emb, pos = [own], z, 0
    if lab.labeled_source == "shared":
        # Rows len(z) + ... of `emb` hold the pooled seeds, client after client.
        counts = np.asarray(msg["shared_counts"], np.int64)
        ends = np.cumsum(counts)
        pools = [own if j == k else ClientPool(j, len(z) + np.arange(ends[j] - counts[j], ends[j]),
                                               msg["shared_y"][ends[j] - counts[j]:ends[j]],
                                               np.zeros(0, np.int64))
                 for j in range(len(counts))]
        emb, pos = np.concatenate([z, msg["shared_z"]]), k
    budget = int(msg["budget"]) if lab.merge in ("human+weak", "human") else None
    result = label_clients(pools, emb, oracle, len(site.class_names), budget=budget,
                           **label_options(config))
    return result, pos


def refine(config, node: NodeConfig, msg: dict) -> dict:
    """Phase 2: the refinement pass; stores this site's training set. Replies
    status="ready" with label counts, or status="awaiting" after writing the query for
    a person (labeling.oracle="annotations" and no annotations.csv yet)."""
    from fastjax.label import annotate, client_training_sets
    from fastjax.label import quality as label_quality
    from fastjax.label import report as label_report
    from fastjax.partition import Oracle

    site, z = _load_state(config, node)
    n_shared = len(msg.get("shared_y", ()))
    hidden = np.concatenate([site.labels, np.zeros(n_shared, np.int64)])
    oracle = Oracle(hidden)
    if config.labeling.oracle == "annotations":
        probe, pos = _label(site, z, config, msg, annotate.QueryRecorder(hidden))
        rows = probe.queried_idx[pos]
        query = annotate.make_query([site.sample_ids[rows]], site.class_names, clients=[site.client])
        # The inner oracle is asked by sample id; label reports go through _ByRow.
        human = annotate.annotation_oracle(node.site_dir, query, _images(site, rows, config, node),
                                           np.zeros(0))
        if human is None:
            return {"status": "awaiting", "client": site.client, "queried": int(rows.size),
                    "query": str(node.site_dir / annotate.QUERY_CSV)}
        oracle = _ByRow(human, np.concatenate([site.sample_ids, -np.ones(n_shared, np.int64)]), hidden)
    result, pos = _label(site, z, config, msg, oracle)
    # The one-process job's label reports, of this site's labels, beside them.
    quality = label_quality.weak_label_quality(result, oracle)
    label_report.write_label_report(result, site.class_names, node.site_dir, quality)
    label_quality.plot_reliability(quality, str(node.site_dir / "weak_label_reliability.png"))
    # In the site's own sample order, as the one-process job lays out each client's data,
    # with the weak-label policy's loss weights and soft targets when it makes them.
    rows, y, w, soft = client_training_sets(result)[pos]
    extra = {name: np.asarray(a, np.float32) for name, a in (("w", w), ("soft", soft)) if a is not None}
    if config.model.name == "linear":
        x = ((z[rows] - msg["mean"]) / msg["std"]).astype(np.float32)
    else:
        x = site.images[rows]
    files.atomic_write(node.site_dir / TRAIN_SET, lambda f: np.savez(
        f, x=x, y=y.astype(np.int32), signature=msg["signature"],
        mean=np.asarray(msg["mean"], np.float32), std=np.asarray(msg["std"], np.float32), **extra))
    digest = {"annotations_digest": annotate.annotations_digest(node.site_dir) or ""} \
        if config.labeling.oracle == "annotations" else {}
    return {"status": "ready", "client": site.client, "annotations": int(result.annotations), **digest,
            "train_n": int(len(y)), "human_labels": int(result.is_human[pos].sum()),
            "weak_acc_before": float(result.weak_acc_before[pos]),
            "weak_acc_after": float(result.weak_acc_after[pos])}


def _enable_compile_cache(config, node: NodeConfig):
    """Flower starts a fresh process per message: keep compiled programs on disk, even
    the quick ones (the config's compilation_cache_dir, else the site's own directory;
    FASTJAX_COMPILATION_CACHE=off or compilation_cache_dir="off" turn it off)."""
    from fastjax import compile_cache

    compile_cache.enable(config.compilation_cache_dir or str(node.site_dir / "jax_cache"),
                         min_compile_seconds=0.0)


@functools.lru_cache(maxsize=4)
def _local_update(config_json: str, num_classes: int, train_set: str, stamp: tuple):
    """The jitted local update for one run's stored training set (its standardisation
    for pixels), built once per process: a site that serves message after message
    (`fastjax.deploy.supernode`) traces and compiles it once. `stamp` (the file's mtime
    and size) keeps a rewritten training set from reusing an old entry."""
    import jax
    import jax.numpy as jnp

    from fastjax import config as config_lib
    from fastjax.federate import engine, local, models

    config = pl.config_from_json(config_json)
    model = models.make_model(config.model.name, num_classes, config.model.conv_impl)
    if config.model.name == "linear":
        preprocess = lambda x: x  # noqa: E731  (standardised in the refinement pass)
    else:
        with np.load(train_set) as d:
            mean, std = d["mean"], d["std"]
        preprocess = lambda x: (x.astype(jnp.float32) / 255.0 - mean) / std  # noqa: E731
    return jax.jit(local.make_local_update(model, engine.local_spec(config_lib.train_spec(config)),
                                           preprocess))


def train(config, node: NodeConfig, msg: dict) -> dict:
    """Phase 3: one local update from the global variables (a round of FedAvg/FedProx/
    FedNova on this client), keyed as the simulation keys this client."""
    import jax
    import jax.numpy as jnp

    from fastjax import config as config_lib
    from fastjax.federate import engine, local

    path = node.site_dir / TRAIN_SET
    if not path.exists():
        raise FileNotFoundError(f"site {node.partition_id}: no training set at {path}; the "
                                "refinement pass must run on this node first (restart the run)")
    d = np.load(path)
    if str(d["signature"]) != msg["signature"]:
        raise ValueError(f"site {node.partition_id}: {path} belongs to another run "
                         f"({d['signature']} != {msg['signature']}); restart the run")
    spec = config_lib.train_spec(config)
    stat = path.stat()
    update = _local_update(msg["config"], int(msg["num_classes"]), str(path),
                           (stat.st_mtime_ns, stat.st_size))
    x, y = d["x"], d["y"]
    n = len(y)
    if "soft" in d.files:  # soft targets replace the hard labels as the training targets
        y = d["soft"]
    if "w" in d.files:  # per-sample loss weights (labeling.filter="weight")
        y = {"y": y, "w": d["w"]}
    steps = int(local.steps_per_client([n], spec.batch_size, spec.local_epochs, spec.local_steps)[0])
    key = engine.client_key(engine.round_key(spec.seed, int(msg["round"])), node.partition_id)
    variables = pl.unflatten(msg, "vars")
    new, stats = update(variables, x, y, jnp.int32(n), jnp.int32(steps), float(msg["lr"]), key)
    out = pl.flatten(jax.device_get(new), "vars")
    out.update(client=node.partition_id, n=n, steps=steps, loss=float(stats["loss"]))
    return out


HANDLERS = {"preliminary": preliminary, "refine": refine, "train": train}


def handle(phase: str, msg: dict, node: NodeConfig) -> dict:
    """Dispatch one server message to this site's handler."""
    if phase not in HANDLERS:
        raise ValueError(f"unknown phase {phase!r}; allowed: {sorted(HANDLERS)}")
    config = pl.config_from_json(msg["config"])
    _enable_compile_cache(config, node)  # every phase: the encoder, kNN and local update compiles
    if phase == "preliminary":
        return HANDLERS[phase](config, node)
    return HANDLERS[phase](config, node, msg)
