"""Read PyTorch checkpoints into numpy arrays without torch and without running pickled code.

`torch.save` writes a pickle whose tensors point at separately stored raw buffers ("storages").
Two container formats exist and both are read here:

* **zip** (the default since PyTorch 1.6): `<prefix>/data.pkl` holds the pickle, each storage is
  the record `<prefix>/data/<key>`, and `<prefix>/byteorder` says `little` or `big` (absent in
  older files, which were little-endian in practice).
* **legacy** (`_use_new_zipfile_serialization=False`, and everything before 1.6): five items back
  to back in one stream: a magic-number pickle, a protocol-version pickle, a sys-info pickle, the
  main pickle, a pickle listing the storage keys, then per key an int64 element count and the raw
  little-endian bytes. The storage dtypes are only known from the main pickle, so it is read
  twice: once to learn each storage's dtype and size, and, after the data is read, once for real.

**Safety policy.** Pickle runs code by calling whatever global the file names (`REDUCE`), so the
restricted unpickler never imports a module and only ever calls callables defined in this file
or plain value constructors. Each global the file names is resolved as follows:

1. Tensor rebuilders (`torch._utils._rebuild_tensor{,_v2,_v3}`, `_rebuild_parameter{,_with_state}`,
   `torch._tensor._rebuild_from_type_v2`) map to this module's numpy re-implementations, storage
   classes (`torch.FloatStorage`, `torch.storage.UntypedStorage`, ...) and `torch.<dtype>` map to
   immutable (name, numpy dtype) tags, and `torch.Size` maps to `tuple`.
2. Harmless containers and values are real: `collections.OrderedDict`, the `builtins`
   constructors of plain values (`dict`, `list`, `set`, `int`, ...) and `_codecs.encode` for the
   latin-1 text that protocol 2 uses to store `bytes`.
3. Globals that exist to run commands, evaluate code, import modules or unpickle further
   (`os.system`, `posix.system`, `subprocess.*`, `builtins.eval`/`exec`/`getattr`/`__import__`,
   any other `builtins` name, `importlib`, `pickle`, `marshal`, `ctypes`, ...) are refused:
   `UnsafeCheckpointError` is raised when the global is looked up, before any call happens.
4. Everything else (OmegaConf containers, `argparse.Namespace`, Lightning's `AttributeDict`, user
   classes in `hyper_parameters`, ...) becomes an inert stand-in class. Creating, calling or
   restoring state on it only records the arguments, and whatever it returns is inert too.

So no non-allow-listed module is ever imported and no non-allow-listed callable is ever called;
rule 3 only turns an obvious attack into a clear error instead of a silently inert object.
Views are bounds-checked against their storage before numpy strides over it.

Tensors come back as independent C-contiguous numpy arrays in native byte order (bfloat16 and
float8 via ml_dtypes). Sparse and quantized tensors have no allow-listed rebuilder and therefore
come back inert; a whole pickled `nn.Module` comes back as an inert object whose `state` holds
its `_parameters` and `_buffers` as arrays.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import math
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, NamedTuple

import ml_dtypes
import numpy as np

__all__ = [
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "load_state_dict",
    "load_torch_file",
]

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"

# Storage classes as torch pickles them (`torch.FloatStorage`, also `torch.cuda.*` in old files).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "UntypedStorage": np.dtype(np.uint8),
}
_STORAGE_MODULES = frozenset({"torch", "torch.cuda", "torch.storage"})

# `torch.<dtype>` globals: the dtype argument of `_rebuild_tensor_v3` (uint16, float8, ...).
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
    "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}

_PLAIN_BUILTINS = frozenset({
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "set",
    "slice", "str", "tuple",
})

# Modules whose globals run commands, evaluate or load code, or reach arbitrary attributes.
_REFUSED_MODULES = frozenset({
    "_ctypes", "_operator", "_pickle", "_posixsubprocess", "asyncio", "bdb", "code", "codeop",
    "ctypes", "dill", "imp", "importlib", "marshal", "multiprocessing", "nt", "operator", "os",
    "pdb", "pickle", "platform", "posix", "pty", "runpy", "shelve", "shutil", "signal", "socket",
    "subprocess", "sys", "timeit", "webbrowser",
    "torch.hub", "torch.jit", "torch.package", "torch.serialization",
})


class UnsafeCheckpointError(Exception):
    """The checkpoint names a global that could execute code; nothing was executed."""


class CheckpointFormatError(Exception):
    """The file is not a readable PyTorch checkpoint (empty, truncated, corrupt, unsupported)."""


class _InertObject:
    """Stand-in for an instance of a class that is never imported.

    Pickle builds objects by calling the class (`REDUCE`), calling `cls.__new__` (`NEWOBJ`),
    restoring state (`BUILD`) and filling containers (`SETITEMS`, `APPENDS`); each of these only
    records its arguments here.
    """

    pickled_global = "?"  # "module.name" from the file, set on each per-global subclass

    def __new__(cls, *args: Any, **kwargs: Any) -> _InertObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.dict_entries = {}
        obj.list_entries = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs  # already recorded by __new__, which NEWOBJ calls without __init__

    def __call__(self, *args: Any, **kwargs: Any) -> _InertObject:
        return type(self)(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_entries[key] = value

    def append(self, value: Any) -> None:
        self.list_entries.append(value)

    def extend(self, values: Any) -> None:
        self.list_entries.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.pickled_global} args={self.args!r} state={self.state!r}>"


# Globals naming a storage class or a dtype resolve to these tags. They are immutable tuples
# made per lookup, so a hostile BUILD opcode cannot alter them or reach the shared np.dtype
# singletons inside (numpy lets __setstate__ rewrite a dtype's item size in place).
class _StorageType(NamedTuple):
    pickled_global: str
    dtype: np.dtype


class _TorchDtype(NamedTuple):
    pickled_global: str
    dtype: np.dtype


# The legacy format's first pass sees storages before their bytes are read.
_UNREAD_STORAGE = object()

# (key, dtype, element count) -> the storage as a 1-D native-order array.
_StorageReader = Callable[[str, np.dtype, int], np.ndarray]


def _ascii(value: Any) -> Any:
    # Checkpoints pickled by Python 2 carry these internal names as bytes.
    return value.decode("ascii") if isinstance(value, bytes) else value


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals by the module policy and storages through a reader.

    Without a `storage_reader` it only scans: storages are recorded in `storage_specs`
    (key -> (dtype, element count)) and tensors come out as None.
    """

    def __init__(self, file: BinaryIO, path: str, storage_reader: _StorageReader | None = None,
                 swap_bytes: bool = False) -> None:
        super().__init__(file)
        self._path = path
        self._storage_reader = storage_reader
        self._swap_bytes = swap_bytes
        self.storage_specs: dict[str, tuple[np.dtype, int]] = {}
        self._inert_classes: dict[tuple[str, str], type[_InertObject]] = {}
        self._rebuilders = {
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter_with_state,
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
        }

    def _error(self, message: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"{self._path}: {message}")

    # Globals -----------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) spell stdlib names the Python 2 way
        # (`__builtin__.eval`, `commands.Popen`); rename them as pickle would, without importing.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in self._rebuilders:
            return self._rebuilders[module, name]
        if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
            return _StorageType(f"{module}.{name}", _STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(f"torch.{name}", np.dtype(_TORCH_DTYPES[name]))
        if (module, name) == ("torch", "Size"):
            return tuple
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        if module == "builtins" and name in _PLAIN_BUILTINS:
            return getattr(builtins, name)
        if module == "builtins" or any(
                module == refused or module.startswith(refused + ".")
                for refused in _REFUSED_MODULES):
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to load, the pickle references the global {module}.{name}, "
                "which can execute code; nothing from the file was executed")
        return self._inert_class(module, name)

    def _inert_class(self, module: str, name: str) -> type[_InertObject]:
        key = (module, name)
        if key not in self._inert_classes:
            self._inert_classes[key] = type(
                "_InertObject", (_InertObject,), {"pickled_global": f"{module}.{name}"})
        return self._inert_classes[key]

    def _latin1_encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        # Pickle protocol 2 stores `bytes` as _codecs.encode(latin-1 text, "latin1").
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise self._error(f"_codecs.encode is only accepted for latin-1 text, got "
                              f"{type(text).__name__} with encoding {encoding!r}")
        return text.encode("latin-1")

    # Storages ----------------------------------------------------------------------------------

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and _ascii(pid[0]) == "module":
            # Legacy whole-module pickles: (module, class, source file, source); the class is
            # whatever find_class made of it (an inert stand-in).
            return pid[1]
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _ascii(pid[0]) != "storage":
            raise self._error(f"unsupported persistent id {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        key = _ascii(key)
        if not isinstance(storage_type, _StorageType):
            raise self._error(f"storage {key!r} has an unsupported storage type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise self._error(f"malformed storage reference {pid!r:.200}")
        if self._storage_reader is None:
            if self.storage_specs.setdefault(key, (storage_type.dtype, numel)) != (
                    storage_type.dtype, numel):
                raise self._error(f"storage {key!r} is referenced with two different dtypes/sizes")
            return _UNREAD_STORAGE
        storage = self._storage_reader(key, storage_type.dtype, numel)
        if view is None:
            return storage[:]  # a fresh view: a BUILD on it cannot alter the cached storage
        # Pre-1.6 files could reference a slice of a storage: (view key, offset, element count).
        _view_key, offset, view_numel = view
        if not (isinstance(offset, int) and isinstance(view_numel, int)
                and 0 <= offset and 0 <= view_numel and offset + view_numel <= storage.size):
            raise self._error(f"storage view {view!r} exceeds storage {key!r} of {storage.size} "
                              "elements")
        return storage[offset:offset + view_numel]

    # Tensor rebuilders (signatures follow torch._utils) ----------------------------------------

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return self._tensor_from_storage(storage, storage_offset, size, stride)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad,
                           backward_hooks, metadata=None):
        del requires_grad, backward_hooks
        return self._tensor_from_storage(storage, storage_offset, size, stride, metadata=metadata)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad,
                           backward_hooks, dtype, metadata=None):
        del requires_grad, backward_hooks
        if not isinstance(dtype, _TorchDtype):
            raise self._error(f"tensor rebuild got an unsupported dtype {dtype!r}")
        return self._tensor_from_storage(storage, storage_offset, size, stride, dtype.dtype,
                                         metadata)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        del requires_grad, backward_hooks
        return data

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        del requires_grad, backward_hooks, state
        return data

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        # Tensor subclasses: rebuild the plain tensor; the subclass and its state are dropped.
        del new_type, state
        if func not in self._rebuilders.values():
            raise self._error(f"tensor subclass rebuild with an unsupported function {func!r}")
        return func(*args)

    def _tensor_from_storage(self, storage, offset, size, stride, dtype=None, metadata=None):
        if storage is _UNREAD_STORAGE:
            return None
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise self._error(f"tensor rebuild got {type(storage).__name__} instead of a storage")
        if dtype is not None:  # v3: an untyped byte storage reinterpreted as `dtype`
            if storage.nbytes % dtype.itemsize:
                raise self._error(f"a {storage.nbytes}-byte storage cannot hold {dtype} elements")
            storage = storage.view(dtype)
            if self._swap_bytes:
                storage = storage.byteswap()
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(isinstance(n, int) and n >= 0 for n in size + stride)
                and isinstance(offset, int) and offset >= 0):
            raise self._error(f"malformed tensor view: offset {offset!r}, size {size!r}, "
                              f"stride {stride!r}")
        if math.prod(size) == 0:
            return np.zeros(size, storage.dtype)
        last = offset + sum((n - 1) * step for n, step in zip(size, stride))
        if last >= storage.size:
            raise self._error(f"tensor view (offset {offset}, size {size}, stride {stride}) "
                              f"reaches element {last} of a {storage.size}-element storage")
        itemsize = storage.dtype.itemsize
        array = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[step * itemsize for step in stride],
            writeable=False).copy()
        metadata = metadata or {}
        if set(k for k, v in metadata.items() if v) - {"neg", "conj"}:
            raise self._error(f"unsupported tensor metadata {metadata!r}")
        if metadata.get("neg"):
            array = np.negative(array)
        if metadata.get("conj"):
            array = np.conj(array)
        return array


