"""Rounds per second of one federated round, fastjax against what users would otherwise run.

    python benchmarks/rounds_per_sec.py --workload cpu --json runs/bench/rps_cpu.json
    python benchmarks/rounds_per_sec.py --workload paper --json runs/bench/rps_paper.json

Measures, in one run on one machine: every fastjax execution strategy (x convolution
formulation), a PyTorch sequential per-client loop doing identical work (the execution
model of Flower clients and FAST-official), and Flower's own simulation where `flwr` is
importable. One round = every client's local SGD (CNN-4, momentum 0.9, weight decay
1e-4, same batch and steps) + FedAvg. Synthetic tensors of the real shapes.

Compile time is reported apart from steady state; steady state is the median over
--repeats rounds after one warm-up. The PyTorch loop runs on the same device as fastjax
(`--torch-device auto`), with TF32 on a GPU as XLA uses it; `--peers torch-compile` adds
its `torch.compile` variant. `--compute-dtypes bfloat16` times mixed precision;
`--workload paper-dirichlet` the ragged round (with `--critical-path`, its largest
client alone). Also: samples/s, the ratio to the PyTorch loop, and
achieved FLOP/s (analytic CNN-4 training FLOPs) against a matmul ceiling measured in the
same run. Writes JSON (--json) and a markdown table (--md, default next to the JSON).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

WORKLOADS = {
    # CPU-sized: a few local steps, batch 64 (minutes on a 2-core CPU).
    "cpu": dict(clients=10, samples=320, batch=64, epochs=None, steps=5, image=32, channels=3, classes=10),
    # The paper's round: 10 clients x 5 local epochs over CIFAR-10-sized client sets, batch 128.
    "paper": dict(clients=10, samples=5000, batch=128, epochs=5, steps=None, image=32, channels=3, classes=10),
    # The paper's Dirichlet(0.1) round: CIFAR-10's 50,000 samples over 10 clients as the FAST
    # job partitions them (seed 0: 30 to 9,565 samples a client).
    "paper-dirichlet": dict(clients=10, samples=None, dirichlet=0.1, total=50000, batch=128, epochs=5, steps=None,
                            image=32, channels=3, classes=10),
    # For tests: proves the script works, measures nothing of interest.
    "tiny": dict(clients=3, samples=16, batch=8, epochs=None, steps=2, image=32, channels=3, classes=10),
    "tiny-dirichlet": dict(clients=2, samples=None, dirichlet=0.1, total=40, batch=4, epochs=1, steps=None,
                           image=32, channels=3, classes=10),
}


def client_sizes(w: dict):
    """Samples per client: equal (`samples`), or a seeded Dirichlet partition of `total`
    balanced-class samples, as the FAST job draws it."""
    import numpy as np

    population = w.get("population") or w["clients"]
    if not w.get("dirichlet"):
        return np.full(population, w["samples"], np.int32)
    from fastjax import partition

    labels = np.repeat(np.arange(w["classes"]), w["total"] // w["classes"])
    part = partition.make_partition("dirichlet", labels, population, 0, alpha=w["dirichlet"],
                                    num_classes=w["classes"])
    return np.array([len(ix) for ix in part.train], np.int32)


def fastjax_round(strategy: str, conv_impl: str, w: dict, repeats: int, *, compute_dtype: str = "float32",
                  client_chunk: int = 0, sizes=None) -> dict:
    """Median seconds of one compiled round (after a warm-up), with its compile time and XLA's
    compiled memory analysis. With w["population"] > w["clients"], each round selects
    w["clients"] of them as `engine.fit` does (a seeded draw and a gather on the device)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import common
    from fastjax.federate import engine, local, models

    model = models.make_model("cnn4", w["classes"], conv_impl)
    variables = models.init_variables(model, (w["image"], w["image"], w["channels"]))
    spec = engine.TrainSpec(local_epochs=w["epochs"], local_steps=w["steps"], batch_size=w["batch"], lr=1e-3,
                            strategy=strategy, compute_dtype=compute_dtype, client_chunk=client_chunk)
    n_all = client_sizes(w) if sizes is None else np.asarray(sizes, np.int32)
    population, k = len(n_all), w["clients"]
    steps_all = local.steps_per_client(n_all, w["batch"], w["epochs"], w["steps"])
    k_pad = engine.execution.padded_client_count(k, strategy)
    # Synthetic pixels drawn on the device (no host copy of large client populations).
    shape = (population, int(n_all.max()), w["image"], w["image"], w["channels"])
    x_all = jax.random.bits(jax.random.PRNGKey(0), shape, jnp.uint8)
    y_all = jax.random.randint(jax.random.PRNGKey(1), shape[:2], 0, w["classes"], jnp.int32)
    pre = lambda a: (a.astype(jnp.float32) / 255.0 - 0.5) / 0.5  # noqa: E731
    round_fn = engine.make_round_fn(model, spec, pre)

    def round_args(r):
        sel = engine.select_clients(population, k / population, 0, r)
        rows = np.concatenate([sel, np.zeros(k_pad - len(sel), np.int64)])
        real = np.arange(k_pad) < len(sel)
        n = np.where(real, n_all[rows], 0).astype(np.int32)
        steps = np.where(real, steps_all[rows], 0).astype(np.int32)
        x, y = (x_all, y_all) if k_pad == population else (x_all[jnp.asarray(rows)], y_all[jnp.asarray(rows)])
        samples = int(np.sum(w["epochs"] * n if w["epochs"] else steps * w["batch"]))
        return (x, y, jnp.asarray(n), jnp.asarray(steps), jnp.asarray(rows, jnp.int32)), samples, steps

    args, _, _ = round_args(0)
    t0 = time.perf_counter()
    compiled = round_fn.lower(variables, *args, jnp.float32(1e-3), jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    v, stats = compiled(variables, *args, jnp.float32(1e-3), jax.random.PRNGKey(0))
    jax.block_until_ready(v)  # warm-up round
    secs, samples, executed, real_steps = [], [], 0, 0
    for r in range(repeats):
        t0 = time.perf_counter()
        args, count, steps = round_args(r + 1)
        v, stats = compiled(v, *args, jnp.float32(1e-3), jax.random.PRNGKey(r + 1))
        jax.block_until_ready(v)
        secs.append(time.perf_counter() - t0)
        samples.append(count)
        executed += int(np.sum(stats["lane_steps"]))
        real_steps += int(np.sum(steps))
    sec = common.median(secs)
    name = f"fastjax-{strategy}-{conv_impl}" + ("-bf16" if compute_dtype == "bfloat16" else "")
    return {"name": name, "kind": "fastjax", "strategy": strategy, "conv_impl": conv_impl,
            "compute_dtype": compute_dtype, "client_chunk": client_chunk, "clients": k, "population": population,
            "compile_seconds": compile_s, "round_seconds": secs, "sec_per_round": sec,
            "samples_per_round": float(np.mean(samples)), "samples_per_sec": float(np.mean(samples)) / sec,
            "masked_step_fraction": 1.0 - real_steps / executed if executed else 0.0,
            "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
            "argument_bytes": getattr(mem, "argument_size_in_bytes", None)}


def critical_path_round(conv_impl: str, w: dict, repeats: int, *, compute_dtype: str = "float32") -> dict:
    """The round's critical path: its largest client alone (one vmapped lane)."""
    sizes = client_sizes(w)
    r = fastjax_round("vmap", conv_impl, {**w, "clients": 1, "population": 1}, repeats,
                      compute_dtype=compute_dtype, sizes=sizes[[int(sizes.argmax())]])
    return {**r, "name": r["name"].replace("vmap", "critical-path"), "kind": "critical-path"}


def torch_round(w: dict, repeats: int, *, device: str = "auto", compile: bool = False,
                compile_backend: str = "inductor") -> dict:
    from benchmarks import torch_reference

    steps = w["steps"] or w["epochs"] * -(-w["samples"] // w["batch"])
    r = torch_reference.time_round(w["clients"], steps, w["batch"], w["image"], w["channels"],
                                   w["classes"], repeats=repeats, warmup=1, device=device, compile=compile,
                                   compile_backend=compile_backend)
    name = "pytorch-sequential" + ("-compiled" if compile else "")
    return {"name": name, "kind": "peer", "compile_seconds": r.get("first_round_seconds", 0.0) if compile else 0.0,
            **r}


def flower_round(w: dict, repeats: int) -> dict:
    from benchmarks import flower_reference

    if not flower_reference.available():  # said in the table, not dropped without a word
        missing = [m for m in ("flwr", "ray", "torch") if importlib.util.find_spec(m) is None]
        return {"name": "flower-simulation", "kind": "peer",
                "error": f"skipped: {', '.join(missing)} not installed (pip install 'flwr[simulation]')"}
    steps = w["steps"] or w["epochs"] * -(-w["samples"] // w["batch"])
    r = flower_reference.time_round(w["clients"], steps, w["batch"], w["image"], w["channels"],
                                    w["classes"], repeats=repeats)
    return {"name": "flower-simulation", "kind": "peer", "compile_seconds": 0.0, **r}


def summarize(results: list[dict], w: dict, ceiling: float | None) -> dict:
    """FLOP/s, ratios to the PyTorch loop (eager), the best fastjax row."""
    from benchmarks import common

    flops = common.cnn4_flops_per_sample(w["image"], w["channels"], w["classes"])
    ok = [r for r in results if "error" not in r]
    for r in ok:
        r["rounds_per_sec"] = 1.0 / r["sec_per_round"]
        r["achieved_flops"] = r["samples_per_sec"] * flops
        r["fraction_of_matmul_ceiling"] = r["achieved_flops"] / ceiling if ceiling else None
    fast = [r for r in ok if r["kind"] == "fastjax"]
    best = max(fast, key=lambda r: r["samples_per_sec"]) if fast else None
    torch_r = next((r for r in ok if r["name"] == "pytorch-sequential"), None)
    for r in ok:
        r["ratio_vs_torch"] = r["samples_per_sec"] / torch_r["samples_per_sec"] if torch_r else None
    return {"cnn4_train_flops_per_sample": flops, "matmul_ceiling_flops": ceiling,
            "best_fastjax": best["name"] if best else None,
            "ratio_vs_torch": best["samples_per_sec"] / torch_r["samples_per_sec"] if best and torch_r else None}


TABLE_COLUMNS = ["name", "compile_seconds", "sec_per_round", "rounds_per_sec", "samples_per_sec", "ratio_vs_torch",
                 "masked_step_fraction", "achieved_flops", "fraction_of_matmul_ceiling"]


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="cpu")
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--md", default=None, help="markdown table path (default: JSON path with .md)")
    p.add_argument("--strategies", default="vmap,sequential,sharded")
    p.add_argument("--conv-impls", default="im2col,winograd")
    p.add_argument("--compute-dtypes", default="float32", help="comma list of float32,bfloat16")
    p.add_argument("--client-chunk", type=int, default=2, help="clients per chunk for the chunked strategy")
    p.add_argument("--peers", default="torch,flower",
                   help="comma list of torch,torch-compile,flower or 'none' (flower needs flwr[simulation]; "
                        "without it the table says it was skipped)")
    p.add_argument("--torch-device", default="auto", help="the PyTorch peer's device (auto: cuda if available)")
    p.add_argument("--torch-compile-backend", default="inductor")
    p.add_argument("--critical-path", action="store_true", help="also time the largest client alone")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--host-devices", type=int, default=0,
                   help="CPU only: split the host into N XLA devices (for the sharded strategy)")
    args = p.parse_args(argv)
    if args.host_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")
    peers = [] if args.peers == "none" else args.peers.split(",")
    unknown = sorted(set(peers) - {"torch", "torch-compile", "flower"})
    if unknown:
        p.error(f"--peers: unknown {unknown}; allowed: torch, torch-compile, flower or none")
    print(common.device_line(), flush=True)
    w = WORKLOADS[args.workload]
    results = []
    for strategy in args.strategies.split(","):
        for impl in args.conv_impls.split(","):
            for dt in args.compute_dtypes.split(","):
                r = fastjax_round(strategy, impl, w, args.repeats, compute_dtype=dt,
                                  client_chunk=args.client_chunk if strategy == "chunked" else 0)
                print(f"{r['name']}: {r['sec_per_round']:.3f} s/round, {r['samples_per_sec']:.0f} samples/s, "
                      f"compile {r['compile_seconds']:.1f} s", flush=True)
                results.append(r)
    if args.critical_path:
        r = critical_path_round(args.conv_impls.split(",")[0], w, args.repeats)
        print(f"{r['name']}: {r['sec_per_round']:.3f} s/round", flush=True)
        results.append(r)
    if w.get("dirichlet"):
        peers = []  # the peers train equal clients only
    for peer, compiled in (("torch", False), ("torch-compile", True)):
        if peer in peers:
            r = torch_round(w, args.repeats, device=args.torch_device, compile=compiled,
                            compile_backend=args.torch_compile_backend)
            print(f"{r['name']}: " + (r["error"] if "error" in r else
                                       f"{r['sec_per_round']:.3f} s/round, {r['samples_per_sec']:.0f} samples/s"),
                  flush=True)
            results.append(r)
    if "flower" in peers:
        r = flower_round(w, args.repeats)
        if "error" in r:
            print(f"{r['name']}: {r['error']}", flush=True)
        results.append(r)
    ceiling = common.matmul_ceiling_flops("jax")
    out = {"device": common.device_info(), "workload": {"name": args.workload, **w},
           **summarize(results, w, ceiling), "results": results}
    path = common.write_json(args.json, out)
    table = common.markdown_table(results, TABLE_COLUMNS + ["error"] * any("error" in r for r in results))
    Path(args.md or path.with_suffix(".md")).write_text(table + "\n")
    print(table)
    print(f"best fastjax: {out['best_fastjax']}; ratio vs PyTorch loop: {out['ratio_vs_torch']}")
    print(common.device_line(out["device"]))


if __name__ == "__main__":
    main()
