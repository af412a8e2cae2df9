"""Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019), adapted to FL.

**No FAL reference implementation exists**: none of LoGo, FAST-official or KAFAL ships
LL4AL. The pieces here follow the centralised reference,
Mephisto405/Learning-Loss-for-Active-Learning (`models/lossnet.py`, `main.py`
`LossPredLoss` / `train_epoch`); how they enter federated training is a set of choices,
each an option of the caller (the engine / the iterative loop), not decided here:
  - which feature maps are tapped (CNN-4: the four block outputs, 64 channels at
    16/8/4/2 px for 32 px input; ResNet-8: the stage outputs);
  - that the module is averaged by FedAvg with the backbone (our default proposal);
  - when its input is detached from the backbone: the reference detaches after epoch
    120 of 200 (`epoch > epoch_loss`); in FL a fraction of the FL rounds (e.g. 0.6),
    passed here as `detach`;
  - the module's optimiser (the reference: its own SGD with the backbone's settings).

`LossNet(num_taps, hidden)` (the paper's loss prediction module): for each tapped
map, global average pooling -> Dense(hidden) -> ReLU; concatenate; Dense(1) = the
predicted loss. Dense layers use torch's default init (U(+-1/sqrt(fan_in)) for weights
and biases) like the other models.

`margin_ranking_loss` (the paper's pairwise loss-prediction loss; `LossPredLoss`): a
batch of 2B samples is split into the pairs (i, 2B-1-i), i < B (the batch against
itself reversed), and
  L = mean_pairs max(0, xi - sgn_ij (lhat_i - lhat_j)),
  sgn_ij = +1 if l_i > l_j else -1 (the paper's A(l_i, l_j); the reference's
  `2 sign(clamp(l_i - l_j, 0)) - 1`: a tie l_i = l_j counts as -1, not 0), with the
  true losses l detached.
An odd batch (the reference asserts even) pairs (i, m-1-i) for i < m // 2 and leaves
the middle sample out. With a validity mask (padded batch) the valid rows are taken in
order and paired the same way, as if the batch held only them. Fewer than 2 valid
samples: no pair, loss 0.

`ll4al_objective` = mean CE + lam * margin_ranking_loss (lam = 1, xi = 1 in the paper).
Query: the top-b predicted losses (`ll4al_select`); the reference scores a random
10,000-sample subset of the pool (the caller chooses which samples to score).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastjax.federate.models import _bias_init, _torch_uniform


class LossNet(nn.Module):
    """Loss-prediction module: `LossNet(num_taps)(taps) -> (B,)` predicted losses.

    taps: a sequence of `num_taps` arrays (B, H, W, C) (NHWC feature maps, globally
    average-pooled) or (B, C) (already pooled / flat features, used as they are).
    """

    num_taps: int
    hidden: int = 128

    @nn.compact
    def __call__(self, taps: Sequence[jax.Array]) -> jax.Array:
        if len(taps) != self.num_taps:
            raise ValueError(f"LossNet: expected {self.num_taps} feature taps, got "
                             f"{len(taps)}; the model must expose one map per tapped block.")
        outs = []
        for t in taps:
            if t.ndim < 2:
                raise ValueError(f"LossNet: a tap must be (B, ..., C); got shape {t.shape}.")
            g = jnp.mean(t, axis=tuple(range(1, t.ndim - 1))) if t.ndim > 2 else t
            fan_in = g.shape[-1]
            outs.append(nn.relu(nn.Dense(self.hidden, kernel_init=_torch_uniform,
                                         bias_init=_bias_init(fan_in))(g)))
        h = jnp.concatenate(outs, axis=-1)
        out = nn.Dense(1, kernel_init=_torch_uniform, bias_init=_bias_init(h.shape[-1]))(h)
        return out[:, 0]


class WithLossNet(nn.Module):
    """A backbone (any fastjax model with `outputs="taps"`) with LL4AL's loss-prediction
    module on its stage outputs, trained and averaged together (the module is part of
    the model's variables, so FedAvg averages it and the communication count includes
    its parameters).

    outputs="logits" | "features" | "taps": the backbone's outputs (the module does not
    change them); "loss": (logits, predicted loss (B,)), the module's input detached
    from the backbone where `detach` (a traced bool) holds.
    """

    backbone: nn.Module
    hidden: int = 128

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, outputs: str = "logits", detach=False):
        logits, h, taps = self.backbone(x, train, mask, outputs="taps")
        detach = jnp.asarray(detach, bool)
        pred = LossNet(len(taps), self.hidden, name="lossnet")(
            [jnp.where(detach, jax.lax.stop_gradient(t), t) for t in taps])
        if outputs == "loss":
            return logits, pred
        return {"logits": logits, "features": (logits, h), "taps": (logits, h, taps)}[outputs]


def make_predicted_loss_fn(model: WithLossNet, preprocess: Callable):
    """pred_loss(variables, x, batch_size) -> (n,) predicted losses in eval mode, numpy."""
    from fastjax.federate.engine import batched

    @jax.jit
    def forward(variables, xb):
        return model.apply(variables, preprocess(xb), train=False, outputs="loss")[1].astype(jnp.float32)

    def pred_loss(variables, x, batch_size: int):
        if len(x) == 0:
            return np.zeros(0, np.float32)
        return batched(lambda xb: forward(variables, xb), x, batch_size)

    return pred_loss


def _pairs(size: int, mask):
    """(i, j, pair_valid) of the reference's pairing, over the valid rows in order."""
    t = jnp.arange(size)
    if mask is None:
        m = jnp.asarray(size)
        order = t
    else:
        mask = jnp.asarray(mask, bool)
        m = jnp.sum(mask)
        order = jnp.argsort(~mask, stable=True)  # valid rows first, in their order
    i = order
    j = order[jnp.clip(m - 1 - t, 0, size - 1)]
    return i, j, t < m // 2


