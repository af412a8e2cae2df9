"""The experiment axis: E experiments that share their shapes train as one compiled round.

Clients are a batch axis inside a round (`execution`); experiments are another, outside
it. What the group computes and where its arrays live (the round lifted over
experiments, the data held once, the mesh) is `stacked`; this module runs the rounds.

No host round trip per round: rounds are dispatched one after another; losses and
test-set hits stay on the device and are read back at checkpoint boundaries (and the
last round), where the NaN check runs: an experiment whose loss went non-finite stops
with the error `engine.fit` gives (naming the round and client), keeping its rows and
checkpoints before that round; the others go on. The bookkeeping of each experiment
(resume, NaN check, metrics rows, checkpoints, plot) is `engine.fit`'s own steps.

`fit_experiments(requests)` is `engine.fit` for many experiments: each request is the
arguments of one `engine.fit` call; requests are grouped by `signature` (what enters the
compiled round: model, shapes, static training options), each group runs as one
computation (`experiments_per_call` at a time), and every request gets the `FitResult`
(or the exception) its solo `engine.fit` gives, having written the same work directory
(metrics.jsonl, checkpoints/, accuracy.png). `Rendezvous` lets ordinary one-experiment
code (a method's `run`) call it as if it were `engine.fit` from many threads.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fastjax.federate import engine, execution
from fastjax.federate.stacked import (device_inputs, experiment_axis, experiment_mesh, fn_key,
                                      make_experiment_eval, make_experiment_round, placement, share)

__all__ = ["FitRequest", "Rendezvous", "experiment_bytes", "experiment_mesh", "fit_experiments", "fit_group",
           "signature", "stack_inputs"]

# TrainSpec fields that only set per-round values (learning rate, seed: keys, client
# choice): experiments differing in them share one compiled round.
VALUE_FIELDS = ("lr", "lr_decay", "lr_decay_every", "lr_drop_at", "lr_drop_factor", "seed", "participation")


@dataclasses.dataclass
class FitRequest:
    """The arguments of one `engine.fit` call (options: its keyword arguments)."""

    model: Any
    variables: Any
    clients: engine.ClientArrays
    test_x: np.ndarray
    test_y: np.ndarray
    spec: engine.TrainSpec
    preprocess: Callable
    options: dict = dataclasses.field(default_factory=dict)


def _shapes(tree) -> tuple:
    return tuple((str(p), np.shape(v), str(np.asarray(v).dtype))
                 for p, v in jax.tree_util.tree_flatten_with_path(tree)[0])


def _participants(req: FitRequest) -> int:
    k = req.clients.num_clients
    m = len(engine.select_clients(k, req.spec.participation, req.spec.seed, 1))
    return execution.padded_client_count(m, req.spec.strategy, req.options.get("mesh"))


def _static(spec: engine.TrainSpec) -> engine.TrainSpec:
    """The options that enter the compiled round (value fields at their defaults)."""
    return dataclasses.replace(spec, **{f: engine.TrainSpec.__dataclass_fields__[f].default for f in VALUE_FIELDS})


# Compiled rounds and evaluations by what they compute: jit caches by function identity,
# and every fit (each AL round of the loop, each group) builds its functions anew.
_COMPILED: dict = {}


def _memo(key: tuple, build: Callable):
    if key not in _COMPILED:
        if len(_COMPILED) >= 32:
            _COMPILED.clear()
        _COMPILED[key] = build()
    return _COMPILED[key]


def signature(req: FitRequest) -> tuple:
    """What must be equal for experiments to share one compiled round."""
    c = req.clients
    source = c.source if c.source is not None else c.x[0]
    static = _static(req.spec)
    o = req.options
    return (req.model, static, fn_key(req.preprocess), source.shape[1:] if c.source is not None else c.x.shape[2:],
            str(source.dtype), c.num_clients, _participants(req), jax.tree.structure(c.labels()),
            tuple(np.shape(a)[2:] for a in (c.y, c.w) if a is not None),
            _shapes(c.aux) if c.aux is not None else None, _shapes(req.variables), np.shape(req.test_x),
            o.get("round_offset", 0), bool(o.get("keep_before_last")),
            fn_key(o["objective"]) if o.get("objective") is not None else None,
            o.get("client_test") is None)


# ------------------------------------------------------------------------- the loop


def stack_inputs(reqs: list[FitRequest]):
    """Device inputs of a group: (data, index (E, K, cap), labels (E, K, cap, ...))."""
    return device_inputs([r.clients for r in reqs])


@dataclasses.dataclass
class _Experiment:
    """One experiment of a joint fit: its request, its `engine.Run`, the error that
    stopped it, and its rounds run but not yet read back."""

    req: FitRequest
    run: engine.Run
    error: Exception | None = None
    before_last: Any = None
    pending: list = dataclasses.field(default_factory=list)  # (round, lr, clients, comm, rows, n) awaiting losses


def _open(req: FitRequest, first: int) -> _Experiment:
    o = req.options
    run, req.variables = engine.open_run(req.clients, req.spec, req.variables, workdir=o.get("workdir"),
                                         round_offset=first - 1, extra_comm_bytes=o.get("extra_comm_bytes", 0),
                                         log=o.get("log", print))
    return _Experiment(req, run)


def _flush(ex: _Experiment, losses: dict, hits: dict, e: int, live_vars, r_now: int, seconds: float):
    """Finish experiment e's pending rounds with their device values (read back now):
    `engine.fit`'s NaN check, metrics rows and the checkpoint of this boundary."""
    o = ex.req.options
    for r, lr, clients, comm, rows, n_r in ex.pending:
        ex.error = engine.check_finite(ex.run, r, losses[r][e], rows, n_r)
        if ex.error is not None:
            ex.pending = []
            return
        engine.log_round(ex.run, engine.metrics_row(
            r, losses[r][e], n_r, lr, clients, comm, row_extra=o.get("row_extra"),
            hit=hits[r][e] if r in hits else None, client_test=o.get("client_test"), seconds=seconds))
    ex.pending = []
    if r_now >= ex.run.start_round:
        engine.save_checkpoint(ex.run, r_now, jax.tree.map(lambda a: a[e], live_vars))


