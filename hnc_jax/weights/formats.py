"""Weight files of torch users, read without torch: `.safetensors` and `torch.save`'s `.pth`.

    state_dict = formats.read("resnet50-11ad3fa6.pth")  # or gs://.../model.safetensors
    # {'conv1.weight': np.ndarray (64, 3, 7, 7) float32, ...}: torch's dtypes, shapes, values
    formats.write(state_dict, "resnet50.safetensors")  # .pth: through torch

`.safetensors` files go through the safetensors library (its parser; `safetensors.numpy.load`
knows no bfloat16). Every other name is read as a `torch.save` file, in either format:
- the zip archive (torch >= 1.6): `<name>/data.pkl` is the pickle, whose tensors refer by key
  to raw storages `<name>/data/<key>` in the byte order `<name>/byteorder` names;
- the legacy stream (`_use_new_zipfile_serialization=False`): pickles of a magic number, the
  protocol version and the system info, then the object, then the list of its storage keys,
  then each storage in that order as an int64 element count and the raw bytes.

The pickle goes through a restricted unpickler; torch is not imported and nothing in the file
runs. It resolves only torch's tensor and parameter rebuild functions, the storage types and
dtypes they name, `collections.OrderedDict` and `_codecs.encode` for latin-1 (how protocol 2
stores bytes); dicts, lists, tuples, strings and numbers need no global. Any other global
(os.system, builtins.eval, a class of the program that saved the file, ...) stops the load
with `UnsafePickleError` before it is called. Tensors come back as numpy arrays with torch's
dtype (bfloat16 and float8 through ml_dtypes), copied out of their storage after checking that
size, stride and offset stay inside it; tensors that shared a storage no longer share memory.
CUDA tensors load like CPU ones. Paths may be URLs (etils.epath).
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from hnc_jax.errors import ConfigError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# torch.<Name>Storage (the storage type a `_rebuild_tensor_v2` tensor names) -> element dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# torch.<dtype> that `_rebuild_tensor_v3` names (torch's "new" dtypes with a numpy twin).
_V3_DTYPES = {
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}


# safetensors dtype names -> numpy.
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
WRITE_SUFFIXES = (".safetensors", ".pth")


class UnsafePickleError(ValueError):
    """The pickle asks for a global that is not a tensor rebuild or a plain container."""


# What the unpickler hands out are NamedTuples: immutable and without a __dict__, so pickle's
# BUILD opcode (which sets an object's state) cannot change them, nor one loader's globals.
class _Global(NamedTuple):
    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


class _StorageType(NamedTuple):
    dtype: np.dtype


class _DType(NamedTuple):
    dtype: np.dtype


class _StorageRef(NamedTuple):
    key: str
    dtype: np.dtype


class _TensorRef(NamedTuple):
    """A tensor as the pickle describes it; `_resolve` copies it out of its storage."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: np.dtype


