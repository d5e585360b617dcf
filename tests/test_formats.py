"""weights.formats: `.pth` read without torch (bit for bit as torch.load), refused pickles,
`.safetensors`, writing.

Files written by real torch in the test when torch is installed; `tests/data/torch_tensors_*.pth`
were written by torch 2.13 (`write_torch_tensors` below, checked against torch.load by
`test_fixture_files_hold_what_torch_loads`) so that the torch-free reader is tested where torch
is absent. The hostile pickles are assembled opcode by opcode (`pickle_body`, `pickle_global`).
"""

import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from hnc_jax.errors import ConfigError
from hnc_jax.weights import formats

TORCH_REASON = "torch is optional: pip install -r requirements-torch.txt"
DATA = Path(__file__).parent / "data"
FORMATS = {"zip": True, "legacy": False}  # name -> torch.save's _use_new_zipfile_serialization


def expected_tensors(zip_format: bool = True) -> dict:
    """What `write_torch_tensors` saves, made with numpy: torch dtypes and views of storages."""
    base = np.arange(-12, 12, dtype=np.float32).reshape(4, 6) / 8
    tensors = {
        "float32": base,
        "transposed": base.T,  # non-contiguous
        "window": base[1:, 2:5],  # offset and strides into a shared storage
        "float16": base.astype(np.float16),
        "bfloat16_every_other_row": base.astype(ml_dtypes.bfloat16)[::2],
        "float64": base.astype(np.float64)[3],
        "int64_scalar": np.array(7, np.int64),  # as BatchNorm's num_batches_tracked
        "uint8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "uint16": np.arange(3, dtype=np.uint16) * 1000,  # a `_rebuild_tensor_v3` dtype
        "float8_e4m3fn": base[0].astype(ml_dtypes.float8_e4m3fn),
        "empty": np.zeros((0, 3), np.float32),
        "parameter": base[2],  # saved as an nn.Parameter
        "nested": [base[0], (base[1], "text", 3, None)],
    }
    return tensors if zip_format else _without_v3_dtypes(tensors)


def _without_v3_dtypes(tensors: dict) -> dict:
    # torch 2.13 itself cannot load `_rebuild_tensor_v3` tensors from legacy files.
    return {k: v for k, v in tensors.items() if k not in ("uint16", "float8_e4m3fn")}


def write_torch_tensors(torch, path, zip_format: bool) -> None:
    """Saves `expected_tensors()` from torch tensors that share storages as torch's do."""
    base = torch.arange(-12, 12, dtype=torch.float32).reshape(4, 6) / 8
    tensors = {
        "float32": base,
        "transposed": base.t(),
        "window": base[1:, 2:5],
        "float16": base.half(),
        "bfloat16_every_other_row": base.bfloat16()[::2],
        "float64": base.double()[3],
        "int64_scalar": torch.tensor(7),
        "uint8": torch.arange(5, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "uint16": (torch.arange(3) * 1000).to(torch.uint16),
        "float8_e4m3fn": base[0].to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(base[2].clone()),
        "nested": [base[0], (base[1], "text", 3, None)],
    }
    tensors = tensors if zip_format else _without_v3_dtypes(tensors)
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)


def assert_same(got, want, path="") -> None:
    """Same structure, and arrays equal in dtype, shape and every bit."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list | tuple):
        assert type(got) is type(want) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}/{i}")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), path
        assert (got.dtype, got.shape) == (want.dtype, want.shape), path
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), path
    else:
        assert got == want, path


def torch_to_numpy(obj):
    """torch.load's result with tensors as numpy arrays of the same dtype and bits."""
    import torch

    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        dtype = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn}
        if obj.dtype in dtype:
            bits = obj.view(torch.uint8) if obj.dim() else obj.reshape(1).view(torch.uint8)
            return bits.numpy().view(dtype[obj.dtype]).reshape(tuple(obj.shape))
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: torch_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(torch_to_numpy(v) for v in obj)
    return obj


