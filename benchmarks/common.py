"""Shared benchmark utilities: device facts, compute ceilings, CNN-4 FLOPs, reporting.

Every number that goes into `benchmarks/RESULTS.md` should carry `device_info()` with it
(device, versions, date), as STYLE.md asks.

        from benchmarks import common
        info = common.device_info()
        ceiling = common.matmul_ceiling_flops("jax")           # FLOP/s of a 2048^2 f32 matmul
        per_sample = common.cnn4_flops_per_sample(32, 3, 10)   # training FLOPs per image
        print(common.markdown_table([{"name": "jax", "flop/s": ceiling}], ["name", "flop/s"]))
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Iterable, Sequence

_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "flwr", "ray")

# CNN-4 (FAST-official `src/network.py` CNN4Conv): 4 x [conv3x3 pad 1 -> BN -> ReLU -> maxpool 2].
CNN4_WIDTH = 64
CNN4_KERNEL = 3


def median(xs: Iterable[float]) -> float:
    """Median of a non-empty sequence of numbers."""
    xs = list(xs)
    if not xs:
        raise ValueError("median() of an empty sequence: time at least one repeat (repeats >= 1).")
    return float(statistics.median(xs))


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_info() -> dict[str, Any]:
    """Where and with what a benchmark ran: accelerator, CPU, package versions, date (UTC).

    JAX facts are filled in only when `jax` imports; package versions come from the
    installed distributions' metadata (None when a package isn't installed).
    """
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cores = os.cpu_count()
    info: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hostname": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "usable_cores": usable_cores,
            "versions": {name: _package_version(name) for name in _VERSIONED_PACKAGES},
    }
    try:
        jax = importlib.import_module("jax")
    except ImportError:
        info["jax_backend"] = None
        info["jax_devices"] = []
    else:
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
        info["jax_device_kind"] = jax.devices()[0].device_kind
    return info


def _time_calls(fn, repeats: int) -> list[float]:
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t0)
    return secs


def matmul_ceiling_flops(backend: str = "jax", n: int = 2048, dtype: str = "float32",
                         repeats: int = 5) -> float:
    """FLOP/s of one square `n x n @ n x n` matmul (2 n^3 FLOPs): median of `repeats` after a warmup.

    A practical compute ceiling for this machine: the JAX version is jitted (XLA's dot, Eigen
    or oneDNN on CPU); the torch one is `torch.mm` (MKL/oneDNN) with its current thread count.
    """
    if backend not in ("jax", "torch"):
        raise ValueError(f"backend={backend!r}: allowed 'jax' or 'torch'.")
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: need at least 1 timed repeat.")
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        ka, kb = jax.random.split(jax.random.key(0))
        a = jax.random.normal(ka, (n, n), dtype=jnp.dtype(dtype))
        b = jax.random.normal(kb, (n, n), dtype=jnp.dtype(dtype))
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()  # compile + warm caches
        secs = _time_calls(lambda: f(a, b).block_until_ready(), repeats)
    else:
        import torch
        g = torch.Generator().manual_seed(0)
        tdtype = getattr(torch, dtype)
        a = torch.randn(n, n, generator=g, dtype=tdtype)
        b = torch.randn(n, n, generator=g, dtype=tdtype)
        with torch.no_grad():
            torch.mm(a, b)
            secs = _time_calls(lambda: torch.mm(a, b), repeats)
    return 2.0 * n**3 / median(secs)


def _conv_taps(size: int, kernel: int) -> int:
    """Kernel taps that land inside a `size`-long input, summed over the 'same'-padded outputs."""
    pad = kernel // 2
    return sum(min(size, i - pad + kernel) - max(0, i - pad) for i in range(size))


def cnn4_forward_flops_by_layer(image_size: int = 32, channels: int = 3, num_classes: int = 10,
                                *, include_padding: bool = True) -> list[tuple[str, float]]:
    """Forward FLOPs (2 x multiply-accumulates) of each conv and of the linear layer, per sample.

    `include_padding=True` counts every kernel tap, zero padding included: what a dense conv
    kernel executes, and the usual convention of FLOP counters (fvcore, ptflops).
    `include_padding=False` counts only taps that fall on the image, which is what XLA's
    `cost_analysis()` reports for a convolution; the two differ at the borders (about 4 % at
    32 px, 31 % at the 4 x 4 last layer). Bias adds, BN, ReLU and pooling are not counted.
    """
    layers = []
    size, cin = image_size, channels
    for i in range(4):
        if include_padding:
            taps_2d = (size * CNN4_KERNEL) ** 2
        else:
            taps_2d = _conv_taps(size, CNN4_KERNEL) ** 2
        layers.append((f"conv{i + 1}", 2.0 * taps_2d * cin * CNN4_WIDTH))
        size, cin = size // 2, CNN4_WIDTH  # MaxPool2d(2) floors
    emb_dim = CNN4_WIDTH * size * size
    layers.append(("linear", 2.0 * emb_dim * num_classes))
    return layers


def cnn4_flops_per_sample(image_size: int = 32, channels: int = 3, num_classes: int = 10,
                          train: bool = True, *, include_padding: bool = True) -> float:
    """Analytic FLOPs per sample of CNN-4: forward, or one SGD training step (`train=True`).

    Convention: a conv/linear layer's forward costs F = 2 x MACs (see
    `cnn4_forward_flops_by_layer`). Its backward costs F for the weight gradient plus F for
    the input gradient, so training costs 3F per layer, except the first conv, whose input
    gradient (w.r.t. the images) is not needed: 2F. Elementwise and reduction work (bias, BN,
    ReLU, max-pool, softmax cross-entropy, the SGD update) is left out: it is O(activations
    + parameters), under 2 % of the total for this network.

    At 32 px, 3 channels, 10 classes: forward 28,316,672; training 81,411,072 FLOPs.
    """
    layers = cnn4_forward_flops_by_layer(image_size, channels, num_classes,
                                         include_padding=include_padding)
    forward = sum(f for _, f in layers)
    if not train:
        return forward
    return 3.0 * forward - layers[0][1]


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Writes `obj` as indented JSON (parents created); numpy scalars/arrays become lists/numbers."""

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        return str(o)

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=default) + "\n")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table: one row per dict, `columns` as headers (missing keys -> blank).

    Floats are shown with 4 significant digits; `|` in a cell is escaped.

    >>> print(markdown_table([{"a": 1, "b": 0.123456}], ["a", "b"]))
    | a | b |
    | --- | --- |
    | 1 | 0.1235 |
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column name.")
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows every option's default in `--help`
    (argparse's ArgumentDefaultsHelpFormatter skips options that have no help text)."""

    def _format_action(self, action):
        default = action.default
        shown = not (default is None or default is False or default == "" or default is argparse.SUPPRESS)
        if (action.option_strings and shown
                and "%(default)" not in (action.help or "")):
            action = copy.copy(action)
            action.help = ((action.help + " " if action.help else "") + "(default: %(default)s)")
        return super()._format_action(action)


def add_sweep_options(p, seeds_help: str) -> None:
    """The options of a benchmark that runs through one sweep (`fastjax.sweep.run_jobs`):
    --seeds, --experiments-per-call, --solo, --experiment-axis (checked by
    `check_sweep_options`)."""
    p.add_argument("--seeds", type=int, default=1, help=seeds_help)
    p.add_argument("--experiments-per-call", type=int, default=0,
                   help="runs per compiled call of the sweep (0: every run of a group)")
    p.add_argument("--solo", action="store_true",
                   help="one run after another, each alone (per-run wall times), not as one sweep")
    from fastjax.federate.stacked import EXPERIMENT_AXES

    p.add_argument("--experiment-axis", default="auto", choices=("auto", *EXPERIMENT_AXES),
                   help="the sweep's round over experiments: one batched program (vmap) or one after "
                        "another in one compiled call (map); auto: map on a CPU, vmap on an accelerator")


def check_sweep_options(p, args) -> None:
    """One-line errors (p.error) for the options `add_sweep_options` adds."""
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.experiments_per_call < 0:
        p.error(f"--experiments-per-call must be >= 0, got {args.experiments_per_call}")
    if args.solo and args.experiments_per_call:
        p.error("--solo runs one experiment at a time; drop --experiments-per-call")


class ArgumentParser(argparse.ArgumentParser):
    """The benchmarks' parser: defaults shown in `--help`, errors in one line (exit 2)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        fail(f"{message} (see {self.prog} --help)", prog=self.prog)


def fail(message: str, code: int = 2, prog: str | None = None):
    """Bad input: one line on stderr and exit `code`, before any compute."""
    print(f"{prog or pathlib.Path(sys.argv[0]).name}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def unwritable(directory: str | os.PathLike) -> str | None:
    """None when `directory` is a writable directory or can be created as one, else why not
    (one phrase). Folders it creates to find out are removed again: a refused run leaves
    no trace."""
    path = pathlib.Path(directory).absolute()
    if path.exists() and not path.is_dir():
        return "it is a file"
    created = [q for q in (path, *path.parents) if not q.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        return e.strerror or str(e)
    finally:
        for q in created:  # deepest first
            try:
                q.rmdir()
            except OSError:
                pass
    return None


def dataset_problem(name: str, data_root: str | None) -> str | None:
    """None when `name`'s test split loads from `data_root` (then it is cached for the runs),
    else one line: what is missing, where it was searched, and how to point at it."""
    from fastjax import data

    try:
        data.load_dataset(name, "test", data_root or None)
    except (data.DatasetNotFoundError, data.DatasetCorruptError, ValueError, OSError) as e:
        lines = str(e).splitlines()
        searched = [x for x in lines if x.startswith("Searched:")]
        return " ".join(lines[:1] + searched + ["(set --data-root DIR or $FASTJAX_DATA_ROOT)"])
    return None


def preflight(parser: argparse.ArgumentParser, configs, out, dataset: str | None = None,
              data_root: str | None = None) -> None:
    """Before the first run of a benchmark: every run's config valid, --out writable and
    the dataset found, else `parser.error` (one line, exit 2)."""
    from fastjax import config as config_lib

    try:
        for c in configs:
            config_lib.validate(c)
    except ValueError as e:
        parser.error(str(e))
    why = unwritable(out)
    if why:
        parser.error(f"--out {out} is not a writable directory ({why})")
    missing = dataset and dataset_problem(dataset, data_root)
    if missing:
        parser.error(missing)


def device_line(info: dict[str, Any] | None = None) -> str:
    """The device, package versions and date of `device_info()` as one printable line."""
    info = info or device_info()
    v = info.get("versions", {})
    versions = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "torch", "flwr") if v.get(k))
    return (f"device: {info.get('jax_device_kind') or info.get('jax_backend') or 'cpu'} "
            f"({info.get('cpu_model')}, {info.get('usable_cores')} usable cores); "
            f"{versions}; python {info.get('python')}; {info.get('date')}")


def duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class RunClock:
    """Progress over a benchmark's runs: after each one, how many are done and an estimate
    of the time left from the mean of the runs measured so far (runs of different sizes
    make it rough; it is printed so that hours of work never start without a word)."""

    def __init__(self, total: int, log=print):
        self.total, self.log, self.done = total, log, 0
        self.t0 = time.perf_counter()

    def tick(self, label: str) -> None:
        self.done += 1
        spent = time.perf_counter() - self.t0
        left = self.total - self.done
        eta = f"; about {duration(spent / self.done * left)} left" if left else ""
        self.log(f"[{self.done}/{self.total}] {label} (elapsed {duration(spent)}{eta})")
