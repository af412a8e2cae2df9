"""How clients run: one switch, the same numbers (to float tolerance).

- "vmap":       clients as a leading batch axis of one computation (the design card's
                shape; on an accelerator all local models train in one step).
- "sequential": `lax.map` over clients inside the same jit: one client at a time,
                the memory of one client, one compile.
- "sharded":    the client axis split over a 1-D device mesh ('clients'), each device
                running its clients vmapped (`shard_map`). With `jax.distributed` the
                mesh spans hosts. On CPU, try it with
                XLA_FLAGS=--xla_force_host_platform_device_count=8.
- "chunked":    clients vmapped `chunk` at a time, a `lax.scan` over chunks inside the
                same jit, each chunk's variables folded into the aggregate as it ends:
                memory is one chunk's, whatever the number of clients. The chunk is
                given, or chosen from a memory budget (`chunk_for_budget`).
- "bucketed":   no masked steps for ragged clients. Clients are sorted by step count;
                phase p runs, vmapped, only the clients still going, for the steps
                between consecutive bucket bounds, so the vmapped width shrinks phase
                by phase. Widths are static (K, K-1, ..., 1: one phase per client up
                to `max_phases`, then an even grid), bounds are read from the sorted
                step counts inside the jit, so one compile serves every round.

Each returns a function with the local update's signature lifted to stacked clients,
aggregation included (every aggregator is a linear rule, `aggregators.Linear`):
    run(global_vars, x, y, n, steps, lr, keys, weights) -> (new global vars, stats)
stats are per client: 'loss', 'steps' and 'lane_steps', the loop iterations the
client's vmapped lane executed, masked ones included (the largest step count of its
vmapped group under vmap; its own steps under sequential and bucketed).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from fastjax.federate import aggregators

STRATEGIES = ("vmap", "sequential", "sharded", "chunked", "bucketed")
MAX_PHASES = 16  # bucketed: compiled phases at most (one per client up to this many clients)


def client_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with the axis name 'clients'."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("clients",))


def _vmapped(local_update):
    return jax.vmap(local_update, in_axes=(None, 0, 0, 0, 0, None, 0))


def _with_lanes(stats, lane_steps):
    return {**stats, "lane_steps": jnp.broadcast_to(lane_steps, stats["steps"].shape).astype(jnp.int32)}


def lift(local_update, strategy: str, mesh: Mesh | None = None, *, chunk: int = 0,
         chunk_memory_bytes: float = 0, max_phases: int = MAX_PHASES) -> Callable:
    """The round's client computation under `strategy` (see the module docstring).

    local_update: a `local.LocalUpdate` (bucketed needs its init / run / finish pieces).
    chunk / chunk_memory_bytes: the chunked strategy's clients per chunk, given or
    chosen from a memory budget at trace time (one of the two).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy={strategy!r}; choose one of {STRATEGIES}")
    if strategy == "vmap":
        vm = _vmapped(local_update)

        def run(global_vars, x, y, n, steps, lr, keys, weights):
            out, stats = vm(global_vars, x, y, n, steps, lr, keys)
            return aggregators.combine(global_vars, out, weights), _with_lanes(stats, jnp.max(steps))
        return run
    if strategy == "sequential":
        def run(global_vars, x, y, n, steps, lr, keys, weights):
            out, stats = jax.lax.map(lambda a: local_update(global_vars, *a[:4], lr, a[4]),
                                     (x, y, n, steps, keys))
            return aggregators.combine(global_vars, out, weights), _with_lanes(stats, steps)
        return run
    if strategy == "chunked":
        if (chunk > 0) == (chunk_memory_bytes > 0):
            raise ValueError("the chunked strategy needs exactly one of train.client_chunk > 0 "
                             "(clients per chunk) or train.chunk_memory_mb > 0 (a memory budget); "
                             f"got client_chunk={chunk}, chunk_memory_mb={chunk_memory_bytes / 2**20:g}")
        return _chunked(local_update, chunk, chunk_memory_bytes)
    if strategy == "bucketed":
        return _bucketed(local_update, max_phases)
    mesh = mesh or client_mesh()
    c = P("clients")
    vm = jax.shard_map(_vmapped(local_update), mesh=mesh, in_specs=(P(), c, c, c, c, P(), c),
                       out_specs=(c, c), check_vma=False)

    def run(global_vars, x, y, n, steps, lr, keys, weights):
        out, stats = vm(global_vars, x, y, n, steps, lr, keys)
        per_device = x.shape[0] // mesh.devices.size
        lanes = jnp.repeat(jnp.max(steps.reshape(-1, per_device), axis=1), per_device)
        return aggregators.combine(global_vars, out, weights), _with_lanes(stats, lanes)
    return run


