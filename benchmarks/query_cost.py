"""Query time of every FAL strategy on one client pool (issue 9: 5,000 samples, 256-d).

    python benchmarks/query_cost.py                       # n=5000, d=256, C=10, b=250, m=250
    python benchmarks/query_cost.py --n 50000 --json runs/bench/query_cost.json

Synthetic client of the real shapes: ReLU features around C class centres, a random
linear head and its softmax, a labeled set of m samples. Per strategy: the first call
(compile + run) and the median of --repeats further calls with fresh keys (steady
state, what every later client and AL round pays). Prints JSON with device, versions
and date (`benchmarks.common.device_info`).
"""

from __future__ import annotations

import argparse
import json
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
    z = h @ w + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return PoolView((p / p.sum(axis=1, keepdims=True)).astype(np.float32), h, hl, y_lab, w, bias)


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
    print(json.dumps(result, indent=2))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--C", type=int, default=10)
    ap.add_argument("--b", type=int, default=250)
    ap.add_argument("--m", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strategies", nargs="*", default=None)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    result = time_strategies(a.n, a.d, a.C, a.b, a.m, a.repeats, a.strategies)
    if a.json:
        from benchmarks import common
        common.write_json(a.json, result)


if __name__ == "__main__":
    main()
