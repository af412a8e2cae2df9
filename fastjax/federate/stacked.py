"""The experiment axis on the device: what E experiments that share their shapes compute
as one program, and where their arrays live (`experiments` runs the rounds).

`make_experiment_round` lifts the one-experiment round (the one-client local update
lifted by any execution strategy, then aggregation) over experiments, with `jax.vmap`
(one batched program) or `lax.map` (one after another in one call: `experiment_axis`):
global variables stacked (E, ...), clients (E, K, ...), aggregation and evaluation per
experiment. The local update is still written once, for one client; the lift over
experiments is a switch, as the lift over clients is.

Data shared, not copied: clients hold indices (E, K, capacity) into one device-resident
copy of every distinct training set of the group (`share`); the local update gathers
each batch from it (`preprocess(data[index])`), so E experiments over the same images
hold the images once. Clients built without a source (pixel clients) become their own
source: correct, but copied. `placement` splits the experiments over a device mesh.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fastjax.federate import aggregators, engine, execution, local


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


# --------------------------------------------------------------------- compiled parts


# How the one-experiment round is lifted over the experiment axis: "vmap" (one batched
# program: the accelerator's choice) or "map" (`lax.map`: the experiments one after another
# inside one compiled call, still without a host round trip; on a CPU, whose cores a
# batched small model does not fill better, this runs at the solo runs' speed).
EXPERIMENT_AXES = ("vmap", "map")


def experiment_axis(how: str = "auto", mesh=None) -> str:
    """The lift to use: "auto" is "map" on a CPU backend without a mesh, else "vmap"."""
    if how not in EXPERIMENT_AXES + ("auto",):
        raise ValueError(f"experiment axis {how!r}; allowed: auto, {', '.join(EXPERIMENT_AXES)}")
    if how == "map" and mesh is not None:
        raise ValueError("the experiment axis 'map' runs on one device; a mesh splits experiments with 'vmap'")
    if how == "auto":
        return "map" if mesh is None and jax.default_backend() == "cpu" else "vmap"
    return how


def _lift(one: Callable, how: str) -> Callable:
    """one(per_experiment, shared, *per_experiment) lifted over the leading experiment axis of
    every argument but the second (the shared data)."""
    if how == "vmap":
        return jax.vmap(one, in_axes=(0, None) + (0,) * (one.__code__.co_argcount - 2))

    def mapped(first, shared, *rest):
        return jax.lax.map(lambda a: one(a[0], shared, *a[1:]), (first, *rest))

    return mapped


def make_experiment_round(model, spec: engine.TrainSpec, preprocess: Callable, mesh=None,
                          objective: Callable | None = None, how: str = "vmap"):
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

    return jax.jit(_lift(one, how))


def eval_batch(n: int, batch_size: int) -> int:
    """The evaluation batch `engine.batched` uses for n samples."""
    return max(1, min(batch_size, 1 << max(n - 1, 0).bit_length()))


def make_experiment_eval(model, preprocess: Callable, n: int, batch_size: int, how: str = "vmap"):
    """hits(vars (E, ...), data (N, ...), offset (E,), y (E, n)) -> (E, n) bool: whether
    each experiment's model predicts its test samples data[offset_e : offset_e + n]."""
    bs = eval_batch(n, batch_size)
    nb = -(-n // bs)

    def one(variables, data, offset, y):
        ix = offset + jnp.minimum(jnp.arange(nb * bs), n - 1).reshape(nb, bs)
        pred = jax.lax.map(lambda i: jnp.argmax(model.apply(variables, preprocess(data[i]), train=False),
                                                axis=-1), ix)
        return pred.reshape(-1)[:n] == y

    return jax.jit(_lift(one, how))


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


def device_inputs(clients: list[engine.ClientArrays]):
    """Device inputs of a group's clients: (data, index (E, K, cap), labels (E, K, cap, ...))."""
    pairs = [_client_index(c) for c in clients]
    src = share([p[0] for p in pairs])
    cap = max(p[1].shape[1] for p in pairs)
    index = np.stack([_pad_to(p[1], cap) + o for p, o in zip(pairs, src.offsets)])

    # Labels and weights padded to the group's capacity; the objective's per-client aux
    # arrays (their own shapes) only stacked, those holding row indices (aux_index) moved
    # to their experiment's rows of the shared data, as the clients' own indices.
    stack = lambda *a: np.stack(a)  # noqa: E731
    aux = None
    if clients[0].aux is not None:
        for c in clients:
            if c.aux_index and c.source is None:
                raise ValueError(f"aux arrays {c.aux_index} hold row indices but the clients have no source")
        aux = jax.tree.map(stack, *[{k: np.asarray(v) + o if k in c.aux_index else v for k, v in c.aux.items()}
                                    for c, o in zip(clients, src.offsets)])
    y = dataclasses.replace(
        clients[0], y=np.stack([_pad_to(c.y, cap) for c in clients]),
        w=None if clients[0].w is None else np.stack([_pad_to(c.w, cap) for c in clients]), aux=aux,
    ).labels()
    return jnp.asarray(src.data), jnp.asarray(index), jax.tree.map(jnp.asarray, y)


# ------------------------------------------------------------------------- placement


def experiment_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with the axis name 'experiments'; with
    `jax.distributed.initialize()` it spans every process's devices."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("experiments",))


def placement(mesh: Mesh | None, e: int):
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
