"""GCNAL: Sequential GCN for active learning (Caramalau, Bhattarai & Kim, CVPR 2021),
CoreGCN and UncertainGCN, as ported in LoGo (`query_strategies/gcnal.py`) from the
original code (razvancaramalau/Sequential-GCN-for-Active-Learning, `selection_methods.py`,
`models/query_models.py`).

Graph: the labeled set plus a random subset of at most `subset_size` (10,000) pool
samples, nodes = L2-normalised penultimate features x, edges = cosine similarities:

    A = (X X^T - I) D^-1 + I,   D = diag(column sums of X X^T - I)

(the reference's `aff_to_adj`: each column divided by its sum, self-loops added; a
column summing to exactly 0 is left undivided). A two-layer GCN, gc1 (d -> 128), ReLU,
dropout 0.3, gc3 (128 -> 1), sigmoid, learns labeled (1) vs unlabeled (0) with

    loss = -mean_L log s - lambda mean_U log(1 - s),   lambda = 1.2,

for 200 full-batch Adam steps (lr 1e-3, L2 weight decay 5e-4 added to the gradient as
torch's Adam does). Selection: UncertainGCN takes the b subset samples whose score s is
closest to s_margin = 0.1 (both codes: `argsort(-|s - s_margin|)[-b:]`); CoreGCN runs
greedy k-center from the labeled nodes.

CoreGCN's features, paper vs code: the paper (and LoGo's port) run k-center on the GCN's
node embeddings [hidden_128 || pre-sigmoid logit]; the original code overwrites them
with the normalised backbone features. Default `coregcn_features="gcn"` (paper);
"backbone" is the original code's behaviour.

A is never formed while training: A V = X (X^T (D^-1 V)) - D^-1 V + V costs O(N d k),
and gc1's A (X W1) = (A X) W1 with A X computed once. `gcn_adjacency` builds the dense
A for checking on small graphs. Zero rows padded onto the graph change no real node.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastjax.active.strategies import (PoolView, _bucket, _finite, _pad, _valid, kcenter_greedy, random_order,
                                       start)

VARIANTS = ("core", "uncertain")
COREGCN_FEATURES = ("gcn", "backbone")


def normalize_rows(x):
    """x / max(||x||, 1e-12) per row (torch `F.normalize`)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _column_sums(x, real):
    """Column sums of X X^T - I over the real nodes (0 -> 1: such a column stays undivided)."""
    col = x @ jnp.sum(x, axis=0) - real
    return jnp.where(col == 0, 1.0, col)


def gcn_adjacency(x) -> jax.Array:
    """Dense A = (X X^T - I) D^-1 + I of the rows x (already normalised); for checks."""
    x = jnp.asarray(x, jnp.float32)
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    s = x @ x.T - eye
    col = jnp.sum(s, axis=0)
    return s / jnp.where(col == 0, 1.0, col)[None, :] + eye


def adjacency_matmul(x, col, v, real):
    """A @ v without forming A, for A = (X X^T - diag(real)) D^-1 + I, D = diag(col).

    real (N,) marks the graph's nodes (1) against zero padding rows (0): a padded row of
    x is 0, so it adds nothing to any real node's output."""
    w = v / col[:, None]
    return x @ (x.T @ w) - real[:, None] * w + v


