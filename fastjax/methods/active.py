"""The iterative federated active-learning (FAL) loop that FAST is compared against
(FAST paper, Sec. III-B, Eq. 3-5; the LoGo protocol, raymin0223/LoGo `main.py`).

R active-learning (AL) rounds over the same partition, model and engine as FAST:

1. AL round 1: each client labels a random initial set from its own data (an equal
   share of `active.initial` of the training set, water-filled where a client holds
   fewer samples, Eq. 5), through the oracle.
2. AL round a > 1: every client queries b samples of its own unlabeled pool with the
   query strategy (`fastjax.active.STRATEGIES`), scoring with the global model of AL
   round a - 1 (`active.query_model=global`, the paper) or with its own local-only model
   (`local_only`, LoGo's ablation); the oracle labels exactly those samples. The global
   budget of Eq. 5 (`active.query` of the training set per AL round) is never exceeded.
3. T = `train.rounds` federated rounds (`engine.fit`) train on the clients' labeled
   sets, from a fresh random model (`active.reset=random_init`, LoGo's code) or from
   the previous global model (`continue`, FAST-official's).

Work directory: one continuous metrics.jsonl (global FL round, AL round, accuracy, MiB,
annotations), shared checkpoints keyed by the global FL round, `active/al_XX.npz` (each
AL round's labeled sets, written before it trains: part of the checkpointed state) and
`active/al_XX.json` (its results), summary.json. An interrupted loop resumes to the
identical final state: queries are pure functions of (model, pool, AL round, seed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

from fastjax import config as config_lib
from fastjax.active import (NEEDS_CLIENT_MODELS, NEEDS_FEATURES, NEEDS_LABELED, NEEDS_LOCAL_ONLY,
                            NEEDS_LOSS_MODULE, OBJECTIVES, STRATEGIES, PoolView, presets)
from fastjax.federate.checkpoints import Checkpoints, MetricsLog, atomic_write_text
from fastjax.methods import common
from fastjax.methods.common import log


def client_shares(total: int, sizes) -> np.ndarray:
    """An equal share of `total` per client (int(total / K) each, as LoGo and
    FAST-official), water-filled over clients that hold fewer samples (Eq. 5)."""
    from fastjax.label.query import client_budgets

    sizes = np.asarray(sizes, np.int64)
    k = len(sizes)
    want = k * (int(total) // k)
    return client_budgets(min(want, int(sizes.sum())), sizes)


def initial_sets(part_train, counts, seed: int) -> list[np.ndarray]:
    """Each client's initial labeled set: counts[k] of its samples uniformly at random."""
    out = []
    for k, (ix, c) in enumerate(zip(part_train, counts)):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0xA1), k)
        pick = np.asarray(jax.random.permutation(key, len(ix)))[: int(c)]
        out.append(np.sort(np.asarray(ix, np.int64)[pick]))
    return out


def _save_sets(path: Path, sets: list[np.ndarray], query_seconds: float):
    sizes = np.array([len(s) for s in sets], np.int64)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, idx=np.concatenate(sets) if sets else np.zeros(0, np.int64), sizes=sizes,
             query_seconds=np.float64(query_seconds))
    tmp.replace(path)


def _load_sets(path: Path):
    try:
        with np.load(path) as z:
            idx, sizes, q = z["idx"], z["sizes"], float(z["query_seconds"])
    except Exception as e:  # a torn file (written atomically, so only by hand) is a clear error
        raise ValueError(f"cannot read the labeled sets {path} ({e}); delete the work directory to "
                         "start afresh") from None
    return list(np.split(idx.astype(np.int64), np.cumsum(sizes)[:-1])), q


