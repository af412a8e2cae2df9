"""The server side of a cross-silo FAST run, written against a small transport.

`run_server(config, workdir, transport)` drives FAST's three phases over sites that
answer messages (`fastjax.deploy.site.handle`): Flower's Grid in `server_app.py`, or
`LocalTransport` (the sites called in this process: tests, debugging). The server
holds no training data: it combines what the sites report (pool sizes -> the budget
split of Eq. 5, feature sums -> the standardisation, seeds -> the pooled labeled set),
then runs the rounds of `fastjax.federate.engine.fit` with remote local updates and the
same pure aggregators, resuming by the same rules (`fastjax.federate.resume`),
evaluating the global model on the test split it can load (as Flower's `evaluate_fn`
does) and checkpointing every `train.checkpoint_every` rounds, at the end, and before it
stops on a failure. metrics.jsonl has the simulation's fields (plus the round's
`payload_bytes` and the sites it left out), accuracy.png its plot.

Failures: the preliminary and refinement passes need every site (the budget split and
the pooled seeds depend on all of them). In a round, a site that errs or does not
answer within `timeout` seconds either stops the run (on_failure="fail": the global
variables of the last completed round are checkpointed, and the error names the site
and how to resume) or is left out of that round's aggregate (on_failure="aggregate",
weights renormalised over the sites that answered; metrics.jsonl and summary.json
record who dropped and when).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from fastjax import files
from fastjax.deploy import payload as pl

ON_FAILURE = ("fail", "aggregate")


class Transport(Protocol):
    def first_contact(self, phase: str, msg: dict, timeout: float) -> dict[int, dict]:
        """Send msg to every connected site; {client id: reply}; raises on any failure."""

    def send(self, phase: str, msgs: dict[int, dict], timeout: float
             ) -> tuple[dict[int, dict], dict[int, str]]:
        """Send msgs[k] to site k; (replies, failures as one-line reasons)."""


class LocalTransport:
    """Sites as function calls in this process (same payloads, counted the same)."""

    def __init__(self, nodes):
        from fastjax.deploy import site

        self._site = site
        self._nodes = {n.partition_id: n for n in nodes}
        self.dropped: dict[int, set[int]] = {}  # round -> clients that "fail" (tests)

    def first_contact(self, phase, msg, timeout):
        return {k: self._site.handle(phase, msg, n) for k, n in sorted(self._nodes.items())}

    def send(self, phase, msgs, timeout):
        replies, failures = {}, {}
        for k, m in msgs.items():
            if k in self.dropped.get(int(m.get("round", -1)), ()):
                failures[k] = f"site {k} did not answer within {timeout:.0f} s"
                continue
            try:
                replies[k] = self._site.handle(phase, m, self._nodes[k])
            except Exception as e:  # noqa: BLE001  (a site's error is reported, not raised)
                failures[k] = f"{type(e).__name__}: {e}"
        return replies, failures


def check_config(config, on_failure):
    """Refuse, before anything runs, what the deployment does not carry across sites."""
    from fastjax import config as config_lib

    config_lib.validate(config)
    if config.labeling.where == "central":
        raise ValueError("labeling.where='central' labels every site's data in one place; across "
                         "sites use labeling.where='client'")
    if config.method != "fast":
        raise ValueError(f"method={config.method!r}: the deployment runs FAST's job; the iterative "
                         "baselines run in one process (python -m fastjax.main)")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on-failure={on_failure!r}; choose one of {ON_FAILURE}")


def _stats(replies, eps):
    s = sum(r["sum"] for r in replies.values())
    sq = sum(r["sumsq"] for r in replies.values())
    n = sum(int(r["count"]) for r in replies.values())
    mean = s / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, eps).astype(np.float32)


class _Bytes:
    """Measured payload bytes per phase, down (server -> sites) and up."""

    def __init__(self):
        self.by_phase: dict[str, dict[str, int]] = {}

    def add(self, phase, down=(), up=()) -> dict[str, int]:
        now = {"down": sum(pl.payload_bytes(m) for m in down), "up": sum(pl.payload_bytes(m) for m in up)}
        d = self.by_phase.setdefault(phase, {"down": 0, "up": 0})
        d["down"] += now["down"]
        d["up"] += now["up"]
        return now


SEED_KEYS = ("seed_z", "seed_y", "shared_z", "shared_y")


def seed_bytes(msgs) -> int:
    """Bytes of the pooled seeds (embeddings and labels) among these payloads."""
    return sum(m[k].nbytes for m in msgs for k in SEED_KEYS if k in m)


SITE_ANNOTATIONS = "site_annotations.json"


def check_site_annotations(workdir: Path, digests: dict[int, str]) -> None:
    """A person's annotations are part of the run's identity on every site: once rounds
    have been trained, a site whose annotations.csv changed is refused (the rounds run
    would mix the old labels with the new); the digests are recorded for the next run."""
    from fastjax.federate.checkpoints import TRAINED_FILES

    path = workdir / SITE_ANNOTATIONS
    old = json.loads(path.read_text()) if path.exists() else {}
    if any((workdir / n).exists() for n in TRAINED_FILES):
        changed = [k for k, d in sorted(digests.items()) if str(k) in old and old[str(k)] != d]
        if changed:
            k = changed[0]
            raise ValueError(
                f"site {k}'s annotations.csv changed since this run trained on it (digest "
                f"{old[str(k)][:12]} -> {digests[k][:12]}), and the rounds already run would mix "
                f"the two; to train on the new labels start afresh by deleting "
                f"{workdir / 'checkpoints'} and {workdir / 'metrics.jsonl'}, or put that site's "
                "earlier annotations.csv back")
    files.atomic_write_text(path, json.dumps({str(k): d for k, d in digests.items()}, indent=2) + "\n")


def run_server(config, workdir, transport: Transport, *, on_failure: str = "fail",
               timeout: float = 600.0, log: Callable[[str], None] = print) -> dict:
    """Run FAST across sites; writes config.json, metrics.jsonl, accuracy.png,
    checkpoints/ and summary.json into `workdir` (locked while it runs; a different run
    there is refused)."""
    from fastjax import config as config_lib

    check_config(config, on_failure)
    workdir = Path(workdir)
    # The work directory's lock and identity, as `fastjax.main.run` keeps them.
    with config_lib.open_run(workdir, config):
        return _run(config, workdir, transport, on_failure, timeout, log)


def _test_split(config, shards: bool, class_names, workdir: Path, log):
    """The test split the server evaluates on, and the clients' test shares (LoGo's
    partition splits the test set too), or (None, None) when this machine cannot load it.
    When the sites are shards of the config's dataset, the partition report
    (partition.json/png) is written as the one-process job writes it."""
    from fastjax import data
    from fastjax.methods import common

    try:
        if shards:
            train, test = common.load_data(config)
            part = common.make_partition(config, train, test, workdir)
            client_test = part.test
        else:
            test = common.subset(data.load_dataset(config.data.name, "test", config.data.root or None),
                                 config.data.test_limit, config.seed + 1)
            client_test = None
    except (OSError, ValueError, data.DatasetNotFoundError, data.DatasetCorruptError) as e:
        log(f"no server-side evaluation: the test split of {config.data.name!r} does not load on "
            f"this machine ({type(e).__name__}: {str(e).splitlines()[0]})")
        return None, None
    if tuple(test.class_names) != tuple(class_names):
        log(f"no server-side evaluation: the test split's classes {tuple(test.class_names)} are not "
            f"the sites' {tuple(class_names)}")
        return None, None
    return test, client_test


def _evaluator(config, test, mean, std, model):
    """(test inputs, predict(variables, x, batch_size) -> labels): the inputs standardised
    as the sites standardise their training inputs (linear probing: the test embeddings)."""
    import jax.numpy as jnp

    from fastjax.federate import engine
    from fastjax.methods import common

    if config.model.name == "linear":
        z = common.embed_split(config, common.load_encoder(config), test, "test", progress=False)
        x, preprocess = ((z - mean) / std).astype(np.float32), (lambda v: v)
    else:
        x = test.images
        preprocess = lambda v: (v.astype(jnp.float32) / 255.0 - mean) / std  # noqa: E731
    predict = engine.make_eval_fn(model, preprocess)
    return x, predict


def _run(config, workdir: Path, transport, on_failure, timeout, log) -> dict:
    import jax
    import jax.numpy as jnp

    from fastjax import config as config_lib
    from fastjax import label
    from fastjax.federate import aggregators, checkpoints, engine, models, resume
    from fastjax.label import client_budgets, shared_embedding_bytes
    from fastjax.methods import common

    cj = pl.config_to_json(config)
    sig = pl.signature(cj)
    t_start = time.perf_counter()
    K, lab = config.partition.num_clients, config.labeling
    traffic = _Bytes()

    # 1. preliminary pass on every site
    log(f"preliminary pass: {K} sites load and embed their data (the first run embeds every "
        "image, minutes on a CPU; later runs read the sites' caches)")
    msg1 = {"config": cj}
    rep1 = transport.first_contact("preliminary", msg1, timeout)
    traffic.add("preliminary", [msg1] * len(rep1), rep1.values())
    if sorted(rep1) != list(range(K)):
        raise RuntimeError(f"sites answered for clients {sorted(rep1)}, but partition.num_clients={K} "
                           f"needs 0..{K - 1}, one SuperNode each (node-config partition-id)")
    names = {k: tuple(json.loads(r["class_names"])) for k, r in rep1.items()}
    if len(set(names.values())) != 1:
        raise RuntimeError(f"sites disagree on the class list: {names}; give every site the same classes")
    class_names = names[0]
    sizes = [int(rep1[k]["dataset_size"]) for k in range(K)]
    shards = len(set(sizes)) == 1 and sizes[0] > 0  # shards of the config's dataset
    n_train = sizes[0] if shards else sum(int(r["n"]) for r in rep1.values())
    pools = [int(rep1[k]["pool"]) for k in range(K)]
    budget = (label.budget_count(lab.budget, lab.budget_of, n_train, sum(pools))
              if lab.merge in ("human+weak", "human") else 0)
    budgets = client_budgets(budget, pools)
    eps = 1e-6 if config.model.name == "linear" else 1e-3
    mean, std = _stats(rep1, eps)
    shared = {}
    shared_bytes = 0
    if lab.labeled_source == "shared":
        counts = [int(rep1[k]["seeds"]) for k in range(K)]
        shared = {"shared_z": np.concatenate([rep1[k]["seed_z"] for k in range(K)]),
                  "shared_y": np.concatenate([rep1[k]["seed_y"] for k in range(K)]),
                  "shared_counts": np.asarray(counts, np.int64)}
        shared_bytes = shared_embedding_bytes(counts, shared["shared_z"].shape[1])
    log(f"preliminary pass done: {K} sites, {n_train} train samples, budget {budget} split "
        f"{budgets.tolist()}; refinement pass (the oracle's labels) next")

    # 2. refinement on every site
    msgs2 = {k: {"config": cj, "signature": sig, "budget": int(budgets[k]), "mean": mean,
                 "std": std, **shared} for k in range(K)}
    rep2, fail2 = transport.send("refine", msgs2, timeout)
    traffic.add("refine", msgs2.values(), rep2.values())
    if fail2:
        k = min(fail2)
        raise RuntimeError(f"refinement pass: site {k} failed: {fail2[k]}")
    awaiting = sorted(k for k, r in rep2.items() if r["status"] == "awaiting")
    if awaiting:
        lines = [f"site {k}: annotate {rep2[k]['query']} ({rep2[k]['queried']} samples), then on "
                 f"that machine: python -m fastjax.label import FILE.csv --workdir "
                 f"{Path(rep2[k]['query']).parent}" for k in awaiting]
        summary = {"status": "awaiting_annotations", "sites": lines}
        files.atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
        log("waiting for human annotations; then run `flwr run` again:\n  " + "\n  ".join(lines))
        return summary
    annotations = sum(int(r["annotations"]) for r in rep2.values())
    log(f"refinement: {annotations} annotations (budget {budget})")
    if lab.oracle == "annotations":
        check_site_annotations(workdir, {k: rep2[k]["annotations_digest"] for k in range(K)})

    # 3. federated training, evaluated on the server
    spec = config_lib.train_spec(config)
    model = models.make_model(config.model.name, len(class_names), config.model.conv_impl)
    shape = (int(rep1[0]["dim"]),) if config.model.name == "linear" else tuple(json.loads(rep1[0]["shape"]))
    variables = models.init_variables(model, shape, config.seed)
    aggregate = jax.jit(lambda g, c, n, s: aggregators.AGGREGATORS[spec.aggregator](
        g, c, n, s, momentum=spec.momentum))
    test, client_test = _test_split(config, shards, class_names, workdir, log)
    test_x, predict = _evaluator(config, test, mean, std, model) if test is not None else (None, None)
    bytes_per_client = engine.state_bytes(variables)
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints")
    metrics = checkpoints.MetricsLog(workdir / "metrics.jsonl")
    variables, history, start, comm = resume.resume(
        ckpt, metrics, variables, last_round=spec.rounds, extra_comm_mib=shared_bytes / engine.MIB,
        log=log)
    t_train = time.perf_counter()
    for r in range(start, spec.rounds + 1):
        t0 = time.perf_counter()
        sel = engine.select_clients(K, spec.participation, spec.seed, r).tolist()
        flat = pl.flatten(jax.device_get(variables), "vars")
        msgs = {k: {"config": cj, "signature": sig, "round": r, "lr": spec.learning_rate(r - 1),
                    "num_classes": len(class_names), **flat} for k in sel}
        replies, failures = transport.send("train", msgs, timeout)
        sent = traffic.add("train", msgs.values(), replies.values())
        bad = {k: rep for k, rep in replies.items() if not np.isfinite(rep["loss"])}
        failures.update({k: f"non-finite loss {rep['loss']}" for k, rep in bad.items()})
        ok = [k for k in sel if k in replies and k not in failures]
        if failures and (on_failure == "fail" or not ok):
            if r > 1 and ckpt.latest() != r - 1:  # not already saved (checkpoint_every, resume)
                ckpt.save(r - 1, variables)
            ckpt.close()
            k = min(failures)
            raise RuntimeError(
                f"round {r}: site {k} failed: {failures[k]}; "
                + (f"the global variables of round {r - 1} are checkpointed in {workdir / 'checkpoints'}; "
                   "run again to resume" if r > 1 else "no round completed")
                + ("" if on_failure == "aggregate" else
                   " (run config on-failure='aggregate' aggregates the sites that answer)"))
        if failures:
            log(f"round {r}: aggregating {len(ok)} of {len(sel)} sites; left out "
                + "; ".join(f"site {k}: {failures[k]}" for k in sorted(failures)))
        stacked = jax.tree.map(lambda *a: jnp.stack(a),
                               *[pl.unflatten(replies[k], "vars") for k in ok])
        n_r = jnp.asarray([replies[k]["n"] for k in ok], jnp.int32)
        steps_r = jnp.asarray([replies[k]["steps"] for k in ok], jnp.int32)
        variables = aggregate(variables, stacked, n_r, steps_r)
        comm += 2 * len(ok) * bytes_per_client / engine.MIB
        losses = np.array([replies[k]["loss"] for k in ok])
        rec = {"round": r, "loss": float(np.average(losses, weights=np.asarray(n_r))),
               "lr": spec.learning_rate(r - 1), "clients": len(ok), "comm_mib": comm}
        if predict is not None and (r % spec.eval_every == 0 or r == spec.rounds):
            pred = predict(variables, test_x, spec.eval_batch_size)
            rec["accuracy"] = float(np.mean(pred == test.labels))
            if client_test is not None:
                rec["client_accuracy"] = [float(np.mean(pred[ix] == test.labels[ix])) if len(ix) else None
                                          for ix in client_test]
        rec["seconds"] = time.perf_counter() - t0
        rec["payload_bytes"] = sent  # measured, this round's train messages down and up
        if failures:
            rec["dropped"] = sorted(failures)
        history.append(rec)
        metrics.append(rec)
        if (spec.checkpoint_every and r % spec.checkpoint_every == 0) or r == spec.rounds:
            ckpt.save(r, variables)
        log(f"round {r}/{spec.rounds}: loss {rec['loss']:.4f}"
            + (f", test accuracy {rec['accuracy']:.4f}" if "accuracy" in rec else "")
            + f", {comm:.2f} MiB, {rec['seconds']:.2f} s")
    ckpt.close()
    if history:
        engine.plot_history(history, workdir / "accuracy.png")
    # Counted over every round of the run, those of earlier `flwr run`s included.
    traffic.by_phase["train"] = {d: sum(h.get("payload_bytes", {}).get(d, 0) for h in history)
                                 for d in ("down", "up")}
    dropped = {str(h["round"]): h["dropped"] for h in history if h.get("dropped")}
    summary = {
        "method": "fast",
        "status": "done",
        **common.accuracy_summary(history),
        "rounds": len(history),
        "annotations": annotations,
        "labeling_budget": budget,
        "client_budgets": budgets.tolist(),
        "sites": {str(k): {kk: rep2[k][kk] for kk in ("annotations", "train_n", "human_labels",
                                                      "weak_acc_before", "weak_acc_after")}
                  for k in range(K)},
        "comm_mib": comm,
        "shared_embedding_mib": shared_bytes / engine.MIB,
        "payload_bytes": traffic.by_phase,
        "seed_payload_bytes": seed_bytes([*rep1.values(), *msgs2.values()]),
        "rounds_with_dropped_sites": len(dropped),
        "dropped_sites": dropped,
        "wall_seconds": {"train": time.perf_counter() - t_train, "total": time.perf_counter() - t_start},
        "final_loss": history[-1]["loss"] if history else None,
    }
    files.atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    acc = summary["final_accuracy"]
    log(f"done: {len(history)} rounds"
        + (f" ({len(dropped)} left a site out: rounds {', '.join(dropped)})" if dropped else "")
        + (f", final test accuracy {acc:.4f}" if acc is not None else "")
        + f", {annotations} annotations, {comm:.2f} MiB; summary: {workdir / 'summary.json'}")
    return summary
