"""Reads a PyTorch state dict (`torch.save`, legacy or zip format) into NumPy arrays without importing torch.

The server image carries no torch (a training-time dependency only), yet `acg2vec models build-defaults`
converts EfficientNet-Lite0 from a `.pth` file. Both of torch's file formats are pickles whose tensors
point at raw little-endian storages; a restricted unpickler rebuilds them as arrays and refuses any other
global, so a file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
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
        self.dtype = np.dtype(_DTYPES[name]).newbyteorder("<")


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype


@dataclass(frozen=True)
class _TensorRef:
    """A tensor before its storage is read (legacy files store the storages after the pickle)."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self, storage: np.ndarray) -> np.ndarray:
        if not self.size:
            return np.array(storage[self.offset])
        needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if min(self.size) > 0 and needed > storage.size:
            raise ValueError(f"tensor in storage {self.storage.key} runs past its end")
        view = np.lib.stride_tricks.as_strided(
            storage[self.offset :],
            shape=self.size,
            strides=tuple(s * storage.dtype.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=storage.dtype.newbyteorder("="))


def _rebuild_tensor(storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a state dict")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if pid[0] != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid[0]!r}")
        return _StorageRef(str(pid[2]), pid[1].dtype)


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """name -> array for every tensor of a saved state dict (either of torch's formats)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            prefix = pkl[: -len("data.pkl")]
            with archive.open(pkl) as f:
                refs = _Unpickler(f).load()
            storages = {
                ref.storage.key: np.frombuffer(archive.read(f"{prefix}data/{ref.storage.key}"), ref.storage.dtype)
                for ref in refs.values()
            }
    else:
        with path.open("rb") as f:
            if pickle.load(f) != _MAGIC:
                raise ValueError(f"{path} is not a PyTorch file")
            pickle.load(f)  # protocol version
            pickle.load(f)  # system info
            refs = _Unpickler(f).load()
            dtypes = {ref.storage.key: ref.storage.dtype for ref in refs.values()}
            storages = {}
            for key in pickle.load(f):
                (numel,) = struct.unpack("<q", f.read(8))
                dtype = dtypes.get(key, np.dtype(np.uint8))
                storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype)
    return {name: ref.materialise(storages[ref.storage.key]) for name, ref in refs.items()}