class Interrupts:
    """Ctrl-C while the loop queries, made reliable. Python's default handler raises
    KeyboardInterrupt wherever the main thread happens to be, and one raised inside a
    finaliser run by the garbage collector is printed and lost ("Exception ignored in").
    Inside this context the first Ctrl-C only sets a flag, which `check()` (called at
    query boundaries: between clients, between local-only epochs) and the exit of the
    context raise as KeyboardInterrupt; a second Ctrl-C exits at once with status 130,
    naming the work directory to resume from, as `fastjax.main` does for the first.
    Federated training (`engine.fit`) runs outside it, under the default handler."""

    def __init__(self, workdir):
        self.workdir, self.pressed, self._old = workdir, False, None

    def _handler(self, signum, frame):
        if self.pressed:
            print(f"fastjax: error: interrupted twice, exiting at once; rerun the same command to resume "
                  f"from the last checkpoint in {self.workdir}", file=sys.stderr, flush=True)
            os._exit(130)
            return  # (only where os._exit is replaced, as in a test)
        self.pressed = True
        log("interrupted: stopping at the next query boundary (press Ctrl-C again to exit at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, exc_type, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        if self.pressed and exc_type is None:
            raise KeyboardInterrupt
        return False

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


def check_state_files(workdir: Path, done_through: int, fl_rounds: int) -> None:
    """The loop's own files that its checkpoints presuppose, before any compute: every AL
    round that trained up to a checkpoint needs its labeled sets (`active/al_XX.npz`),
    and every one finished before the latest checkpoint its results (`al_XX.json`; the
    last may lack them: the job can stop between its checkpoint and that file)."""
    state, missing = workdir / "active", []
    for al in range(1, -(-done_through // fl_rounds) + 1):
        if not (state / f"al_{al:02d}.npz").exists():
            missing.append(f"al_{al:02d}.npz (AL round {al}'s labeled sets)")
        if al * fl_rounds < done_through and not (state / f"al_{al:02d}.json").exists():
            missing.append(f"al_{al:02d}.json (AL round {al}'s results)")
    if missing:
        raise ValueError(f"{state} lacks {', '.join(missing)}, which its checkpoints up to FL round "
                         f"{done_through} presuppose; put the file(s) back, or delete {workdir} to start afresh")


class _Querier:
    """Scores each client's unlabeled pool with the query model(s) and applies the
    strategy: the global model's outputs for every strategy, plus what LoGo (local-only
    models), KAFAL (the clients' last local models) and LL4AL (the loss module) read."""

    def __init__(self, config, model, inputs, part_train, num_classes):
        from fastjax.federate import engine

        self.config, self.model, self.inputs = config, model, inputs
        self.part_train, self.num_classes = part_train, num_classes
        self.name = config.active.strategy
        self.strategy = STRATEGIES[self.name]
        self.options = presets.strategy_options(config)
        self.features = engine.make_features_fn(model, inputs.preprocess)
        self.pred_loss = None
        if self.name in NEEDS_LOSS_MODULE:
            from fastjax.active.ll4al import make_predicted_loss_fn

            self.pred_loss = make_predicted_loss_fn(model, inputs.preprocess)

    def query(self, al_round: int, variables, labeled: list[np.ndarray], budgets, oracle_labels,
              local_vars=None, check=None) -> list[np.ndarray]:
        """The new labeled sets after each client queries budgets[k] samples.

        local_vars: stacked per-client variables (leading client axis): the local-only
        models (LoGo, or every strategy with active.query_model=local_only) or the
        clients' models after their last local update (KAFAL). check: called before
        each client's query (`Interrupts.check`)."""
        from fastjax.federate.models import head_params

        a = self.config.active
        bs = a.pool_batch_size
        out = []
        base = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1000 + al_round)
        for k, (ix, lab, b) in enumerate(zip(self.part_train, labeled, budgets)):
            if check is not None:
                check()
            pool = np.setdiff1d(ix, lab)
            x_pool, x_lab = self.inputs.train_x[pool], self.inputs.train_x[lab]
            own = None if local_vars is None else jax.tree.map(lambda t: t[k], local_vars)
            # The "global" outputs come from the query model: the global model, or the
            # client's local-only model in LoGo's local_only ablation (LoGo itself uses both).
            g = own if (a.query_model == "local_only" and self.name not in NEEDS_LOCAL_ONLY
                        and self.name not in NEEDS_CLIENT_MODELS) else variables
            logits, probs, feats = self.features(g, x_pool, bs)
            # The labeled set's features only for the strategies that read features.
            lab_feats = self.features(g, x_lab, bs)[2] if self.name in NEEDS_FEATURES else None
            feats = feats if self.name in NEEDS_FEATURES else None
            w, bias = head_params(g)
            labels = oracle_labels(lab)
            extra = {}
            if own is not None and (self.name in NEEDS_LOCAL_ONLY or self.name in NEEDS_CLIENT_MODELS):
                extra["local_logits"], extra["local_probs"], extra["local_feats"] = self.features(own, x_pool, bs)
            if self.name in NEEDS_LOCAL_ONLY and own is None:  # logo_query_models=global_only
                extra["local_probs"], extra["local_feats"] = probs, feats
            if self.name in NEEDS_CLIENT_MODELS:
                extra["class_counts"] = np.bincount(labels, minlength=self.num_classes)
            if self.pred_loss is not None:
                extra["pred_loss"] = self.pred_loss(variables, x_pool, bs)
            view = PoolView(probs=probs, feats=feats, labeled_feats=lab_feats, labeled_y=labels,
                            head_w=None if feats is None else np.asarray(w),
                            head_b=None if feats is None else np.asarray(bias), logits=logits, **extra)
            pos = np.asarray(self.strategy(view, int(b), jax.random.fold_in(base, k), **self.options),
                             np.int64)
            # alfa_fill=with_replacement may return fewer (the reference's duplicates dropped).
            if pos.size > int(b) or np.unique(pos).size != pos.size or (pos.size and (
                    pos.min() < 0 or pos.max() >= pool.size)):
                raise RuntimeError(f"strategy {a.strategy!r} returned {pos.size} positions for a budget of "
                                   f"{b} on a pool of {pool.size} (client {k}); expected distinct positions")
            out.append(np.sort(np.concatenate([lab, pool[pos]])))
        return out


def run(config, workdir, *, progress: bool = True, fit_fn=None) -> dict:
    """The whole loop in `workdir`; returns (and writes) the summary. fit_fn: trains in
    place of `engine.fit` (a sweep's `experiments.Rendezvous.fit`)."""
    from fastjax import partition
    from fastjax.federate import engine, models

    workdir = Path(workdir)
    a = config.active
    t_start = time.perf_counter()
    store = Checkpoints(workdir / "checkpoints")
    done_through = store.latest() or 0  # main.run has validated it (damaged ones set aside)
    store.close()
    check_state_files(workdir, done_through, config.train.rounds)
    train, test = common.load_data(config)
    c = train.num_classes
    part = common.make_partition(config, train, test, workdir)
    oracle = partition.Oracle(train.labels)

    z_train = z_test = None
    if config.model.name == "linear":
        encoder = common.load_encoder(config)
        z_train = common.embed_split(config, encoder, train, "train", progress)
        z_test = common.embed_split(config, encoder, test, "test", progress)
    inputs = common.model_inputs(config, train, test, z_train, z_test)
    model = models.make_model(config.model.name, c, config.model.conv_impl)
    if a.strategy in NEEDS_LOSS_MODULE:  # the loss-prediction module trains (and is averaged) with the backbone
        from fastjax.active.ll4al import WithLossNet

        model = WithLossNet(model)
    spec = config_lib.train_spec(config)
    T = spec.rounds

    def init(al_round: int):  # a fresh random model per AL round (LoGo's get_model)
        return models.init_variables(model, inputs.shape, config.seed + 7919 * (al_round - 1))

    check_features(model, init(1), inputs)
    sizes = [len(ix) for ix in part.train]
    n_total = len(train)
    initial = client_shares(int(a.initial * n_total), sizes)
    check_plan(config, initial, sizes, n_total)
    querier = _Querier(config, model, inputs, part.train, c)
    objective = training_objective(config)
    # One compiled round for every AL round: clients padded to their final labeled size.
    capacity = int(max(initial + sum(planned_budgets(config, initial, sizes, n_total), np.zeros_like(initial))))
    client_arrays = _ClientArrays(config, inputs, part.train, c, capacity, max(sizes), oracle)
    round_fn = engine.make_round_fn(model, spec, inputs.preprocess, objective=objective)
    client_models = (engine.make_client_models_fn(model, spec, inputs.preprocess, objective)
                     if a.strategy in NEEDS_CLIENT_MODELS else None)
    local_only = None
    if needs_local_only(config):
        from fastjax.active.local_only import make_local_only_trainer

        local_only = make_local_only_trainer(model, inputs.preprocess, batch_size=spec.batch_size,
                                             momentum=spec.momentum, weight_decay=spec.weight_decay)
    evaluate = engine.make_eval_fn(model, inputs.preprocess)
    state = workdir / "active"
    state.mkdir(exist_ok=True)

    def restore(step: int, like):
        if step == 0:
            return like
        store = Checkpoints(workdir / "checkpoints")
        try:
            return store.restore(step, like)
        finally:
            store.close()

    def start_of(al: int, variables):
        """The model AL round `al` trains from (its FL round 0)."""
        if al == 1 or a.reset == "random_init":
            return init(al)
        return variables if variables is not None else restore((al - 1) * T, init(al))

    labeled: list[np.ndarray] | None = None
    variables = before_last = None  # the last AL round's final model / the one before its last FL round
    rows = []
    for al in range(1, a.rounds + 1):
        offset = (al - 1) * T
        sets_path, row_path = state / f"al_{al:02d}.npz", state / f"al_{al:02d}.json"
        if sets_path.exists():
            labeled, q_seconds = _load_sets(sets_path)
        else:
            with Interrupts(workdir) as interrupts:
                t0 = time.perf_counter()
                if al == 1:
                    labeled = initial_sets(part.train, initial, config.seed)
                else:
                    if variables is None:  # resumed at an AL boundary: the last AL round's model
                        variables = restore(offset, init(al - 1))
                    pools = [len(ix) - len(lab) for ix, lab in zip(part.train, labeled)]
                    budgets = client_shares(int(a.query * n_total), pools)
                    local_vars = None
                    if local_only is not None:  # LoGo's raw_ckpt: the run's first random model
                        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2000 + al)
                        local_vars, epochs = local_only(init(1), client_arrays.plain(labeled), lr=spec.lr, key=key,
                                                        max_epochs=a.local_only_epochs,
                                                        stop_accuracy=a.local_only_stop,
                                                        between_epochs=interrupts.check)
                        log(f"local-only models: {epochs.min()}-{epochs.max()} epochs")
                    elif client_models is not None:  # KAFAL: each client's last local model
                        if before_last is None:
                            before_last = (restore(offset - 1, init(al - 1)) if T > 1
                                           else start_of(al - 1, None))
                        local_vars = client_models(
                            before_last, *client_arrays.device(labeled), np.arange(len(labeled), dtype=np.int32),
                            engine.round_hyper(spec, T - 1), engine.round_key(spec.seed, offset))
                    labeled = querier.query(al, variables, labeled, budgets, oracle.query, local_vars,
                                            check=interrupts.check)
                q_seconds = time.perf_counter() - t0
                _save_sets(sets_path, labeled, q_seconds)
        n_labeled = int(sum(len(ix) for ix in labeled))
        clients = client_arrays(labeled)  # every label of the loop is an oracle annotation
        if done_through >= al * T and row_path.exists():  # finished before: nothing to redo
            rows.append(json.loads(row_path.read_text()))
            variables = before_last = None
            continue
        # (When resuming mid AL round, fit restores its own checkpoint over this start.)
        start = init(al) if (variables is None and done_through > offset) else start_of(al, variables)
        log(f"AL round {al}/{a.rounds}: {n_labeled} labeled ({n_labeled / n_total:.1%}), "
            f"{oracle.annotations} annotations; training FL rounds {offset + 1}-{offset + T}")
        fit = (fit_fn or engine.fit)(
                         model, start, clients, inputs.test_x, test.labels, spec, inputs.preprocess,
                         workdir=workdir, client_test=part.test, round_offset=offset,
                         row_extra={"al_round": al, "annotations": oracle.annotations, "labeled": n_labeled},
                         round_fn=round_fn, evaluate=evaluate, objective=objective,
                         keep_before_last=a.strategy in NEEDS_CLIENT_MODELS,
                         progress=progress, log=log)
        variables, before_last = fit.variables, fit.before_last
        row = {"al_round": al, "labeled": n_labeled, "annotations": oracle.annotations,
               "fl_rounds": al * T, **common.accuracy_summary(fit.history), "comm_mib": fit.comm_mib,
               "query_seconds": q_seconds, "train_seconds": fit.train_seconds}
        atomic_write_text(row_path, json.dumps(row) + "\n")
        rows.append(row)
        done_through = al * T
        history = MetricsLog(workdir / "metrics.jsonl").read()
        if history:  # fit's plot again, with the AL rounds marked
            engine.plot_history(history, workdir / "accuracy.png", boundaries=al_boundaries(history))
    last = rows[-1]
    summary = {
        "method": "active", "strategy": a.strategy, "preset": a.preset, "reset": a.reset,
        "query_model": a.query_model,
        "final_accuracy": last["final_accuracy"], "last5_accuracy": last["last5_accuracy"],
        "best_accuracy": max(r["best_accuracy"] for r in rows),
        "annotations": int(oracle.annotations), "labeled_fraction": last["labeled"] / n_total,
        "comm_mib": last["comm_mib"], "al_rounds": rows, "fl_rounds": a.rounds * T,
        "wall_seconds": {"query": sum(r["query_seconds"] for r in rows),
                         "train": sum(r["train_seconds"] for r in rows),
                         "total": time.perf_counter() - t_start},
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"{a.strategy}: final accuracy {last['final_accuracy']:.4f} (mean of last 5 "
        f"{last['last5_accuracy']:.4f}) after {a.rounds} AL rounds, {oracle.annotations} annotations, "
        f"{last['comm_mib']:.1f} MiB; summary: {workdir / 'summary.json'}")
    return summary


def al_boundaries(history: list[dict]) -> list[tuple[float, str]]:
    """(round, label) of every AL round's start but the first, from the metrics rows:
    between its first FL round and the one before."""
    return [(b["round"] - 0.5, f"AL {b['al_round']}") for a, b in zip(history, history[1:])
            if b.get("al_round") != a.get("al_round")]


def training_objective(config):
    """The local objective the strategy trains with (None: plain cross-entropy)."""

    a = config.active
    kind = OBJECTIVES.get(a.strategy)
    if kind == "kcfu":
        from fastjax.active.kafal import kcfu_objective

        return kcfu_objective(a.kafal_partner)
    if kind == "ll4al":
        from fastjax.active.ll4al import ll4al_train_objective

        return ll4al_train_objective(lam=a.ll4al_lam, xi=a.ll4al_xi,
                                     detach_round=int(a.ll4al_detach_at * config.train.rounds))
    return None


class _ClientArrays:
    """The clients' training arrays for given labeled sets, padded to fixed capacities
    (one compiled round for every AL round); with KCFU, each client's unlabeled pool and
    labeled class counts ride along as the objective's per-client arrays."""

    def __init__(self, config, inputs, part_train, num_classes, capacity, pool_capacity, oracle):

        self.spec = config_lib.train_spec(config)
        self.inputs, self.part_train, self.num_classes = inputs, part_train, num_classes
        self.capacity, self.pool_capacity, self.oracle = capacity, pool_capacity, oracle
        self.with_pool = OBJECTIVES.get(config.active.strategy) == "kcfu"

    def plain(self, labeled, *, indices: bool = False):
        """The clients' labeled samples and labels, padded to the capacity (no KCFU pool).
        indices: the samples as row indices into the training set (`ClientArrays.source`:
        a sweep's experiments then share one device copy of it); else the pixels."""
        from fastjax.federate import engine

        x = self.inputs.train_x
        return engine.stack_clients([ix if indices else x[ix] for ix in labeled],
                                    [self.oracle.query(ix) for ix in labeled], self.capacity,
                                    source=x if indices else None)

    def __call__(self, labeled, *, indices: bool = True):
        """What the loop trains on: index clients by default, and for KCFU the clients'
        unlabeled pools (`aux["u"]`, row indices too, gathered like x) and labeled counts."""
        clients = self.plain(labeled, indices=indices)
        if not self.with_pool:
            return clients
        ys = [np.asarray(y[:n]) for y, n in zip(clients.y, clients.n)]
        pools = [np.setdiff1d(ix, lab) for ix, lab in zip(self.part_train, labeled)]
        x = self.inputs.train_x
        u = np.zeros((len(pools), self.pool_capacity) + (() if indices else x.shape[1:]),
                     np.int32 if indices else x.dtype)
        for k, p in enumerate(pools):
            u[k, : len(p)] = p if indices else x[p]
        counts = np.stack([np.bincount(y, minlength=self.num_classes) for y in ys]).astype(np.float32)
        if (counts.sum(1) == 0).any():
            raise ValueError("KAFAL's logit adjustment needs every client's labeled class counts; a client "
                             "has no labeled samples (raise active.initial)")
        aux = {"u": u, "nu": np.array([len(p) for p in pools], np.int32), "counts": counts}
        return dataclasses.replace(clients, aux=aux, aux_index=("u",) if indices else ())

    def device(self, labeled):
        """(x, y, n, steps) of all clients as make_round_fn's row arguments."""
        import jax.numpy as jnp

        from fastjax.federate import local

        clients, s = self(labeled, indices=False), self.spec
        steps = local.steps_per_client(clients.n, s.batch_size, s.local_epochs, s.local_steps)
        return (jnp.asarray(clients.x), jax.tree.map(jnp.asarray, clients.labels()), jnp.asarray(clients.n),
                jnp.asarray(steps))


def check_features(model, variables, inputs) -> None:
    """The query strategies read penultimate features: refuse a model without them
    before any compute."""
    x = jax.ShapeDtypeStruct((2,) + tuple(inputs.train_x.shape[1:]), inputs.train_x.dtype)
    try:
        jax.eval_shape(lambda v, xb: model.apply(v, inputs.preprocess(xb), train=False, outputs="features"),
                       variables, x)
    except TypeError as e:
        raise ValueError(f"model {type(model).__name__} does not expose penultimate features "
                         f"(outputs='features'), which the query strategies need ({e})") from None


def planned_budgets(config, initial, sizes, n_total: int) -> list[np.ndarray]:
    """Each AL round's per-client query budgets (rounds 2..R), as the loop will draw them:
    strategies return exactly b, so the pools shrink by the budgets."""
    a, counts, out = config.active, np.asarray(initial, np.int64).copy(), []
    for _ in range(2, a.rounds + 1):
        b = client_shares(int(a.query * n_total), np.asarray(sizes) - counts)
        out.append(b)
        counts = counts + b
    return out


def check_plan(config, initial, sizes, n_total: int) -> None:
    """What the partition decides and a strategy cannot live with, before any training:
    an initial set of no sample at all; a client with no initial labeled samples for
    LoGo's local-only model, KAFAL's class counts or a query that reads the labeled set;
    a GCNAL budget above the graph's unlabeled nodes (active.gcnal_subset)."""

    a = config.active
    empty = np.flatnonzero(np.asarray(initial) == 0).tolist()
    needs = ("LoGo's local-only models" if needs_local_only(config) else
             "KAFAL's logit adjustment (labeled class counts)" if OBJECTIVES.get(a.strategy) == "kcfu"
             else f"{a.strategy}'s query (it reads the client's labeled set)" if a.strategy in NEEDS_LABELED
             else None)
    if empty and needs:
        raise ValueError(f"clients {empty} get no labeled samples in AL round 1 (active.initial="
                         f"{a.initial} of {n_total} over {len(sizes)} clients), and {needs} cannot do "
                         "without them; raise active.initial")
    if int(np.sum(initial)) == 0:
        raise ValueError(f"active.initial={a.initial} labels int({a.initial} x {n_total}) = "
                         f"{int(a.initial * n_total)} samples, less than one per client ({len(sizes)} clients): "
                         f"AL round 1 would train on nothing; raise active.initial to at least "
                         f"{np.ceil(len(sizes) / n_total * 1e4) / 1e4:g}")
    if a.strategy == "gcnal":
        worst = max((int(b.max()) for b in planned_budgets(config, initial, sizes, n_total)), default=0)
        if worst > a.gcnal_subset:
            raise ValueError(f"gcnal: a client queries {worst} samples in one AL round, more than "
                             f"active.gcnal_subset={a.gcnal_subset} unlabeled nodes of its graph; "
                             f"raise active.gcnal_subset to at least {worst}")


def needs_local_only(config) -> bool:
    """LoGo's macro step, or any strategy in LoGo's local_only query-model ablation."""

    a = config.active
    if a.strategy in NEEDS_LOCAL_ONLY:
        return a.logo_query_models == "local+global"
    return a.query_model == "local_only" and a.strategy not in NEEDS_CLIENT_MODELS
