"""KAFAL (Cao et al., "Knowledge-Aware Federated Active Learning with Non-IID Data",
ICCV 2023; reference: ycao5602/KAFAL `main.py`): the KSAS query score and the KCFU
local loss, written for one client and valid under `jax.vmap` over clients.

Notation: n (C,) is the client's labeled count per class; classes with n_c = 0 are
*absent*. Logit adjustment adds log n_c to every logit, so absent classes get logit
-inf; here they are masked explicitly (left out of every softmax and sum), never
computed as 0 * inf.

**KSAS** (`get_discrepancy`):
  P = softmax(f_loc + log n), Q = softmax(f_glob + log n)  (over present classes),
  D = 0.5 [KL(Q || P) + KL(P || Q)] = 0.5 sum_c (P_c - Q_c)(log P_c - log Q_c);
the client queries the b largest D (the reference's "intensity" constant is 1). f_loc
is the client's model after its local update in the last round, f_glob the aggregated
model, both in eval mode.

Why mask rather than copy the reference: with current torch, `F.kl_div` of a -inf
input against a 0 target is NaN (checked here with torch 2.13.0: the absent class's
term is 0 * -inf), so the reference's D would be NaN for every sample of a client
missing a class, and its top-b by `np.argsort` an arbitrary order. Whether the pinned
torch 1.0.0 dropped target-0 terms is unverified; masking gives the finite value that
dropping them would.

**KCFU** (`train_epoch_client_distil`), per step, labeled batch (x, y) and unlabeled
batch u:
  CE_bal = mean_i CE(f_S(x_i) + log n, y_i)                    (logit-adjusted student)
  x~_i = beta_i u_i + (1 - beta_i) u_{j(i)},  beta_i ~ Beta(2, 2)  (`kcfu_mix`)
  w_c = (sum n / (n_c + 1e-6)) 1[n_c > 0], normalised to sum 1  (class rarity)
  omega_i = beta_i w[yT(x~_i)] + (1 - beta_i) w[yT(partner_i)],  yT = argmax f_T
  L_KD = distill * mean_i omega_i (1/C) sum_c pT_ic (log pT_ic - log pS_ic)
with pT = softmax(f_T(x~)) of the teacher (the global model received this round, no
gradient) and pS = softmax(f_S(x~)) of the student with *unadjusted* logits; the
(1/C) sum is torch's elementwise `KLDivLoss(reduce=False)(...).mean(1)`; `distill` is
1[round > 0] (no distillation in the first round). Loss = CE_bal + L_KD.

*The partner's teacher prediction.* The reference computes `pred_labels` = argmax of
the teacher on the *mixed* batch and reads `pred_labels[indices]`, the teacher's label
of the mixed sample at the partner's position. With its single partner j for the whole
batch, that sample is x~_j = beta_j u_j + (1 - beta_j) u_j = u_j, so "the teacher's
prediction on the partner" and "on the mixed sample at the partner's position" are the
same thing, with no extra forward pass. With `partner="permuted"` (our alternative, a
random permutation j(i) as in mixup) they differ: the reference's indexing generalises
to `teacher_logits_mixed[partner]` (the recommended argument, again no extra pass),
while the unmixed reading would need the teacher on u; `kcfu_loss` takes the partner's
teacher logits as an argument so either can be passed.

*Reference details worth knowing when integrating* (not decided here): the reference's
server module is built fresh each AL cycle and never set to eval during training, so
the teacher's forward on x~ runs with BatchNorm in train mode (batch statistics); the
student's forward on x~ is a second train-mode forward through the student (its BN
running statistics see the mixed batch too). The labeled batch is the DataLoader's
(last one partial); the unlabeled batch cycles through the unlabeled loader.

Bad input: an empty labeled set (all class counts 0) raises ValueError at the Python
level whenever the counts are concrete (`check_class_counts`, called by the public
functions). Inside jit/vmap the counts are traced and cannot be checked; then a client
with all-zero counts is treated as having every class present (no adjustment, uniform
class weights), which keeps the numbers finite; validate counts before entering jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fastjax.active.kmeans import _concrete

PARTNERS = ("single", "permuted")


def check_class_counts(class_counts, num_classes: int | None = None):
    """Raises ValueError for counts that are not a non-negative (C,) vector with a positive
    sum. Traced counts (inside jit / vmap) are not checked. Counts may be (K, C) for K
    clients: each row must have a positive sum."""
    c = _concrete(class_counts)
    if c is None:
        return
    if c.ndim not in (1, 2) or c.shape[-1] < 1:
        raise ValueError(f"KAFAL: class_counts must be (C,) labeled counts per class (or "
                         f"(K, C) for K clients); got shape {c.shape}.")
    if num_classes is not None and c.shape[-1] != num_classes:
        raise ValueError(f"KAFAL: class_counts has {c.shape[-1]} classes but the logits "
                         f"have {num_classes}.")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"KAFAL: class_counts must be finite and >= 0; got {c}.")
    empty = np.flatnonzero(np.atleast_2d(c).sum(-1) <= 0)
    if empty.size:
        raise ValueError(f"KAFAL: empty labeled set (all class counts are 0) for client(s) "
                         f"{empty.tolist()}: logit adjustment and class weights need at "
                         f"least one labeled sample; give every client an initial labeled "
                         f"set before KSAS/KCFU.")


def _present(class_counts):
    n = jnp.asarray(class_counts, jnp.float32)
    present = n > 0
    # Traced all-zero counts (not checkable): every class present, no adjustment.
    return n, jnp.where(jnp.any(present), present, True)


def _adjusted_log_softmax(logits, log_n, present):
    """log softmax(f + log n) over the present classes; absent entries are 0 (unused)."""
    z = jnp.where(present, logits + log_n, -jnp.inf)
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.where(present, jnp.exp(z), 0.0), axis=-1, keepdims=True))
    return jnp.where(present, z - lse, 0.0)


def _log_n(n, present):
    return jnp.where(present & (n > 0), jnp.log(jnp.where(n > 0, n, 1.0)), 0.0)


@jax.jit
def _ksas(local_logits, global_logits, class_counts):
    n, present = _present(class_counts)
    log_n = _log_n(n, present)
    lp = _adjusted_log_softmax(jnp.asarray(local_logits, jnp.float32), log_n, present)
    lq = _adjusted_log_softmax(jnp.asarray(global_logits, jnp.float32), log_n, present)
    d = jnp.where(present, (jnp.exp(lp) - jnp.exp(lq)) * (lp - lq), 0.0)
    return 0.5 * jnp.sum(d, axis=-1)


def ksas_scores(local_logits, global_logits, class_counts):
    """KSAS discrepancy D (n,) of one client's pool (module docstring); higher = query first.

    local_logits, global_logits: (n, C) pre-softmax outputs of the local and global model;
    class_counts: (C,) the client's labeled counts per class.
    """
    local_logits = np.asarray(local_logits, np.float32)
    global_logits = np.asarray(global_logits, np.float32)
    if local_logits.ndim != 2 or local_logits.shape != global_logits.shape:
        raise ValueError(f"ksas_scores: local and global logits must both be (n, C); got "
                         f"{tuple(local_logits.shape)} and {tuple(global_logits.shape)}.")
    check_class_counts(class_counts, local_logits.shape[-1])
    if np.ndim(class_counts) != 1:
        raise ValueError(f"ksas_scores: class_counts must be (C,) for one client; got shape "
                         f"{np.shape(class_counts)} (vmap over clients for several).")
    from fastjax.active.strategies import _bucket, _pad

    n, rows = local_logits.shape[0], _bucket(local_logits.shape[0])  # one compile per bucket
    return np.asarray(_ksas(_pad(local_logits, rows), _pad(global_logits, rows),
                            np.asarray(class_counts, np.float32)))[:n]


def ksas_select(local_logits, global_logits, class_counts, b: int) -> np.ndarray:
    """The b pool positions with the largest KSAS score (ties: lower position), sorted."""
    d = np.asarray(ksas_scores(local_logits, global_logits, class_counts))
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= d.shape[0]:
        raise ValueError(f"ksas_select: budget b={b!r} must be an integer between 1 and the "
                         f"pool size {d.shape[0]}.")
    return np.sort(np.argsort(-d, kind="stable")[:b])


def kcfu_mix(u, key, partner: str = "single", *, beta_a: float = 2.0, beta_b: float = 2.0,
             valid=None):
    """Mixes an unlabeled batch: x~_i = beta_i u_i + (1 - beta_i) u_{j(i)}.

    Args:
      u: (B, ...) unlabeled batch (augmented inputs). key: PRNG key.
      partner: "single" (the reference: ONE index j drawn for the whole batch,
        `np.random.choice(B, replace=False)` returns a scalar) or "permuted" (a random
        permutation j(i), mixup-style).
      beta_a, beta_b: Beta parameters (the reference's BETA = (2, 2)).
      valid: optional (B,) bool for a padded batch; partners are drawn among valid rows.

    Returns: (mixed (B, ...), beta (B,), partner (B,) int32 indices j(i)).
    """
    if partner not in PARTNERS:
        raise ValueError(f"kcfu_mix: partner={partner!r}; allowed: {PARTNERS}.")
    u = jnp.asarray(u)
    if u.ndim < 1 or not jnp.issubdtype(u.dtype, jnp.floating):
        raise ValueError(f"kcfu_mix: u must be a float batch (B, ...) of preprocessed inputs "
                         f"(mix after normalisation, as the reference); got dtype {u.dtype}, "
                         f"shape {tuple(u.shape)}.")
    b = u.shape[0]
    valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid, bool)
    kb, kp = jax.random.split(key)
    beta = jax.random.beta(kb, beta_a, beta_b, (b,), dtype=jnp.float32)
    idx = _partners(kp, valid, partner=partner)
    return _mix(u, beta, idx), beta, idx


@functools.partial(jax.jit, static_argnames=("partner",))
def _partners(key, valid, *, partner):
    b = valid.shape[0]
    if partner == "single":
        j = jax.random.categorical(key, jnp.where(valid, 0.0, -jnp.inf))
        return jnp.full((b,), j, jnp.int32)
    order = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (b,)), 2.0))
    slots = jnp.argsort(~valid, stable=True)  # valid positions first, in order
    return jnp.zeros((b,), jnp.int32).at[slots].set(order.astype(jnp.int32))


@jax.jit
def _mix(u, beta, idx):
    bt = beta.reshape((u.shape[0],) + (1,) * (u.ndim - 1)).astype(u.dtype)
    return bt * u + (1 - bt) * u[idx]


def kcfu_class_weights(class_counts):
    """w_c = (sum n / (n_c + 1e-6)) 1[n_c > 0], normalised to sum 1 (the reference's
    `weight_ratios`)."""
    n, present = _present(class_counts)
    r = jnp.where(present, jnp.sum(n) / (n + 1e-6), 0.0)
    total = jnp.sum(r)
    # Traced all-zero counts (not checkable): uniform weights rather than 0/0.
    return jnp.where(total > 0, r / jnp.where(total > 0, total, 1.0), present / jnp.sum(present))


def kcfu_loss(student_logits_labeled, labels, class_counts, student_logits_mixed,
              teacher_logits_mixed, teacher_logits_partner, beta, distill, *,
              labeled_valid=None, mixed_valid=None):
    """The KCFU local loss of one batch (module docstring); differentiable in the student
    logits, valid under jit and vmap (`distill` may be a traced 0/1 or bool).

    Args:
      student_logits_labeled: (B, C) student logits on the labeled batch (unadjusted;
        the log-count adjustment is applied here).
      labels: (B,) int labels of that batch.
      class_counts: (C,) the client's labeled counts per class.
      student_logits_mixed: (M, C) student logits on the mixed batch x~ (unadjusted).
      teacher_logits_mixed: (M, C) teacher (global model) logits on x~; no gradient.
      teacher_logits_partner: (M, C) teacher logits for each sample's partner; the
        reference's is `teacher_logits_mixed[partner]` with `partner` from `kcfu_mix`.
      beta: (M,) mixing coefficients from `kcfu_mix`.
      distill: 1[round > 0]; 0/False drops the distillation term.
      labeled_valid, mixed_valid: optional (B,), (M,) bool masks of padded batches; the
        means run over valid rows only.

    Returns: (loss, {"ce": CE_bal, "kd": L_KD}).
    """
    check_class_counts(class_counts, jnp.shape(student_logits_labeled)[-1])
    if np.ndim(class_counts) != 1:
        raise ValueError(f"kcfu_loss: class_counts must be (C,) for one client; got shape "
                         f"{np.shape(class_counts)} (vmap over clients for several).")
    return _kcfu(student_logits_labeled, labels, class_counts, student_logits_mixed,
                 teacher_logits_mixed, teacher_logits_partner, beta, distill, labeled_valid,
                 mixed_valid)


@jax.jit
def _kcfu(student_logits_labeled, labels, class_counts, student_logits_mixed,
          teacher_logits_mixed, teacher_logits_partner, beta, distill, labeled_valid,
          mixed_valid):
    n, present = _present(class_counts)
    log_n = _log_n(n, present)

    s_lab = jnp.asarray(student_logits_labeled, jnp.float32)
    lsm = _adjusted_log_softmax(s_lab, log_n, present)
    ce_i = -jnp.take_along_axis(lsm, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]
    ce = _masked_mean(ce_i, labeled_valid)

    w = kcfu_class_weights(class_counts)
    t_mix = jax.lax.stop_gradient(jnp.asarray(teacher_logits_mixed, jnp.float32))
    t_par = jax.lax.stop_gradient(jnp.asarray(teacher_logits_partner, jnp.float32))
    beta = jax.lax.stop_gradient(jnp.asarray(beta, jnp.float32))
    omega = beta * w[jnp.argmax(t_mix, -1)] + (1 - beta) * w[jnp.argmax(t_par, -1)]
    log_pt = jax.nn.log_softmax(t_mix, axis=-1)
    log_ps = jax.nn.log_softmax(jnp.asarray(student_logits_mixed, jnp.float32), axis=-1)
    kl_i = jnp.mean(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    kd = jnp.asarray(distill, jnp.float32) * _masked_mean(omega * kl_i, mixed_valid)
    return ce + kd, {"ce": ce, "kd": kd}


def _masked_mean(v, valid):
    if valid is None:
        return jnp.mean(v)
    m = jnp.asarray(valid, v.dtype)
    return jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0)


def kafal_query(view, b: int, key) -> np.ndarray:
    """KAFAL's KSAS as a query strategy of the registry: the view's `local_logits` (the
    client's model after its last local update), `logits` (the global model) and
    `class_counts`. `key` is unused (the score is deterministic; ties: lower position)."""
    from fastjax.active.strategies import start

    done = start(view, b, "kafal")
    if done is not None:
        return done
    if view.local_logits is None or view.logits is None or view.class_counts is None:
        raise ValueError("kafal needs the local and global models' logits on the pool and the client's "
                         "labeled class counts (local_logits, logits, class_counts)")
    return ksas_select(view.local_logits, view.logits, view.class_counts, int(b))


def kcfu_objective(partner: str = "single"):
    """KCFU as a local objective of the engine (`federate.local.make_local_update`),
    written for one client and one batch, valid under vmap and every execution strategy.

    Per step: the student's logits on the labeled batch (train mode); an unlabeled batch
    of the batch size drawn uniformly from the client's pool (`aux["u"]`, its first
    `aux["nu"]` rows real; the reference cycles a shuffled unlabeled loader), mixed by
    `kcfu_mix`; the student's logits on the mixed batch (a second train-mode pass, its
    BatchNorm statistics updated too, as the reference); the teacher (the global model
    this round started from) on the mixed batch in train mode with its statistics
    discarded (the reference never puts the server model in eval mode); `kcfu_loss` with
    the client's labeled counts `aux["counts"]`, distilling from the second round of
    each AL cycle on (1[round > 0]) and only when the pool is non-empty.
    """
    if partner not in PARTNERS:
        raise ValueError(f"kcfu_objective: partner={partner!r}; allowed: {PARTNERS}")

    def objective(forward, batch, ctx):
        aux = ctx["aux"]
        u, nu, counts = aux["u"], aux["nu"], aux["counts"]
        b = batch["x"].shape[0]
        k_idx, k_mix = jax.random.split(ctx["key"])
        take = jax.random.randint(k_idx, (b,), 0, jnp.maximum(nu, 1))
        u_valid = jnp.broadcast_to(nu > 0, (b,))
        ub = ctx["preprocess"](u[take]).astype(jnp.float32)
        mixed, beta, partner_idx = kcfu_mix(ub, k_mix, partner, valid=u_valid)
        student_labeled = forward(batch["x"], mask=batch["bn_mask"])
        student_mixed = forward(mixed)
        gv = ctx["global_vars"]
        if "batch_stats" in gv:
            teacher, _ = ctx["apply"](gv, mixed.astype(ctx["compute_dtype"]), train=True, mutable=["batch_stats"])
        else:
            teacher = ctx["apply"](gv, mixed.astype(ctx["compute_dtype"]), train=True)
        teacher = jax.lax.stop_gradient(teacher.astype(jnp.float32))
        distill = (ctx["round"] > 0) & (nu > 0)
        loss, parts = kcfu_loss(student_labeled, batch["y"], counts, student_mixed, teacher,
                                teacher[partner_idx], beta, distill, labeled_valid=batch["valid"],
                                mixed_valid=u_valid)
        return loss, parts["ce"]

    return objective
