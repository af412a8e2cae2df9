"""Client partitions of a labelled train split: iid, dirichlet, logo, shards.

Every scheme is a pure function of (labels, num_clients, seed, options): the same inputs
give the same `Partition`. Randomness comes from `np.random.default_rng(seed)` only.
"""

from __future__ import annotations

import numpy as np

from fastjax.partition.types import Partition

DEFAULT_MIN_SIZE = 10          # NIID-Bench's `min_require_size`
MAX_DIRICHLET_TRIES = 1000     # a bounded resampling loop, then a clear error
SINKHORN_ITERS = 10_000
SINKHORN_TOL = 1e-6


def _as_labels(labels, what="train_labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise ValueError(f"{what} has negative labels (min {y.min()})")
    return y.astype(np.int64)


def _finish(scheme: str, parts, test=None) -> Partition:
    sort = lambda ps: tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in ps)
    return Partition(scheme, sort(parts), None if test is None else sort(test))


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random equal shards: sizes differ by at most one."""
    return np.array_split(rng.permutation(len(labels)), num_clients)


def dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
              alpha: float, min_size: int) -> list[np.ndarray]:
    """Label-skew by class-wise Dirichlet proportions (Hsu et al. 2019, arXiv:1909.06335).

    For each class c, proportions p_c ~ Dir(alpha * 1_K) over the K clients split that
    class's samples. As in NIID-Bench (Li et al. 2022, `partition_data`, the
    `min_require_size` loop FAST and LoGo reuse), a client already holding >= N/K samples
    gets no more of later classes, and the whole draw is resampled until every client
    holds >= `min_size` samples (so none is empty), at most MAX_DIRICHLET_TRIES times.
    """
    n, k = len(labels), num_clients
    by_class = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        sizes = np.zeros(k, dtype=np.int64)
        for idx in by_class:
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(k, alpha))
            p = p * (sizes < n / k)  # full clients take no more (balance trick)
            p = p / p.sum() if p.sum() > 0 else np.full(k, 1.0 / k)
            cuts = (np.cumsum(p) * idx.size).astype(np.int64)[:-1]
            for j, chunk in enumerate(np.split(idx, cuts)):
                parts[j].append(chunk)
                sizes[j] += chunk.size
        if sizes.min() >= min_size:
            return [np.concatenate(p) for p in parts]
    raise ValueError(
        f"dirichlet: after {MAX_DIRICHLET_TRIES} draws some client still had fewer than "
        f"min_size={min_size} samples (alpha={alpha}, {k} clients, {n} samples); raise "
        f"alpha, lower min_size, or use fewer clients")


def balanced_dirichlet_matrix(num_clients: int, num_classes: int, alpha: float,
                              rng: np.random.Generator | None = None, *, draw=None) -> np.ndarray:
    """LoGo's K x C class-mix matrix: rows ~ Dir(alpha 1_C), then Sinkhorn-balanced.

    Rows and columns are alternately normalised (LoGo `dir_balance`, Kim et al. CVPR 2023,
    raymin0223/LoGo util/data_simulator.py) until each row sums to 1 (a client's class
    mix) and each column to K/C (every class is spread over clients in full). Zeros are
    floored at 1e-12 so the iteration is defined even for tiny alpha. `draw`: the K x C
    Dirichlet draw itself (else drawn from `rng`).
    """
    if draw is None:
        draw = rng.dirichlet(np.full(num_classes, alpha), size=num_clients)
    m = np.maximum(np.asarray(draw, np.float64), 1e-12)
    col_target = num_clients / num_classes
    for _ in range(SINKHORN_ITERS):
        m *= col_target / m.sum(0, keepdims=True)
        m /= m.sum(1, keepdims=True)
        if np.abs(m.sum(0) - col_target).max() < SINKHORN_TOL * max(col_target, 1):
            break
    return m


def _quotas(counts: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Integer K x C quotas: column c splits counts[c] by shares[:, c] (largest remainder)."""
    raw = shares * counts[None, :]
    q = np.floor(raw).astype(np.int64)
    short = counts - q.sum(0)
    order = np.argsort(-(raw - q), axis=0, kind="stable")
    for c in range(len(counts)):
        q[order[:short[c], c], c] += 1
    return q


