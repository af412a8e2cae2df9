"""Explicit downloads: the datasets and encoder weights a config needs, nothing else.

    python -m fastjax.fetch --config configs/cifar10.py --data-root ~/data
    python -m fastjax.fetch cifar10 siglip google/siglip-base-patch16-384@main

Datasets come from their official release files, checked against the published MD5
(`datasets.RELEASE_FILES`), or through tensorflow-datasets with ``--via tfds``; they go
under the data root where the loaders search. Encoder weights come from the Hugging
Face hub at the revision `fastjax.encode.hub.HUB_REPOS` pins, safetensors only, into the
hub's local cache, where ``encoder.checkpoint`` (a hub id, or empty) finds them.
Downloads resume, land atomically and fail with one line. A run never downloads.
"""

from fastjax.fetch.http import FetchError

__all__ = ["FetchError"]
