"""Federated training rounds: select clients, run their local updates as one compiled
computation, aggregate, evaluate, account communication, checkpoint.

A round r is a pure function of (global variables, r, seed): its client selection and
its data order come from `fold_in(PRNGKey(seed), r)`, so a run resumed from the
checkpoint of round r ends with the same state as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastjax.federate import aggregators, checkpoints, execution, local, resume

MIB = 1024.0 * 1024.0


@dataclasses.dataclass(frozen=True)
class ClientArrays:
    """Clients' training data stacked along a leading client axis, padded to the
    largest client: x (K, max_n, ...), y (K, max_n) int32 labels or (K, max_n, C)
    float32 soft targets, n (K,) real sizes, w (K, max_n) float32 per-sample loss
    weights or None (all 1), aux: per-client arrays (leading axis K) that a local
    objective reads (KAFAL: the unlabeled pool and the labeled class counts) or None.
    source: when set, x holds int32 row indices (K, max_n) into this one array of every
    sample (clients share it instead of holding copies: `experiments`); so do the aux
    arrays named in aux_index (KAFAL's unlabeled pool), gathered with x (`gathered`)."""

    x: np.ndarray
    y: np.ndarray
    n: np.ndarray
    w: np.ndarray | None = None
    aux: dict | None = None
    source: np.ndarray | None = None
    aux_index: tuple = ()

    def gathered(self) -> "ClientArrays":
        """The same clients holding their samples (x and the index-valued aux arrays as
        rows of `source`); pixel clients are returned as they are."""
        if self.source is None:
            return self
        aux = None if self.aux is None else {k: self.source[v] if k in self.aux_index else v
                                             for k, v in self.aux.items()}
        return dataclasses.replace(self, x=self.source[self.x], aux=aux, source=None, aux_index=())

    @property
    def num_clients(self) -> int:
        return int(self.x.shape[0])

    def labels(self):
        """What the local update takes as y: the labels, or a dict with the weights and
        the objective's per-client arrays."""
        if self.w is None and self.aux is None:
            return self.y
        out = {"y": self.y}
        if self.w is not None:
            out["w"] = self.w
        if self.aux is not None:
            out["aux"] = self.aux
        return out


def stack_clients(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], capacity: int = 0, *,
                  ws: Sequence[np.ndarray] | None = None, source: np.ndarray | None = None) -> ClientArrays:
    """Pads every client to the largest one (or to `capacity`, when given, so that calls
    with growing labeled sets keep one static shape and one compiled round). y: (n_k,)
    int labels or (n_k, C) soft targets; ws: optional per-sample loss weights (n_k,).
    source: xs are then each client's row indices into it (kept as indices)."""
    if source is not None:
        xs = [np.asarray(ix, np.int32) for ix in xs]
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"need one (x, y) pair per client, got {len(xs)} x and {len(ys)} y")
    if ws is not None and len(ws) != len(xs):
        raise ValueError(f"need one weight array per client, got {len(ws)} for {len(xs)} clients")
    n = np.array([len(x) for x in xs], dtype=np.int32)
    for k, (x, y) in enumerate(zip(xs, ys)):
        if len(y) != len(x):
            raise ValueError(f"client {k}: {len(x)} samples but {len(y)} labels")
        if ws is not None and len(ws[k]) != len(x):
            raise ValueError(f"client {k}: {len(x)} samples but {len(ws[k])} weights")
    max_n = max(int(n.max()), 1, int(capacity))
    shape = xs[0].shape[1:]
    soft = np.asarray(ys[0]).ndim == 2
    x_out = np.zeros((len(xs), max_n) + shape, dtype=xs[0].dtype)
    y_out = (np.zeros((len(xs), max_n, np.asarray(ys[0]).shape[1]), np.float32) if soft
             else np.zeros((len(xs), max_n), dtype=np.int32))
    w_out = None if ws is None else np.zeros((len(xs), max_n), np.float32)
    for k, (x, y) in enumerate(zip(xs, ys)):
        x_out[k, : len(x)] = x
        y_out[k, : len(y)] = y
        if w_out is not None:
            w_out[k, : len(x)] = ws[k]
    return ClientArrays(x_out, y_out, n, w_out, source=source)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Federated training options (defaults: FAST-official's)."""

    rounds: int = 100
    local_epochs: int | None = 5
    local_steps: int | None = None  # overrides local_epochs when set
    batch_size: int = 128
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay: float = 1.0  # step decay: lr * lr_decay ** (round // lr_decay_every)
    lr_decay_every: int = 0
    lr_drop_at: float = 0.0  # > 0: lr * lr_drop_factor once the 0-indexed round > int(lr_drop_at * rounds) (LoGo: 0.75)
    lr_drop_factor: float = 0.1
    aggregator: str = "fedavg"
    prox_mu: float = 0.0
    participation: float = 1.0
    strategy: str = "vmap"
    compute_dtype: str = "float32"  # "bfloat16": mixed precision local training
    client_chunk: int = 0  # chunked strategy: clients per chunk...
    chunk_memory_mb: float = 0.0  # ...or chosen from this memory budget
    eval_every: int = 1
    checkpoint_every: int = 10
    eval_batch_size: int = 1000
    seed: int = 0

    def validate(self):
        errs = [f"train.{f.name}={getattr(self, f.name)} must be finite"
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        if self.rounds < 1:
            errs.append(f"train.rounds={self.rounds} must be >= 1")
        if self.local_steps is None and (self.local_epochs is None or self.local_epochs < 1):
            errs.append(f"train.local_epochs={self.local_epochs} must be >= 1 (or set train.local_steps)")
        if self.local_steps is not None and self.local_steps < 1:
            errs.append(f"train.local_steps={self.local_steps} must be >= 1")
        if self.batch_size < 1:
            errs.append(f"train.batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            errs.append(f"train.lr={self.lr} must be > 0")
        if not 0 < self.lr_decay <= 1:
            errs.append(f"train.lr_decay={self.lr_decay} must be in (0, 1] (1 = constant learning rate)")
        if self.lr_decay_every < 0:
            errs.append(f"train.lr_decay_every={self.lr_decay_every} must be >= 0 (0 = never)")
        if not 0 <= self.lr_drop_at < 1:
            errs.append(f"train.lr_drop_at={self.lr_drop_at} must be in [0, 1) (0 = no drop; LoGo: 0.75)")
        if not 0 < self.lr_drop_factor <= 1:
            errs.append(f"train.lr_drop_factor={self.lr_drop_factor} must be in (0, 1]")
        if self.weight_decay < 0:
            errs.append(f"train.weight_decay={self.weight_decay} must be >= 0")
        if self.eval_batch_size < 1:
            errs.append(f"train.eval_batch_size={self.eval_batch_size} must be >= 1")
        if self.seed < 0:
            errs.append(f"seed={self.seed} must be >= 0")
        if not 0 <= self.momentum < 1:
            errs.append(f"train.momentum={self.momentum} must be in [0, 1)")
        if self.aggregator not in aggregators.AGGREGATORS:
            errs.append(f"train.aggregator={self.aggregator!r}; choose one of {sorted(aggregators.AGGREGATORS)}")
        if self.aggregator == "fedprox" and self.prox_mu <= 0:
            errs.append("train.aggregator='fedprox' needs train.prox_mu > 0 (e.g. 0.01)")
        if self.prox_mu < 0:
            errs.append(f"train.prox_mu={self.prox_mu} must be >= 0")
        if not 0 < self.participation <= 1:
            errs.append(f"train.participation={self.participation} must be in (0, 1]")
        if self.strategy not in execution.STRATEGIES:
            errs.append(f"train.strategy={self.strategy!r}; choose one of {execution.STRATEGIES}")
        if self.compute_dtype not in local.COMPUTE_DTYPES:
            errs.append(f"train.compute_dtype={self.compute_dtype!r}; choose one of {local.COMPUTE_DTYPES}")
        if self.client_chunk < 0 or self.chunk_memory_mb < 0:
            errs.append(f"train.client_chunk={self.client_chunk} and train.chunk_memory_mb="
                        f"{self.chunk_memory_mb} must be >= 0")
        elif self.strategy == "chunked" and (self.client_chunk > 0) == (self.chunk_memory_mb > 0):
            errs.append("train.strategy='chunked' needs exactly one of train.client_chunk > 0 (clients "
                        "per chunk) or train.chunk_memory_mb > 0 (a memory budget); got client_chunk="
                        f"{self.client_chunk}, chunk_memory_mb={self.chunk_memory_mb}")
        if self.eval_every < 1 or self.checkpoint_every < 0:
            errs.append("train.eval_every must be >= 1 and train.checkpoint_every >= 0")
        if errs:
            raise ValueError("invalid training options:\n  " + "\n  ".join(errs))
        return self

    def learning_rate(self, round_: int) -> float:
        """The learning rate of 0-indexed round `round_`."""
        lr = self.lr
        if self.lr_decay_every:
            lr *= self.lr_decay ** (round_ // self.lr_decay_every)
        if self.lr_drop_at and round_ > int(self.lr_drop_at * self.rounds):
            lr *= self.lr_drop_factor
        return lr


def state_bytes(variables) -> int:
    """Bytes of the full model state one client sends (or receives) per round:
    parameters and BatchNorm statistics, plus 8 bytes per BatchNorm layer for the
    int64 step counter a PyTorch state_dict carries (num_batches_tracked). With it,
    CNN-4 on CIFAR-10 reproduces the paper's Table III: 7090.94 MiB for 800 rounds x
    10 clients up and down."""
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(variables))
    bn_layers = len(jax.tree.leaves(variables.get("batch_stats", {}))) // 2
    return total + 8 * bn_layers


def padding_waste(n: np.ndarray, steps: np.ndarray, batch_size: int, max_steps: int,
                  by_epochs: bool = True, strategy: str = "vmap", client_chunk: int = 0) -> float:
    """Fraction of the compiled sample slots that are padding: masked steps (vmap,
    sharded and chunked run each vmapped group to its largest step count; sequential
    and bucketed run none) plus the padded part of each epoch's last partial batch.
    `max_steps` bounds the vmap strategy's loop."""
    used = 0
    for nk, sk in zip(n.tolist(), steps.tolist()):
        if nk == 0:
            continue
        if not by_epochs:  # fixed steps: full batches (wrapping)
            used += sk * batch_size
            continue
        spe = -(-nk // batch_size)
        full, rest = divmod(sk, spe)
        used += full * nk + min(rest * batch_size, nk)
    if strategy in ("vmap", "sharded"):
        executed = len(n) * max_steps
    else:
        executed = execution.executed_steps(strategy, steps, chunk=client_chunk)
    total = executed * batch_size
    return 1.0 - used / total if total else 0.0


def select_clients(num_clients: int, participation: float, seed: int, round_: int) -> np.ndarray:
    """The clients taking part in a round: a seeded choice without replacement."""
    m = max(1, int(round(participation * num_clients)))
    if m >= num_clients:
        return np.arange(num_clients)
    rng = np.random.default_rng([seed, round_, 0x5E1EC7])
    return np.sort(rng.choice(num_clients, size=m, replace=False))


def round_key(seed: int, round_: int) -> jax.Array:
    """The PRNG key of round r (1-based): fold_in(PRNGKey(seed), r)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), round_)


def client_key(key: jax.Array, client_id) -> jax.Array:
    """Client k's local-update key in a round: fold_in(round key, k). A client that
    trains alone (a Flower SuperNode) gets the same key as its row of the batch here."""
    return jax.random.fold_in(key, client_id)


def round_hyper(spec: TrainSpec, round_index: int) -> dict:
    """What a round's local updates take besides the data: the learning rate and the
    0-indexed round within the fit (local objectives schedule on it: KAFAL distills
    from the second round, LL4AL detaches its loss module late)."""
    return {"lr": jnp.float32(spec.learning_rate(round_index)), "round": jnp.int32(round_index)}


def local_spec(spec: TrainSpec) -> local.LocalSpec:
    """The one-client local update's static options for these training options."""
    by_epochs = spec.local_steps is None
    return local.LocalSpec(spec.batch_size, spec.momentum, spec.weight_decay,
                           spec.prox_mu if spec.aggregator == "fedprox" else 0.0,
                           epochs=spec.local_epochs if by_epochs else 1, by_epochs=by_epochs,
                           compute_dtype=spec.compute_dtype)


def make_round_fn(model, spec: TrainSpec, preprocess: Callable, mesh=None, objective: Callable | None = None):
    """One jitted round: local updates of the selected clients, then aggregation.

    round_fn(global_vars, x, y, n, steps, client_ids, lr, round_key) -> (vars, stats)
    where x, y, n, steps are already the selected clients' rows.
    """
    run = execution.lift(local.make_local_update(model, local_spec(spec), preprocess, objective),
                         spec.strategy, mesh,
                         chunk=spec.client_chunk, chunk_memory_bytes=spec.chunk_memory_mb * MIB)
    weights = aggregators.WEIGHTS[spec.aggregator]

    def round_fn(global_vars, x, y, n, steps, client_ids, lr, round_key):
        keys = jax.vmap(lambda i: client_key(round_key, i))(client_ids)
        return run(global_vars, x, y, n, steps, lr, keys, weights(n, steps, momentum=spec.momentum))

    return jax.jit(round_fn)


def make_client_models_fn(model, spec: TrainSpec, preprocess: Callable, objective: Callable | None = None):
    """The clients' models after one round's local update, before aggregation, stacked
    (vmapped): client_models(global_vars, x, y, n, steps, client_ids, lr, round_key) with
    make_round_fn's arguments; the same keys, so the same models that round averaged
    (KAFAL queries with each client's model after its last local update)."""
    update = jax.vmap(local.make_local_update(model, local_spec(spec), preprocess, objective),
                      in_axes=(None, 0, 0, 0, 0, None, 0))

    def client_models(global_vars, x, y, n, steps, client_ids, lr, round_key):
        keys = jax.vmap(lambda i: client_key(round_key, i))(client_ids)
        return update(global_vars, x, y, n, steps, lr, keys)[0]

    return jax.jit(client_models)


def batched(apply: Callable, x: np.ndarray, batch_size: int):
    """apply(xb) over x in fixed-size batches (the last one zero-padded to the same static
    shape: one compile), outputs concatenated on the host."""
    outs = []
    # Batch sizes bucketed to powers of two below batch_size: few compiles for many sizes.
    bs = max(1, min(batch_size, 1 << max(len(x) - 1, 0).bit_length()))
    for start in range(0, len(x), bs):
        xb = x[start : start + bs]
        real = len(xb)
        if real < bs:
            xb = np.concatenate([xb, np.zeros((bs - real,) + xb.shape[1:], xb.dtype)])
        outs.append(jax.tree.map(lambda o: np.asarray(o)[:real], apply(xb)))
    return jax.tree.map(lambda *o: np.concatenate(o), *outs)


def make_eval_fn(model, preprocess: Callable):
    @jax.jit
    def predict(variables, xb):
        return jnp.argmax(model.apply(variables, preprocess(xb), train=False), axis=-1)

    def evaluate(variables, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Predicted labels for all of x."""
        return batched(lambda xb: predict(variables, xb), x, batch_size)

    return evaluate


def make_features_fn(model, preprocess: Callable):
    """features(variables, x, batch_size) -> (logits (n, C), softmax probabilities (n, C),
    penultimate features (n, d)) of the model in eval mode, as float32 numpy (what query
    strategies read)."""
    @jax.jit
    def forward(variables, xb):
        logits, h = model.apply(variables, preprocess(xb), train=False, outputs="features")
        logits = logits.astype(jnp.float32)
        return logits, jax.nn.softmax(logits, axis=-1), h.astype(jnp.float32)

    def features(variables, x: np.ndarray, batch_size: int):
        if len(x) == 0:
            shapes = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
            return tuple(np.zeros((0,) + s.shape[1:], np.float32) for s in shapes)
        return batched(lambda xb: forward(variables, xb), x, batch_size)

    return features


def nonfinite_error(round_: int, client: int, loss, good: int | None, workdir) -> FloatingPointError:
    """The error that stops a run whose client `client` had a non-finite loss."""
    return FloatingPointError(
        f"round {round_}: client {client} produced a non-finite loss ({loss}); "
        + (f"stopping. The last good checkpoint is round {good} in {workdir}; "
           if good is not None else f"stopping after round {round_ - 1}, the last good one; ")
        + "lower train.lr or check the data")


@dataclasses.dataclass
class FitResult:
    variables: Any
    history: list[dict]
    comm_mib: float
    padding_waste: float
    train_seconds: float
    before_last: Any = None  # the global model before the last round (keep_before_last, when run here)


# ---------------------------------------------------------------- a fit's steps
# `fit` runs them for one run; `experiments.fit_group` runs the same ones for each of
# many experiments trained as one computation, so both write the same files and rows.


@dataclasses.dataclass
class Run:
    """One fit's bookkeeping: the work directory's checkpoints and metrics log (None
    without a work directory), the rows so far, the first round still to run, the MiB
    communicated so far."""

    steps_all: np.ndarray  # local steps per client
    waste: float  # padding_waste
    workdir: Path | None
    ckpt: Any
    metrics: Any
    history: list
    start_round: int
    comm: float


def open_run(clients: ClientArrays, spec: TrainSpec, variables, *, workdir=None, round_offset: int = 0,
             extra_comm_bytes: int = 0, log: Callable[[str], None] = print):
    """Check the options, count the clients' local steps, open `workdir` and resume from
    it (`resume.resume`, the rules the deployment's server follows too). Returns
    (Run, the variables to start from)."""
    spec.validate()
    steps_all = local.steps_per_client(clients.n, spec.batch_size, spec.local_epochs, spec.local_steps)
    max_steps = int(steps_all.max())
    if max_steps == 0:
        raise ValueError("every client has an empty training set")
    waste = padding_waste(clients.n, steps_all, spec.batch_size, max_steps, spec.local_steps is None,
                          spec.strategy, spec.client_chunk)
    workdir = Path(workdir) if workdir is not None else None
    run = Run(steps_all, waste, workdir, None, None, [], round_offset + 1, extra_comm_bytes / MIB)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        run.ckpt = checkpoints.Checkpoints(workdir / "checkpoints")
        run.metrics = checkpoints.MetricsLog(workdir / "metrics.jsonl")
        variables, run.history, run.start_round, run.comm = resume.resume(
            run.ckpt, run.metrics, variables, last_round=round_offset + spec.rounds, round_offset=round_offset,
            extra_comm_mib=extra_comm_bytes / MIB, log=log)
    return run, variables


def round_rows(run: Run, clients: ClientArrays, spec: TrainSpec, r: int, mesh=None):
    """Round r's selected clients, padded with empty zero-weight rows (client 0, n = 0)
    that fill a device mesh evenly: (rows, n, steps) per row, int32."""
    sel = select_clients(clients.num_clients, spec.participation, spec.seed, r)
    m = execution.padded_client_count(len(sel), spec.strategy, mesh)
    rows = np.concatenate([sel, np.zeros(m - len(sel), np.int64)]).astype(np.int32)
    real = np.arange(m) < len(sel)
    return (rows, np.where(real, clients.n[rows], 0).astype(np.int32),
            np.where(real, run.steps_all[rows], 0).astype(np.int32))


def check_finite(run: Run, r: int, losses: np.ndarray, rows: np.ndarray, n_r: np.ndarray):
    """The error that stops the run when a real client's loss in round r is not finite
    (naming the round, the client and the last good checkpoint), else None."""
    real = n_r > 0
    if np.all(np.isfinite(losses[real])):
        return None
    pos = int(np.flatnonzero(~np.isfinite(losses) & real)[0])
    return nonfinite_error(r, int(rows[pos]), losses[pos], run.ckpt.latest() if run.ckpt is not None else None,
                           run.workdir)


def count_comm(run: Run, n_r: np.ndarray, bytes_per_client: int) -> int:
    """Adds round's traffic (each real client's state down and up) to run.comm; returns
    the number of clients that took part."""
    m = int(np.sum(n_r > 0))
    run.comm += 2 * m * bytes_per_client / MIB
    return m


def eval_due(spec: TrainSpec, r: int, round_offset: int) -> bool:
    return (r - round_offset) % spec.eval_every == 0 or r == round_offset + spec.rounds


def checkpoint_due(spec: TrainSpec, r: int, round_offset: int, keep_before_last: bool) -> bool:
    """Every spec.checkpoint_every rounds, at the last round, and (keep_before_last) the
    round before it."""
    last_round = round_offset + spec.rounds
    return bool((spec.checkpoint_every and (r - round_offset) % spec.checkpoint_every == 0) or r == last_round
                or (keep_before_last and r == last_round - 1))


def metrics_row(r: int, losses: np.ndarray, n_r: np.ndarray, lr: float, clients: int, comm: float, *,
                row_extra: dict | None, hit: np.ndarray | None, client_test, seconds: float) -> dict:
    """Round r's metrics row: the sample-weighted loss of its real clients, and, when it
    was evaluated, the accuracy from `hit` (whether each test sample was predicted) and
    per client's test indices."""
    real = n_r > 0
    rec = {"round": r, **(row_extra or {}), "loss": float(np.average(losses[real], weights=n_r[real])),
           "lr": lr, "clients": clients, "comm_mib": comm}
    if hit is not None:
        rec["accuracy"] = float(np.mean(hit))
        if client_test is not None:
            rec["client_accuracy"] = [float(np.mean(hit[ix])) if len(ix) else None for ix in client_test]
    rec["seconds"] = seconds
    return rec


def log_round(run: Run, rec: dict):
    run.history.append(rec)
    if run.metrics is not None:
        run.metrics.append(rec)


def save_checkpoint(run: Run, r: int, variables):
    if run.ckpt is not None:
        run.ckpt.save(r, variables)


def finish(run: Run, plot: bool = True):
    """Close the checkpoints; plot the run's accuracy (accuracy.png) when it has rows."""
    if run.ckpt is not None:
        run.ckpt.close()
    if plot and run.workdir is not None and run.history:
        plot_history(run.metrics.read(), run.workdir / "accuracy.png")


def fit(model, variables, clients: ClientArrays, test_x: np.ndarray, test_y: np.ndarray,
        spec: TrainSpec, preprocess: Callable, *, workdir: str | os.PathLike | None = None,
        client_test: Sequence[np.ndarray] | None = None, extra_comm_bytes: int = 0,
        round_offset: int = 0, row_extra: dict | None = None,
        round_fn: Callable | None = None, evaluate: Callable | None = None, objective: Callable | None = None,
        keep_before_last: bool = False, progress: bool = True, mesh=None,
        log: Callable[[str], None] = print) -> FitResult:
    """Train `model` federatedly from `variables`; resumes from `workdir` checkpoints.

    Writes (when workdir is given) metrics.jsonl (one line per round), checkpoints/
    (orbax, every spec.checkpoint_every rounds and at the end) and accuracy.png.
    extra_comm_bytes: one-off bytes sent before training (e.g. shared embeddings),
    added to the communication count of round 1.

    Several fits can share one work directory as consecutive segments of one run (the
    iterative active-learning loop): rounds are numbered round_offset + 1 ...
    round_offset + spec.rounds (their PRNG keys and client selection follow that global
    number; the learning-rate schedule follows the local one), only checkpoints after
    round_offset are resumed from, communication continues from the metrics row of
    round_offset, and row_extra is added to every metrics row. Passing the `round_fn` (make_round_fn) and
    `evaluate` (make_eval_fn) of an earlier segment reuses their compiled code (objective:
    the local objective a round built here trains with; `experiments` lifts it too).
    keep_before_last: also checkpoint the global model before the last round
    and return it (`FitResult.before_last`), from which that round's client models can be
    recomputed (`make_client_models_fn`).
    """
    run, variables = open_run(clients, spec, variables, workdir=workdir, round_offset=round_offset,
                              extra_comm_bytes=extra_comm_bytes, log=log)
    # Index clients (`source`) gathered on the host: one run alone needs only its clients' rows.
    held = clients.gathered()
    x_dev = jnp.asarray(held.x)
    y_dev = jax.tree.map(jnp.asarray, held.labels())
    round_fn = round_fn or make_round_fn(model, spec, preprocess, mesh, objective)
    evaluate = evaluate or make_eval_fn(model, preprocess)
    bytes_per_client = state_bytes(variables)
    first, last_round = round_offset + 1, round_offset + spec.rounds
    before_last = None
    t_train = time.perf_counter()
    bar = _progress(range(run.start_round, last_round + 1), progress, spec.rounds, run.start_round - first)
    for r in bar:
        t0 = time.perf_counter()
        rows, n_r, steps_r = round_rows(run, clients, spec, r, mesh)
        new_vars, losses = _train_round(round_fn, variables, x_dev, y_dev, rows, n_r, steps_r, spec, r, first)
        err = check_finite(run, r, losses, rows, n_r)
        if err is not None:
            raise err
        if keep_before_last and r == last_round:
            before_last = variables
        variables = new_vars
        m = count_comm(run, n_r, bytes_per_client)
        hit = evaluate(variables, test_x, spec.eval_batch_size) == test_y if eval_due(spec, r, round_offset) else None
        rec = metrics_row(r, losses, n_r, spec.learning_rate(r - first), m, run.comm, row_extra=row_extra, hit=hit,
                          client_test=client_test, seconds=time.perf_counter() - t0)
        log_round(run, rec)
        if checkpoint_due(spec, r, round_offset, keep_before_last):
            save_checkpoint(run, r, variables)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec.get('accuracy', float('nan')):.3f}",
                            mib=f"{run.comm:.0f}")
    train_seconds = time.perf_counter() - t_train
    finish(run)
    return FitResult(variables, run.history, run.comm, run.waste, train_seconds, before_last)


def _train_round(round_fn, variables, x_dev, y_dev, rows, n_r, steps_r, spec: TrainSpec, r: int, first: int):
    """One round on the device: the selected clients' rows (no gather under full
    participation), local updates, aggregation. Returns (variables, losses on the host)."""
    k = x_dev.shape[0]
    if len(rows) == k and np.array_equal(rows, np.arange(k)):
        args = (x_dev, y_dev)
    else:
        rows_dev = jnp.asarray(rows)
        args = (x_dev[rows_dev], jax.tree.map(lambda a: a[rows_dev], y_dev))
    new_vars, stats = round_fn(variables, *args, jnp.asarray(n_r), jnp.asarray(steps_r), jnp.asarray(rows, jnp.int32),
                               round_hyper(spec, r - first), round_key(spec.seed, r))
    return new_vars, np.asarray(stats["loss"])


def _progress(it, enabled: bool, total: int, initial: int):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, initial=initial, desc="rounds", unit="round", dynamic_ncols=True)


def plot_history(history: list[dict], path: Path, boundaries=()):
    """Test accuracy against rounds and against MiB communicated. boundaries: (round,
    label) pairs marked as labelled vertical lines on the rounds axis (the active loop's
    AL rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [h for h in history if "accuracy" in h]
    if not ev:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot([h["round"] for h in ev], [h["accuracy"] for h in ev], marker=".")
    axes[0].set(xlabel="round", ylabel="test accuracy", title="accuracy vs rounds")
    for x, label in boundaries:
        axes[0].axvline(x, color="0.6", lw=0.8, ls="--")
        axes[0].text(x, 0.02, f" {label}", rotation=90, fontsize=7, color="0.4", va="bottom")
    axes[1].plot([h["comm_mib"] for h in ev], [h["accuracy"] for h in ev], marker=".", color="C1")
    axes[1].set(xlabel="MiB communicated (up + down)", ylabel="test accuracy",
                title="accuracy vs communication")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)  # from 0: round-to-round noise must not look like a collapse
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