def margin_ranking_loss(pred, target, xi: float = 1.0, mask=None):
    """LL4AL's pairwise ranking loss (module docstring). pred, target: (B,) predicted and
    true per-sample losses (target gets no gradient); mask: optional (B,) bool."""
    pred = jnp.asarray(pred)
    target = jax.lax.stop_gradient(jnp.asarray(target))
    if pred.ndim != 1 or pred.shape != target.shape:
        raise ValueError(f"margin_ranking_loss: pred and target must both be (B,); got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}.")
    return _ranking(pred, target, xi, mask)


@jax.jit
def _ranking(pred, target, xi, mask):
    i, j, ok = _pairs(pred.shape[0], mask)
    sgn = jnp.where(target[i] - target[j] > 0, 1.0, -1.0)
    per_pair = jnp.maximum(0.0, xi - sgn * (pred[i] - pred[j]))
    ok = ok.astype(per_pair.dtype)
    return jnp.sum(per_pair * ok) / jnp.maximum(jnp.sum(ok), 1.0)


def ll4al_objective(ce_per_sample, taps, lossnet_params, lossnet_apply: Callable, *,
                    lam: float = 1.0, xi: float = 1.0, detach=False, mask=None):
    """Backbone + loss-module objective of one batch: mean CE + lam * ranking loss.

    Args:
      ce_per_sample: (B,) per-sample cross-entropy of the backbone (differentiable).
      taps: the tapped feature maps of the same forward pass (`LossNet` input).
      lossnet_params: the module's params. lossnet_apply: `LossNet(...).apply`, called as
        `lossnet_apply({"params": lossnet_params}, taps)`.
      lam: weight of the ranking loss (paper lambda = 1). xi: margin (paper 1).
      detach: True (or a traced bool, e.g. round >= detach_round) stops the module's
        gradient into the backbone through `taps`; the module itself still learns.
      mask: optional (B,) bool of real samples in a padded batch.

    Returns: (loss, {"ce": mean CE, "rank": ranking loss, "pred_loss": (B,)}).
    """
    detach = jnp.asarray(detach, bool)
    taps = [jnp.where(detach, jax.lax.stop_gradient(t), t) for t in taps]
    pred = lossnet_apply({"params": lossnet_params}, taps)
    ce_per_sample = jnp.asarray(ce_per_sample)
    if mask is None:
        ce = jnp.mean(ce_per_sample)
    else:
        w = jnp.asarray(mask, ce_per_sample.dtype)
        ce = jnp.sum(ce_per_sample * w) / jnp.maximum(jnp.sum(w), 1.0)
    rank = margin_ranking_loss(pred, ce_per_sample, xi=xi, mask=mask)
    return ce + lam * rank, {"ce": ce, "rank": rank, "pred_loss": pred}


def ll4al_train_objective(*, lam: float = 1.0, xi: float = 1.0, detach_round: int = 0):
    """LL4AL's joint loss as a local objective of the engine
    (`federate.local.make_local_update`) for a `WithLossNet` model: mean CE + lam *
    margin ranking loss between the module's predicted losses and the (detached)
    per-sample CE, the module's input detached from the backbone from the 0-indexed FL
    round `detach_round` of each AL round on (the reference: epoch 120 of 200). Padded
    rows of a partial batch are masked out of both terms."""
    from fastjax.federate.local import cross_entropy

    def objective(forward, batch, ctx):
        detach = ctx["round"] >= detach_round
        logits, pred = forward(batch["x"], mask=batch["bn_mask"], outputs="loss", detach=detach)
        ce = cross_entropy(logits.astype(jnp.float32), batch["y"])
        valid = batch["valid"]
        w = valid.astype(jnp.float32)
        ce_mean = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
        rank = margin_ranking_loss(pred.astype(jnp.float32), ce, xi=xi, mask=valid)
        return ce_mean + lam * rank, ce_mean

    return objective


def ll4al_select(pred_loss, b: int) -> np.ndarray:
    """The b positions with the largest predicted loss (ties: lower position), sorted."""
    s = np.asarray(pred_loss).reshape(-1)
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= s.shape[0]:
        raise ValueError(f"ll4al_select: budget b={b!r} must be an integer between 1 and the "
                         f"number of scored samples {s.shape[0]}.")
    return np.sort(np.argsort(-s, kind="stable")[:b])


def ll4al_query(view, b: int, key, *, subset_size: int = 10_000) -> np.ndarray:
    """LL4AL as a query strategy of the registry: the b largest predicted losses
    (`view.pred_loss`, the global model's loss-prediction module) among a random subset
    of `subset_size` pool samples (the reference scores a random 10,000; at least b)."""
    from fastjax.active.strategies import start

    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 1:
        raise ValueError(f"ll4al: subset_size={subset_size!r} must be an int >= 1")
    done = start(view, b, "ll4al")
    if done is not None:
        return done
    if view.pred_loss is None:
        raise ValueError("ll4al needs the loss-prediction module's output on the pool (pred_loss)")
    from fastjax.active.strategies import random_order

    n = view.n
    sub = np.arange(n) if subset_size >= n else np.sort(random_order(key, n)[: max(int(b), subset_size)])
    return np.sort(sub[ll4al_select(np.asarray(view.pred_loss)[sub], int(b))]).astype(np.int64)
