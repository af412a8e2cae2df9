"""Readers for the on-disk formats the datasets ship in.

Each `read_*` takes a path (file, directory or archive) and returns every split it holds
as {split: Arrays}, with images uint8 NHWC and labels int64. Reading all splits in one
pass lets the caller cache them together (a .tar.gz is decompressed once).
"""

from __future__ import annotations

import gzip
import io
import pathlib
import pickle
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fastjax.data.archive import iter_members, read_members
from fastjax.data.errors import DatasetCorruptError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Arrays(NamedTuple):
    images: np.ndarray       # uint8 (N, H, W, C)
    labels: np.ndarray       # int64 (N,)
    class_names: tuple[str, ...]


def _need(members: dict[str, bytes], name: str, path: pathlib.Path) -> bytes:
    if name not in members:
        raise DatasetCorruptError(path, f"member {name!r} is missing "
                                        f"(found {sorted(members)[:8]})")
    return members[name]


# --- CIFAR python pickles (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but numpy array reconstruction: a batch file is data only."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} not allowed in a data file")
        return super().find_class(module, name)


def _unpickle(blob: bytes, path: pathlib.Path, member: str) -> dict:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on truncation
        raise DatasetCorruptError(f"{path}::{member}", f"{type(e).__name__}: {e}") from e
    if not isinstance(d, dict):
        raise DatasetCorruptError(f"{path}::{member}", f"expected a dict, got {type(d)}")
    # The official files are Python 2 pickles with bytes keys.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _decode_names(names: Sequence) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _cifar_labels(labels, rows: np.ndarray, path, member) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != rows.shape[0]:
        raise DatasetCorruptError(f"{path}::{member}",
                                  f"{y.shape[0]} labels for {rows.shape[0]} images")
    return y


def _cifar_rows(data, path, member) -> np.ndarray:
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetCorruptError(f"{path}::{member}",
                                  f"data shaped {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> NHWC


def read_cifar10_pickle(path: pathlib.Path) -> dict[str, Arrays]:
    """`cifar-10-batches-py/` or `cifar-10-python.tar.gz`: data_batch_1..5, test_batch."""
    wanted = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    m = read_members(path, lambda n: n.rsplit("/", 1)[-1] in wanted)
    names = _decode_names(_unpickle(_need(m, "batches.meta", path), path,
                                    "batches.meta")["label_names"])
    out = {}
    for split, members in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                           ("test", ["test_batch"])):
        xs, ys = [], []
        for mem in members:
            d = _unpickle(_need(m, mem, path), path, mem)
            xs.append(_cifar_rows(d["data"], path, mem))
            ys.append(_cifar_labels(d["labels"], xs[-1], path, mem))
        out[split] = Arrays(np.concatenate(xs), np.concatenate(ys), names)
    return out


def read_cifar100_pickle(path: pathlib.Path, label_mode: str = "fine") -> dict[str, Arrays]:
    """`cifar-100-python/` or `cifar-100-python.tar.gz`: train, test, meta."""
    m = read_members(path, lambda n: n.rsplit("/", 1)[-1] in {"train", "test", "meta"})
    meta = _unpickle(_need(m, "meta", path), path, "meta")
    names = _decode_names(meta[f"{label_mode}_label_names"])
    out = {}
    for split in ("train", "test"):
        d = _unpickle(_need(m, split, path), path, split)
        x = _cifar_rows(d["data"], path, split)
        out[split] = Arrays(x, _cifar_labels(d[f"{label_mode}_labels"], x, path, split), names)
    return out


# --- CIFAR binary release: records of <label byte(s)><3072 pixel bytes>

def _cifar_records(blob: bytes, n_label_bytes: int, path, member) -> tuple[np.ndarray, np.ndarray]:
    rec = n_label_bytes + 3072
    if len(blob) == 0 or len(blob) % rec:
        raise DatasetCorruptError(f"{path}::{member}",
                                  f"{len(blob)} bytes is not a multiple of the {rec}-byte record")
    a = np.frombuffer(blob, dtype=np.uint8).reshape(-1, rec)
    return a[:, :n_label_bytes].astype(np.int64), _cifar_rows(a[:, n_label_bytes:], path, member)


def _text_lines(blob: bytes) -> tuple[str, ...]:
    return tuple(s.strip() for s in blob.decode().splitlines() if s.strip())


