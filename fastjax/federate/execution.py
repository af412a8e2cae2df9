"""How clients run: one switch, the same numbers (to float tolerance).

- "vmap":       clients as a leading batch axis of one computation (the design card's
                shape; on an accelerator all local models train in one step).
- "sequential": `lax.map` over clients inside the same jit: one client at a time,
                the memory of one client, one compile.
- "sharded":    the client axis split over a 1-D device mesh ('clients'), each device
                running its clients vmapped (`shard_map`). With `jax.distributed` the
                mesh spans hosts. On CPU, try it with
                XLA_FLAGS=--xla_force_host_platform_device_count=8.

Each returns a function with the local update's signature lifted to stacked clients:
    run(global_vars, x, y, n, steps, lr, keys) -> (stacked vars, stacked stats)
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

STRATEGIES = ("vmap", "sequential", "sharded")


def client_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with the axis name 'clients'."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("clients",))


def lift(local_update: Callable, strategy: str, mesh: Mesh | None = None) -> Callable:
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy={strategy!r}; choose one of {STRATEGIES}")
    vmapped = jax.vmap(local_update, in_axes=(None, 0, 0, 0, 0, None, 0))
    if strategy == "vmap":
        return vmapped
    if strategy == "sequential":
        def run(global_vars, x, y, n, steps, lr, keys):
            return jax.lax.map(lambda a: local_update(global_vars, *a[:4], lr, a[4]),
                               (x, y, n, steps, keys))
        return run
    mesh = mesh or client_mesh()
    c = P("clients")
    return jax.shard_map(vmapped, mesh=mesh, in_specs=(P(), c, c, c, c, P(), c),
                         out_specs=(c, c), check_vma=False)


def padded_client_count(num_clients: int, strategy: str, mesh: Mesh | None = None) -> int:
    """Clients are padded (with empty, zero-weight clients) to a multiple of the mesh."""
    if strategy != "sharded":
        return num_clients
    d = (mesh or client_mesh()).devices.size
    return -(-num_clients // d) * d