def fit_group(reqs: list[FitRequest], *, mesh: Mesh | None = None, axis: str = "auto") -> list:
    """Run requests that share one `signature` as one computation; returns each one's
    `engine.FitResult`, or the exception that stopped it. mesh: an `experiment_mesh` to
    split the experiments over (None: the default device). axis: how the round is lifted
    over experiments (`stacked.experiment_axis`: vmap, map, or auto)."""
    r0 = reqs[0]
    spec0, o0 = r0.spec, r0.options
    offset = o0.get("round_offset", 0)
    first, last_round = offset + 1, offset + spec0.rounds
    out: list = [None] * len(reqs)
    exps: list[_Experiment] = []
    for i, req in enumerate(reqs):
        try:
            exps.append(_open(req, first))
        except Exception as err:  # noqa: BLE001 - that experiment fails, the others go on
            out[i] = err
    live = [i for i in range(len(reqs)) if out[i] is None]
    if not live:
        return out
    group = [reqs[i] for i in live]
    put, round_fn, evaluate, inputs, variables = _place_group(group, mesh, experiment_axis(axis, mesh))
    bytes_per_client = engine.state_bytes(r0.variables)
    keep_before_last = bool(o0.get("keep_before_last"))
    losses: dict = {}
    hits: dict = {}
    t_train = time.perf_counter()
    t_mark = t_train
    for r in range(min(ex.run.start_round for ex in exps), last_round + 1):
        active = np.array([ex.run.start_round <= r and ex.error is None for ex in exps])
        ins = [engine.round_rows(ex.run, ex.req.clients, ex.req.spec, r, ex.req.options.get("mesh")) for ex in exps]
        lrs = [ex.req.spec.learning_rate(r - first) for ex in exps]
        hyper = {"lr": np.asarray(lrs, np.float32), "round": np.full((len(exps),), r - first, np.int32)}
        keys = jnp.stack([engine.round_key(ex.req.spec.seed, r) for ex in exps])  # stays on the device
        if keep_before_last and r == last_round:
            before = variables
        per_round = put((np.stack([x[1] for x in ins]), np.stack([x[2] for x in ins]), np.stack([x[0] for x in ins]),
                         hyper, keys, active))
        variables, stats = round_fn(variables, *inputs["train"], *per_round)
        losses[r] = stats["loss"]  # on the device until the next boundary
        if engine.eval_due(spec0, r, offset):
            hits[r] = evaluate(variables, *inputs["test"])
        for ex, (rows, n_r, _), lr, on in zip(exps, ins, lrs, active):
            if on:
                m = engine.count_comm(ex.run, n_r, bytes_per_client)
                ex.pending.append((r, lr, m, ex.run.comm, rows, n_r))
        if not engine.checkpoint_due(spec0, r, offset, keep_before_last):
            continue
        host_losses = {rr: np.asarray(v) for rr, v in losses.items()}
        host_hits = {rr: np.asarray(v) for rr, v in hits.items()}
        seconds = (time.perf_counter() - t_mark) / max(len(losses), 1)
        for j, ex in enumerate(exps):
            if ex.error is None and ex.pending:
                _flush(ex, host_losses, host_hits, j, variables, r, seconds)
            if keep_before_last and r == last_round and ex.error is None:
                ex.before_last = jax.tree.map(lambda a: a[j], before)
        losses, hits, t_mark = {}, {}, time.perf_counter()
    train_seconds = time.perf_counter() - t_train
    for j, (i, ex) in enumerate(zip(live, exps)):
        engine.finish(ex.run, plot=ex.error is None)
        out[i] = ex.error if ex.error is not None else engine.FitResult(
            jax.tree.map(lambda a: a[j], variables), ex.run.history, ex.run.comm, ex.run.waste, train_seconds,
            ex.before_last)
    return out


