"""FAST's one-shot job: dataset -> partition -> encode -> label (preliminary pass,
refinement pass) -> federate once -> evaluate.

The work directory receives partition.json/png, label_report.json +
weak_label_confusion.png, metrics.jsonl, accuracy.png, checkpoints/ and summary.json
(config.json and the lock belong to the caller's `RunDir`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fastjax import config as config_lib
from fastjax.methods import common
from fastjax.methods.common import log


def _label(config, pools, z_train, oracle, num_classes, budget):
    from fastjax import label

    lab = config.labeling
    return label.label_clients(
        pools, z_train, oracle, num_classes, budget=budget, k=lab.k, measure=lab.measure,
        score_source=lab.score_source, normalize=lab.normalize, class_aware=lab.class_aware,
        strategy=lab.strategy, labeled_source=lab.labeled_source, merge=lab.merge,
        tie_break=lab.tie_break, seed=config.seed)


def _human_oracle(config, workdir, pools, z_train, train, budget, export: bool):
    """labeling.oracle="annotations": the person's labels from workdir/annotations.csv,
    or None after writing the query they need (query.csv, contact sheets)."""
    from fastjax.label import annotate

    # Which samples are queried does not depend on the answers: decide it first.
    probe = _label(config, pools, z_train, annotate.QueryRecorder(train.labels), train.num_classes, budget)
    query = annotate.make_query(probe.queried_idx, train.class_names, clients=[p.client for p in pools])
    images = train.images[query.sample_id]
    if export:
        annotate.refresh_query(workdir, query, images, rewrite=True)
        return None
    return annotate.annotation_oracle(workdir, query, images, train.labels)


def _awaiting(workdir: Path, budget: int) -> dict:
    from fastjax.label import annotate

    query = workdir / annotate.QUERY_CSV
    steps = [f"label the `label` column of {query} (a class name or id; contact sheets: "
             f"{workdir / annotate.SHEET.format(0)}, ...)",
             f"python -m fastjax.label import {query} --workdir {workdir}",
             "rerun this job with the same config: it trains with the human labels"]
    summary = {"method": "fast", "status": "awaiting_annotations", "query": str(query),
               "labeling_budget": budget, "next": steps}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"stopped after the preliminary pass: {budget} samples await a person. Next:\n  "
        + "\n  ".join(f"{i}. {s}" for i, s in enumerate(steps, 1)))
    return summary


def run(config, workdir, *, progress: bool = True, export_query: bool = False) -> dict:
    """Run the whole job in `workdir`; returns (and writes) the summary.

    With labeling.oracle="annotations", the job stops after the preliminary pass (and
    returns status "awaiting_annotations") until workdir/annotations.csv labels every
    queried sample; `export_query` (python -m fastjax.label export) always stops there,
    writing the query afresh."""
    from fastjax import partition
    from fastjax.federate import engine, models
    from fastjax.label import report as label_report

    workdir = Path(workdir)
    t_start = time.perf_counter()
    train, test = common.load_data(config)
    c = train.num_classes
    part = common.make_partition(config, train, test, workdir)
    pools, oracle = partition.split_seed(part, train.labels, config.seed_labels.fraction,
                                         mode=config.seed_labels.mode, seed=config.seed)

    # 3. encode (frozen foundation model; cached on disk)
    t0 = time.perf_counter()
    encoder = common.load_encoder(config)
    z_train = common.embed_split(config, encoder, train, "train", progress)
    z_test = common.embed_split(config, encoder, test, "test", progress) if config.model.name == "linear" else None
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
    if lab.oracle == "annotations" or export_query:
        oracle = _human_oracle(config, workdir, label_pools, z_train, train, budget, export_query)
        if oracle is None:
            return _awaiting(workdir, budget)
    result = _label(config, label_pools, z_train, oracle, c, budget)
    label_report.write_label_report(result, train.class_names, workdir)
    # Per-client training sets (central labeling: each client keeps its own samples).
    idx_all = np.concatenate(result.train_idx)
    y_all = np.concatenate(result.train_y)
    label_of = dict(zip(idx_all.tolist(), y_all.tolist()))
    client_idx = [np.array([i for i in ix.tolist() if i in label_of], np.int64) for ix in part.train]
    client_y = [np.array([label_of[i] for i in ix.tolist()], np.int64) for ix in client_idx]
    t_label = time.perf_counter() - t0
    log(f"labels: {result.annotations} oracle annotations (budget {budget}), weak-label accuracy "
        f"{result.weak_acc_before_overall:.4f} -> {result.weak_acc_after_overall:.4f} after refinement")

    # 5. federate
    model = models.make_model(config.model.name, c, config.model.conv_impl)
    inputs = common.model_inputs(config, train, test, z_train, z_test)
    clients = engine.stack_clients([inputs.train_x[ix] for ix in client_idx], client_y)
    variables = models.init_variables(model, inputs.shape, config.seed)
    fit = engine.fit(model, variables, clients, inputs.test_x, test.labels, config_lib.train_spec(config),
                     inputs.preprocess, workdir=workdir, client_test=part.test,
                     extra_comm_bytes=result.shared_embedding_bytes, progress=progress, log=log)

    summary = {
        "method": "fast",
        **common.accuracy_summary(fit.history),
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
    log(f"final accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}), "
        f"{summary['annotations']} annotations, {summary['comm_mib']:.1f} MiB; summary: "
        f"{workdir / 'summary.json'}")
    return summary
