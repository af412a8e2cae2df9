"""Dataset stage: `load_dataset(name, split)` -> `Dataset` (uint8 NHWC images, labels).

Local files first (`--data-root` / config `data.root` / `$FASTJAX_DATA_ROOT`), decoded
once and cached; see `fastjax.data.loaders` for the formats each dataset is read from.
"""

from fastjax.data.errors import DatasetCorruptError, DatasetNotFoundError
from fastjax.data.loaders import DATASETS, load_dataset, load_train_test, shared_loads
from fastjax.data.types import Dataset

__all__ = ["DATASETS", "Dataset", "DatasetCorruptError", "DatasetNotFoundError",
           "load_dataset", "load_train_test", "shared_loads"]