def _place_group(group: list[FitRequest], mesh: Mesh | None, how: str):
    """A group's compiled round and evaluation (built once per kind), its inputs placed on
    the device(s): returns (put, round_fn, evaluate, {"train": (data, index, y), "test":
    (data, offsets, y)}, stacked variables); put places per-experiment arrays."""
    r0 = group[0]
    spec0, o0 = r0.spec, r0.options
    obj = o0.get("objective")
    compiled = (engine.local_spec(spec0), spec0.aggregator, spec0.strategy, spec0.client_chunk, spec0.chunk_memory_mb)
    round_fn = _memo(("round", r0.model, compiled, fn_key(r0.preprocess), o0.get("mesh"),
                      fn_key(obj) if obj is not None else None, how),
                     lambda: make_experiment_round(r0.model, spec0, r0.preprocess, o0.get("mesh"), obj, how))
    n_test = len(r0.test_x)
    evaluate = _memo(("eval", r0.model, fn_key(r0.preprocess), n_test, spec0.eval_batch_size, how),
                     lambda: make_experiment_eval(r0.model, r0.preprocess, n_test, spec0.eval_batch_size, how))
    put, put_shared = placement(mesh, len(group))
    data, index, y = stack_inputs(group)
    test = share([np.asarray(r.test_x) for r in group])
    test_off, test_y = put((np.asarray(test.offsets, np.int32), np.stack([np.asarray(r.test_y) for r in group])))
    inputs = {"train": (put_shared(data), *put((index, y))), "test": (put_shared(test.data), test_off, test_y)}
    variables = put(jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *[r.variables for r in group]))
    return put, round_fn, evaluate, inputs, variables


