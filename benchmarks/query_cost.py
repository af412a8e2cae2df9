"""Query time of every FAL strategy on one client pool (5,000 samples, 256-d by default),
and what the three training-changing baselines add to training on one 5,000-sample
client (--training).

    python benchmarks/query_cost.py                       # n=5000, d=256, C=10, b=250, m=250
    python benchmarks/query_cost.py --n 50000 --json runs/bench/query_cost.json
    python benchmarks/query_cost.py --training --json runs/bench/training_cost.json

Synthetic client of the real shapes: ReLU features around C class centres, a random
linear head and its softmax, a labeled set of m samples. Per strategy: the first call
(compile + run) and the median of --repeats further calls with fresh keys (steady
state, what every later client and AL round pays). Prints a table and the device,
versions and date; --json also writes everything as JSON. About a minute on a 2-core
CPU at the defaults.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_view(n: int, d: int, c: int, m: int, seed: int = 0):
    """A PoolView of the given shapes (features, head, softmax, labeled set)."""
    import numpy as np

    from fastjax.active import PoolView

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    y_pool, y_lab = rng.integers(0, c, n), rng.integers(0, c, m)
    h = np.maximum(centres[y_pool] + rng.normal(size=(n, d)), 0).astype(np.float32)
    hl = np.maximum(centres[y_lab] + rng.normal(size=(m, d)), 0).astype(np.float32)
    w = (rng.normal(size=(d, c)) / np.sqrt(d) * 4).astype(np.float32)
    bias = np.zeros(c, np.float32)
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    z = (h @ w + bias).astype(np.float32)
    local = (h @ (w + rng.normal(size=(d, c)).astype(np.float32) / np.sqrt(d))).astype(np.float32)
    return PoolView(softmax(z), h, hl, y_lab, w, bias, logits=z, local_probs=softmax(local),
                    local_feats=h, local_logits=local, class_counts=np.bincount(y_lab, minlength=c),
                    pred_loss=rng.normal(size=n).astype(np.float32))


def time_strategies(n: int = 5000, d: int = 256, C: int = 10, b: int = 250, m: int = 250,
                    repeats: int = 3, names=None, options=None) -> dict:
    """Times every strategy (or `names`) on one synthetic pool; prints and returns JSON."""
    import jax

    from benchmarks import common
    from fastjax.active import STRATEGIES, alfa_mix_candidates, query

    view = synthetic_view(n, d, C, m)
    options = options or {}
    rows = []
    for name in names or list(STRATEGIES):
        opts = options.get(name, {})
        t0 = time.perf_counter()
        query(name, view, b, jax.random.key(0), **opts)
        first = time.perf_counter() - t0
        secs = []
        for r in range(repeats):
            t0 = time.perf_counter()
            out = query(name, view, b, jax.random.key(r + 1), **opts)
            secs.append(time.perf_counter() - t0)
        assert out.size == b
        rows.append({"strategy": name, "options": opts, "first_call_s": first,
                     "steady_s": common.median(secs), "steady_runs_s": secs})
    result = {"benchmark": "query_cost", "n": n, "d": d, "C": C, "b": b, "m": m, "repeats": repeats,
              "alfa_mix_candidates": int(alfa_mix_candidates(view, b).sum()),
              "results": rows, "load_avg_1m_after": os.getloadavg()[0], "device": common.device_info()}
    print(common.markdown_table(rows, ["strategy", "first_call_s", "steady_s"]))
    print(f"one pool of n={n}, d={d}, C={C}, b={b}, m={m}; {common.device_line(result['device'])}")
    return result


def time_training(n: int = 5000, labeled: int = 500, repeats: int = 2, epochs: int = 5,
                  batch: int = 64) -> dict:
    """One CNN-4 client of n CIFAR-shaped samples (`labeled` of them labeled): seconds of a
    federated round's local update (`epochs` local epochs) with plain cross-entropy, with
    KAFAL's KCFU (an unlabeled batch, a second student pass and a teacher pass per step)
    and with LL4AL's loss module; LoGo's local-only model (up to 50 epochs from scratch,
    stopping at 99% training accuracy); KAFAL's recomputation of the client's last local
    model (one local update). First call (compile) and the median of `repeats` more."""
    import dataclasses

    import jax
    import numpy as np

    from benchmarks import common
    from fastjax.active.kafal import kcfu_objective
    from fastjax.active.ll4al import WithLossNet, ll4al_train_objective
    from fastjax.active.local_only import train_local_only
    from fastjax.federate import engine, models

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    pre = lambda v: v.astype(np.float32) / 255.0 - 0.5  # noqa: E731
    spec = engine.TrainSpec(rounds=1, local_epochs=epochs, batch_size=batch, lr=0.01)
    clients = engine.stack_clients([x[:labeled]], [y[:labeled]])
    steps = engine.local.steps_per_client(clients.n, batch, epochs, None)
    common_args = (np.asarray(clients.n), steps, np.zeros(1, np.int32), engine.round_hyper(spec, 1),
                   engine.round_key(0, 1))
    cnn = models.make_model("cnn4", 10)
    pool = {"u": x[None, labeled:], "nu": np.array([n - labeled], np.int32),
            "counts": np.bincount(y[:labeled], minlength=10)[None].astype(np.float32)}

    def timed(fn):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            runs.append(time.perf_counter() - t0)
        return {"first_call_s": first, "steady_s": common.median(runs), "steady_runs_s": runs}

    rows = []
    v = models.init_variables(cnn, (32, 32, 3), 0)
    plain = engine.make_round_fn(cnn, spec, pre)
    rows.append({"what": f"FedAvg local update, {epochs} epochs, cross-entropy",
                 **timed(lambda: plain(v, clients.x, clients.y, *common_args)[0])})
    with_pool = dataclasses.replace(clients, aux=pool)
    kcfu = engine.make_round_fn(cnn, spec, pre, objective=kcfu_objective())
    rows.append({"what": f"KAFAL local update (KCFU), {epochs} epochs",
                 **timed(lambda: kcfu(v, with_pool.x, with_pool.labels(), *common_args)[0])})
    client_models = engine.make_client_models_fn(cnn, spec, pre, objective=kcfu_objective())
    rows.append({"what": "KAFAL query: the client's last local model, recomputed",
                 **timed(lambda: client_models(v, with_pool.x, with_pool.labels(), *common_args))})
    ll = WithLossNet(cnn)
    vl = models.init_variables(ll, (32, 32, 3), 0)
    ll_round = engine.make_round_fn(ll, spec, pre, objective=ll4al_train_objective(detach_round=60))
    rows.append({"what": f"LL4AL local update (backbone + loss module), {epochs} epochs",
                 **timed(lambda: ll_round(vl, clients.x, clients.y, *common_args)[0])})
    rows.append({"what": "LoGo query: local-only model from scratch (<= 50 epochs, stop at 99%)",
                 **timed(lambda: train_local_only(cnn, v, clients, batch_size=batch, lr=0.01, momentum=0.9,
                                                  weight_decay=1e-5, preprocess=pre,
                                                  key=jax.random.key(0))[0])})
    result = {"benchmark": "training_cost", "n": n, "labeled": labeled, "epochs": epochs, "batch": batch,
              "model": "cnn4, 32x32x3, random data and labels", "repeats": repeats, "results": rows,
              "load_avg_1m_after": os.getloadavg()[0], "device": common.device_info()}
    print(common.markdown_table(rows, ["what", "first_call_s", "steady_s"]))
    print(f"one client of {n} samples; {common.device_line(result['device'])}")
    return result


def main(argv=None):
    from benchmarks import common

    ap = common.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--C", type=int, default=10)
    ap.add_argument("--b", type=int, default=250)
    ap.add_argument("--m", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strategies", nargs="*", default=None, help="default: all of them")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--training", action="store_true", help="time the training-side costs instead")
    a = ap.parse_args(argv)
    from fastjax.active import STRATEGIES

    unknown = sorted(set(a.strategies or ()) - set(STRATEGIES))
    if unknown:
        ap.error(f"--strategies: unknown {unknown}; allowed: {', '.join(STRATEGIES)}")
    if min(a.n, a.d, a.C, a.b, a.m, a.repeats) < 1 or a.b > a.n:
        ap.error("--n, --d, --C, --b, --m and --repeats must be >= 1, and --b <= --n")
    if a.training:
        result = time_training(a.n, labeled=2 * a.m, repeats=max(1, a.repeats - 1))
    else:
        result = time_strategies(a.n, a.d, a.C, a.b, a.m, a.repeats, a.strategies)
    if a.json:
        common.write_json(a.json, result)


if __name__ == "__main__":
    main()