def init_gcn(key, d: int, hidden: int = 128):
    """gc1 (d -> hidden) and gc3 (hidden -> 1), weights and biases ~ U(-1/sqrt(out),
    1/sqrt(out)) (reference `GraphConvolution.reset_parameters`)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    s1, s3 = 1.0 / np.sqrt(hidden), 1.0
    u = jax.random.uniform
    return {"w1": u(k1, (d, hidden), jnp.float32, -s1, s1), "b1": u(k2, (hidden,), jnp.float32, -s1, s1),
            "w3": u(k3, (hidden, 1), jnp.float32, -s3, s3), "b3": u(k4, (1,), jnp.float32, -s3, s3)}


def gcn_forward(params, ax, x, col, real, dropout: float = 0.0, key=None):
    """(pre-sigmoid logit (N,), hidden (N, h)) of gc3(dropout(relu(gc1(x)))).
    ax = A x precomputed; dropout is applied only when `key` is given (training)."""
    hid = jax.nn.relu(ax @ params["w1"] + params["b1"])
    drop = hid
    if key is not None:
        keep = jax.random.bernoulli(key, 1.0 - dropout, hid.shape)
        drop = jnp.where(keep, hid / (1.0 - dropout), 0.0)
    logit = adjacency_matmul(x, col, drop @ params["w3"], real)[:, 0] + params["b3"][0]
    return logit, hid


def gcn_loss(logit, is_labeled, is_unlabeled, lambda_loss):
    """-mean_L log sigmoid - lambda mean_U log(1 - sigmoid), in the stable softplus form."""
    lab = jnp.sum(jnp.where(is_labeled, jax.nn.softplus(-logit), 0.0)) / jnp.sum(is_labeled)
    unl = jnp.sum(jnp.where(is_unlabeled, jax.nn.softplus(logit), 0.0)) / jnp.sum(is_unlabeled)
    return lab + lambda_loss * unl


@functools.partial(jax.jit, static_argnames=("steps", "hidden"))
def _train(x, is_labeled, is_unlabeled, key, steps, hidden, lr, weight_decay, dropout, lambda_loss):
    x = normalize_rows(x)  # padding rows stay 0
    real = (is_labeled | is_unlabeled).astype(x.dtype)
    col = _column_sums(x, real)
    ax = adjacency_matmul(x, col, x, real)
    k_init, k_drop = jax.random.split(key)
    params = init_gcn(k_init, x.shape[1], hidden)
    opt = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))

    def loss_fn(p, k):
        logit, _ = gcn_forward(p, ax, x, col, real, dropout, k)
        return gcn_loss(logit, is_labeled, is_unlabeled, lambda_loss)

    def step(carry, t):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(k_drop, t))
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    logit, hid = gcn_forward(params, ax, x, col, real)
    return params, losses, logit, hid, x


@dataclasses.dataclass(frozen=True, eq=False)
class GraphFit:
    """A trained GCN on one client's graph: `subset` (k,) pool positions of the unlabeled
    nodes (sorted), then the m labeled nodes; per node (k + m rows): normalised backbone
    features `x`, pre-sigmoid `logit`, `hidden` (N, h); `losses` (steps,) per Adam step."""

    subset: np.ndarray
    x: np.ndarray
    logit: np.ndarray
    hidden: np.ndarray
    losses: np.ndarray
    params: dict

    @property
    def scores(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit.astype(np.float64)))


def fit_graph(view: PoolView, key, *, subset_size: int = 10_000, steps: int = 200, hidden: int = 128,
              dropout: float = 0.3, lr: float = 1e-3, weight_decay: float = 5e-4,
              lambda_loss: float = 1.2) -> GraphFit:
    """Draws the unlabeled subset, builds the graph and trains the GCN (module docstring)."""
    if view.feats is None or view.m == 0:
        raise ValueError("gcnal needs penultimate features and a non-empty labeled set")
    n, m = view.n, view.m
    k_sub, k_train = jax.random.split(key)
    subset = np.arange(n) if subset_size >= n else np.sort(random_order(k_sub, n)[:subset_size])
    k = subset.size
    x = np.concatenate([_finite("feats", view.feats)[subset], _finite("labeled_feats", view.labeled_feats)])
    rows = _bucket(k + m)
    node = np.arange(rows)
    params, losses, logit, hid, x = _train(
        _pad(x, rows), (node >= k) & _valid(k + m, rows), node < k, k_train, steps, hidden,
        lr, weight_decay, dropout, lambda_loss)
    cut = lambda a: np.asarray(a)[:k + m]  # noqa: E731  (on the host: no compile per size)
    return GraphFit(subset, cut(x), cut(logit), cut(hid), np.asarray(losses), params)


def gcnal(view: PoolView, b: int, key: jax.Array, *, variant: str = "core",
          coregcn_features: str = "gcn", subset_size: int = 10_000, steps: int = 200,
          hidden: int = 128, dropout: float = 0.3, lr: float = 1e-3, weight_decay: float = 5e-4,
          lambda_loss: float = 1.2, s_margin: float = 0.1) -> np.ndarray:
    """CoreGCN (variant="core", the LoGo port's default) or UncertainGCN
    (variant="uncertain"); b positions into the pool, all from the random subset."""
    opts = dict(subset_size=subset_size, steps=steps, hidden=hidden, dropout=dropout, lr=lr,
                weight_decay=weight_decay, lambda_loss=lambda_loss)
    _check_gcnal(variant=variant, coregcn_features=coregcn_features, s_margin=s_margin, **opts)
    done = start(view, b, "gcnal", features=True, labeled=True)
    if done is not None:
        return done
    if b > min(subset_size, view.n):
        raise ValueError(f"gcnal: b={b} exceeds subset_size={subset_size}, the unlabeled nodes of "
                         "the graph; raise subset_size")
    fit = fit_graph(view, key, **opts)
    k = fit.subset.size
    if variant == "uncertain":
        # Smallest |s - s_margin| (reference: argsort(-|s - margin|)[-b:]); ties to the lower position.
        gap = np.abs(fit.scores[:k] - s_margin)
        picked = np.lexsort((np.arange(k), gap))[:b]
    else:
        feats = fit.x if coregcn_features == "backbone" else \
            np.concatenate([fit.hidden, fit.logit[:, None]], axis=1)
        picked = kcenter_greedy(feats[:k], feats[k:], b)
    return np.sort(fit.subset[picked]).astype(np.int64)


def _check_gcnal(*, variant="core", coregcn_features="gcn", subset_size=10_000, steps=200, hidden=128,
                 dropout=0.3, lr=1e-3, weight_decay=5e-4, lambda_loss=1.2, s_margin=0.1):
    if variant not in VARIANTS:
        raise ValueError(f"gcnal: variant={variant!r}; allowed: 'core' (CoreGCN), 'uncertain' (UncertainGCN)")
    if coregcn_features not in COREGCN_FEATURES:
        raise ValueError(f"gcnal: coregcn_features={coregcn_features!r}; allowed: 'gcn' (paper, "
                         "LoGo port), 'backbone' (original code)")
    for name, v in (("subset_size", subset_size), ("steps", steps), ("hidden", hidden)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"gcnal: {name}={v!r} must be an int >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"gcnal: dropout={dropout!r} must be in [0, 1)")
    for name, v in (("lr", lr), ("weight_decay", weight_decay), ("lambda_loss", lambda_loss)):
        if not v >= 0:
            raise ValueError(f"gcnal: {name}={v!r} must be >= 0")
    if not 0.0 <= s_margin <= 1.0:
        raise ValueError(f"gcnal: s_margin={s_margin!r} must be in [0, 1]")
