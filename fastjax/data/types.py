"""Plain values produced by the dataset stage."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split of an image classification dataset, fully in memory.

    images: uint8 array (N, H, W, C) (C = 1 for grey-scale sources, 3 for colour).
    labels: int64 array (N,), values in [0, len(class_names)).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}/{self.split}: images must be uint8 (N, H, W, C), "
                f"got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but labels "
                f"shaped {self.labels.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])