def read_cifar10_binary(path: pathlib.Path) -> dict[str, Arrays]:
    """`cifar-10-batches-bin/` (or its .tar.gz): data_batch_{1..5}.bin, test_batch.bin."""
    wanted = {f"data_batch_{i}.bin" for i in range(1, 6)} | {"test_batch.bin",
                                                             "batches.meta.txt"}
    m = read_members(path, lambda n: n.rsplit("/", 1)[-1] in wanted)
    names = _text_lines(_need(m, "batches.meta.txt", path))
    out = {}
    for split, members in (("train", [f"data_batch_{i}.bin" for i in range(1, 6)]),
                           ("test", ["test_batch.bin"])):
        parts = [_cifar_records(_need(m, mem, path), 1, path, mem) for mem in members]
        out[split] = Arrays(np.concatenate([p[1] for p in parts]),
                            np.concatenate([p[0][:, 0] for p in parts]), names)
    return out


def read_cifar100_binary(path: pathlib.Path, label_mode: str = "fine") -> dict[str, Arrays]:
    """`cifar-100-binary/` (or its .tar.gz): train.bin, test.bin (coarse, fine label bytes)."""
    wanted = {"train.bin", "test.bin", f"{label_mode}_label_names.txt"}
    m = read_members(path, lambda n: n.rsplit("/", 1)[-1] in wanted)
    names = _text_lines(_need(m, f"{label_mode}_label_names.txt", path))
    col = 0 if label_mode == "coarse" else 1
    out = {}
    for split in ("train", "test"):
        y, x = _cifar_records(_need(m, f"{split}.bin", path), 2, path, f"{split}.bin")
        out[split] = Arrays(x, y[:, col], names)
    return out


# --- image folders: <split>/<class>/<image>

def _decode_image(blob: bytes, where: str, mode: str, size) -> np.ndarray:
    from PIL import Image  # lazy: only image-file datasets need PIL
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            if im.mode != mode:  # converting an RGB image copies it: ~25% of decode time
                im = im.convert(mode)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            a = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DatasetCorruptError(where, f"not a decodable image ({type(e).__name__}: {e})") from e
    return a[..., None] if a.ndim == 2 else a


def _norm_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    return tuple(int(s) for s in image_size)


def _stack(items: list[np.ndarray], where: pathlib.Path) -> np.ndarray:
    shapes = {a.shape for a in items}
    if len(shapes) > 1:
        raise ValueError(
            f"images under {where} have different shapes {sorted(shapes)[:4]}; resize "
            f"them to one size first (from Python, load_dataset(..., image_size=(H, W)) "
            f"resizes them on load)")
    return np.stack(items) if items else np.zeros((0, 1, 1, 1), np.uint8)


def read_image_folder(path: pathlib.Path, image_size=None, mode: str = "RGB"
                      ) -> dict[str, Arrays]:
    """`root/<split>/<class>/*.{png,jpg,jpeg}` as a directory or a .tar/.tar.gz/.zip.

    Class indices follow the sorted class-directory names over all splits
    (torchvision ImageFolder's rule), so every split shares one label map; for CIFAR-10
    that is also the official label order.
    """
    size = _norm_size(image_size)
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for rel, blob in iter_members(path, lambda n: n.lower().endswith(IMAGE_SUFFIXES)):
        parts = rel.split("/")
        if len(parts) < 3 or parts[-3].startswith("."):
            continue  # not <split>/<class>/<file>
        split, cls = parts[-3], parts[-2]
        found.setdefault(split, []).append(
            (cls, rel, _decode_image(blob, f"{path}::{rel}", mode, size)))
    classes = tuple(sorted({c for items in found.values() for c, _, _ in items}))
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))  # archive order is arbitrary
        out[split] = Arrays(_stack([a for _, _, a in items], path),
                            np.array([index[c] for c, _, _ in items], dtype=np.int64),
                            classes)
    return out


# --- Tiny-ImageNet (cs231n, http://cs231n.stanford.edu/tiny-imagenet-200.zip)

