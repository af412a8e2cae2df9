"""Plain values produced by the partition stage.

The split between what a client may see and what only the simulated oracle (and the
evaluation code) may see is carried by the types: a `ClientPool` holds labels for its
seed only; the labels of the unlabeled pool live in the `Oracle`, which counts every
annotation it hands out.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Partition:
    """Per-client index arrays over a dataset's train (and optionally test) split.

    train[k]: sorted int64 indices into the train split owned by client k.
    test[k]:  indices into the test split for client k's own evaluation, for schemes
              that define per-client test sets (LoGo's inter-class diversity); else None.
    """

    scheme: str
    train: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...] | None = None

    @property
    def num_clients(self) -> int:
        return len(self.train)

    def sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.train], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ClientPool:
    """What client k's labeling passes may see: its seed labels, never the pool's.

    labeled_idx / labeled_y: the initial labeled seed (global train indices, labels).
    unlabeled_idx:           the unlabeled pool (global train indices; no labels here).
    """

    client: int
    labeled_idx: np.ndarray
    labeled_y: np.ndarray
    unlabeled_idx: np.ndarray

    def __post_init__(self):
        if self.labeled_idx.shape != self.labeled_y.shape:
            raise ValueError("labeled_idx and labeled_y must have the same shape")
        if np.intersect1d(self.labeled_idx, self.unlabeled_idx).size:
            raise ValueError(f"client {self.client}: a sample is both labeled and unlabeled")


class Oracle:
    """The simulated human annotator: holds the hidden train labels.

    `query` is the only way the labeling stage obtains a hidden label; each distinct
    index queried counts as one annotation (asking again for the same sample is free,
    as a real annotator's answer would be stored). `labels_for_evaluation` exists for
    label-quality reports and is never called by the labeling passes.
    """

    def __init__(self, labels: np.ndarray):
        self._labels = np.asarray(labels, dtype=np.int64)
        self._queried = np.zeros(self._labels.shape[0], dtype=bool)

    @property
    def annotations(self) -> int:
        return int(self._queried.sum())

    def query(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        self._queried[idx] = True
        return self._labels[idx].copy()

    def labels_for_evaluation(self, idx: np.ndarray) -> np.ndarray:
        return self._labels[np.asarray(idx, dtype=np.int64)].copy()
