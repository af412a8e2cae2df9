"""Server aggregation rules as pure functions.

Each has the signature

    aggregate(global_vars, client_vars, num_samples, num_steps, **options) -> global_vars

where `client_vars` is the clients' variables stacked along a leading axis (the
output of the vmapped local update), `num_samples` (K,) the clients' training set
sizes and `num_steps` (K,) the local steps each took. Variables are the model's
{'params': ..., 'batch_stats': ...}; BatchNorm statistics are always sample-weighted
averages (they are not optimised, so FedNova's step normalisation does not apply).
Each rule is written once, as the weights of a linear combination (`WEIGHTS`, see
`Linear`); `AGGREGATORS` applies them to stacked clients.

>>> import jax.numpy as jnp
>>> g = {"params": {"w": jnp.zeros(2)}}
>>> c = {"params": {"w": jnp.array([[1.0, 1.0], [3.0, 3.0]])}}
>>> fedavg(g, c, jnp.array([1, 3]), jnp.array([5, 5]))["params"]["w"]
Array([2.5, 2.5], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


def _weights(num_samples):
    w = jnp.asarray(num_samples, jnp.float32)
    return w / jnp.maximum(jnp.sum(w), 1e-12)


class Linear(NamedTuple):
    """An aggregation as a linear rule, per variable collection:

        new = keep * global + sum_k w[k] * client_k

    (`keep` None means 0). Every aggregator here is of this form, with weights that
    depend only on the clients' sample and step counts; that is what lets a strategy
    reduce clients chunk by chunk without ever holding all their variables
    (`execution`'s `chunked`).
    """

    params_w: jax.Array
    params_keep: jax.Array | None
    stats_w: jax.Array
    stats_keep: jax.Array | None


def combine(global_vars, client_vars, lin: Linear) -> dict[str, Any]:
    """Applies `lin` to clients stacked along a leading axis (all clients at once)."""
    return accumulate(global_vars, weighted_sum(client_vars, lin), lin)


def weighted_sum(client_vars, lin: Linear) -> dict[str, Any]:
    """sum_k w[k] * client_k per collection (a partial sum when given some clients)."""
    out = {}
    for coll, tree in client_vars.items():
        w = lin.params_w if coll == "params" else lin.stats_w
        out[coll] = jax.tree.map(lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=1), tree)
    return out


def accumulate(global_vars, summed, lin: Linear) -> dict[str, Any]:
    """keep * global + (the clients' weighted sum), per collection."""
    out = {}
    for coll, tree in summed.items():
        keep = lin.params_keep if coll == "params" else lin.stats_keep
        out[coll] = tree if keep is None else jax.tree.map(
            lambda g, s: keep.astype(g.dtype) * g + s, global_vars[coll], tree)
    return out


def fedavg_weights(num_samples, num_steps, **_) -> Linear:
    """FedAvg (McMahan et al. 2017): w <- sum_k (n_k / n) w_k."""
    p = _weights(num_samples)
    return Linear(p, None, p, None)


def fednova_norm(num_steps, momentum: float = 0.0):
    """a_k of FedNova (Wang et al. 2020, Sec. 4 / App. C): the norm of client k's
    cumulative update coefficients. Plain SGD: a_k = tau_k. SGD with momentum rho:
    a_k = (tau_k - rho (1 - rho^tau_k) / (1 - rho)) / (1 - rho)."""
    tau = jnp.asarray(num_steps, jnp.float32)
    if momentum == 0.0:
        return tau
    rho = momentum
    return (tau - rho * (1.0 - rho ** tau) / (1.0 - rho)) / (1.0 - rho)


def fednova_weights(num_samples, num_steps, *, momentum: float = 0.0, **_) -> Linear:
    """FedNova: normalised averaging. d_k = (w - w_k) / a_k, tau_eff = sum_k p_k a_k,
    w <- w - tau_eff * sum_k p_k d_k = (1 - sum_k c_k) w + sum_k c_k w_k with
    c_k = tau_eff p_k / a_k. BatchNorm statistics: sample-weighted averages.
    Equal step counts reduce it to FedAvg."""
    p = _weights(num_samples)
    a = fednova_norm(num_steps, momentum)
    safe_a = jnp.where(a > 0, a, 1.0)
    c = jnp.sum(p * a) * p / safe_a
    return Linear(c, 1.0 - jnp.sum(c), p, None)


WEIGHTS: dict[str, Callable[..., Linear]] = {
    "fedavg": fedavg_weights,
    "fedprox": fedavg_weights,
    "fednova": fednova_weights,
}


def _stacked(name: str, doc: str):
    def aggregate(global_vars, client_vars, num_samples, num_steps, **options) -> dict[str, Any]:
        return combine(global_vars, client_vars, WEIGHTS[name](num_samples, num_steps, **options))

    aggregate.__name__, aggregate.__doc__ = name, doc
    return aggregate


fedavg = _stacked("fedavg", fedavg_weights.__doc__)
fedprox = _stacked("fedprox", "FedProx (Li et al. 2020) aggregates as FedAvg; its proximal term "
                              "mu/2 ||w - w_global||^2 lives in the local loss (LocalSpec.prox_mu).")
fednova = _stacked("fednova", fednova_weights.__doc__)

AGGREGATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "fedavg": fedavg,
    "fedprox": fedprox,
    "fednova": fednova,
}