def experiment_bytes(req: FitRequest) -> int:
    """Device bytes one more experiment like `req` costs in a joint round: XLA's compiled
    memory analysis of the round for one experiment (temporaries, outputs and its own
    arguments; the shared training set excluded). An upper bound per experiment."""
    o = req.options
    round_fn = make_experiment_round(req.model, req.spec, req.preprocess, o.get("mesh"), o.get("objective"))
    data, index, y = stack_inputs([req])
    m = _participants(req)
    ints = np.zeros((1, m), np.int32)
    args = (jax.tree.map(lambda a: np.asarray(a)[None], req.variables), data, index, y, ints, ints, ints,
            {"lr": np.zeros(1, np.float32), "round": np.zeros(1, np.int32)},
            jnp.stack([engine.round_key(0, 1)]), np.ones(1, bool))
    mem = round_fn.lower(*args).compile().memory_analysis()
    if mem is None:
        raise ValueError("this backend reports no compiled memory analysis; give experiments per call instead "
                         "of a memory budget")
    return int(mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes - data.nbytes)


def fit_experiments(reqs: list[FitRequest], *, experiments_per_call: int = 0, memory_mb: float = 0,
                    mesh: Mesh | None = None, axis: str = "auto") -> list:
    """`engine.fit` for many requests: grouped by `signature`, each group run as one
    computation of at most `experiments_per_call` experiments (0: all, or as many as fit
    `memory_mb` of device memory by `experiment_bytes`) at a time, groups
    one after another. Returns one FitResult or exception per request, in order."""
    groups: dict = {}
    out: list = [None] * len(reqs)
    for i, r in enumerate(reqs):
        try:
            groups.setdefault(signature(r), []).append(i)
        except Exception as err:  # noqa: BLE001
            out[i] = err
    for members in groups.values():
        step = experiments_per_call or len(members)
        if memory_mb > 0 and not experiments_per_call:
            step = int(max(1, min(len(members), memory_mb * engine.MIB // experiment_bytes(reqs[members[0]]))))
        for s in range(0, len(members), step):
            part = members[s:s + step]
            try:
                res = fit_group([reqs[i] for i in part], mesh=mesh, axis=axis)
            except Exception as err:  # noqa: BLE001 - this group's experiments fail, not the others'
                res = [err] * len(part)
            for i, r in zip(part, res):
                out[i] = r
    return out


class Rendezvous:
    """Lets E threads, each running ordinary one-experiment code, train jointly: each
    calls `fit` (engine.fit's signature) where it would call `engine.fit`; when every
    thread still running is waiting in `fit`, their requests run as `fit_experiments`
    and each thread gets its own result. Host code between fits runs one thread at a
    time (the baton), so stages that are not thread-safe (plots) stay safe."""

    def __init__(self, experiments: int, *, experiments_per_call: int = 0, memory_mb: float = 0,
                 mesh: Mesh | None = None, axis: str = "auto"):
        self._cond = threading.Condition()
        self._running = experiments
        self._waiting: dict[int, FitRequest] = {}
        self._results: dict[int, Any] = {}
        self._per_call, self._memory_mb = experiments_per_call, memory_mb
        self._mesh, self._axis = mesh, experiment_axis(axis, mesh)

    def __enter__(self):  # the baton, held while a thread runs its own host code
        self._cond.acquire()
        return self

    def __exit__(self, *exc):
        self._running -= 1
        self._maybe_run()
        self._cond.release()

    def fit(self, model, variables, clients, test_x, test_y, spec, preprocess, **options):
        me = threading.get_ident()
        options.pop("round_fn", None)  # compiled per experiment; the joint round replaces them
        options.pop("evaluate", None)
        self._waiting[me] = FitRequest(model, variables, clients, test_x, test_y, spec, preprocess, options)
        self._maybe_run()
        while me not in self._results:
            self._cond.wait()
        res = self._results.pop(me)
        if isinstance(res, BaseException):
            raise res
        return res

    def _maybe_run(self):
        if not self._waiting or len(self._waiting) < self._running:
            return
        ids, reqs = list(self._waiting), list(self._waiting.values())
        self._waiting.clear()
        try:
            res = fit_experiments(reqs, experiments_per_call=self._per_call, memory_mb=self._memory_mb,
                                  mesh=self._mesh, axis=self._axis)
        except BaseException as err:  # noqa: BLE001 - every waiter learns of it
            res = [err] * len(reqs)
        self._results.update(zip(ids, res))
        self._cond.notify_all()
