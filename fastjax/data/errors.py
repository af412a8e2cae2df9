"""Errors raised by the dataset stage: each says what was looked for and how to fix it."""

from __future__ import annotations

import os
from collections.abc import Sequence

# Each option named exists where it is named: the main job's config key, the data CLI's
# flag, the environment variable both read.
ROOT_HINT = ("point the data root at the directory that holds the files: "
             "--config.data.root=DIR for the main job (python -m fastjax.main), "
             "--data-root DIR for python -m fastjax.data, or the environment variable "
             "FASTJAX_DATA_ROOT=DIR for both")

# The datasets `python -m fastjax.fetch` downloads from their official releases (its
# RELEASE_FILES; a test keeps the two equal).
FETCHABLE = ("cifar10", "cifar100", "dermamnist", "fashion_mnist", "mnist", "pathmnist",
             "svhn", "tinyimagenet")


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of a dataset was found (raised in seconds, never after retries)."""


class DatasetCorruptError(ValueError):
    """A dataset file exists but is damaged, incomplete or in another format.

    Raised before anything is cached, so a fixed file is read afresh.
    """

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        super().__init__(
            f"cannot read dataset file {self.path}: {reason}. It is truncated, damaged or "
            f"not in the expected format; delete it and fetch (or extract) it again.")


def not_found(name: str, split: str, expected: Sequence[str], searched: Sequence[str],
              extra: str = "") -> DatasetNotFoundError:
    """Builds the error for a dataset with no local copy, listing files and places."""
    lines = [f"dataset {name!r} (split {split!r}) not found locally.",
             "Expected one of:"]
    lines += [f"  - {e}" for e in expected]
    lines.append("Searched: " + (", ".join(searched) if searched else
                                 "nothing (no data root given)"))
    lines.append(f"To fix: {ROOT_HINT}.")
    if name in FETCHABLE:
        lines.append(f"Or download it from its official release (network needed): "
                     f"python -m fastjax.fetch {name} --data-root DIR")
    if extra:
        lines.append(extra)
    return DatasetNotFoundError("\n".join(lines))