def _native_array(raw: bytes, dtype: np.dtype, swap_bytes: bool) -> np.ndarray:
    array = np.frombuffer(raw, dtype=dtype)
    return array.byteswap() if swap_bytes and dtype.itemsize > 1 else array


def _load_zip(path: str, file: BinaryIO) -> Any:
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile as err:
        raise CheckpointFormatError(
            f"{path}: truncated or corrupt zip checkpoint ({err})") from err
    with archive:
        pickles = [name for name in archive.namelist()
                   if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: zip archive without exactly one <prefix>/data.pkl record (found "
                f"{pickles}); not a torch.save file")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in archive.namelist():
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byteorder record {byteorder!r}")
        swap_bytes = byteorder != sys.byteorder
        storages: dict[str, np.ndarray] = {}

        def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            if key not in storages:
                try:
                    raw = archive.read(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointFormatError(
                        f"{path}: storage record {prefix}data/{key} is missing") from None
                if len(raw) != numel * dtype.itemsize:
                    raise CheckpointFormatError(
                        f"{path}: storage {key!r} holds {len(raw)} bytes, expected {numel} x "
                        f"{dtype} = {numel * dtype.itemsize} bytes")
                storages[key] = _native_array(raw, dtype, swap_bytes)
            if storages[key].dtype != dtype:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} is referenced as {storages[key].dtype} and {dtype}")
            return storages[key]

        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path,
                                         read_storage, swap_bytes)
        return unpickler.load()


