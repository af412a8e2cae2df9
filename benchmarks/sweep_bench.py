"""E experiments as one sweep against E `fastjax.main` runs one after another.

    python benchmarks/sweep_bench.py --out runs/bench/sweep            # the demo job, E = 8
    python benchmarks/sweep_bench.py --out runs/bench/sweep --quick    # seconds: proves it runs

Both sides are subprocesses timed whole (process start, data loading, compiles,
training, writing results) with their peak resident memory (the largest child's
max RSS); the embeddings are cached first by a one-round warm-up run, so neither side
pays the encoder. The grid (`--sweep` axes) keeps the data the same across
experiments: labeling budgets x learning rates of `configs/demo.py`. XLA's persistent
compilation cache is off on both sides, so each solo run compiles as a first run would.
Writes <out>/sweep_bench.json and prints a markdown row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AXES = {"labeling.budget": ["0.05", "0.1", "0.2", "0.3"], "train.lr": ["0.02", "0.05"]}
QUICK = ["--config.data.train_limit=600", "--config.data.test_limit=200", "--config.train.rounds=2",
         "--config.encoder.image_size=32"]


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one subprocess (its own rusage, from wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0


def joint_rounds(experiments: int, workload: dict, rounds: int = 2) -> dict:
    """E experiments (seeds) of one CNN-4 round as one joint fit (`fit_experiments`) on
    random data of the workload's shapes: the first call (a one-round fit, compiles
    included) and the steady seconds per round (a fit of `rounds` rounds after it, whose
    compiled round is reused; its one evaluation included). Used by the GPU
    suite's `sweep` section at E = 1, 4, 16, 64 (E = 1 is the solo run)."""
    import jax.numpy as jnp
    import numpy as np

    from fastjax.federate import engine, models
    from fastjax.federate import experiments as ex

    w = workload
    k, n = w["clients"], w["samples"]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (k * n, w["image"], w["image"], w["channels"]), np.uint8)
    labels = rng.integers(0, w["classes"], k * n).astype(np.int32)
    model = models.make_model("cnn4", w["classes"])
    idx = [np.arange(i * n, (i + 1) * n) for i in range(k)]
    clients = engine.stack_clients(idx, [labels[i] for i in idx], source=data)
    test = min(1000, len(data))

    def preprocess(x):
        return x.astype(jnp.float32) / 255.0

    def fit(r):
        reqs = [ex.FitRequest(model, models.init_variables(model, data.shape[1:], s), clients, data[:test],
                              labels[:test], engine.TrainSpec(rounds=r, local_epochs=w["epochs"],
                                                              local_steps=w["steps"], batch_size=w["batch"],
                                                              lr=0.01, seed=s, eval_every=r, checkpoint_every=0),
                              preprocess, {"progress": False}) for s in range(experiments)]
        t0 = time.perf_counter()
        out = ex.fit_experiments(reqs)
        for o in out:
            if isinstance(o, Exception):
                raise o
        return time.perf_counter() - t0

    first = fit(1)
    steady = fit(rounds) / rounds
    return {"experiments": experiments, "first_call_seconds": first, "sec_per_round": steady,
            "experiment_rounds_per_sec": experiments / steady}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default="configs/demo.py")
    p.add_argument("--quick", action="store_true", help="a small subset and 2 rounds (a smoke test)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)
    out = Path(a.out)
    base = [sys.executable, "-m"]
    common = [f"--config={a.config}", "--config.compilation_cache_dir=off"] + (QUICK if a.quick else [])
    grid = [dict(zip(AXES, v)) for v in itertools.product(*AXES.values())]
    warm = base + ["fastjax.main", *common, f"--workdir={out / 'warm'}", "--progress=false",
                   "--config.train.rounds=1"]
    sweep = base + ["fastjax.sweep", *common, f"--workdir={out / 'sweep'}"] + [
        f"--sweep={k}={','.join(v)}" for k, v in AXES.items()]
    solos = [base + ["fastjax.main", *common, "--progress=false",
                     f"--workdir={out / 'solo' / ','.join(f'{k}={v}' for k, v in g.items())}"]
             + [f"--config.{k}={v}" for k, v in g.items()] for g in grid]
    if a.dry_run:
        for cmd in [warm, sweep, *solos]:
            print(" ".join(cmd))
        return
    out.mkdir(parents=True, exist_ok=True)
    _run(warm)
    t_solo, peak_solo = 0.0, 0.0
    for cmd in solos:
        w, pk = _run(cmd)
        t_solo, peak_solo = t_solo + w, max(peak_solo, pk)
    t_sweep, peak_sweep = _run(sweep)
    import jax

    res = {"experiments": len(grid), "axes": AXES, "config": a.config, "quick": a.quick,
           "solo_seconds": t_solo, "sweep_seconds": t_sweep, "speedup": t_solo / t_sweep,
           "solo_peak_rss_mib": peak_solo, "sweep_peak_rss_mib": peak_sweep,
           "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(sys.argv)}
    (out / "sweep_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"| E={len(grid)} | {t_solo:.0f} s | {t_sweep:.0f} s | {t_solo / t_sweep:.2f}x | "
          f"{peak_solo:.0f} MiB | {peak_sweep:.0f} MiB |")


if __name__ == "__main__":
    main()
