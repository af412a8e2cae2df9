"""The experiment axis: E experiments that share their shapes train as one compiled round.

Clients are a batch axis inside a round (`execution`); experiments are another, outside
it. `make_experiment_round` lifts the one-experiment round (the one-client local update
lifted by any execution strategy, then aggregation) with `jax.vmap` over experiments:
global variables stacked (E, ...), clients (E, K, ...), aggregation and evaluation per
experiment. The local update is still written once, for one client.

Data shared, not copied: clients hold indices (E, K, capacity) into one device-resident
copy of every distinct training set of the group (`Sources`); the local update gathers
each batch from it (`preprocess(data[index])`), so E experiments over the same images
hold the images once. Requests built without a source (pixel clients) become their own
source: correct, but copied.

No host round trip per round: rounds are dispatched one after another; losses and
test-set hits stay on the device and are read back at checkpoint boundaries (and the
last round), where the NaN check runs: an experiment whose loss went non-finite stops
with the error `engine.fit` gives (naming the round and client), keeping its rows and
checkpoints before that round; the others go on.

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
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fastjax.federate import aggregators, checkpoints, engine, execution, local, resume

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


def fn_key(fn) -> tuple:
    """An identity for a preprocessing function that two experiments built alike share:
    its code and the values it closes over (e.g. the channel mean and std)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return (id(fn),)
    cells = []
    for c in fn.__closure__ or ():
        v = c.cell_contents
        cells.append(_digest(np.asarray(v)) if isinstance(v, (np.ndarray, jax.Array)) else repr(v))
    return (code, tuple(cells))


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{a.dtype}{a.shape}" + hashlib.sha1(a.view(np.uint8).reshape(-1)).hexdigest()


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


# --------------------------------------------------------------------- compiled parts


def make_experiment_round(model, spec: engine.TrainSpec, preprocess: Callable, mesh=None,
                          objective: Callable | None = None):
    """One jitted round of E experiments:

    round(vars (E, ...), data (N, ...), index (E, K, cap), y (E, K, cap, ...), n (E, m),
          steps (E, m), rows (E, m), hyper (E,), key (E,), active (E,)) -> (vars, stats)

    rows: the selected clients (padding rows point at client 0 with n = 0); an inactive
    experiment (one resumed past this round) keeps its variables."""
    weights = aggregators.WEIGHTS[spec.aggregator]
    lspec = engine.local_spec(spec)

    def one(global_vars, data, index, y, n, steps, rows, hyper, key, active):
        # The local update reads a batch as preprocess(data[its indices]): the one
        # device copy of the data is gathered from, never replicated per experiment.
        update = local.make_local_update(model, lspec, lambda ix: preprocess(data[ix]), objective)
        run = execution.lift(update, spec.strategy, mesh, chunk=spec.client_chunk,
                             chunk_memory_bytes=spec.chunk_memory_mb * engine.MIB)
        keys = jax.vmap(lambda i: engine.client_key(key, i))(rows)
        take = lambda a: a[rows]  # noqa: E731
        new, stats = run(global_vars, take(index), jax.tree.map(take, y), n, steps, hyper, keys,
                         weights(n, steps, momentum=spec.momentum))
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, global_vars)
        return new, stats

    return jax.jit(jax.vmap(one, in_axes=(0, None, 0, 0, 0, 0, 0, 0, 0, 0)))


def eval_batch(n: int, batch_size: int) -> int:
    """The evaluation batch `engine.batched` uses for n samples."""
    return max(1, min(batch_size, 1 << max(n - 1, 0).bit_length()))


