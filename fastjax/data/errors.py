"""Errors raised by the dataset stage: each says what was looked for and how to fix it."""

from __future__ import annotations

import os
from collections.abc import Sequence

ROOT_HINT = ("set --data-root DIR (CLI), config `data.root`, or the environment variable "
             "FASTJAX_DATA_ROOT to the directory that holds the files")


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of a dataset was found (raised in seconds, never after retries)."""


class DatasetCorruptError(ValueError):
    """A dataset file exists but cannot be decoded (truncated download, wrong format)."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        super().__init__(
            f"cannot read dataset file {self.path}: {reason}. The file looks truncated or "
            f"is not in the expected format; delete it and fetch it again.")


def not_found(name: str, split: str, expected: Sequence[str], searched: Sequence[str],
              extra: str = "") -> DatasetNotFoundError:
    """Builds the error for a dataset with no local copy, listing files and places."""
    lines = [f"dataset {name!r} (split {split!r}) not found locally.",
             "Expected one of:"]
    lines += [f"  - {e}" for e in expected]
    lines.append("Searched: " + (", ".join(searched) if searched else
                                 "nothing (no data root given)"))
    lines.append(f"To fix: {ROOT_HINT}.")
    if extra:
        lines.append(extra)
    return DatasetNotFoundError("\n".join(lines))
