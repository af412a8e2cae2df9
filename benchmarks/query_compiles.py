"""Compiles and host memory of the query strategies over shrinking pools, as over AL rounds.

Each AL round leaves every client a smaller unlabeled pool and a larger labeled set. A
strategy compiled for each exact size compiles on every round and the loop's memory grows;
padded to power-of-two buckets (`fastjax.active.strategies`), sizes within a bucket
compile nothing new. This script scores 30 shrinking pools (990 -> 613 samples, labeled
sets 100 -> 390) with BADGE, Coreset and Entropy after one warm-up, and prints how many
XLA compiles they caused and how much the peak RSS grew. Run it at two commits to compare.

    .venv/bin/python benchmarks/query_compiles.py
"""

from __future__ import annotations

import collections
import resource
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from tests.test_strategies import make_pool


def main() -> dict:
    from fastjax.active import strategies as S

    compiles = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, d, **kw: name == "/jax/core/compile/jaxpr_to_mlir_module_duration"
        and compiles.update(["c"]))

    def rss_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def view(n, m):
        p = make_pool(seed=n, n=n, m=m, d=64, c=10)
        return S.PoolView(p["probs"], p["feats"], p["labeled_feats"], p["labeled_y"], p["head_w"], p["head_b"])

    def score(v, key):
        for name in ("badge", "coreset", "entropy"):
            getattr(S, name)(v, 50, key)

    score(view(1000, 100), jax.random.key(0))  # warm-up: the first bucket's compiles
    r0, c0 = rss_mib(), compiles["c"]
    for i, n in enumerate(range(990, 600, -13)):
        score(view(n, 100 + 10 * i), jax.random.key(i))
    out = {"pools": 30, "compiles": compiles["c"] - c0, "peak_rss_growth_mib": round(rss_mib() - r0)}
    print(f"30 pool sizes after a warm-up: {out['compiles']} compiles, peak RSS +{out['peak_rss_growth_mib']} MiB "
          f"(jax {jax.__version__}, {jax.devices()[0].device_kind})")
    return out


if __name__ == "__main__":
    main()