def _assign(labels: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Client k gets q[k, c] random samples of class c (a class's samples beyond its
    column sum stay unassigned, as in LoGo's `alpha >= 10` branch)."""
    k, c = q.shape
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for cls in range(c):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for j, chunk in enumerate(np.split(idx, np.cumsum(q[:, cls]))[:k]):
            parts[j].append(chunk)
    return [np.concatenate(p) for p in parts]


def _fill_equal(labels: np.ndarray, matrix: np.ndarray, rng: np.random.Generator
                ) -> list[np.ndarray]:
    """Assigns every sample so client sizes are equal (+-1) and follow `matrix` closely.

    Quotas from the matrix are scaled down to each client's size; the leftovers go, in
    order of decreasing matrix weight (client k, class c), to clients still short. That
    greedy pass places every sample, since total capacity equals the sample count.
    """
    k, c = matrix.shape
    counts = np.bincount(labels, minlength=c)
    cap = np.full(k, len(labels) // k) + (np.arange(k) < len(labels) % k)
    shares = matrix / matrix.sum(0, keepdims=True)
    q = _quotas(counts, shares)
    for j in np.flatnonzero(q.sum(1) > cap):  # scale over-full clients down, keep mix
        raw = q[j] * cap[j] / q[j].sum()
        q[j] = np.floor(raw).astype(np.int64)
        q[j, np.argsort(-(raw - q[j]), kind="stable")[:cap[j] - q[j].sum()]] += 1
    left = counts - q.sum(0)
    deficit = cap - q.sum(1)
    for flat in np.argsort(-matrix, axis=None, kind="stable"):
        j, cls = divmod(int(flat), c)
        give = min(deficit[j], left[cls])
        if give:
            q[j, cls] += give
            deficit[j] -= give
            left[cls] -= give
    return _assign(labels, q, rng)


def logo_code_matrix(draw: np.ndarray, alpha: float) -> np.ndarray:
    """LoGo `dir_balance`'s balancing of a K x C Dirichlet draw, as its code runs it: in
    float32 (torch's default dtype); eps = min(1, K/C, C/K) / 1000; for alpha < 10,
    columns then rows are normalised while some row sum is <= 1 - eps or some column
    sum <= K/C - eps; for alpha >= 10, rows then columns while some row sum is off C/K
    or some column sum off 1 by >= eps (no iteration when the draw already passes)."""
    s = np.asarray(draw, np.float32).copy()
    k, c = s.shape
    eps = min(1.0, k / c, c / k) / 1000
    for _ in range(SINKHORN_ITERS):
        rsum, csum = s.sum(1), s.sum(0)
        if alpha < 10:
            if not ((rsum <= 1 - eps).any() or (csum <= k / c - eps).any()):
                return s
            s /= s.sum(0)
            s /= s.sum(1)[:, None]
        else:
            if not ((abs(rsum - c / k) >= eps).any() or (abs(csum - 1) >= eps).any()):
                return s
            s = s / s.sum(1)[:, None]
            s /= s.sum(0)
        if not np.isfinite(s).all():
            break
    raise ValueError(f"logo (rounding='logo_code'): the Dirichlet draw could not be balanced "
                     f"(alpha={alpha}, {k} clients, {c} classes; a class drew zero everywhere); "
                     f"raise partition.alpha or use partition.rounding='largest_remainder'")


def logo_code_counts(labels: np.ndarray, matrix: np.ndarray, alpha: float) -> np.ndarray:
    """The K x C sample counts LoGo's `dir_balance` assigns for a balanced matrix.

    x = ceil(matrix * N_c); for alpha < 10 a cell <= 1 becomes 0 and every other gets +1.
    Then up to 100 passes over clients, and within each over classes, move
    min(left of class c, x[k, c]) samples to client k, never past ceil(N / K) samples;
    clients still short are topped up, in client order, from the leftovers in class order.
    For alpha >= 10 (cells <= 1 become 0, no +1) client k takes the next x[k, c] samples
    of class c in client order, as far as they go; what is left of a class is unassigned.
    """
    k, c = matrix.shape
    counts = np.bincount(labels, minlength=c)
    x = np.ceil(matrix * counts.astype(np.float32)).astype(np.int64)
    q = np.zeros((k, c), np.int64)
    if alpha >= 10:
        x = np.where(x <= 1, 0, x)
        cum = np.minimum(np.cumsum(x, axis=0), counts[None, :])
        q[0], q[1:] = cum[0], np.diff(cum, axis=0)
        return q
    x = np.where(x <= 1, 0, x + 1)
    cap = -(-len(labels) // k)
    left, size = counts.copy(), np.zeros(k, np.int64)
    for _ in range(100):
        for j in range(k):
            for cls in range(c):
                take = min(left[cls], x[j, cls], cap - size[j])
                q[j, cls] += take
                left[cls] -= take
                size[j] += take
        if left.sum() == 0:
            break
    for j in np.flatnonzero(size <= cap - 1):
        for cls in range(c):
            take = min(left[cls], cap - size[j])
            q[j, cls] += take
            left[cls] -= take
            size[j] += take
    return q


ROUNDINGS = ("largest_remainder", "logo_code")


def logo(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, alpha: float,
         num_classes: int, test_labels: np.ndarray | None = None,
         rounding: str = "largest_remainder"):
    """LoGo's heterogeneous inter-class diversity (Kim et al., CVPR 2023, `dir_balance`).

    Clients get (about) equal numbers of samples ("for the fairness of annotation cost")
    whose class mix follows one balanced Dirichlet matrix: rows ~ Dir(alpha 1_C), then
    Sinkhorn-balanced; the test split, when given, is split with the same matrix so each
    client is evaluated on its own class mix. Both conventions start from the same draw
    `rng.dirichlet(alpha 1_C, size=K)`:

    - rounding="largest_remainder" (default): Sinkhorn in float64 to 1e-6, each class
      split over clients by largest remainder, over-full clients scaled down and the
      leftovers given by decreasing matrix weight: sizes equal within one, every cell
      within a few samples of matrix x class size.
    - rounding="logo_code": LoGo's code cell for cell (`logo_code_matrix`,
      `logo_code_counts`): Sinkhorn in float32 to eps = min(1, K/C, C/K)/1000, cells
      rounded up plus one, assigned in client/class order, capped at ceil(N/K) and topped
      up in class order. Cells differ from the default's by a few samples (most cells,
      well under 1% of all samples); the last clients may hold fewer than ceil(N/K).
      Which samples of a class a client gets is drawn by `rng` (the reference's order
      follows Python's `random` and set iteration), so the counts match, not the indices.
      Exactness is that of float32 arithmetic: torch sums in another order than numpy,
      and checked against torch itself one cell in 6 of 1,200 draws moved by one sample
      (a ceil landing on the other side of an integer).
    """
    draw = rng.dirichlet(np.full(num_classes, alpha), size=num_clients)
    if rounding == "logo_code":
        m = logo_code_matrix(draw, alpha)
        place = lambda y: _assign(y, logo_code_counts(y, m, alpha), rng)  # noqa: E731
    else:
        m = balanced_dirichlet_matrix(num_clients, num_classes, alpha, draw=draw)
        place = lambda y: _fill_equal(y, m, rng)  # noqa: E731
    train = place(labels)
    test = None if test_labels is None else place(test_labels)
    return train, test


def shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
           classes_per_client: int, num_classes: int) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): sort by label, deal n shards each.

    Each class present is cut into class-pure shards (numbers proportional to its size,
    K*n shards in all) and each client is dealt exactly n shards, hence at most n classes
    (exactly n when no class has more than K shards; see `_deal`).
    """
    k, n = num_clients, classes_per_client
    present = np.flatnonzero(np.bincount(labels, minlength=num_classes))
    total = k * n
    if total < present.size:
        raise ValueError(
            f"shards: {k} clients x classes_per_client={n} = {total} shards cannot cover "
            f"{present.size} classes; raise classes_per_client or num_clients")
    counts = np.bincount(labels, minlength=num_classes)[present]
    # Shards per class: one each, the rest by largest remainder of the class sizes.
    per = np.ones(present.size, dtype=np.int64)
    raw = counts / counts.sum() * (total - present.size)
    extra = np.floor(raw).astype(np.int64)
    extra[np.argsort(-(raw - extra), kind="stable")[:total - present.size - extra.sum()]] += 1
    per = np.minimum(per + extra, counts)
    while per.sum() < total:  # tiny classes capped above: give the shards to larger ones
        per[np.argmax(counts - per)] += 1
    shard_list, shard_cls = [], []
    for cls_i in rng.permutation(present.size):
        idx = rng.permutation(np.flatnonzero(labels == present[cls_i]))
        shard_list += np.array_split(idx, per[cls_i])
        shard_cls += [cls_i] * int(per[cls_i])
    owner = _deal(np.array(shard_cls), k, n, rng)
    return [np.concatenate([shard_list[s] for s in np.flatnonzero(owner == j)])
            for j in range(k)]


def _deal(shard_cls: np.ndarray, k: int, n: int, rng: np.random.Generator,
          tries: int = 50) -> np.ndarray:
    """Owner of each shard: n per client, no client with two shards of one class.

    Random deals (McMahan's) are tried first; if none avoids repeats, the class-sorted
    round-robin deal does, whenever no class has more than k shards.
    """
    for _ in range(tries):
        owner = rng.permutation(np.repeat(np.arange(k), n))
        if np.unique(owner * (shard_cls.max() + 1) + shard_cls).size == owner.size:
            return owner
    return rng.permutation(k)[np.arange(shard_cls.size) % k]


PARTITIONS = {"iid": iid, "dirichlet": dirichlet, "logo": logo, "shards": shards}


def make_partition(scheme: str, train_labels, num_clients: int, seed: int, *,
                   alpha: float = 0.1, classes_per_client: int = 2, test_labels=None,
                   min_size: int | None = None, num_classes: int | None = None,
                   rounding: str = "largest_remainder") -> Partition:
    """Splits the train split's indices over `num_clients` clients.

    scheme: "iid" | "dirichlet" (alpha, min_size) | "logo" (alpha, rounding; splits
    `test_labels` too, filling `Partition.test`) | "shards" (classes_per_client).
    rounding (logo): "largest_remainder" (default) | "logo_code" (LoGo's code, cell for
    cell; see `logo`).
    min_size (dirichlet): fewest samples a client may get; default min(10, N // 2K), at
    least 1, so no client is ever empty (half the mean size keeps small toy data feasible).
    All options are checked before any work; errors say what is allowed.

    >>> p = make_partition("dirichlet", np.repeat(np.arange(10), 100), 5, seed=0, alpha=0.5)
    >>> int(sum(p.sizes()))
    1000
    """
    if scheme not in PARTITIONS:
        raise ValueError(f"unknown partition scheme {scheme!r}; allowed: {sorted(PARTITIONS)}")
    y = _as_labels(train_labels)
    n = y.size
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > n:
        raise ValueError(f"num_clients={num_clients} exceeds the {n} train samples; "
                         f"use at most {n} clients")
    c = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if y.max() >= c:
        raise ValueError(f"labels reach {y.max()} but num_classes={c}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"partition rounding={rounding!r} is not allowed; choose one of {list(ROUNDINGS)}")
    rng = np.random.default_rng(seed)
    if scheme in ("dirichlet", "logo") and not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{scheme}: alpha must be > 0 (smaller = more skewed; e.g. 0.1, "
                         f"0.5, 100), got {alpha!r}")
    if scheme == "iid":
        return _finish(scheme, iid(y, num_clients, rng))
    if scheme == "dirichlet":
        ms = (min(DEFAULT_MIN_SIZE, max(1, n // (2 * num_clients))) if min_size is None
              else min_size)
        if ms < 1 or ms * num_clients > n:
            raise ValueError(f"dirichlet: min_size must be in [1, N/K = {n // num_clients}], "
                             f"got {min_size!r}")
        return _finish(scheme, dirichlet(y, num_clients, rng, alpha=alpha, min_size=ms))
    if scheme == "logo":
        ty = None if test_labels is None else _as_labels(test_labels, "test_labels")
        if ty is not None and ty.size and ty.max() >= c:
            raise ValueError(f"test_labels reach {ty.max()} but there are {c} classes")
        if ty is not None and ty.size < num_clients:
            raise ValueError(f"logo: {ty.size} test samples cannot be split over "
                             f"{num_clients} clients")
        train, test = logo(y, num_clients, rng, alpha=alpha, num_classes=c, test_labels=ty,
                           rounding=rounding)
        return _finish(scheme, train, test)
    if not isinstance(classes_per_client, (int, np.integer)) or not 1 <= classes_per_client <= c:
        raise ValueError(f"shards: classes_per_client must be an integer in [1, {c}], "
                         f"got {classes_per_client!r}")
    if num_clients * classes_per_client > n:
        raise ValueError(f"shards: {num_clients} x {classes_per_client} shards exceed the "
                         f"{n} samples")
    return _finish(scheme, shards(y, num_clients, rng, classes_per_client=classes_per_client,
                                  num_classes=c))