@pytest.mark.parametrize("fmt", FORMATS)
def test_pth_reads_bit_for_bit_as_torch_load(tmp_path, fmt):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    path = tmp_path / f"{fmt}.pth"
    write_torch_tensors(torch, path, FORMATS[fmt])
    got = formats.read(path)
    assert_same(got, torch_to_numpy(torch.load(path, weights_only=True)))
    assert_same(got, expected_tensors(FORMATS[fmt]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixture_files_hold_what_torch_loads(fmt):
    """The committed files: read without torch everywhere, cross-checked with torch here."""
    path = DATA / f"torch_tensors_{fmt}.pth"
    assert_same(formats.read(path), expected_tensors(FORMATS[fmt]))
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    want = torch_to_numpy(torch.load(path, weights_only=True))
    assert_same(want, expected_tensors(FORMATS[fmt]))


def rewrite_zip(source: bytes, edit) -> bytes:
    """A copy of a zip archive with `edit(name, data) -> data` applied to every member."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, edit(name, src.read(name)))
    return out.getvalue()


def test_big_endian_archive_and_cuda_location():
    """A zip archive from a big-endian machine, of tensors saved on a GPU, loads as torch
    would load it with map_location='cpu' (float32 storages only: 4-byte swaps)."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    source = (DATA / "torch_tensors_zip.pth").read_bytes()
    with zipfile.ZipFile(io.BytesIO(source)) as archive:
        (pkl,) = [n for n in archive.namelist() if n.endswith("data.pkl")]
    prefix = pkl.removesuffix("data.pkl")

    def edit(name, data):
        if name == f"{prefix}byteorder":
            return b"big"
        if name == pkl:  # one float32 tensor on cuda:0 in storage "0"
            return b"\x80\x02" + pickle_tensor((2, 3), (3, 1), location="cuda:0") + b"."
        if name == f"{prefix}data/0":
            return values.astype(">f4").tobytes()
        return data

    edited = rewrite_zip(source, edit)
    np.testing.assert_array_equal(formats.loads(edited), values)
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    want = torch.load(io.BytesIO(edited), map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(want.numpy(), values)


# Hostile and broken pickles, assembled from opcodes (protocol 2, as torch.save writes).
def pickle_body(obj) -> bytes:
    """The opcodes that push `obj` (plain data), without the protocol header and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def pickle_global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def pickle_tensor(size, stride, offset=0, location="cpu") -> bytes:
    """`_rebuild_tensor_v2` of float32 storage '0' (of 6 elements), as torch pickles it."""
    storage = (
        b"("
        + pickle_body("storage")
        + pickle_global("torch", "FloatStorage")
        + pickle_body("0")
        + pickle_body(location)
        + pickle_body(6)
        + b"tQ"  # TUPLE, BINPERSID
    )
    args = pickle_body(offset) + pickle_body(tuple(size)) + pickle_body(tuple(stride))
    hooks = pickle_global("collections", "OrderedDict") + b")R"
    return (
        pickle_global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + storage
        + args
        + b"\x89"  # requires_grad=False
        + hooks
        + b"tR"  # TUPLE, REDUCE
    )


def torch_archive(pickled: bytes) -> bytes:
    """A zip archive laid out as torch.save's, with `pickled` as data.pkl and one storage."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", np.arange(6, dtype=np.float32).tobytes())
    return out.getvalue()


class RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("container", ["zip", "bare pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"conv1.weight": RunsACommand(f"touch {marker}")}, protocol=2)
    assert b"system" in evil
    path = tmp_path / "resnet50.pth"
    path.write_bytes(torch_archive(evil) if container == "zip" else evil)
    with pytest.raises(ValueError, match=r"resnet50.pth: refused global posix.system: only") as e:
        formats.read(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    pickle.loads(evil)  # The same bytes unrestricted: the command does run (the test is live).
    assert marker.exists()


@pytest.mark.parametrize(
    ("pickled", "message"),
    [
        (pickle_global("builtins", "eval") + b"(" + pickle_body("1") + b"tR", "builtins.eval"),
        (pickle_global("__main__", "Net") + b")\x81", "refused global __main__.Net"),
        (pickle_global("_codecs", "encode") + pickle_body(("x", "rot13")) + b"R", "rot13"),
        # Tensors whose size, stride or offset reach past their 6-element storage.
        (pickle_tensor((7,), (1,)), r"size \(7,\), stride \(1,\), offset 0 reaches past"),
        (pickle_tensor((2, 3), (3, 2)), r"reaches past its storage of 6 elements"),
        (pickle_tensor((6,), (1,), offset=1), "reaches past"),
        (pickle_tensor((2,), (-1,)), "not a tuple of non-negative ints"),
        # BUILD (set an object's state) cannot change a tensor after its checks.
        (pickle_tensor((1,), (1,)) + pickle_body({"size": (99,)}) + b"b", "__dict__"),
        (pickle_global("torch", "FloatStorage") + b")R", "not callable"),
    ],
)
def test_hostile_or_broken_pickles(tmp_path, pickled, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(torch_archive(b"\x80\x02" + pickled + b"."))
    with pytest.raises(ValueError, match=message) as e:
        formats.read(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_well_formed_handmade_archive_reads():
    """The builders above make valid files: the failures in the test above are the checks."""
    got = formats.loads(torch_archive(b"\x80\x02" + pickle_tensor((2, 3), (1, 2)) + b"."))
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32).reshape(3, 2).T)


def test_safetensors_read_like_torch(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    import safetensors.torch

    base = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    tensors = {
        "f32": base,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "n": torch.tensor(4),
        "t": base.t().contiguous(),
    }
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    assert_same(formats.read(path), torch_to_numpy(tensors))


def test_safetensors_write_read_round_trip_without_torch(tmp_path):
    unwritable = ("nested", "float8_e4m3fn")  # safetensors.numpy.save knows no float8
    arrays = {k: v for k, v in expected_tensors().items() if k not in unwritable}
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    path = tmp_path / "sub" / "model.safetensors"
    assert formats.write(arrays, path) == str(path)
    assert_same(formats.read(path), arrays)
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed
    assert safetensors.numpy.load_file(path)["float32"].tobytes() == arrays["float32"].tobytes()


def test_pth_write_via_torch(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(0, np.int64)}
    path = formats.write(arrays, tmp_path / "model.pth")
    assert_same(torch_to_numpy(torch.load(path, weights_only=True)), arrays)
    assert_same(formats.read(path), arrays)


def test_writing_refuses_other_names_and_pth_without_torch(tmp_path, monkeypatch):
    arrays = {"a": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match=r"cannot write .*model.npz: give a .safetensors or .pth"):
        formats.write(arrays, tmp_path / "model.npz")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ConfigError, match=r"needs torch: pip install -r requirements-torch.txt"):
        formats.write(arrays, tmp_path / "model.pth")
    assert list(tmp_path.iterdir()) == []


def test_bad_files(tmp_path):
    good = formats.write({"a": np.zeros(99, np.float32)}, tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(Path(good).read_bytes()[:200])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cut_zip = tmp_path / "cut_zip.pth"
    cut_zip.write_bytes((DATA / "torch_tensors_zip.pth").read_bytes()[:-100])
    cut_legacy = tmp_path / "cut_legacy.pth"
    cut_legacy.write_bytes((DATA / "torch_tensors_legacy.pth").read_bytes()[:-10])
    for path, pattern in [
        (cut, "cut.safetensors: truncated or not a safetensors file"),
        (text, "notes.txt: truncated or not a torch checkpoint"),
        (cut_zip, r"cut_zip.pth: truncated or not a torch checkpoint \(File is not a zip file"),
        (cut_legacy, r"cut_legacy.pth: truncated or not a torch checkpoint \(storage .* cut short"),
    ]:
        with pytest.raises(ValueError, match=pattern) as e:
            formats.read(path)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        formats.read(tmp_path / "absent.pth")
