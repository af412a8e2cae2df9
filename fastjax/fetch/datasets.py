"""Datasets from their official release files, into the places the loaders search.

Each file lands at ``<data root>/<path>`` below, where `fastjax.data.loaders` finds it
(``<root>/<name>/`` or ``<root>/medmnist/``), in the release's own format: nothing is
extracted or converted, the loaders read the archives themselves and check their split
and class sizes. Every file is checked against its published MD5 first (`http.download`).
``via="tfds"`` instead lets tensorflow-datasets download and prepare CIFAR-10/100 or
SVHN under ``<root>/tensorflow_datasets`` (the loaders' last resort).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fastjax.data import tfds_route
from fastjax.data.loaders import locate
from fastjax.data.errors import DatasetNotFoundError
from fastjax.fetch.http import FetchError, download


@dataclasses.dataclass(frozen=True)
class Remote:
    """One release file: where it is published, where it goes under the data root, its MD5."""

    url: str
    path: str
    md5: str


def _files(base: str, folder: str, md5s: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(Remote(base + f, f"{folder}/{f}", m) for f, m in md5s.items())


_MEDMNIST = "https://zenodo.org/records/10519652/files/"  # MedMNIST v3 (medmnist 3.0.2 INFO)
# MD5s as their publishers give them. CIFAR: the release page
# (https://www.cs.toronto.edu/~kriz/cifar.html), also torchvision's CIFAR10/100.tgz_md5.
# SVHN, MNIST (its PyTorch-hosted copy of the idx files), Fashion-MNIST: torchvision's
# SVHN.split_list / MNIST.resources / FashionMNIST.resources. Tiny-ImageNet: cs231n
# publishes no checksum; the MD5 every torchvision-style TinyImageNet class uses.
# PathMNIST / DermaMNIST: medmnist's INFO[flag]["MD5"] (and "MD5_<size>").
RELEASE_FILES: dict[str, tuple[Remote, ...]] = {
    "cifar10": (Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "cifar10/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    "cifar100": (Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "cifar100/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
    "svhn": _files("http://ufldl.stanford.edu/housenumbers/", "svhn", {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}),
    "tinyimagenet": (Remote("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                            "tinyimagenet/tiny-imagenet-200.zip",
                            "90528d7ca1a48142e341f4ef8d21d0de"),),
    "mnist": _files("https://ossci-datasets.s3.amazonaws.com/mnist/", "mnist", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion_mnist": _files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                            "fashion_mnist", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    **{f"{flag}{'' if size == 28 else f':{size}'}": (Remote(
        f"{_MEDMNIST}{flag}{'' if size == 28 else f'_{size}'}.npz?download=1",
        f"medmnist/{flag}{'' if size == 28 else f'_{size}'}.npz", md5),)
       for flag, sums in {
           "pathmnist": {28: "a8b06965200029087d5bd730944a56c1",
                         64: "55aa9c1e0525abe5a6b9d8343a507616",
                         128: "ac42d08fb904d92c244187169d1fd1d9",
                         224: "2c51a510bcdc9cf8ddb2af93af1eadec"},
           "dermamnist": {28: "0744692d530f8e62ec473284d019b0c7",
                          64: "b70a2f5635c6199aeaa28c31d7202e1f",
                          128: "2defd784463fa5243564e855ed717de1",
                          224: "8974907d8e169bef5f5b96bc506ae45d"}}.items()
       for size, md5 in sums.items()},
}
# The loaders' tensorflow-datasets names (fastjax/data/loaders.py).
TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
VIAS = ("release", "tfds")
SPLITS = ("train", "test")  # what a run reads (`load_train_test`)


def _key(item: str) -> tuple[str, dict]:
    name, _, size = item.partition(":")
    return name, ({"size": int(size)} if size else {})


def present(item: str, data_root) -> dict[str, Path | None]:
    """split -> where the loader finds it (None: missing), for a dataset item."""
    name, options = _key(item)
    out = {}
    for split in SPLITS:
        try:
            out[split] = locate(name, split, data_root, **options)
        except DatasetNotFoundError:
            out[split] = None
    return out


def fetch(item: str, root: Path, *, via: str = "release", progress: bool = True,
          sources: dict[str, tuple[Remote, ...]] | None = None) -> list[Path]:
    """Downloads dataset `item` ("cifar10", "pathmnist:224", ...) under `root`; returns
    the files written. Raises `FetchError` (one line)."""
    sources = RELEASE_FILES if sources is None else sources
    name = _key(item)[0]
    if via == "tfds":
        if name not in TFDS_NAMES:
            raise FetchError(f"{item}: tensorflow-datasets has no route here; it serves "
                             f"{sorted(TFDS_NAMES)} (drop --via tfds for the release files)")
        try:
            tfds_route.load(name, TFDS_NAMES[name], "train", [root], download=True)
        except DatasetNotFoundError as e:
            raise FetchError(" ".join(str(e).split())) from None
        return [root / "tensorflow_datasets" / TFDS_NAMES[name]]
    if item not in sources:
        raise FetchError(f"no release files known for {item!r}; known: {sorted(sources)}")
    return [download(r.url, root / r.path, r.md5, progress=progress) for r in sources[item]]
