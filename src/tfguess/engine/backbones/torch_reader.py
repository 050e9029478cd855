"""Read legacy (non-zip) PyTorch checkpoints into numpy arrays, without torch.

The legacy format written by ``torch.save(..., _use_new_zipfile_serialization=False)`` is a
sequence of pickles followed by raw storage bytes:

1. magic number, 2. protocol version, 3. sys_info dict,
4. the main object (here an ``OrderedDict`` of tensors; tensors are rebuilt by
   ``torch._utils._rebuild_tensor_v2`` from storages referenced by persistent ids
   ``('storage', StorageType, key, location, numel, view_metadata)``),
5. a list of storage keys, then for each key: an int64 little-endian element count followed
   by the raw little-endian data.

Only the few globals these checkpoints need are allowed; anything else is refused.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchCheckpointError(ValueError):
    """The file is not a legacy torch checkpoint this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _TensorRef:
    """A tensor whose storage has not been read yet."""

    key: str
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:
    key, dtype = storage
    return _TensorRef(key, dtype, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchCheckpointError(f"{self._path}: refusing to load {module}.{name} (not a plain state dict)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchCheckpointError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise TorchCheckpointError(f"{self._path}: storage views are not supported")
        self.storages[key] = (storage_type.dtype, int(numel))
        return key, storage_type.dtype


def read_state_dict(path: str | Path) -> collections.OrderedDict[str, np.ndarray]:
    """Return the checkpoint's ``{name: array}`` in file order (float32/int64 numpy arrays)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as e:
            raise TorchCheckpointError(f"{path}: not a legacy torch checkpoint ({e})") from e
        if magic != MAGIC_NUMBER:
            raise TorchCheckpointError(
                f"{path}: not a legacy (non-zip) torch checkpoint; re-save it with "
                "torch.save(obj, f, _use_new_zipfile_serialization=False)"
            )
        if pickle.load(f) != PROTOCOL_VERSION:
            raise TorchCheckpointError(f"{path}: unsupported torch protocol version")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise TorchCheckpointError(f"{path}: big-endian checkpoints are not supported")
        unpickler = _Unpickler(f, path)
        obj = unpickler.load()
        keys = pickle.load(f)
        data: dict[str, np.ndarray] = {}
        for key in keys:
            dtype, numel = unpickler.storages[key]
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            if count != numel:
                raise TorchCheckpointError(f"{path}: storage {key} has {count} elements, expected {numel}")
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise TorchCheckpointError(f"{path}: file is truncated")
            data[key] = np.frombuffer(raw, dtype)
    if not isinstance(obj, collections.OrderedDict | dict):
        raise TorchCheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, ref in obj.items():
        if not isinstance(ref, _TensorRef):
            continue
        storage = data[ref.key]
        itemsize = storage.dtype.itemsize
        arr = np.lib.stride_tricks.as_strided(
            storage[ref.offset:],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
            writeable=False,
        )
        out[name] = np.array(arr, dtype=storage.dtype.newbyteorder("="))
    return out