def make_experiment_eval(model, preprocess: Callable, n: int, batch_size: int):
    """hits(vars (E, ...), data (N, ...), offset (E,), y (E, n)) -> (E, n) bool: whether
    each experiment's model predicts its test samples data[offset_e : offset_e + n]."""
    bs = eval_batch(n, batch_size)
    nb = -(-n // bs)

    def one(variables, data, offset, y):
        ix = offset + jnp.minimum(jnp.arange(nb * bs), n - 1).reshape(nb, bs)
        pred = jax.lax.map(lambda i: jnp.argmax(model.apply(variables, preprocess(data[i]), train=False),
                                                axis=-1), ix)
        return pred.reshape(-1)[:n] == y

    return jax.jit(jax.vmap(one, in_axes=(0, None, 0, 0)))


# ----------------------------------------------------------------------- shared data


@dataclasses.dataclass(frozen=True)
class Sources:
    """Every distinct array of a group concatenated once (`data`) and each experiment's
    row offset into it."""

    data: np.ndarray
    offsets: list[int]


def share(arrays: list[np.ndarray]) -> Sources:
    """One copy of each distinct array (same object, or same bytes), concatenated."""
    parts, offsets, seen, total = [], [], {}, 0
    for a in arrays:
        key = id(a) if id(a) in seen else _digest(a)
        if key not in seen:
            seen[key] = seen[id(a)] = total
            parts.append(a)
            total += len(a)
        seen.setdefault(id(a), seen[key])
        offsets.append(seen[key])
    return Sources(parts[0] if len(parts) == 1 else np.concatenate(parts), offsets)


def _client_index(c: engine.ClientArrays) -> tuple[np.ndarray, np.ndarray]:
    """(source, index (K, cap)) of a request's clients; pixel clients are their own source."""
    if c.source is not None:
        return c.source, np.asarray(c.x, np.int32)
    k, cap = c.x.shape[:2]
    return c.x.reshape((k * cap,) + c.x.shape[2:]), np.arange(k * cap, dtype=np.int32).reshape(k, cap)


def _pad_to(a: np.ndarray, cap: int) -> np.ndarray:
    if a.shape[1] == cap:
        return a
    pad = [(0, 0), (0, cap - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad)


def stack_inputs(reqs: list[FitRequest]):
    """Device inputs of a group: (data, index (E, K, cap), labels (E, K, cap, ...))."""
    pairs = [_client_index(r.clients) for r in reqs]
    src = share([p[0] for p in pairs])
    cap = max(p[1].shape[1] for p in pairs)
    index = np.stack([_pad_to(p[1], cap) + o for p, o in zip(pairs, src.offsets)])

    # Labels and weights padded to the group's capacity; the objective's per-client aux
    # arrays (their own shapes) only stacked.
    stack = lambda *a: np.stack(a)  # noqa: E731
    y = dataclasses.replace(
        reqs[0].clients, y=np.stack([_pad_to(r.clients.y, cap) for r in reqs]),
        w=None if reqs[0].clients.w is None else np.stack([_pad_to(r.clients.w, cap) for r in reqs]),
        aux=None if reqs[0].clients.aux is None else jax.tree.map(stack, *[r.clients.aux for r in reqs]),
    ).labels()
    return jnp.asarray(src.data), jnp.asarray(index), jax.tree.map(jnp.asarray, y)


# ------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class _Experiment:
    """One experiment's bookkeeping in a joint fit (what `engine.fit` keeps in locals)."""

    req: FitRequest
    steps_all: np.ndarray
    waste: float
    workdir: Path | None
    ckpt: Any
    metrics: Any
    history: list
    start_round: int
    comm: float
    error: Exception | None = None
    before_last: Any = None
    pending: list = dataclasses.field(default_factory=list)  # rows awaiting their device values


def _open(req: FitRequest, first: int, last_round: int) -> _Experiment:
    spec, o = req.spec, req.options
    spec.validate()
    steps_all = local.steps_per_client(req.clients.n, spec.batch_size, spec.local_epochs, spec.local_steps)
    max_steps = int(steps_all.max())
    if max_steps == 0:
        raise ValueError("every client has an empty training set")
    waste = engine.padding_waste(req.clients.n, steps_all, spec.batch_size, max_steps,
                                 spec.local_steps is None, spec.strategy, spec.client_chunk)
    extra = o.get("extra_comm_bytes", 0) / engine.MIB
    workdir = Path(o["workdir"]) if o.get("workdir") is not None else None
    ex = _Experiment(req, steps_all, waste, workdir, None, None, [], first, extra)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        ex.ckpt = checkpoints.Checkpoints(workdir / "checkpoints")
        ex.metrics = checkpoints.MetricsLog(workdir / "metrics.jsonl")
        req.variables, ex.history, ex.start_round, ex.comm = resume.resume(
            ex.ckpt, ex.metrics, req.variables, last_round=last_round, round_offset=first - 1,
            extra_comm_mib=extra, log=o.get("log", print))
    return ex


def _round_inputs(ex: _Experiment, r: int, first: int, m: int):
    """Host-side inputs of round r for one experiment (no device values read)."""
    spec, k = ex.req.spec, ex.req.clients.num_clients
    sel = engine.select_clients(k, spec.participation, spec.seed, r)
    rows = np.concatenate([sel, np.zeros(m - len(sel), np.int64)]).astype(np.int32)
    real = np.arange(m) < len(sel)
    n_r = np.where(real, ex.req.clients.n[rows], 0).astype(np.int32)
    steps_r = np.where(real, ex.steps_all[rows], 0).astype(np.int32)
    return rows, n_r, steps_r, spec.learning_rate(r - first)


def _flush(ex: _Experiment, losses: dict, hits: dict, e: int, live_vars, r_now: int):
    """Finish experiment e's pending rows with their device values (read back now): the
    NaN check, metrics rows, checkpoints of this boundary."""
    o = ex.req.options
    for rec, rows, n_r in ex.pending:
        r = rec["round"]
        loss = losses[r][e]
        real = n_r > 0
        if not np.all(np.isfinite(loss[real])):
            pos = int(np.flatnonzero(~np.isfinite(loss) & real)[0])
            good = ex.ckpt.latest() if ex.ckpt is not None else None
            ex.error = engine.nonfinite_error(r, int(rows[pos]), loss[pos], good, ex.workdir)
            ex.pending = []
            return
        rec["loss"] = float(np.average(loss[real], weights=n_r[real]))
        if r in hits:
            hit = hits[r][e]
            rec["accuracy"] = float(np.mean(hit))
            if o.get("client_test") is not None:
                rec["client_accuracy"] = [float(np.mean(hit[ix])) if len(ix) else None for ix in o["client_test"]]
        rec = {k: rec[k] for k in ("round", *(o.get("row_extra") or {}), "loss", "lr", "clients", "comm_mib",
                                   "accuracy", "client_accuracy", "seconds") if k in rec}
        ex.history.append(rec)
        if ex.metrics is not None:
            ex.metrics.append(rec)
    ex.pending = []
    if ex.ckpt is not None and r_now >= ex.start_round:
        ex.ckpt.save(r_now, jax.tree.map(lambda a: a[e], live_vars))


def experiment_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with the axis name 'experiments'; with
    `jax.distributed.initialize()` it spans every process's devices."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("experiments",))


def _placement(mesh: Mesh | None, e: int):
    """(put_split, put_shared): per-experiment arrays split over the mesh's 'experiments'
    axis (E padded to a multiple of its size by repeating the last experiment, whose
    copies are never read back), shared ones (the data) replicated."""
    if mesh is None:
        return (lambda tree: jax.tree.map(jnp.asarray, tree)), jnp.asarray
    pad = -e % mesh.devices.size
    split, rep = NamedSharding(mesh, P("experiments")), NamedSharding(mesh, P())

    def put_split(tree):
        return jax.tree.map(lambda a: jax.device_put(jnp.concatenate([a] + [a[-1:]] * pad) if pad else a, split),
                            tree)
    return put_split, lambda a: jax.device_put(a, rep)


def fit_group(reqs: list[FitRequest], *, mesh: Mesh | None = None) -> list:
    """Run requests that share one `signature` as one computation; returns each one's
    `engine.FitResult`, or the exception that stopped it. mesh: an `experiment_mesh` to
    split the experiments over (None: the default device)."""
    r0 = reqs[0]
    spec0, o0 = r0.spec, r0.options
    first = o0.get("round_offset", 0) + 1
    last_round = first - 1 + spec0.rounds
    out: list = [None] * len(reqs)
    exps: list[_Experiment] = []
    for i, req in enumerate(reqs):
        try:
            exps.append(_open(req, first, last_round))
        except Exception as err:  # noqa: BLE001 - that experiment fails, the others go on
            out[i] = err
    live = [i for i in range(len(reqs)) if out[i] is None]
    if not live:
        return out
    exps_by = dict(zip(live, exps))
    group = [reqs[i] for i in live]
    m = _participants(r0)
    obj = o0.get("objective")
    compiled = (engine.local_spec(spec0), spec0.aggregator, spec0.strategy, spec0.client_chunk, spec0.chunk_memory_mb)
    round_fn = _memo(("round", r0.model, compiled, fn_key(r0.preprocess), o0.get("mesh"),
                      fn_key(obj) if obj is not None else None),
                     lambda: make_experiment_round(r0.model, spec0, r0.preprocess, o0.get("mesh"), obj))
    put, put_shared = _placement(mesh, len(group))
    data, index, y = stack_inputs(group)
    data, (index, y) = put_shared(data), put((index, y))
    test = share([np.asarray(r.test_x) for r in group])
    n_test = len(r0.test_x)
    evaluate = _memo(("eval", r0.model, fn_key(r0.preprocess), n_test, spec0.eval_batch_size),
                     lambda: make_experiment_eval(r0.model, r0.preprocess, n_test, spec0.eval_batch_size))
    test_data = put_shared(test.data)
    test_off, test_y = put((np.asarray(test.offsets, np.int32), np.stack([np.asarray(r.test_y) for r in group])))
    variables = put(jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *[r.variables for r in group]))
    bytes_per_client = engine.state_bytes(r0.variables)
    start = min(exps_by[i].start_round for i in live)
    keep_before_last = bool(o0.get("keep_before_last"))
    losses: dict = {}
    hits: dict = {}
    t_train = time.perf_counter()
    t_mark = t_train
    for r in range(start, last_round + 1):
        ins = [_round_inputs(exps_by[i], r, first, m) for i in live]
        active = np.array([exps_by[i].start_round <= r and exps_by[i].error is None for i in live])
        hyper = {"lr": np.asarray([x[3] for x in ins], np.float32),
                 "round": np.full((len(live),), r - first, np.int32)}
        keys = jnp.stack([engine.round_key(reqs[i].spec.seed, r) for i in live])  # stays on the device
        if keep_before_last and r == last_round:
            before = variables
        per_round = put((np.stack([x[1] for x in ins]), np.stack([x[2] for x in ins]), np.stack([x[0] for x in ins]),
                         hyper, keys, active))
        variables, stats = round_fn(variables, data, index, y, *per_round)
        losses[r] = stats["loss"]  # on the device until the next boundary
        evaluated = (r - first + 1) % spec0.eval_every == 0 or r == last_round
        if evaluated:
            hits[r] = evaluate(variables, test_data, test_off, test_y)
        for j, i in enumerate(live):
            ex = exps_by[i]
            if not active[j]:
                continue
            rows, n_r, _, lr = ins[j]
            mm = int(np.sum(n_r > 0))
            ex.comm += 2 * mm * bytes_per_client / engine.MIB
            ex.pending.append(({"round": r, **(ex.req.options.get("row_extra") or {}), "lr": lr,
                                "clients": mm, "comm_mib": ex.comm}, rows, n_r))
        boundary = (r == last_round or (spec0.checkpoint_every and (r - first + 1) % spec0.checkpoint_every == 0)
                    or (keep_before_last and r == last_round - 1))
        if not boundary:
            continue
        host_losses = {rr: np.asarray(v) for rr, v in losses.items()}
        host_hits = {rr: np.asarray(v) for rr, v in hits.items()}
        seconds = (time.perf_counter() - t_mark) / max(len(losses), 1)
        for j, i in enumerate(live):
            ex = exps_by[i]
            for rec, _, _ in ex.pending:
                rec["seconds"] = seconds
            if ex.error is None and ex.pending:
                _flush(ex, host_losses, host_hits, j, variables, r)
            if keep_before_last and r == last_round and ex.error is None:
                ex.before_last = jax.tree.map(lambda a: a[j], before)
        losses, hits, t_mark = {}, {}, time.perf_counter()
    train_seconds = time.perf_counter() - t_train
    for j, i in enumerate(live):
        ex = exps_by[i]
        if ex.ckpt is not None:
            ex.ckpt.close()
        if ex.error is not None:
            out[i] = ex.error
            continue
        if ex.workdir is not None and ex.history:
            engine.plot_history(ex.metrics.read(), ex.workdir / "accuracy.png")
        final = jax.tree.map(lambda a: a[j], variables)
        out[i] = engine.FitResult(final, ex.history, ex.comm, ex.waste, train_seconds, ex.before_last)
    return out


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
                    mesh: Mesh | None = None) -> list:
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
            for i, res in zip(part, fit_group([reqs[i] for i in part], mesh=mesh)):
                out[i] = res
    return out


class Rendezvous:
    """Lets E threads, each running ordinary one-experiment code, train jointly: each
    calls `fit` (engine.fit's signature) where it would call `engine.fit`; when every
    thread still running is waiting in `fit`, their requests run as `fit_experiments`
    and each thread gets its own result. Host code between fits runs one thread at a
    time (the baton), so stages that are not thread-safe (plots) stay safe."""

    def __init__(self, experiments: int, *, experiments_per_call: int = 0, memory_mb: float = 0,
                 mesh: Mesh | None = None):
        self._cond = threading.Condition()
        self._running = experiments
        self._waiting: dict[int, FitRequest] = {}
        self._results: dict[int, Any] = {}
        self._per_call, self._memory_mb = experiments_per_call, memory_mb
        self._mesh = mesh

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
                                  mesh=self._mesh)
        except BaseException as err:  # noqa: BLE001 - every waiter learns of it
            res = [err] * len(reqs)
        self._results.update(zip(ids, res))
        self._cond.notify_all()
