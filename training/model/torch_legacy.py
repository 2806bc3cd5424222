"""Read a state dict saved by PyTorch's legacy (non-zip) ``torch.save`` into numpy arrays, without PyTorch.

The layout (``torch/serialization.py``, ``_legacy_save`` / ``_legacy_load``): five pickles and
then raw bytes, in one file:

1. the magic number ``0x1950a86a20f9469cfc6c``, 2. the protocol version (1001), 3. a dict of
   system facts (byte order, type sizes);
4. the state dict: an ``OrderedDict`` of tensors, each ``torch._utils._rebuild_tensor_v2(storage,
   offset, size, stride, ...)``, its storage a persistent id ``("storage", <StorageClass>, key,
   location, numel)``;
5. the list of storage keys, in the order their bytes follow;

then, for each key, an 8-byte little-endian element count and that many elements.

The unpickler resolves exactly the globals this layout names (``collections.OrderedDict``, the
two tensor rebuilders and the storage classes) and refuses every other: a pickle can name any
callable, so a file that asks for anything else is not loaded.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from training.errors import Invalid

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {
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


class TorchFileError(Invalid):
    """The file is not a legacy PyTorch state dict this reader accepts; the message says why."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: type
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        **{("torch", name): name for name in STORAGE_DTYPES},
    }

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise TorchFileError(f"refusing to load {module}.{name}: not part of a plain state dict") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError(f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise TorchFileError("storage views are not supported")
        if storage_type not in STORAGE_DTYPES:
            raise TorchFileError(f"unknown storage type {storage_type!r}")
        storage = self.storages.setdefault(str(key), _Storage(str(key), STORAGE_DTYPES[storage_type], int(numel)))
        return storage


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a legacy ``torch.save(state_dict)`` file, as a C-contiguous numpy array by name."""
    with path.open("rb") as file:
        return _read(file, str(path))


def _read(file: BinaryIO, name: str) -> dict[str, np.ndarray]:
    def header(what: str, check: Callable[[Any], bool]) -> Any:
        try:
            value = _StateDictUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise TorchFileError(f"{name}: not a legacy PyTorch file ({what}: {exc})") from exc
        if not check(value):
            raise TorchFileError(f"{name}: not a legacy PyTorch file (unexpected {what} {str(value)[:80]})")
        return value

    header("magic number", lambda value: value == MAGIC_NUMBER)
    header("protocol version", lambda value: value == PROTOCOL_VERSION)
    facts = header("system facts", lambda value: isinstance(value, dict))
    if not facts.get("little_endian", True):
        raise TorchFileError(f"{name}: saved on a big-endian machine")
    unpickler = _StateDictUnpickler(file)
    try:
        state = unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise TorchFileError(f"{name}: its state dict cannot be read ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(t, _Tensor) for t in state.values()):
        raise TorchFileError(f"{name}: does not hold a state dict of tensors")
    keys = header("storage keys", lambda value: isinstance(value, list))
    data: dict[str, np.ndarray] = {}
    for key in map(str, keys):
        storage = unpickler.storages.get(key)
        if storage is None:
            raise TorchFileError(f"{name}: storage {key} is listed but no tensor uses it")
        count = int.from_bytes(file.read(8), "little")
        raw = file.read(count * np.dtype(storage.dtype).itemsize)
        if count != storage.numel or len(raw) != count * np.dtype(storage.dtype).itemsize:
            raise TorchFileError(f"{name}: storage {key} is truncated")
        data[key] = np.frombuffer(raw, dtype=storage.dtype)
    tensors = {}
    for tensor_name, tensor in state.items():
        flat = data.get(tensor.storage.key)
        if flat is None:
            raise TorchFileError(f"{name}: tensor {tensor_name} has no stored bytes")
        itemsize = flat.dtype.itemsize
        last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True))
        if tensor.offset < 0 or (all(tensor.size) and last >= flat.size):
            raise TorchFileError(f"{name}: tensor {tensor_name} reaches past its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :], shape=tensor.size, strides=[s * itemsize for s in tensor.stride], writeable=False
        )
        tensors[str(tensor_name)] = np.ascontiguousarray(view)
    return tensors