def _ints(name: str, value: Any) -> tuple[int, ...]:
    if not (type(value) in (tuple, list) and all(type(v) is int and v >= 0 for v in value)):
        raise ValueError(f"tensor {name} {value!r:.80} is not a tuple of non-negative ints")
    return tuple(value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype) -> _TensorRef:
    if type(storage) is not _StorageRef:
        raise ValueError(f"tensor storage is a {type(storage).__name__}, not a storage")
    size, stride = _ints("size", size), _ints("stride", stride)
    (offset,) = _ints("offset", (offset,))
    if len(size) != len(stride):
        raise ValueError(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    del requires_grad, hooks, metadata  # autograd state, meaningless here
    dtype = storage.dtype if type(storage) is _StorageRef else None
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, meta=None):
    del requires_grad, hooks, meta
    if type(dtype) is not _DType:
        raise ValueError(f"tensor dtype {dtype!r:.40} is not one of {', '.join(_V3_DTYPES)}")
    return _tensor(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    del requires_grad, hooks, state  # an nn.Parameter is its data here
    return data


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if type(text) is not str or encoding != "latin1":  # protocol 2's spelling of bytes
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r:.20}")
    return text.encode("latin1")


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Global(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Global(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Global(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Global(_rebuild_parameter),
    ("_codecs", "encode"): _Global(_latin1_encode),
    ("collections", "OrderedDict"): collections.OrderedDict,  # immutable C type
    **{("torch", name): _StorageType(np.dtype(t)) for name, t in _STORAGE_DTYPES.items()},
    # Bytes, under `_rebuild_tensor_v3` tensors (which name their dtype).
    ("torch.storage", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
    **{("torch", name): _DType(np.dtype(t)) for name, t in _V3_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `_GLOBALS`; persistent ids become `_StorageRef`s collected in `storages`."""

    def __init__(self, stream: io.BytesIO, storages: dict[str, _StorageRef]):
        super().__init__(stream)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(f"refused global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage type, key, location, numel[, view metadata (legacy)])
        if not (type(pid) is tuple and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if type(storage_type) is not _StorageType:
            raise ValueError(f"storage type {storage_type!r:.40} is not a torch storage type")
        if len(pid) == 6 and pid[5] is not None:
            raise ValueError("storage views (files of torch < 0.4) are not supported")
        ref = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype))
        if ref.dtype != storage_type.dtype:
            raise ValueError(f"storage {key} is read as {ref.dtype} and {storage_type.dtype}")
        return ref


def _resolve(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """`obj` with every `_TensorRef` replaced by a numpy array copied from `storages`."""
    if type(obj) is _TensorRef:
        data = storages[obj.storage.key]
        if obj.dtype != data.dtype:  # an untyped (byte) storage under a v3 tensor
            if data.nbytes % obj.dtype.itemsize:
                raise ValueError(f"storage of {data.nbytes} bytes does not hold {obj.dtype}")
            data = data.view(obj.dtype)
        if 0 in obj.size:
            return np.zeros(obj.size, obj.dtype)
        last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride, strict=True))
        if last >= data.size:
            raise ValueError(
                f"tensor of size {obj.size}, stride {obj.stride}, offset {obj.offset} reaches "
                f"past its storage of {data.size} elements"
            )
        strides = tuple(s * data.itemsize for s in obj.stride)
        view = np.lib.stride_tricks.as_strided(data[obj.offset :], obj.size, strides)
        return np.array(view, copy=True)
    if type(obj) in (dict, collections.OrderedDict):
        return type(obj)((k, _resolve(v, storages)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_resolve(v, storages) for v in obj)
    return obj


def _storage_array(raw: bytes, dtype: np.dtype, little_endian: bool) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise ValueError(f"storage of {len(raw)} bytes does not hold {dtype}")
    array = np.frombuffer(raw, dtype)
    return array if little_endian or dtype.itemsize == 1 else array.byteswap()


def _load_zip(data: bytes) -> Any:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("a zip file without one <name>/data.pkl")
        prefix = pickles[0].removesuffix("data.pkl")
        names = set(archive.namelist())
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise ValueError(f"byte order {byteorder!r:.20} is neither 'little' nor 'big'")
        storages: dict[str, _StorageRef] = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        arrays = {
            key: _storage_array(
                archive.read(f"{prefix}data/{key}"), ref.dtype, byteorder == "little"
            )
            for key, ref in storages.items()
        }
    return _resolve(obj, arrays)


def _load_legacy(data: bytes) -> Any:
    stream = io.BytesIO(data)
    storages: dict[str, _StorageRef] = {}
    if _Unpickler(stream, storages).load() != _LEGACY_MAGIC:
        raise ValueError("no torch magic number")
    if _Unpickler(stream, storages).load() != _LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy protocol version")
    sys_info = _Unpickler(stream, storages).load()
    little_endian = bool(isinstance(sys_info, dict) and sys_info.get("little_endian", True))
    obj = _Unpickler(stream, storages).load()
    keys = _Unpickler(stream, storages).load()
    if not (isinstance(keys, list) and sorted(map(str, keys)) == sorted(storages)):
        raise ValueError("the storage key list does not match the tensors")
    arrays = {}
    for key in map(str, keys):
        dtype = storages[key].dtype
        header = stream.read(8)
        numel = struct.unpack("<q", header)[0] if len(header) == 8 else -1
        raw = stream.read(max(numel, 0) * dtype.itemsize)
        if numel < 0 or len(raw) != numel * dtype.itemsize:
            raise EOFError(f"storage {key} is cut short")
        arrays[key] = _storage_array(raw, dtype, little_endian)
    return _resolve(obj, arrays)


def loads(data: bytes) -> Any:
    """The object `torch.save` wrote into `data` (a `.pth` file's bytes), tensors as numpy
    arrays. Raises UnsafePickleError for a global outside the allowed ones, other errors
    (ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ...) for a truncated
    or foreign file."""
    if data[:4] == b"PK\x03\x04":
        return _load_zip(data)
    return _load_legacy(data)


def _load_safetensors(data: bytes) -> dict[str, np.ndarray]:
    arrays = {}
    for key, tensor in safetensors.deserialize(data):
        dtype = _SAFETENSORS_DTYPES[tensor["dtype"]]
        arrays[key] = np.frombuffer(tensor["data"], dtype).reshape(tensor["shape"])
    return arrays


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read(path: str | os.PathLike) -> Any:
    """The object in a `.safetensors` file (a dict) or a `torch.save` file, tensors as numpy
    arrays. FileNotFoundError, or a one-line ValueError naming the file and what is wrong."""
    file = epath.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    data = file.read_bytes()
    if file.name.endswith(".safetensors"):
        try:
            return _load_safetensors(data)
        except Exception as e:  # SafetensorError, KeyError (a dtype), ValueError (a shape)
            raise ValueError(
                f"{path}: truncated or not a safetensors file ({_first_line(e)})"
            ) from e
    try:
        return loads(data)
    except UnsafePickleError as e:
        raise ValueError(
            f"{path}: {e}: only tensors and plain containers are read, nothing in the file is run"
        ) from e
    except Exception as e:  # BadZipFile, UnpicklingError, EOFError, ValueError, ...
        raise ValueError(f"{path}: truncated or not a torch checkpoint ({_first_line(e)})") from e


def check_writable(path: str | os.PathLike) -> None:
    """ConfigError unless `path` names a `.safetensors` file, or a `.pth` file with torch
    installed (the message names requirements-torch.txt). Cheap: call it before the work."""
    path = os.fspath(path)
    if not path.endswith(WRITE_SUFFIXES):
        raise ConfigError(f"cannot write {path}: give a {' or '.join(WRITE_SUFFIXES)} file")
    if path.endswith(".pth"):
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                f"writing {path} needs torch: pip install -r requirements-torch.txt "
                "(or write a .safetensors file)"
            ) from e


def write(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> str:
    """Writes `state_dict` as a `.safetensors` file, or a `.pth` file through `torch.save`;
    returns the path. Written under a temporary name, then renamed: never half a file."""
    path = os.fspath(path)
    check_writable(path)
    if path.endswith(".safetensors"):
        data = safetensors.numpy.save(dict(state_dict), metadata={"format": "pt"})
    else:
        import torch  # Optional (requirements-torch.txt): only .pth files need it.

        buffer = io.BytesIO()
        torch.save({k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()}, buffer)
        data = buffer.getvalue()
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"
    partial.write_bytes(data)
    partial.rename(out)
    return path
