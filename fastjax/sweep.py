"""Run a grid of experiments as one compiled computation per group of equal shapes.

    python -m fastjax.sweep --config configs/cifar10_active.py \
        --sweep active.strategy=random,entropy,badge --sweep seed=0,1,2 --workdir runs/sweep \
        [--config.train.rounds=5 ...] [--experiments_per_call=0] [--experiment_axis=auto|vmap|map]
        [--distributed | --coordinator HOST:PORT --num_processes N --process_id I]

The config file and `--config.*` overrides are `fastjax.main`'s; each `--sweep key=v1,v2`
adds an axis (the grid is their product). Every experiment is an ordinary run in
`<workdir>/<key=value,...>/` (config.json, metrics.jsonl, summary.json, checkpoints/)
that `fastjax.main` resumes or refuses as its own; its stages (data, partition, labels,
queries) run per experiment, and its federated rounds run jointly with the others'
(`fastjax.federate.experiments`): experiments whose compiled round is the same (model,
shapes, static training options) form a group, trained as one computation; a key that
changes them splits the grid into groups that run one after another.

`<workdir>/sweep.json` and `sweep.md` hold one row per experiment and, when `seed` is
swept, the mean and standard deviation over seeds of every other combination;
`sweep.png` plots accuracy against FL rounds and MiB (mean, band: +- std over seeds).
Rerunning the command resumes every experiment; a work directory holding another sweep
is refused. An experiment that fails (a non-finite loss names its round) stops with its
error, the others finish, the table marks it and the command exits 1.

Beyond one host: N processes (`--distributed`: found by `jax.distributed`'s cluster
detection, SLURM or Open MPI; or `--coordinator HOST:PORT --num_processes N --process_id I`)
each run their contiguous share of the grid (`share`) on their own devices, loading only
their experiments' data; they meet at the end through JAX's coordination service (a
barrier and a key-value store, no cross-process collective), and process 0 writes
sweep.json / sweep.md / sweep.png for the whole grid. The work directory must be one
filesystem that every process sees.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import threading
import traceback
from pathlib import Path

import numpy as np

from fastjax import config as config_lib

SWEEP_JSON = "sweep.json"


def _lookup(config, key: str):
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            raise ValueError(f"--sweep {key}: unknown config key {key!r} (every option: fastjax/config.py)")
        node = node[part]
    if hasattr(node, "keys"):
        raise ValueError(f"--sweep {key}: {key!r} is a section; sweep one of its keys")
    return node


def _parse_value(key: str, text: str, like):
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--sweep {key}: {text!r} is not a boolean (true / false)")
        return text.lower() in ("true", "1")
    try:
        return type(like)(text) if isinstance(like, (int, float)) else text
    except ValueError:
        raise ValueError(f"--sweep {key}: {text!r} is not a {type(like).__name__}") from None


def parse_axes(specs: list[str], config) -> dict[str, list]:
    """{key: [values]} from `key=v1,v2` strings, typed like the config's value."""
    axes: dict[str, list] = {}
    for spec in specs:
        key, eq, rest = spec.partition("=")
        key = key.strip().removeprefix("config.")
        if not eq or not key:
            raise ValueError(f"--sweep {spec!r}: expected key=value1,value2,...")
        if key in axes:
            raise ValueError(f"--sweep {key} is given twice; give all its values once: {key}=a,b,c")
        texts = [t.strip() for t in rest.split(",")]
        if not rest.strip() or any(not t for t in texts):
            raise ValueError(f"--sweep {spec!r}: an empty value; give {key}=value1,value2,...")
        like = _lookup(config, key)
        values = [_parse_value(key, t, like) for t in texts]
        if len(set(map(repr, values))) < len(values):
            raise ValueError(f"--sweep {key}: a value is repeated in {rest!r}")
        axes[key] = values
    if not axes:
        raise ValueError("no --sweep axis given, e.g. --sweep seed=0,1,2")
    return axes