def _load_legacy(path: str, file: BinaryIO) -> Any:
    try:
        magic_number = _RestrictedUnpickler(file, path).load()
    except UnsafeCheckpointError:
        raise
    except Exception:  # whatever the bytes were, they were not the magic-number pickle
        magic_number = None
    if magic_number != _LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save "
            "stream with its magic number)")
    protocol_version = _RestrictedUnpickler(file, path).load()
    if protocol_version != _LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(
            f"{path}: unsupported legacy protocol version {protocol_version!r}")
    _RestrictedUnpickler(file, path).load()  # sys_info: the data is little-endian regardless

    main_pickle_start = file.tell()
    scanner = _RestrictedUnpickler(file, path)
    scanner.load()
    keys = _RestrictedUnpickler(file, path).load()
    if not isinstance(keys, list):
        raise CheckpointFormatError(f"{path}: storage key list is a {type(keys).__name__}")
    storages: dict[str, np.ndarray] = {}
    swap_bytes = sys.byteorder != "little"
    for key in map(_ascii, keys):
        if key not in scanner.storage_specs:
            raise CheckpointFormatError(f"{path}: storage {key!r} is not used by the pickle")
        dtype, numel = scanner.storage_specs[key]
        header = file.read(8)
        if len(header) != 8:
            raise CheckpointFormatError(f"{path}: truncated before the data of storage {key!r}")
        count = int.from_bytes(header, "little", signed=True)
        if count != numel:
            raise CheckpointFormatError(
                f"{path}: storage {key!r} header says {count} elements, the pickle says {numel}")
        raw = file.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointFormatError(
                f"{path}: truncated in storage {key!r} after {len(raw)} of "
                f"{numel * dtype.itemsize} bytes")
        storages[key] = _native_array(raw, dtype, swap_bytes)

    def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        if key not in storages:
            raise CheckpointFormatError(f"{path}: storage {key!r} is missing from the data")
        del dtype, numel  # checked against the same references during the scan
        return storages[key]

    file.seek(main_pickle_start)
    return _RestrictedUnpickler(file, path, read_storage, swap_bytes).load()