def read_tiny_imagenet(path: pathlib.Path, image_size=None) -> dict[str, Arrays]:
    """`tiny-imagenet-200/` or its .zip. Labels: sorted wnids (ImageFolder order).

    The official val split (val_annotations.txt) is our "test" split; the official test
    split has no labels and is skipped.
    """
    size = _norm_size(image_size)
    meta: dict[str, bytes] = {}
    train: list[tuple[str, str, np.ndarray]] = []
    val: dict[str, np.ndarray] = {}

    def want(n: str) -> bool:
        return (n.endswith(("/wnids.txt", "/words.txt", "/val_annotations.txt"))
                or n in ("wnids.txt", "words.txt")
                or (n.lower().endswith(".jpeg") and ("/train/" in f"/{n}"
                                                     or "/val/images/" in f"/{n}")))

    for rel, blob in iter_members(path, want):
        parts = rel.split("/")
        if not rel.lower().endswith(".jpeg"):
            meta[parts[-1]] = blob
        elif len(parts) >= 4 and parts[-2] == "images" and parts[-4] == "train":
            train.append((parts[-3], rel, _decode_image(blob, f"{path}::{rel}", "RGB", size)))
        elif len(parts) >= 3 and parts[-3] == "val":
            val[parts[-1]] = _decode_image(blob, f"{path}::{rel}", "RGB", size)
    wnids = sorted(_text_lines(_need(meta, "wnids.txt", path)))
    words = {}
    for line in meta.get("words.txt", b"").decode().splitlines():
        wnid, _, text = line.partition("\t")
        words[wnid] = text.split(",")[0].strip()
    names = tuple(words.get(w, w) for w in wnids)
    index = {w: i for i, w in enumerate(wnids)}
    try:
        train.sort(key=lambda t: (index[t[0]], t[1]))
        ann = [line.split("\t")[:2] for line in
               _need(meta, "val_annotations.txt", path).decode().splitlines() if line.strip()]
        val_items = sorted((index[w], fn) for fn, w in ann)
        test_x = [val[fn] for _, fn in val_items]
    except KeyError as e:
        raise DatasetCorruptError(path, f"{e} is listed but absent (incomplete extraction?)") from e
    return {"train": Arrays(_stack([a for _, _, a in train], path),
                            np.array([index[w] for w, _, _ in train], np.int64), names),
            "test": Arrays(_stack(test_x, path),
                           np.array([i for i, _ in val_items], np.int64), names)}


# --- SVHN cropped digits (Netzer et al. 2011), MATLAB v5 .mat files

def read_svhn_mat(path: pathlib.Path) -> Arrays:
    """`{train,test,extra}_32x32.mat`: X (32, 32, 3, N), y (N, 1) with 10 meaning digit 0."""
    try:
        import scipy.io
    except ImportError as e:
        raise ImportError("reading SVHN .mat files needs scipy (pip install scipy)") from e
    try:
        d = scipy.io.loadmat(str(path))
        x, y = d["X"], d["y"]
    except Exception as e:  # scipy raises ValueError/MatReadError/OSError when truncated
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DatasetCorruptError(path, f"X {x.shape} / y {y.shape} are not SVHN's layout")
    labels = y.reshape(-1).astype(np.int64) % 10  # the release stores digit 0 as 10
    return Arrays(np.ascontiguousarray(x.transpose(3, 0, 1, 2), dtype=np.uint8), labels,
                  tuple(str(i) for i in range(10)))


# --- MedMNIST v2 npz (Yang et al. 2023)

def read_medmnist_npz(path: pathlib.Path, class_names: tuple[str, ...]) -> dict[str, Arrays]:
    """`<flag>[_size].npz` with {train,val,test}_{images,labels}; labels (N, 1)."""
    out = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for split in ("train", "val", "test"):
                x = np.asarray(z[f"{split}_images"], dtype=np.uint8)
                y = np.asarray(z[f"{split}_labels"]).reshape(-1).astype(np.int64)
                out[split] = Arrays(x[..., None] if x.ndim == 3 else x, y, class_names)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e
    return out


# --- MNIST-style idx files (LeCun et al. 1998)

def _read_idx(path: pathlib.Path) -> np.ndarray:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        magic, = struct.unpack(">I", raw[:4])
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):
            raise ValueError(f"magic 0x{magic:08x} is not an unsigned-byte idx file")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"header says {dims} but {data.size} bytes of data follow")
    except (OSError, EOFError, zlib.error, struct.error, ValueError) as e:
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e
    return data.reshape(dims)


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_folder(folder: pathlib.Path, class_names: tuple[str, ...]) -> dict[str, Arrays]:
    out = {}
    for split, (xs, ys) in IDX_FILES.items():
        xf, yf = idx_file(folder, xs), idx_file(folder, ys)
        if xf is None or yf is None:
            raise DatasetCorruptError(folder, f"{xs}[.gz] or {ys}[.gz] is missing")
        x, y = _read_idx(xf), _read_idx(yf)
        if x.shape[0] != y.shape[0]:
            raise DatasetCorruptError(yf, f"{y.shape[0]} labels for {x.shape[0]} images")
        out[split] = Arrays(x[..., None].copy(), y.astype(np.int64), class_names)
    return out
