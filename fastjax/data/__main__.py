"""Loads a dataset, partitions it over clients, prints and writes the partition report.

    python -m fastjax.data --dataset cifar10 --partition dirichlet --alpha 0.1 \\
        --clients 10 --data-root $FASTJAX_DATA_ROOT --out runs/part [--seed 0] \\
        [--seed-fraction 0.01]

writes runs/part/partition.json (per-client class counts under `class_counts`) and
runs/part/partition.png (clients x classes heatmap). Bad options fail before any data is
read with one line `fastjax: error: ...` and exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import sys
import time
import warnings

import numpy as np

from fastjax.data import DATASETS, DatasetCorruptError, DatasetNotFoundError, load_dataset
from fastjax.files import unwritable
from fastjax.partition import (PARTITIONS, format_table, make_partition, partition_report,
                               split_seed, write_report)
from fastjax.partition.seed import SEED_MODES


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, as the main job prints its errors (argparse would add the usage)."""
        print(f"fastjax: error: {message} (see python -m fastjax.data --help)",
              file=sys.stderr)
        sys.exit(2)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring's layout, and each option's default in --help (argparse's own
    ArgumentDefaultsHelpFormatter skips options without help and prints `None`)."""

    def _format_action(self, action):
        if action.option_strings and not any(action.default is x for x in (None, False, argparse.SUPPRESS)):
            action = copy.copy(action)
            action.help = (action.help + " " if action.help else "") + "(default: %(default)s)"
        return super()._format_action(action)


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Range checks that need no data; the rest (e.g. --clients above N) after loading."""
    if a.clients < 1:
        p.error(f"--clients must be >= 1, got {a.clients}")
    if not (math.isfinite(a.alpha) and a.alpha > 0):
        p.error(f"--alpha must be > 0 (smaller = more skewed, e.g. 0.1), got {a.alpha}")
    if a.classes_per_client < 1:
        p.error(f"--classes-per-client must be >= 1, got {a.classes_per_client}")
    if a.min_size is not None and a.min_size < 1:
        p.error(f"--min-size must be >= 1, got {a.min_size}")
    if a.seed < 0:
        p.error(f"--seed must be >= 0, got {a.seed}")
    if a.seed_fraction is not None and not 0 < a.seed_fraction <= 1:
        p.error(f"--seed-fraction must be in (0, 1] (e.g. 0.01 for 1%), got {a.seed_fraction}")
    accepts = inspect.signature(DATASETS[a.dataset]).parameters
    for flag, key, given in (("--path", "path", a.path is not None),
                             ("--download", "download", a.download)):
        if given and key not in accepts:
            takes = sorted(n for n, f in DATASETS.items()
                           if key in inspect.signature(f).parameters)
            p.error(f"{flag} does not apply to --dataset {a.dataset}; it is for {takes}")
    why = unwritable(a.out)  # a report that cannot be written should not wait for the decode
    if why is not None:
        p.error(f"--out {a.out} is not a writable directory ({why})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fastjax.data", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--partition", default="dirichlet", choices=sorted(PARTITIONS))
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--classes-per-client", type=int, default=2, help="shards scheme")
    p.add_argument("--min-size", type=int, default=None, help="dirichlet: fewest samples")
    p.add_argument("--data-root", default=None,
                   help="directory holding the dataset files (else $FASTJAX_DATA_ROOT)")
    p.add_argument("--path", default=None, help="imagefolder: directory or archive")
    p.add_argument("--download", action="store_true",
                   help="allow the tensorflow-datasets download fallback")
    p.add_argument("--out", required=True, help="directory for partition.json/.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-fraction", type=float, default=None,
                   help="also draw the labeled seed (e.g. 0.01) and report its size")
    p.add_argument("--seed-mode", default="balanced", choices=SEED_MODES)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    _check(p, a)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        return _run(a)
    except KeyboardInterrupt:
        print("fastjax: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (DatasetNotFoundError, DatasetCorruptError, ValueError, OSError) as e:
        print(f"fastjax: error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    options = {}
    if a.path is not None:
        options["path"] = a.path
    if a.download:
        options["download"] = True
    t0 = time.perf_counter()
    train = load_dataset(a.dataset, "train", a.data_root, **options)
    test = (load_dataset(a.dataset, "test", a.data_root, **options)
            if a.partition == "logo" else None)
    print(f"loaded {a.dataset}: {len(train)} train images {train.images.shape[1:]}, "
          f"{train.num_classes} classes in {time.perf_counter() - t0:.2f} s")
    part = make_partition(a.partition, train.labels, a.clients, a.seed, alpha=a.alpha,
                          classes_per_client=a.classes_per_client,
                          test_labels=None if test is None else test.labels,
                          min_size=a.min_size, num_classes=train.num_classes)
    report = partition_report(part, train.labels, train.num_classes, train.class_names,
                              test_labels=None if test is None else test.labels)
    report.update(dataset=a.dataset, random_seed=a.seed, alpha=a.alpha)
    if a.seed_fraction is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pools, _ = split_seed(part, train.labels, a.seed_fraction, mode=a.seed_mode,
                                  seed=a.seed)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        report["labeled_seed"] = {"mode": a.seed_mode, "fraction": a.seed_fraction,
                          "labeled_sizes": [int(p.labeled_idx.size) for p in pools],
                          "unlabeled_sizes": [int(p.unlabeled_idx.size) for p in pools],
                          "labeled_class_counts": [
                              np.bincount(p.labeled_y, minlength=train.num_classes).tolist()
                              for p in pools]}
    print(format_table(report))
    paths = write_report(report, a.out)
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
