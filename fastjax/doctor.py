"""One screen on this machine: devices, versions, compile cache, data and weights.

    python -m fastjax.doctor [--config configs/cifar10.py] [--data-root DIR] [--strict]

With a config it says where the run would look for its dataset and encoder weights
and whether they are there (the loaders' own lookup; nothing is read or downloaded).
Exit 0; with --strict, 1 when something the config needs is missing (then
``python -m fastjax.fetch --config ...`` gets it).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

# Distributions whose versions matter to a run; absent ones are shown as such.
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "flax",
            "optax", "orbax-checkpoint", "transformers", "huggingface_hub", "torch",
            "tensorflow-datasets", "flwr")


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def devices() -> tuple[str, list[str]]:
    """(default backend, one line per device); a backend that fails to start is named."""
    try:
        import jax

        return jax.default_backend(), [f"{d.id}: {d.device_kind} ({d.platform})"
                                       for d in jax.devices()]
    except RuntimeError as e:  # e.g. a CUDA plugin without a usable driver
        return "unavailable", [" ".join(str(e).split())[:160]]


def _dir_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def cache_line(directory: str) -> str:
    from fastjax import compile_cache

    path = compile_cache.resolve(directory)
    if path is None:
        return "off"
    if not path.is_dir():
        return f"{path} (empty: created by the first run)"
    n, size = _dir_size(path)
    return f"{path} ({n} file{'' if n == 1 else 's'}, {size / 2**20:.1f} MiB)"


def report(config=None, data_root_arg: str | None = None, spec: str = "<config>"
           ) -> tuple[list[str], bool]:
    """The lines to print and whether everything the config needs is present."""
    from fastjax.encode import hub
    from fastjax.fetch import plan

    import fastjax

    v = versions()
    backend, devs = devices()
    shown = ", ".join(f"{k} {x}" for k, x in v.items() if x is not None)
    lines = [f"fastjax {fastjax.__version__}, Python {platform.python_version()} on "
             f"{platform.system()} {platform.machine()}",
             f"versions: {shown}",
             f"backend: {backend}; devices: " + "; ".join(devs)]
    if backend == "cpu" and not any(v[k] for k in ("jax-cuda12-plugin", "jax-cuda13-plugin",
                                                   "libtpu")):
        lines.append("  (CPU-only jax: on a GPU machine install with "
                     "pip install -e \".[gpu,hf,fetch]\")")
    lines.append("compile cache: " + cache_line(config.compilation_cache_dir if config else ""))
    root = plan.data_root(data_root_arg, config)
    lines.append(f"data root: {root if root else 'none (--config.data.root / $FASTJAX_DATA_ROOT)'}")
    lines.append(f"weights: $FASTJAX_WEIGHTS={os.environ.get('FASTJAX_WEIGHTS') or '(unset)'}; "
                 f"Hugging Face cache {hub.cache_dir()}")
    ok = True
    if config is not None:
        for item in plan.from_config(config):
            here, where = plan.status(item, root)
            ok &= here
            what = (f"dataset {item.key}" if item.kind == "dataset" else
                    f"encoder {item.key}" + (f" ({item.ref.repo}@{item.ref.revision[:12]})"
                                             if item.ref else ""))
            lines.append(f"{'ok     ' if here else 'MISSING'} {what}: {where}")
        if not ok:
            lines.append(f"fetch what is missing: python -m fastjax.fetch --config {spec}"
                         + (f" --data-root {root}" if root else " --data-root DIR"))
    return lines, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastjax.doctor", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="configs/<x>.py[:preset]: check its data and weights")
    p.add_argument("--data-root", help="as --config.data.root (default: the config's, "
                   "else $FASTJAX_DATA_ROOT)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when the config's dataset or weights are missing")
    args = p.parse_args(argv)
    try:
        from fastjax.fetch import plan

        config = plan.load_config(args.config) if args.config else None
    except (ValueError, FileNotFoundError) as e:
        print(f"fastjax: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    lines, ok = report(config, args.data_root, args.config or "")
    print("\n".join(lines))
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
