"""Local training, written once for one client (the strategies in `execution.py`
decide how many clients run and where).

Clients hold different amounts of data (Dirichlet partitions), but a compiled step
needs static shapes. Each client's data is padded to the largest client; a client takes
its own number of steps (`steps[k]`, e.g. local_epochs * ceil(n_k / batch)) as a
dynamic loop bound: run one client at a time (`sequential`) it executes exactly those
steps; vmapped, the batched loop runs to the largest bound and leaves finished clients'
parameters, optimiser and BatchNorm state unchanged (that masked work is what
`engine.padding_waste` reports, and what the `bucketed` strategy avoids).
With local epochs (the paper's setting), each epoch visits the client's own samples
in a fresh random order, drawn once per epoch; the last batch of an epoch may be
partial, its padding masked out of the loss and of the BatchNorm statistics (as
torch's DataLoader with drop_last=False). With a fixed number of local steps, batches
are consecutive slices of one random order, wrapping around (always full).

Labels `y` are integer classes (max_n,), or soft targets (max_n, C) (the cross-entropy
`logsumexp(logits) - sum_c t_c logits_c`, which a one-hot t reduces to the integer
loss exactly), or either paired with per-sample loss weights as a tuple (y, w): the
batch loss is sum_i w_i ce_i / (number of real samples in the batch), so weights of 1
give the unweighted numbers.

The update is three pieces, so a strategy can run any range of a client's steps:
`init` (state from the global model and the client's data order), `run` (steps
[start, stop) of the client's flat step sequence) and `finish` (variables and stats).
`local_update = finish(run(init(...), 0, steps))`.

Mixed precision (`compute_dtype="bfloat16"`): the forward and backward passes run in
bfloat16 (parameters and inputs cast inside the loss), while the master parameters,
the momentum buffer, BatchNorm statistics and the loss stay float32; gradients arrive
in float32 through the cast.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LocalSpec:
    """Static description of one client's local update (hashable, used as a jit key)."""

    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 1e-4
    prox_mu: float = 0.0  # FedProx proximal weight; 0 = plain local SGD
    epochs: int = 1  # local epochs (1 with fixed local steps)
    by_epochs: bool = False  # True: epochs of partial-last-batch passes; False: fixed local steps
    compute_dtype: str = "float32"  # "bfloat16": bf16 compute, f32 master weights and optimiser


