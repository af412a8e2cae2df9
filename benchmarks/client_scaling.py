"""How the cost of one federated round grows with the number of clients.

    python benchmarks/client_scaling.py --json runs/bench/scaling.json            # CPU-sized
    python benchmarks/client_scaling.py --clients 10,30,100,300,1000 --steps 5 \
        --batch 64 --json runs/bench/scaling_gpu.json                             # accelerator

Fixed per-client work (CNN-4, `--steps` local steps of `--batch` 32x32x3 images), clients
in `--clients`; for each count and strategy: compile time, time per round (median of
--repeats), time per client, the round's temporaries from XLA's compiled memory analysis
and peak memory (device peak bytes where the backend reports them, else the process's
peak RSS). `chunked` runs `--client-chunk` clients vmapped at a time. Each point runs in its own process so peaks do not
carry over. `sharded` spreads clients over every device; on a CPU host it is measured
with `--host-devices` forced XLA host devices. Writes JSON and a PNG plot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(clients: int, steps: int, batch: int, strategy: str, conv_impl: str, repeats: int,
            population: int = 0, client_chunk: int = 0, compute_dtype: str = "float32") -> dict:
    """One point, in this process: round time, XLA's compiled memory analysis of the round
    (temporaries: deterministic) and peak memory. `population` > clients: each round
    selects `clients` of `population` (partial participation)."""
    import resource

    import jax

    from benchmarks.rounds_per_sec import fastjax_round

    w = dict(clients=clients, population=population or clients, samples=steps * batch, batch=batch, epochs=None,
             steps=steps, image=32, channels=3, classes=10)
    r = fastjax_round(strategy, conv_impl, w, repeats, client_chunk=client_chunk, compute_dtype=compute_dtype)
    stats = jax.devices()[0].memory_stats() or {}
    r.update(clients=clients, devices=jax.device_count(), backend=jax.default_backend(),
             sec_per_client=r["sec_per_round"] / clients,
             peak_device_bytes=stats.get("peak_bytes_in_use"),
             peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return r


def _point(args, clients: int, strategy: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if strategy == "sharded" and args.host_devices:
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.host_devices}"
    chunk = args.client_chunk if strategy == "chunked" else 0
    code = ("import json, sys; from benchmarks.client_scaling import measure; "
            f"print('RESULT ' + json.dumps(measure({clients}, {args.steps}, {args.batch}, {strategy!r}, "
            f"{args.conv_impl!r}, {args.repeats}, client_chunk={chunk})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:  # out of memory or another failure: recorded, not fatal
        return {"clients": clients, "strategy": strategy, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(line[len("RESULT "):])


def plot(results, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for strategy in sorted({r["strategy"] for r in results}):
        rs = [r for r in results if r["strategy"] == strategy and "error" not in r]
        if not rs:
            continue
        k = [r["clients"] for r in rs]
        axes[0].plot(k, [r["sec_per_round"] for r in rs], marker="o", label=f"{strategy} ({rs[0]['devices']} dev)")
        axes[1].plot(k, [1000 * r["sec_per_client"] for r in rs], marker="o", label=strategy)
        mem = [(r["peak_device_bytes"] or r["peak_rss_bytes"]) / 2**30 for r in rs]
        axes[2].plot(k, mem, marker="o", label=strategy)
    for ax, (ylabel, title) in zip(axes, (("seconds per round", "time per round"),
                                          ("ms per client", "time per client"),
                                          ("peak memory (GiB)", "peak memory"))):
        # Log clients; y from 0, so a flat line reads as flat rather than as noise zoomed in.
        ax.set(xscale="log", xlabel="clients", ylabel=ylabel, title=title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("one federated round (CNN-4) against the number of clients", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--clients", default="10,30,100")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--strategies", default="vmap,sharded")
    p.add_argument("--client-chunk", type=int, default=10, help="clients per chunk for the chunked strategy")
    p.add_argument("--conv-impl", default="im2col")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--host-devices", type=int, default=8, help="forced XLA host devices for 'sharded' on CPU")
    p.add_argument("--json", required=True)
    p.add_argument("--png", default=None)
    args = p.parse_args(argv)
    print(common.device_line(), flush=True)
    results = []
    for strategy in args.strategies.split(","):
        for k in (int(c) for c in args.clients.split(",")):
            r = _point(args, k, strategy)
            results.append(r)
            msg = r.get("error") or (f"{r['sec_per_round']:.3f} s/round, {1000 * r['sec_per_client']:.1f} ms/client, "
                                     f"compile {r['compile_seconds']:.1f} s")
            print(f"{strategy:10s} {k:5d} clients: {msg}", flush=True)
    out = {"device": common.device_info(), "args": vars(args), "results": results}
    path = common.write_json(args.json, out)
    plot(results, Path(args.png or path.with_suffix(".png")))
    rows = [r for r in results if "error" not in r]
    print(common.markdown_table(rows, ["strategy", "clients", "devices", "compile_seconds", "sec_per_round",
                                       "sec_per_client", "temp_bytes", "peak_device_bytes", "peak_rss_bytes"]))
    print(common.device_line(out["device"]))


if __name__ == "__main__":
    main()