def load_torch_file(path: str | os.PathLike) -> Any:
    """Unpickles a `torch.save` file (zip or legacy format) with numpy arrays in place of tensors.

    Objects of classes outside the tensor allow-list come back as inert stand-ins that record
    `pickled_global`, `args`, `state`, `dict_entries` and `list_entries` (see the module doc);
    a `torch.<dtype>` value comes back as a (pickled_global, numpy dtype) named tuple.

    Raises:
      UnsafeCheckpointError: the pickle names a global that can execute code.
      CheckpointFormatError: the file is empty, truncated, corrupt or not a torch.save file.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(len(_ZIP_MAGIC))
        if not head:
            raise CheckpointFormatError(f"{path}: file is empty")
        file.seek(0)
        try:
            if head == _ZIP_MAGIC:
                return _load_zip(path, file)
            return _load_legacy(path, file)
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except Exception as err:  # the unpickler meets arbitrary bytes in a damaged file
            raise CheckpointFormatError(
                f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from err


def _arrays_of(mapping: Any) -> dict[str, np.ndarray]:
    if not isinstance(mapping, Mapping):
        return {}
    return {key: value for key, value in mapping.items()
            if isinstance(key, str) and isinstance(value, np.ndarray)}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Returns the checkpoint's state dict as {name: numpy array}.

    Looks in Lightning's `obj["state_dict"]`, then `obj["model"]`, then the object itself;
    entries that are not arrays (e.g. a `_metadata` attribute or nested dicts) are dropped.
    """
    path = os.fspath(path)
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        candidates = [obj["state_dict"]]
    elif isinstance(obj, Mapping):
        candidates = [obj.get("model"), obj]
    else:
        candidates = []
    for candidate in candidates:
        arrays = _arrays_of(candidate)
        if arrays:
            return arrays
    found = (f"top-level keys {sorted(map(str, obj))[:20]}" if isinstance(obj, Mapping)
             else f"a top-level {type(obj).__name__}")
    raise CheckpointFormatError(
        f"{path}: no state dict of tensors found (looked in ['state_dict'], ['model'] and the "
        f"top level; found {found})")
