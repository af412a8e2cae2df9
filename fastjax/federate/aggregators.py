"""Server aggregation rules as pure functions.

Each has the signature

    aggregate(global_vars, client_vars, num_samples, num_steps, **options) -> global_vars

where `client_vars` is the clients' variables stacked along a leading axis (the
output of the vmapped local update), `num_samples` (K,) the clients' training set
sizes and `num_steps` (K,) the local steps each took. Variables are the model's
{'params': ..., 'batch_stats': ...}; BatchNorm statistics are always sample-weighted
averages (they are not optimised, so FedNova's step normalisation does not apply).

>>> import jax.numpy as jnp
>>> g = {"params": {"w": jnp.zeros(2)}}
>>> c = {"params": {"w": jnp.array([[1.0, 1.0], [3.0, 3.0]])}}
>>> fedavg(g, c, jnp.array([1, 3]), jnp.array([5, 5]))["params"]["w"]
Array([2.5, 2.5], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _weights(num_samples):
    w = jnp.asarray(num_samples, jnp.float32)
    return w / jnp.maximum(jnp.sum(w), 1e-12)


def _weighted_mean(tree, p):
    return jax.tree.map(lambda x: jnp.tensordot(p.astype(x.dtype), x, axes=1), tree)


def fedavg(global_vars, client_vars, num_samples, num_steps, **_) -> dict[str, Any]:
    """FedAvg (McMahan et al. 2017): w <- sum_k (n_k / n) w_k."""
    return _weighted_mean(client_vars, _weights(num_samples))


def fedprox(global_vars, client_vars, num_samples, num_steps, **_) -> dict[str, Any]:
    """FedProx (Li et al. 2020) aggregates as FedAvg; its proximal term
    mu/2 ||w - w_global||^2 lives in the local loss (LocalSpec.prox_mu)."""
    return fedavg(global_vars, client_vars, num_samples, num_steps)


def fednova_norm(num_steps, momentum: float = 0.0):
    """a_k of FedNova (Wang et al. 2020, Sec. 4 / App. C): the norm of client k's
    cumulative update coefficients. Plain SGD: a_k = tau_k. SGD with momentum rho:
    a_k = (tau_k - rho (1 - rho^tau_k) / (1 - rho)) / (1 - rho)."""
    tau = jnp.asarray(num_steps, jnp.float32)
    if momentum == 0.0:
        return tau
    rho = momentum
    return (tau - rho * (1.0 - rho ** tau) / (1.0 - rho)) / (1.0 - rho)


def fednova(global_vars, client_vars, num_samples, num_steps, *, momentum: float = 0.0, **_):
    """FedNova: normalised averaging. d_k = (w - w_k) / a_k, tau_eff = sum_k p_k a_k,
    w <- w - tau_eff * sum_k p_k d_k. Equal step counts reduce it to FedAvg."""
    p = _weights(num_samples)
    a = fednova_norm(num_steps, momentum)
    safe_a = jnp.where(a > 0, a, 1.0)
    tau_eff = jnp.sum(p * a)

    def update(g, c):
        d = (g[None] - c) / safe_a.reshape((-1,) + (1,) * g.ndim).astype(c.dtype)
        return g - tau_eff.astype(g.dtype) * jnp.tensordot(p.astype(c.dtype), d, axes=1)

    out = dict(_weighted_mean(client_vars, p))
    out["params"] = jax.tree.map(update, global_vars["params"], client_vars["params"])
    return out


AGGREGATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "fedavg": fedavg,
    "fedprox": fedprox,
    "fednova": fednova,
}
