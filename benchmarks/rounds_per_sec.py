"""Rounds per second of one federated round, fastjax against what users would otherwise run.

    python benchmarks/rounds_per_sec.py --workload cpu --json runs/bench/rps_cpu.json
    python benchmarks/rounds_per_sec.py --workload paper --json runs/bench/rps_paper.json

Measures, in one run on one machine: every fastjax execution strategy (x convolution
formulation), a PyTorch sequential per-client loop doing identical work (the execution
model of Flower clients and FAST-official), and Flower's own simulation where `flwr` is
importable. One round = every client's local SGD (CNN-4, momentum 0.9, weight decay
1e-4, same batch and steps) + FedAvg. Synthetic tensors of the real shapes.

Compile time is reported apart from steady state; steady state is the median over
--repeats rounds after one warm-up. Also: samples/s, the ratio to the PyTorch loop, and
achieved FLOP/s (analytic CNN-4 training FLOPs) against a matmul ceiling measured in the
same run. Writes JSON (--json) and a markdown table (--md, default next to the JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

WORKLOADS = {
    # CPU-sized: a few local steps, batch 64 (minutes on a 2-core CPU).
    "cpu": dict(clients=10, samples=320, batch=64, epochs=None, steps=5, image=32, channels=3, classes=10),
    # The paper's round: 10 clients x 5 local epochs over CIFAR-10-sized client sets, batch 128.
    "paper": dict(clients=10, samples=5000, batch=128, epochs=5, steps=None, image=32, channels=3, classes=10),
    # For tests: proves the script works, measures nothing of interest.
    "tiny": dict(clients=3, samples=16, batch=8, epochs=None, steps=2, image=32, channels=3, classes=10),
}


def fastjax_round(strategy: str, conv_impl: str, w: dict, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fastjax.federate import engine, local, models

    model = models.make_model("cnn4", w["classes"], conv_impl)
    variables = models.init_variables(model, (w["image"], w["image"], w["channels"]))
    spec = engine.TrainSpec(local_epochs=w["epochs"], local_steps=w["steps"], batch_size=w["batch"],
                            lr=1e-3, strategy=strategy)
    k = w["clients"]
    n = np.full(k, w["samples"], np.int32)
    steps = local.steps_per_client(n, w["batch"], w["epochs"], w["steps"])
    k_pad = engine.execution.padded_client_count(k, strategy)
    n = np.concatenate([n, np.zeros(k_pad - k, np.int32)])
    steps = np.concatenate([steps, np.zeros(k_pad - k, np.int32)])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (k_pad, w["samples"], w["image"], w["image"], w["channels"]),
                                 dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, w["classes"], (k_pad, w["samples"])), jnp.int32)
    pre = lambda a: (a.astype(jnp.float32) / 255.0 - 0.5) / 0.5  # noqa: E731
    round_fn = engine.make_round_fn(model, spec, pre)
    args = (variables, x, y, jnp.asarray(n), jnp.asarray(steps), jnp.arange(k_pad, dtype=jnp.int32),
            jnp.float32(1e-3), jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = round_fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = compiled(*args)
    jax.block_until_ready(out)  # warm-up round
    secs = []
    v = out[0]
    for r in range(repeats):
        t0 = time.perf_counter()
        v, stats = compiled(v, *args[1:-1], jax.random.PRNGKey(r + 1))
        jax.block_until_ready(v)
        secs.append(time.perf_counter() - t0)
    from benchmarks import common

    sec = common.median(secs)
    samples = int(np.sum(np.minimum(steps * w["batch"], w["epochs"] * n if w["epochs"] else steps * w["batch"])))
    return {"name": f"fastjax-{strategy}-{conv_impl}", "kind": "fastjax", "strategy": strategy,
            "conv_impl": conv_impl, "compile_seconds": compile_s, "round_seconds": secs,
            "sec_per_round": sec, "samples_per_sec": samples / sec, "samples_per_round": samples}


def torch_round(w: dict, repeats: int) -> dict:
    from benchmarks import torch_reference

    steps = w["steps"] or w["epochs"] * -(-w["samples"] // w["batch"])
    r = torch_reference.time_round(w["clients"], steps, w["batch"], w["image"], w["channels"],
                                   w["classes"], repeats=repeats, warmup=1)
    return {"name": "pytorch-sequential", "kind": "peer", "compile_seconds": 0.0, **r}


def flower_round(w: dict, repeats: int) -> dict | None:
    from benchmarks import flower_reference

    if not flower_reference.available():
        return None
    steps = w["steps"] or w["epochs"] * -(-w["samples"] // w["batch"])
    r = flower_reference.time_round(w["clients"], steps, w["batch"], w["image"], w["channels"],
                                    w["classes"], repeats=repeats)
    return {"name": "flower-simulation", "kind": "peer", "compile_seconds": 0.0, **r}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="cpu")
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--md", default=None, help="markdown table path (default: JSON path with .md)")
    p.add_argument("--strategies", default="vmap,sequential,sharded")
    p.add_argument("--conv-impls", default="im2col,winograd")
    p.add_argument("--peers", default="torch,flower", help="comma list of torch,flower or 'none'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--host-devices", type=int, default=0,
                   help="CPU only: split the host into N XLA devices (for the sharded strategy)")
    args = p.parse_args(argv)
    if args.host_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import common

    w = WORKLOADS[args.workload]
    results = []
    for strategy in args.strategies.split(","):
        for impl in args.conv_impls.split(","):
            r = fastjax_round(strategy, impl, w, args.repeats)
            print(f"{r['name']}: {r['sec_per_round']:.3f} s/round, {r['samples_per_sec']:.0f} samples/s, "
                  f"compile {r['compile_seconds']:.1f} s", flush=True)
            results.append(r)
    peers = [] if args.peers == "none" else args.peers.split(",")
    if "torch" in peers:
        r = torch_round(w, args.repeats)
        print(f"pytorch-sequential: {r['sec_per_round']:.3f} s/round, {r['samples_per_sec']:.0f} samples/s",
              flush=True)
        results.append(r)
    if "flower" in peers:
        r = flower_round(w, args.repeats)
        if r is not None:
            results.append(r)
    flops = common.cnn4_flops_per_sample(w["image"], w["channels"], w["classes"])
    ceiling = common.matmul_ceiling_flops("jax")
    for r in results:
        r["rounds_per_sec"] = 1.0 / r["sec_per_round"]
        r["achieved_flops"] = r["samples_per_sec"] * flops
        r["fraction_of_matmul_ceiling"] = r["achieved_flops"] / ceiling
    best = max((r for r in results if r["kind"] == "fastjax"), key=lambda r: r["samples_per_sec"])
    torch_r = next((r for r in results if r["name"] == "pytorch-sequential"), None)
    for r in results:
        r["ratio_vs_torch"] = r["samples_per_sec"] / torch_r["samples_per_sec"] if torch_r else None
    out = {"device": common.device_info(), "workload": {"name": args.workload, **w},
           "cnn4_train_flops_per_sample": flops, "matmul_ceiling_flops": ceiling,
           "best_fastjax": best["name"],
           "ratio_vs_torch": best["samples_per_sec"] / torch_r["samples_per_sec"] if torch_r else None,
           "results": results}
    path = common.write_json(args.json, out)
    cols = ["name", "compile_seconds", "sec_per_round", "rounds_per_sec", "samples_per_sec", "ratio_vs_torch",
            "achieved_flops", "fraction_of_matmul_ceiling"]
    table = common.markdown_table(results, cols)
    Path(args.md or path.with_suffix(".md")).write_text(table + "\n")
    print(table)
    print(f"best fastjax: {best['name']}; ratio vs PyTorch loop: {out['ratio_vs_torch']}")


if __name__ == "__main__":
    main()
