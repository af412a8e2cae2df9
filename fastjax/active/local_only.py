"""Local-only models: each client's own model trained from scratch on its labeled set,
never averaged (LoGo's query selector, `Strategy.training_local_only` in
raymin0223/LoGo; the `local_only` query-model ablation).

Built from the engine's pieces: the local update written once for one client
(`federate.local.make_local_update`), vmapped over clients and over their own variables,
so all clients' local-only models train in one compiled step, one epoch per call.
A client stops once its training accuracy reaches `stop_accuracy` (LoGo: 0.99) or after
`max_epochs` (LoGo: 50).

Differences from the reference, by design: the SGD momentum buffer restarts at every
epoch (the engine's local update starts each call from a fresh optimiser state), the
stopping accuracy is measured after the epoch with batch statistics over the client's
labeled set rather than accumulated over the epoch's batches, there is no data
augmentation (none in fastjax's engine), and the learning rate is constant (the
reference's MultiStepLR milestone, stepped per batch, drops it x0.1 after 37 batches;
not reproduced).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastjax.federate import local


def make_local_only_trainer(model, preprocess, *, batch_size: int, momentum: float,
                            weight_decay: float):
    """train(init_vars, clients, *, lr, key, max_epochs=50, stop_accuracy=0.99,
    between_epochs=None) -> (stacked client variables with a leading client axis, epochs
    each client trained); `between_epochs()` is called before every epoch.

    Each client trains one model from `init_vars` on its own data (engine.ClientArrays).
    The jitted epoch and accuracy steps are built once here: calls with the same client
    shapes (the loop pads clients to a fixed capacity) reuse their compiles. A client
    with no labeled samples cannot train a local model: ValueError."""
    spec = local.LocalSpec(batch_size, momentum, weight_decay, 0.0, epochs=1, by_epochs=True)
    # Each client continues from its own variables: vmap the one-client update over the
    # stacked variables too (the engine's lift broadcasts one global model).
    update = jax.jit(jax.vmap(local.make_local_update(model, spec, preprocess),
                              in_axes=(0, 0, 0, 0, 0, None, 0)))
    accuracy = jax.jit(jax.vmap(lambda v, xk, yk, nk: _train_accuracy(model, v, xk, yk, nk, preprocess,
                                                                      batch_size)))

    def train(init_vars, clients, *, lr: float, key, max_epochs: int = 50, stop_accuracy: float = 0.99,
              between_epochs=None):
        empty = np.flatnonzero(clients.n == 0)
        if empty.size:
            raise ValueError(f"clients {empty.tolist()} have no labeled samples, so no local-only model "
                             "can be trained for them; raise active.initial")
        if max_epochs < 1 or not 0 < stop_accuracy <= 1:
            raise ValueError(f"max_epochs={max_epochs} must be >= 1 and stop_accuracy={stop_accuracy} "
                             "in (0, 1]")
        k = clients.num_clients
        x, y, n = jnp.asarray(clients.x), jnp.asarray(clients.y), jnp.asarray(clients.n)
        spe = -(-clients.n // batch_size)
        stacked = jax.tree.map(lambda v: jnp.broadcast_to(v, (k,) + v.shape), init_vars)
        epochs = np.zeros(k, np.int64)
        done = np.zeros(k, bool)
        for e in range(max_epochs):
            if between_epochs is not None:  # e.g. the loop's interrupt check
                between_epochs()
            steps = np.where(done, 0, spe).astype(np.int32)
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, e), i))(jnp.arange(k))
            stacked, _ = update(stacked, x, y, n, jnp.asarray(steps), lr, keys)
            epochs += ~done
            done |= np.asarray(accuracy(stacked, x, y, n)) >= stop_accuracy
            if done.all():
                break
        return stacked, epochs

    return train


def train_local_only(model, init_vars, clients, *, batch_size: int, lr: float, momentum: float,
                     weight_decay: float, preprocess, key, max_epochs: int = 50,
                     stop_accuracy: float = 0.99):
    """One call of `make_local_only_trainer` (builds and compiles its steps each time)."""
    return make_local_only_trainer(model, preprocess, batch_size=batch_size, momentum=momentum,
                                   weight_decay=weight_decay)(
        init_vars, clients, lr=lr, key=key, max_epochs=max_epochs, stop_accuracy=stop_accuracy)


def _train_accuracy(model, variables, x, y, n, preprocess, batch_size: int):
    """Training accuracy of one client's model over its n real samples (padded arrays),
    in train mode (batch statistics over each batch, masked padding), no state update."""
    size = x.shape[0]
    nb = -(-size // batch_size)
    pad = nb * batch_size - size
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape((nb, batch_size) + x.shape[1:])
    ys = jnp.pad(y, (0, pad)).reshape(nb, batch_size)
    valid = (jnp.arange(nb * batch_size) < n).reshape(nb, batch_size)

    def batch(carry, b):
        xb, yb, vb = b
        if "batch_stats" in variables:
            logits, _ = model.apply(variables, preprocess(xb), train=True, mask=vb, mutable=["batch_stats"])
        else:
            logits = model.apply(variables, preprocess(xb), train=True, mask=vb)
        return carry + jnp.sum((jnp.argmax(logits, -1) == yb) & vb), None

    correct, _ = jax.lax.scan(batch, jnp.zeros((), jnp.int32), (xs, ys, valid))
    return correct / jnp.maximum(n, 1)
