"""FAST's one-shot job: dataset -> partition -> encode -> label (preliminary pass,
refinement pass) -> federate once -> evaluate.

The work directory receives partition.json/png, label_report.json +
weak_label_confusion.png + weak_label_reliability.png, metrics.jsonl, accuracy.png,
checkpoints/ and summary.json (config.json and the lock belong to the caller's `RunDir`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastjax import config as config_lib
from fastjax.methods import common
from fastjax.methods.common import log


def _label(config, pools, z_train, oracle, num_classes, budget):
    from fastjax import label

    return label.label_clients(pools, z_train, oracle, num_classes, budget=budget,
                               **common.label_options(config))


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


def run(config, workdir, *, progress: bool = True, export_query: bool = False, fit_fn=None) -> dict:
    """Run the whole job in `workdir`; returns (and writes) the summary.

    With labeling.oracle="annotations", the job stops after the preliminary pass (and
    returns status "awaiting_annotations") until workdir/annotations.csv labels every
    queried sample; `export_query` (python -m fastjax.label export) always stops there,
    writing the query afresh. fit_fn: trains in place of `engine.fit` (a sweep's
    `experiments.Rendezvous.fit`)."""
    from fastjax import label, partition
    from fastjax.federate import engine, models
    from fastjax.label import quality as label_quality
    from fastjax.label import report as label_report

    workdir = Path(workdir)
    t_start = time.perf_counter()
    train, test = common.load_data(config)
    c = train.num_classes
    part = common.make_partition(config, train, test, workdir)
    # Per-client seeds, or FAST-official's one central seed drawn before partitioning.
    pools, oracle = partition.labeled_pools(part, train.labels, config.seed_labels.fraction,
                                            where=config.labeling.where, mode=config.seed_labels.mode,
                                            seed=config.seed, num_classes=c)

    # 3. encode (frozen foundation model; cached on disk)
    t0 = time.perf_counter()
    encoder = common.load_encoder(config)
    z_train = common.embed_split(config, encoder, train, "train", progress)
    z_test = common.embed_split(config, encoder, test, "test", progress) if config.model.name == "linear" else None
    t_encode = time.perf_counter() - t0

    # 4. label: preliminary pass (weak labels, uncertainty) and refinement (oracle)
    t0 = time.perf_counter()
    lab = config.labeling
    budget = label.budget_count(lab.budget, lab.budget_of, len(train),
                                sum(len(q.unlabeled_idx) for q in pools))
    if lab.oracle == "annotations" or export_query:
        oracle = _human_oracle(config, workdir, pools, z_train, train, budget, export_query)
        if oracle is None:
            return _awaiting(workdir, budget)
    result = _label(config, pools, z_train, oracle, c, budget)
    quality = label_quality.weak_label_quality(result, oracle)
    label_report.write_label_report(result, train.class_names, workdir, quality)
    label_quality.plot_reliability(quality, str(workdir / "weak_label_reliability.png"))
    # Central labeling: each client keeps its own samples and takes their central labels.
    sets = label.client_training_sets(result, part.train if lab.where == "central" else None)
    client_idx, client_y = [s_[0] for s_ in sets], [s_[1] for s_ in sets]
    client_w = [s_[2] for s_ in sets] if sets[0][2] is not None else None
    client_targets = [s_[3] for s_ in sets] if sets[0][3] is not None else client_y
    t_label = time.perf_counter() - t0
    log(f"labels: {result.annotations} oracle annotations (budget {budget}), weak-label accuracy "
        f"{result.weak_acc_before_overall:.4f} -> {result.weak_acc_after_overall:.4f} after refinement")

    # 5. federate
    model = models.make_model(config.model.name, c, config.model.conv_impl)
    inputs = common.model_inputs(config, train, test, z_train, z_test)
    clients = engine.stack_clients(client_idx, client_targets, source=inputs.train_x,
                                   ws=client_w)
    variables = models.init_variables(model, inputs.shape, config.seed)
    fit_fn = fit_fn or engine.fit
    fit = fit_fn(model, variables, clients, inputs.test_x, test.labels, config_lib.train_spec(config),
                 inputs.preprocess, workdir=workdir, client_test=part.test,
                 extra_comm_bytes=result.shared_embedding_bytes, progress=progress, log=log)

    summary = {
        "method": "fast",
        **common.accuracy_summary(fit.history, config.train.eval_every, config.train.rounds),
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
                    "merge": lab.merge, "strategy": lab.strategy, "budget_of": lab.budget_of},
        "weak_label_quality": label_quality.summary(quality),
        "weak_label_policy": result.options["policy"],
        "verified": int(sum(v.size for v in result.verified_idx)),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(common.summary_line(summary, workdir))
    return summary