def experiment_name(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def expand(config, axes: dict[str, list]) -> list[tuple[dict, object]]:
    """Every (values, config) of the grid, in the order of the axes' product; each config
    validated before any compute (an error names the experiment that holds the value)."""
    out, errors = [], []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        cfg = config.copy_and_resolve_references()
        cfg.unlock()
        for key, v in values.items():
            *path, leaf = key.split(".")
            node = cfg
            for p in path:
                node = node[p]
            node[leaf] = v
        cfg.lock()
        try:
            config_lib.validate(cfg)
        except ValueError as e:
            errors.append(f"experiment {experiment_name(values)}: {e}")
        out.append((values, cfg))
    if errors:
        raise ValueError("; ".join(errors))
    return out


def definition(config, axes: dict[str, list]) -> dict:
    """What identifies a sweep: its axes and its base config's result-relevant keys."""
    from fastjax.federate import checkpoints

    base = checkpoints.config_dict(config)
    return {"axes": {k: list(v) for k, v in axes.items()}, "base": base}


def check_workdir(workdir: Path, defn: dict) -> None:
    """Refuse a work directory that holds another sweep (before any compute)."""
    from fastjax.federate import checkpoints

    path = workdir / SWEEP_JSON
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())["definition"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is unreadable ({e}); delete {workdir} or choose another --workdir") from None
    diffs = [] if old["axes"] == defn["axes"] else [f"axes {old['axes']} -> {defn['axes']}"]
    diffs += checkpoints.config_differences(old["base"], defn["base"], {}, checkpoints.NON_RESULT_KEYS,
                                            defaults=config_lib.defaults())
    if diffs:
        raise ValueError(f"work directory {workdir} holds a different sweep ({'; '.join(diffs)}); rerun "
                         "the same command to resume, choose another --workdir, or delete it to start afresh")


def share(n: int, process: int, processes: int) -> range:
    """The experiments (grid indices) that `process` of `processes` runs: a contiguous
    block, sizes differing by at most one (neighbours in the grid differ in the last axis
    only, so a block keeps experiments that share stages and shapes together)."""
    return range(process * n // processes, (process + 1) * n // processes)


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among a sweep's processes, and the distributed runtime they
    meet through (None for one process; `close()` it at the end)."""

    index: int = 0
    count: int = 1
    runtime: object = None

    @property
    def client(self):
        return self.runtime.client

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.shutdown()


def connect(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> Processes:
    """Join the sweep's processes through JAX's distributed runtime (`jax.distributed`'s
    cluster detection: with no arguments SLURM, Open MPI or Cloud TPU; otherwise all three).
    Only the sweep uses its coordination service (a barrier, a key-value store): each process
    keeps its own devices (`jax.process_count()` stays 1), so its experiments, checkpoints and
    compiles are those of a one-process sweep and no cross-process collective is needed."""
    from jax._src import distributed

    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = ", ".join(f"--{k}" for k, v in given.items() if v is None)
        raise ValueError(f"--coordinator, --num_processes and --process_id go together; {missing} missing")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in 0..{num_processes - 1} (--num_processes)")
    state = distributed.State()
    state.initialize(coordinator, num_processes, process_id)
    return Processes(state.process_id, state.num_processes, state)


# A barrier of the coordination service waits at most this long (ms, under 2**31): the
# other processes' experiments may take days.
BARRIER_TIMEOUT_MS = 20 * 24 * 3600 * 1000


def _all_rows(rows: list[dict], procs: Processes) -> list[dict]:
    """Every process's rows, in process order (each process's share is a block of the grid)."""
    if procs.count == 1:
        return rows
    procs.client.key_value_set(f"fastjax_sweep/rows/{procs.index}", json.dumps(rows), allow_overwrite=True)
    procs.client.wait_at_barrier("fastjax_sweep/ran", BARRIER_TIMEOUT_MS)
    return [r for p in range(procs.count)
            for r in json.loads(procs.client.blocking_key_value_get(f"fastjax_sweep/rows/{p}", 60_000))]


def _barrier(name: str, procs: Processes, timeout_ms: int = 600_000) -> None:
    """Wait for every process (a short wait: around steps that take each the same time)."""
    if procs.count > 1:
        procs.client.wait_at_barrier(f"fastjax_sweep/{name}", timeout_ms)


# What a failing experiment raises that explains itself (no traceback needed).
EXPLAINED = (ValueError, FloatingPointError, FileNotFoundError, PermissionError)


def run_jobs(jobs: list, *, experiments_per_call: int = 0, memory_mb: float = 0, mesh=None,
             axis: str = "auto", progress: bool = False) -> list:
    """Run (or resume) `fastjax.main` jobs, each a (config, workdir), jointly: every job's
    host stages run as its own `fastjax.main.run` would (one at a time), and their federated
    rounds train together (`experiments.Rendezvous`: jobs whose compiled round is the same
    form a group; groups run one after another). Returns, per job in order, its summary or
    the exception that stopped it (the others go on). This is a sweep without a grid: the
    benchmarks run their tables through it. Jobs reading one dataset share its decoded
    arrays on the host (`data.shared_loads`, read-only). Two jobs in one work directory
    are refused (one run's files must never mix with another's). progress: progress bars,
    for a single job only (several jobs' bars would interleave)."""
    from fastjax import data
    from fastjax import main as fastjax_main
    from fastjax.federate.experiments import Rendezvous

    seen: dict = {}
    for i, (_, wd) in enumerate(jobs):
        key = Path(wd).resolve()
        if key in seen:
            raise ValueError(f"jobs {seen[key]} and {i} share the work directory {wd}; give each its own")
        seen[key] = i
    rv = Rendezvous(len(jobs), experiments_per_call=experiments_per_call, memory_mb=memory_mb, mesh=mesh,
                    axis=axis)
    results: list = [None] * len(jobs)

    def one(i, cfg, wd):
        with rv:
            try:
                results[i] = fastjax_main.run(cfg, Path(wd), progress=progress and len(jobs) == 1,
                                              fit_fn=rv.fit)
            except Exception as e:  # noqa: BLE001 - that job fails; the others go on
                results[i] = e
                if not isinstance(e, EXPLAINED):
                    traceback.print_exc()

    threads = [threading.Thread(target=one, args=(i, cfg, wd), daemon=True) for i, (cfg, wd) in enumerate(jobs)]
    with data.shared_loads():  # the jobs' datasets decoded and held once on the host
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # a timed join: Ctrl-C reaches the main thread
                t.join(0.5)
    return results


def run_sweep(config, axes: dict[str, list], workdir, *, experiments_per_call: int = 0,
              memory_mb: float = 0, mesh=None, processes: Processes | None = None, log=None,
              axis: str = "auto") -> list[dict]:
    """Run (or resume) every experiment of the grid; returns one row per experiment
    (also written to sweep.json / sweep.md / sweep.png). experiments_per_call / memory_mb:
    experiments per compiled call, given or from a device-memory budget. mesh: split each group's
    experiments over its devices (`experiments.experiment_mesh`; this process's devices).
    axis: the round lifted over experiments by vmap or lax.map (`stacked.experiment_axis`).
    processes (`connect`): this process runs its `share` of the grid; every process returns
    the whole grid's rows, process 0 writes the files."""
    from fastjax.federate.checkpoints import atomic_write_text
    from fastjax.methods.common import log as default_log

    log = log or default_log
    workdir = Path(workdir)
    grid = expand(config, axes)
    defn = definition(config, axes)
    procs = processes or Processes()
    check_workdir(workdir, defn)
    for _, cfg in grid:
        config_lib.check_files(cfg)
    # Every process has checked the directory before process 0 rewrites its sweep.json.
    _barrier("checked", procs)
    workdir.mkdir(parents=True, exist_ok=True)
    if procs.index == 0:
        atomic_write_text(workdir / SWEEP_JSON, json.dumps({"definition": defn, "experiments": []}, indent=2) + "\n")
    mine = share(len(grid), procs.index, procs.count)
    log(f"sweep: {len(grid)} experiments over {', '.join(axes)} in {workdir}"
        + (f"; process {procs.index} of {procs.count} runs {mine.start + 1}-{mine.stop}" if procs.count > 1 else ""))
    res = run_jobs([(grid[i][1], workdir / experiment_name(grid[i][0])) for i in mine],
                   experiments_per_call=experiments_per_call, memory_mb=memory_mb, mesh=mesh, axis=axis)
    results = dict(zip(mine, res))
    rows = []
    for i in mine:
        values = grid[i][0]
        res = results.get(i)
        row = {"experiment": experiment_name(values), **values}
        if isinstance(res, dict):
            row.update({"status": "ok", **{k: res.get(k) for k in ("final_accuracy", "best_accuracy",
                                                                   "last5_accuracy", "comm_mib", "annotations")}})
        else:
            row.update({"status": "failed", "error": f"{type(res).__name__}: {res}"})
            log(f"experiment {row['experiment']} failed: {res}")
        rows.append(row)
    rows = _all_rows(rows, procs)
    if procs.index == 0:
        means = seed_means(rows, axes)
        atomic_write_text(workdir / SWEEP_JSON, json.dumps({"definition": defn, "experiments": rows,
                                                            "over_seeds": means}, indent=2) + "\n")
        atomic_write_text(workdir / "sweep.md", markdown(rows, means, axes))
        plot(workdir, rows, axes)
    _barrier("written", procs)  # every process returns (and prints) the finished table
    return rows


METRICS = ("final_accuracy", "best_accuracy", "comm_mib")


def seed_means(rows: list[dict], axes: dict) -> list[dict]:
    """Mean and std over the `seed` axis of every other combination (finished runs)."""
    if "seed" not in axes:
        return []
    others = [k for k in axes if k != "seed"]
    out = []
    for combo in itertools.product(*(axes[k] for k in others)):
        sel = [r for r in rows if all(r[k] == v for k, v in zip(others, combo)) and r["status"] == "ok"]
        row = {**dict(zip(others, combo)), "seeds": len(sel)}
        for m in METRICS:
            vals = [r[m] for r in sel if r.get(m) is not None]
            row[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals else None
        out.append(row)
    return out


def markdown(rows: list[dict], means: list[dict], axes: dict) -> str:
    def fmt(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    keys = list(axes)
    lines = ["| " + " | ".join(keys + ["status", *METRICS]) + " |", "|" + "---|" * (len(keys) + 1 + len(METRICS))]
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"FAILED: {r['error']}"
        lines.append("| " + " | ".join([fmt(r[k]) for k in keys] + [status] + [fmt(r.get(m)) for m in METRICS]) + " |")
    text = "# Sweep\n\n" + "\n".join(lines) + "\n"
    if means:
        others = [k for k in keys if k != "seed"]
        lines = ["| " + " | ".join(others + ["seeds", *METRICS]) + " |",
                 "|" + "---|" * (len(others) + 1 + len(METRICS))]
        for m in means:
            cells = [fmt(m[k]) for k in others] + [str(m["seeds"])]
            cells += ["-" if m[x] is None else f"{m[x]['mean']:.4f} +- {m[x]['std']:.4f}" for x in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        text += "\n## Mean +- std over seeds\n\n" + "\n".join(lines) + "\n"
    return text


def plot(workdir: Path, rows: list[dict], axes: dict) -> None:
    """Accuracy against FL rounds and against MiB per combination: mean over seeds, band
    +- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastjax.federate.checkpoints import MetricsLog

    others = [k for k in axes if k != "seed"]
    curves: dict[str, list] = {}
    for r in rows:
        ev = [h for h in MetricsLog(workdir / r["experiment"] / "metrics.jsonl").read() if "accuracy" in h]
        if ev:
            curves.setdefault(experiment_name({k: r[k] for k in others}) or "all", []).append(ev)
    if not curves:
        return
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, runs) in enumerate(curves.items()):
        n = min(len(e) for e in runs)
        acc = np.array([[h["accuracy"] for h in e[:n]] for e in runs])
        x_round = [h["round"] for h in runs[0][:n]]
        x_mib = np.mean([[h["comm_mib"] for h in e[:n]] for e in runs], axis=0)
        mu, sd = acc.mean(0), acc.std(0)
        for ax, x in ((axs[0], x_round), (axs[1], x_mib)):
            ax.plot(x, mu, marker=".", color=f"C{i % 10}", label=label)
            ax.fill_between(x, mu - sd, mu + sd, color=f"C{i % 10}", alpha=0.2)
    axs[0].set(xlabel="FL round", ylabel="test accuracy", title="accuracy vs rounds")
    axs[1].set(xlabel="MiB communicated (up + down)", ylabel="test accuracy", title="accuracy vs communication")
    for ax in axs:
        ax.grid(alpha=0.3)
    axs[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(workdir / "sweep.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    from fastjax import main as fastjax_main
    from fastjax.federate.stacked import EXPERIMENT_AXES

    config_flags.DEFINE_config_file("config", None, "configs/<experiment>.py[:preset]", lock_config=True)
    flags.DEFINE_multi_string("sweep", [], "key=value1,value2,... (repeat for more axes)")
    flags.DEFINE_string("workdir", None, "the sweep's work directory (default: runs/<config name>_sweep)")
    flags.DEFINE_integer("experiments_per_call", 0, "experiments per compiled call (0: a group at once)")
    flags.DEFINE_float("experiment_memory_mb", 0.0, "or: as many experiments per call as fit this device "
                       "memory (MiB)")
    flags.DEFINE_bool("shard_experiments", False, "split each group's experiments over this process's devices")
    flags.DEFINE_enum("experiment_axis", "auto", ["auto", *EXPERIMENT_AXES], "the round over experiments: one "
                      "batched program (vmap), or one after another in one call (map); auto: map on a CPU")
    flags.DEFINE_bool("distributed", False, "one of several processes, found by jax.distributed's cluster "
                      "detection (SLURM, Open MPI, Cloud TPU); each runs its share of the grid")
    flags.DEFINE_string("coordinator", None, "or: process 0's HOST:PORT (a free port), with --num_processes "
                        "and --process_id")
    flags.DEFINE_integer("num_processes", None, "the number of processes (with --coordinator)")
    flags.DEFINE_integer("process_id", None, "this process, 0..num_processes-1 (with --coordinator)")

    def parse(args):
        try:
            return flags.FLAGS(args)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
            fastjax_main._error(f"{fastjax_main._flag_error(e, args)} (every option: fastjax/config.py)")

    def _main(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        f = flags.FLAGS
        if f.config is None:
            fastjax_main._error("--config is required, e.g. --config configs/demo.py")
        overridden = {a.split("=", 1)[0][len("--config."):] for a in sys.argv if a.startswith("--config.")}
        name = Path(f["config"].config_filename.split(":")[0]).stem
        workdir = f.workdir or str(Path("runs") / f"{name}_sweep")
        try:
            if f.experiments_per_call < 0 or f.experiment_memory_mb < 0:
                raise ValueError(f"--experiments_per_call={f.experiments_per_call} and --experiment_memory_mb="
                                 f"{f.experiment_memory_mb} must be >= 0")
            if f.experiments_per_call and f.experiment_memory_mb:
                raise ValueError("give one of --experiments_per_call and --experiment_memory_mb")
            axes = parse_axes(f.sweep, f.config)
            both = sorted(set(axes) & overridden)
            if both:
                raise ValueError(f"{both[0]} is given both as --config.{both[0]} and as --sweep; give it once")
            from fastjax import compile_cache

            procs = None
            if f.distributed or f.coordinator or f.num_processes is not None or f.process_id is not None:
                procs = connect(f.coordinator, f.num_processes, f.process_id)
            compile_cache.enable(f.config.compilation_cache_dir)
            mesh = None
            if f.shard_experiments:
                from fastjax.federate.experiments import experiment_mesh

                mesh = experiment_mesh()
            rows = run_sweep(f.config, axes, workdir, experiments_per_call=f.experiments_per_call,
                             memory_mb=f.experiment_memory_mb, mesh=mesh, processes=procs,
                             axis=f.experiment_axis)
            if procs is not None:
                procs.close()  # after the last barrier: every process has its rows
        except KeyboardInterrupt:
            fastjax_main._error(f"interrupted; rerun the same command to resume the sweep in {workdir}", 130, hard=True)
        except (ValueError, FileNotFoundError, PermissionError) as e:
            fastjax_main._error(str(e))
        failed = [r for r in rows if r["status"] != "ok"]
        if failed:
            fastjax_main._error(f"{len(failed)} of {len(rows)} experiments failed ({failed[0]['experiment']}: "
                                f"{failed[0]['error']}); see {Path(workdir) / 'sweep.md'}", 1)
        print(Path(workdir, "sweep.md").read_text())

    app.run(_main, argv=argv, flags_parser=parse)


if __name__ == "__main__":
    main()