# ------------------------------------------------------------------------ chunked


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def client_bytes(local_update, global_vars, x, y, n, steps, lr, keys) -> int:
    """Device bytes one more vmapped client costs: XLA's compiled memory analysis
    (temporaries + outputs) of the local update vmapped over one client. An upper
    bound per client (it includes the fixed part), so a chunk chosen from it fits."""
    one = lambda a: jax.ShapeDtypeStruct((1,) + tuple(jnp.shape(a))[1:], jnp.result_type(a))  # noqa: E731
    args = (_abstract(global_vars), one(x), jax.tree.map(one, y), one(n), one(steps), _abstract(lr),
            one(keys))
    mem = jax.jit(_vmapped(local_update)).lower(*args).compile().memory_analysis()
    if mem is None:
        raise ValueError("this backend reports no compiled memory analysis; set train.client_chunk "
                         "instead of train.chunk_memory_mb")
    return int(mem.temp_size_in_bytes + mem.output_size_in_bytes)


def chunk_for_budget(budget_bytes: float, per_client_bytes: int, num_clients: int) -> int:
    """Clients per chunk that fit `budget_bytes` (at least 1, at most all)."""
    return int(min(max(budget_bytes // max(per_client_bytes, 1), 1), num_clients))


def _chunked(local_update, chunk: int, budget_bytes: float):
    vm = _vmapped(local_update)

    def run(global_vars, x, y, n, steps, lr, keys, weights):
        k = x.shape[0]
        c = chunk or chunk_for_budget(budget_bytes, client_bytes(local_update, global_vars, x, y, n,
                                                                  steps, lr, keys), k)
        c = min(c, k)
        m = -(-k // c)
        # The last chunk ends at the last client (it may overlap the one before; the
        # overlapped clients are computed again and counted once), so no client data
        # is ever padded or copied.
        starts = jnp.minimum(jnp.arange(m, dtype=jnp.int32) * c, k - c)

        def body(carry, i):
            acc, loss, lanes = carry
            s = starts[i]
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, s, c)  # noqa: E731
            # y may be (labels, per-sample weights): slice every leaf.
            out, stats = vm(global_vars, sl(x), jax.tree.map(sl, y), sl(n), sl(steps), lr, sl(keys))
            fresh = (s + jnp.arange(c)) >= i * c
            w = jax.tree.map(lambda v: jnp.where(fresh, sl(v), 0) if jnp.ndim(v) == 1 else v, weights)
            acc = jax.tree.map(jnp.add, acc, aggregators.weighted_sum(out, w))
            loss = jax.lax.dynamic_update_slice_in_dim(loss, stats["loss"], s, 0)
            lanes = jax.lax.dynamic_update_slice_in_dim(
                lanes, jnp.full((c,), jnp.max(sl(steps)), jnp.int32), s, 0)
            return (acc, loss, lanes), None

        acc0 = jax.tree.map(jnp.zeros_like, global_vars)
        init = (acc0, jnp.zeros((k,), jnp.float32), jnp.zeros((k,), jnp.int32))
        (acc, loss, lanes), _ = jax.lax.scan(body, init, jnp.arange(m))
        stats = {"loss": loss, "steps": jnp.asarray(steps, jnp.int32), "lane_steps": lanes}
        return aggregators.accumulate(global_vars, acc, weights), stats

    return run


# ----------------------------------------------------------------------- bucketed


def phase_widths(num_clients: int, max_phases: int = MAX_PHASES) -> tuple[int, ...]:
    """Static vmapped widths of the bucketed phases, decreasing: every width from K
    down to 1 when K <= max_phases (no masked step, whatever the step counts), else an
    even grid of max_phases widths (masked steps only inside a phase)."""
    k = int(num_clients)
    if k <= max_phases:
        return tuple(range(k, 0, -1))
    return tuple(sorted({int(np.ceil(k * (max_phases - i) / max_phases)) for i in range(max_phases)},
                        reverse=True))


def phase_bounds(sorted_steps, widths: tuple[int, ...]):
    """[start, end) of each phase from step counts sorted in decreasing order: phase i
    runs the widths[i] clients with the most steps until the ones leaving after it
    (ranks widths[i+1] .. widths[i]-1) are done; the last runs to the largest count."""
    ends = [sorted_steps[w] for w in widths[1:]] + [sorted_steps[0]]
    ends = jnp.stack([jnp.asarray(e, jnp.int32) for e in ends])
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
    return starts, ends


def executed_steps(strategy: str, steps, *, chunk: int = 0, max_phases: int = MAX_PHASES,
                   devices: int = 1) -> int:
    """Client-steps the strategy's loops execute for clients with `steps`, masked ones
    included (the host-side twin of the 'lane_steps' stat)."""
    s = np.asarray(steps, np.int64)
    k = len(s)
    if k == 0:
        return 0
    if strategy == "sequential":
        return int(s.sum())
    if strategy == "bucketed":
        srt = np.sort(s)[::-1]
        widths = phase_widths(k, max_phases)
        ends = [srt[w] for w in widths[1:]] + [srt[0]]
        starts = [0] + ends[:-1]
        return int(sum(w * max(e - a, 0) for w, a, e in zip(widths, starts, ends)))
    if strategy == "chunked" and 0 < chunk < k:
        m = -(-k // chunk)
        return int(sum(chunk * s[min(i * chunk, k - chunk):min(i * chunk, k - chunk) + chunk].max()
                       for i in range(m)))
    if strategy == "sharded" and devices > 1 and k % devices == 0:
        return int(sum(len(g) * g.max() for g in np.split(s, devices)))
    return int(k * s.max())


def _bucketed(local_update, max_phases: int):
    init_v = jax.vmap(local_update.init, in_axes=(None, 0, 0, 0))
    run_v = jax.vmap(local_update.run, in_axes=(0, None, 0, 0, 0, 0, None, None, None))
    finish_v = jax.vmap(local_update.finish)

    def run(global_vars, x, y, n, steps, lr, keys, weights):
        k = x.shape[0]
        steps = jnp.asarray(steps, jnp.int32)
        rank = jnp.argsort(-steps, stable=True)  # most steps first
        take = lambda a: jnp.take(a, rank, axis=0)  # noqa: E731
        xs, ys, ns, ss, ks = take(x), jax.tree.map(take, y), take(n), take(steps), take(keys)
        widths = phase_widths(k, max_phases)
        starts, ends = phase_bounds(ss, widths)
        state = init_v(global_vars, xs, ns, ks)
        lanes = jnp.zeros((k,), jnp.int32)
        for i, w in enumerate(widths):
            head = lambda a: a[:w]  # noqa: E731
            part = run_v(jax.tree.map(head, state), global_vars, xs[:w], jax.tree.map(head, ys), ns[:w],
                         ss[:w], lr, starts[i], ends[i])
            state = jax.tree.map(lambda a, p: a.at[:w].set(p), state, part)
            # A batched loop runs as long as its longest lane.
            trips = jnp.max(jnp.clip(jnp.minimum(ends[i], ss[:w]) - starts[i], 0))
            lanes = lanes.at[:w].add(trips)
        out, stats = finish_v(state, ss)
        out_w = jax.tree.map(lambda v: take(v) if jnp.ndim(v) == 1 else v, weights)
        inverse = jnp.argsort(rank)
        stats = jax.tree.map(lambda a: jnp.take(a, inverse, axis=0), _with_lanes(stats, lanes))
        return aggregators.combine(global_vars, out, out_w), stats

    return run


def padded_client_count(num_clients: int, strategy: str, mesh: Mesh | None = None) -> int:
    """Clients are padded (with empty, zero-weight clients) to a multiple of the mesh."""
    if strategy != "sharded":
        return num_clients
    d = (mesh or client_mesh()).devices.size
    return -(-num_clients // d) * d
