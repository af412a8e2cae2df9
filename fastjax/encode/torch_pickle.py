"""Read PyTorch ``.pth`` state dicts into numpy without importing torch.

Two on-disk layouts exist:

* the zip layout (``torch.save`` since 1.6): ``<root>/data.pkl`` is a pickle whose
  persistent ids name storages stored as raw bytes in ``<root>/data/<key>``;
* the legacy layout (before 1.6; the shipped EfficientNet-Lite0 file uses it): a stream
  of pickles (magic number, protocol version, system info, the object, the list of
  storage keys) followed by each storage as an int64 element count and its raw bytes.

In both, tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)``, which we replace by a numpy strided view.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype (little-endian, as torch writes it).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise ValueError(f"unsupported torch storage type {name!r} "
                             f"(supported: {sorted(_STORAGE_DTYPES)})")
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat numpy buffer, filled in later for the legacy layout."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    # Defer: legacy storages are read after the object pickle.
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        flat = self.storage.array
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.array(view)  # own the memory, C-contiguous


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict, load_storage):
        super().__init__(file)
        self._storages = storages
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only plain tensor state dicts are supported")

    def persistent_load(self, pid):
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            return pid[1]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        storage_type, key, _location, numel = pid[1:5]
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._load_storage(key, storage_type.dtype, int(numel))
        return self._storages[key]


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: zip .pth without a single data.pkl (found {pkl})")
        root = pkl[0][: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            s = _Storage(dtype, numel)
            s.array = np.frombuffer(zf.read(f"{root}data/{key}"), dtype=dtype, count=numel)
            return s

        with zf.open(pkl[0]) as f:
            obj = _Unpickler(f, {}, load_storage).load()
        return _materialize(obj)


def _load_legacy(path: Path) -> dict:
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info (endianness, type sizes)
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages, lambda key, dtype, numel: _Storage(dtype, numel)).load()
        keys = pickle.load(f)
        for key in keys:
            s = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * s.dtype.itemsize
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise EOFError(f"storage {key}: {len(data):,} of {nbytes:,} bytes")
            s.array = np.frombuffer(data, dtype=s.dtype, count=numel)
    return _materialize(obj)


def load_pth(path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict (``{name: tensor}``) as ``{name: np.ndarray}``.

    A file that is not one (damaged, truncated, another format) raises one ValueError
    naming it.
    """
    from fastjax.encode.core import unreadable

    path = Path(path)
    try:
        sd = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except Exception as e:  # pickle alone raises half a dozen types on bad bytes
        raise unreadable(path, "PyTorch .pth", e) from e
    if not isinstance(sd, dict):
        raise unreadable(path, "PyTorch .pth", TypeError(
            f"it holds a {type(sd).__name__}, not a state dict"))
    return sd