def steps_per_client(num_samples, batch_size: int, local_epochs: int | None, local_steps: int | None):
    """Per-client step counts: local_epochs * ceil(n_k / B), or a fixed local_steps."""
    import numpy as np

    n = np.asarray(num_samples, dtype=np.int64)
    if local_steps is not None:
        return np.where(n > 0, int(local_steps), 0).astype(np.int32)
    return (int(local_epochs) * -(-n // batch_size)).astype(np.int32)


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a cheap, well-mixed integer hash."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


@jax.custom_vjp
def _soft_cross_entropy(logits, targets):
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(targets * logits, axis=-1)


def _soft_ce_fwd(logits, targets):
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    return lse[..., 0] - jnp.sum(targets * logits, axis=-1), (logits, lse, targets)


def _soft_ce_bwd(res, g):
    # d ce / d logits = softmax(logits) - t, written out so that XLA sees the same
    # graph whichever way the one-hot rows were made (no fused-multiply-add drift).
    logits, lse, targets = res
    return g[..., None] * (jnp.exp(logits - lse) - targets), jnp.zeros_like(targets)


_soft_cross_entropy.defvjp(_soft_ce_fwd, _soft_ce_bwd)


def cross_entropy(logits, targets):
    """Per-sample softmax cross-entropy, logsumexp(logits) - sum_c t_c logits_c, with
    soft targets t (..., C) or integer labels (one-hot rows of the same computation, so
    one-hot soft targets give the very same losses and gradients)."""
    if jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return _soft_cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class LocalUpdate:
    """One client's local update, whole (`__call__`) or in pieces.

    init(global_vars, x, n, key) -> state
    run(state, global_vars, x, y, n, steps, lr, start, stop) -> state
        steps [start, min(stop, steps)) of the client's flat step sequence (epoch after
        epoch); start and stop may be traced scalars.
    finish(state, steps) -> (vars, stats), stats = {'loss': mean over the taken steps,
        'steps': steps taken}.
    __call__(global_vars, x, y, n, steps, lr, key) -> (vars, stats)
    """

    init: Callable
    run: Callable
    finish: Callable

    def __call__(self, global_vars, x, y, n, steps, lr, key):
        state = self.init(global_vars, x, n, key)
        state = self.run(state, global_vars, x, y, n, steps, lr, 0, steps)
        return self.finish(state, steps)


def _unpack_targets(y):
    """(labels or soft targets, per-sample weights or None, per-client aux or None) from
    the forms `y` may take: an array, a tuple (labels, weights), or a dict with keys "y"
    and optionally "w" and "aux"."""
    if isinstance(y, dict):
        return y["y"], y.get("w"), y.get("aux")
    if isinstance(y, (tuple, list)):
        return y[0], y[1], None
    return y, None, None


def _unpack_lr(lr):
    """(learning rate, 0-indexed round within the fit) from a scalar or {"lr", "round"}."""
    if isinstance(lr, dict):
        return lr["lr"], lr.get("round", 0)
    return lr, 0


def make_local_update(model, spec: LocalSpec, preprocess: Callable[[jax.Array], jax.Array],
                      objective: Callable | None = None) -> LocalUpdate:
    """The local update of `model` under `spec` (see `LocalUpdate` for the signatures).

    x: (max_n, ...) raw client samples (padded), y: (max_n,) int labels, (max_n, C) soft
    targets, a tuple (labels, weights (max_n,)) (module docstring), or a dict {"y", "w"?,
    "aux"?} where aux holds per-client arrays an objective reads; n: number of real
    samples, steps: this client's step count (a dynamic loop bound), lr: scalar or
    {"lr": scalar, "round": 0-indexed round}, key: PRNG.

    objective: None (cross-entropy, weighted / soft as above) or a local loss written for
    one client and one batch (KAFAL's KCFU, LL4AL's joint loss):
        objective(forward, batch, ctx) -> (loss to differentiate, loss to report)
    forward(x, mask=..., **model_kwargs) runs the student (the parameters being trained)
    in train mode on preprocessed inputs, updating BatchNorm statistics in call order;
    batch = {"x", "y", "valid", "w", "bn_mask"} (x preprocessed); ctx = {"global_vars",
    "apply" (model.apply), "aux", "key" (this step's PRNG key), "round", "preprocess",
    "compute_dtype"}. It must be valid under vmap (no Python branching on traced values).
    """
    if spec.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={spec.compute_dtype!r}; choose one of {COMPUTE_DTYPES}")
    tx = optax.chain(optax.add_decayed_weights(spec.weight_decay), optax.trace(decay=spec.momentum))
    b = spec.batch_size
    cdt = jnp.dtype(spec.compute_dtype)

    def to_compute(tree):
        if cdt == jnp.float32:
            return tree
        return jax.tree.map(lambda a: a.astype(cdt) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    def loss_fn(params, batch_stats, global_vars, xb, yb, valid, wb, aux, key, round_):
        compute_params = to_compute(params)
        stats = [batch_stats]  # BatchNorm statistics, updated by each forward pass in turn
        # Fixed-step batches are always full: no BatchNorm masking needed.
        bn_mask = valid if spec.by_epochs else None

        def forward(x, mask=None, **kw):
            x = x.astype(cdt) if jnp.issubdtype(x.dtype, jnp.floating) else x
            if stats[0] is None:
                return model.apply({"params": compute_params}, x, train=True, mask=mask, **kw)
            # BatchNorm statistics stay float32 (Flax reduces in float32).
            out, new_state = model.apply({"params": compute_params, "batch_stats": stats[0]}, x,
                                         train=True, mask=mask, mutable=["batch_stats"], **kw)
            stats[0] = jax.tree.map(lambda new, old: new.astype(old.dtype),
                                    new_state["batch_stats"], batch_stats)
            return out

        if objective is None:
            logits = forward(xb, mask=bn_mask if batch_stats is not None else valid)
            ce = cross_entropy(logits.astype(jnp.float32), yb)
            w = valid.astype(ce.dtype)
            weighted = ce * w if wb is None else ce * w * wb
            loss = jnp.sum(weighted) / jnp.maximum(jnp.sum(w), 1.0)
            total = loss
        else:
            batch = {"x": xb, "y": yb, "valid": valid, "w": wb,
                     "bn_mask": bn_mask if batch_stats is not None else valid}
            ctx = {"global_vars": global_vars, "apply": model.apply, "aux": aux, "key": key,
                   "round": round_, "preprocess": preprocess, "compute_dtype": cdt}
            total, loss = objective(forward, batch, ctx)
        if spec.prox_mu:
            sq = sum(jnp.sum(jnp.square(p - g)) for p, g in
                     zip(jax.tree.leaves(params), jax.tree.leaves(global_vars["params"])))
            total = total + 0.5 * spec.prox_mu * sq
        return total, (loss, stats[0])

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def order(key, n, size):
        """A random order of the client's n samples (padding sorts last), drawn once per
        epoch. Sort keys are a hash of (epoch key, position), so the order of the real
        samples does not depend on how much padding follows them."""
        pos = jnp.arange(size, dtype=jnp.uint32)
        h = _fmix32(pos ^ jax.random.bits(key, dtype=jnp.uint32))
        h = jnp.where(pos < n.astype(jnp.uint32), h >> 1, jnp.uint32(0xFFFFFFFF))
        return jnp.argsort(h, stable=True).astype(jnp.int32)

    def init(global_vars: dict[str, Any], x, n, key):
        params = global_vars["params"]
        n = jnp.asarray(n, jnp.int32)
        perms = jax.vmap(lambda e: order(jax.random.fold_in(key, e), n, x.shape[0]))(
            jnp.arange(spec.epochs, dtype=jnp.int32))  # (epochs, max_n): one order per epoch
        return {"params": params, "batch_stats": global_vars.get("batch_stats"),
                "opt": tx.init(params), "loss_sum": jnp.zeros((), jnp.float32), "perms": perms,
                "key": jax.random.fold_in(key, 0x0B7EC7)}

    def run(state, global_vars, x, y, n, steps, lr, start, stop):
        y, w, aux = _unpack_targets(y)
        lr, round_ = _unpack_lr(lr)
        n = jnp.asarray(n, jnp.int32)
        size = x.shape[0]
        spe = jnp.maximum((n + b - 1) // b, 1)  # this client's steps per epoch
        slot = jnp.arange(b, dtype=jnp.int32)
        perms = state["perms"]

        def step(t, carry):
            params, batch_stats, opt_state, loss_sum = carry
            if not spec.by_epochs:  # fixed local steps: one order, wrapping around
                perm = perms[0]
                take = (t * b + slot) % jnp.maximum(n, 1)
                valid = jnp.ones((b,), bool)
            else:  # local epochs: the last batch of an epoch may be partial (masked)
                perm = perms[jnp.minimum(t // spe, spec.epochs - 1)]
                take = (t % spe) * b + slot
                valid = take < n
            idx = perm[jnp.minimum(take, size - 1)]
            xb = preprocess(x[idx])
            wb = None if w is None else w[idx]
            grads, (loss, new_stats) = grad_fn(params, batch_stats, global_vars, xb, y[idx], valid, wb,
                                               aux, jax.random.fold_in(state["key"], t), round_)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            return params, new_stats, opt_state, loss_sum + loss

        # The loop bound is this client's own step count: run one client at a time and
        # padding costs nothing; vmapped, JAX's batched while loop runs to the largest
        # bound and keeps finished clients' state unchanged.
        stop = jnp.minimum(jnp.asarray(stop, jnp.int32), jnp.asarray(steps, jnp.int32))
        carry = (state["params"], state["batch_stats"], state["opt"], state["loss_sum"])
        params, batch_stats, opt_state, loss_sum = jax.lax.fori_loop(
            jnp.asarray(start, jnp.int32), stop, step, carry)
        return {**state, "params": params, "batch_stats": batch_stats, "opt": opt_state,
                "loss_sum": loss_sum}

    def finish(state, steps):
        taken = jnp.asarray(steps, jnp.int32)
        out = {"params": state["params"]}
        if state["batch_stats"] is not None:
            out["batch_stats"] = state["batch_stats"]
        stats = {"loss": state["loss_sum"] / jnp.maximum(taken, 1).astype(jnp.float32), "steps": taken}
        return out, stats

    return LocalUpdate(init, run, finish)
