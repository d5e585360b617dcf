"""torchvision / timm ResNet weights <-> Flax variables (torch only to write `.pth` files).

    state_dict = convert.load_state_dict("resnet50-11ad3fa6.pth")  # or .safetensors, a dict
    name, num_classes = convert.infer_arch(state_dict)  # ('resnet50', 1000)
    variables = convert.from_torchvision(state_dict)
    logits, cams = models.create_model(name, num_classes=num_classes).apply(variables, x)
    convert.to_torchvision(variables, "resnet50.safetensors")  # and back (or .pth)

`from_torchvision` infers the depth (ResNet-18/34/50/101/152) and the class count from the
keys and returns `{'params': ..., 'batch_stats': ...}` for `models.create_model(name,
num_classes=C)` (ImageNet stem, width 1), whose outputs then match the torch model in eval
mode. `load_pretrained` merges such weights into a freshly initialised model for fine-tuning
(`init_from` in the configs), re-initialising the classifier when the class count differs.

Accepted layouts: torchvision's `resnet18` ... `resnet152` and timm's plain ResNets of the
same depths (`resnet50.a1_in1k`, `resnet50.tv_in1k`, ...: timm's resnet.py keeps torchvision's
module names), i.e. the keys `conv1`, `bn1`, `layer{1-4}.{i}.conv{1-3}|bn{1-3}|downsample.{0,1}`
and `fc`, each `.weight`, `.bias`, `.running_mean`, `.running_var` or `.num_batches_tracked`.
Anything else (timm's deep-stem `resnet50d` with `conv1.0.weight`, SE or anti-aliased blocks,
other models) is refused naming the first unexpected keys.

Files (`formats`): `.safetensors` through the safetensors library; any other name
(`.pth`, `.pt`, `.pth.tar`, `.bin`) as a `torch.save` file, read with numpy alone through a
restricted unpickler (a pickle that asks for anything but tensors and plain containers is
refused, never run). torch is needed only to write `.pth` files (`pip install -r
requirements-torch.txt`). Paths may be URLs (etils.epath). Nothing is downloaded.

Layouts: torch conv weight (O, I, kh, kw) <-> Flax kernel (kh, kw, I, O); fc weight (C, D) <->
kernel (D, C); BatchNorm weight/bias <-> params scale/bias, running_mean/running_var <->
batch_stats mean/var; `num_batches_tracked` is dropped on import and written as 0 on export.
"""

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from hnc_jax import models
from hnc_jax.weights import formats

Variables = dict[str, Any]
StateDict = dict[str, np.ndarray]

# Flax module name -> torchvision module name (the stage blocks are handled by `_torch_key`).
_MODULES = {
    "stem_conv": "conv1",
    "stem_bn": "bn1",
    "head": "fc",
    "downsample_conv": "downsample.0",
    "downsample_bn": "downsample.1",
}
# Flax leaf name -> torchvision tensor name ('bias' is both a BN and the fc bias).
_LEAVES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
# torch -> Flax axis order of kernels, by rank: conv OIHW -> HWIO, dense (C, D) -> (D, C).
_KERNEL_PERM = {4: (2, 3, 1, 0), 2: (1, 0)}
_PROBE_KEY = "layer1.0.conv1.weight"
_MAX_NAMED = 3  # keys named in an error message before "(+N more)"
# Every key of the accepted layouts (torchvision's and timm's ResNet-18..152).
_LAYOUT_KEY = re.compile(
    r"(conv1|bn1|fc|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)"
)
_LAYOUT = "torchvision/timm resnet18..152 keys: conv1, bn1, layer1-4.*.conv|bn|downsample, fc"
# Names read as weight files (the rest of `init_from` values are workdirs).
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".tar", ".bin")


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


def _to_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; .float() also covers float16/bfloat16
        return value.detach().cpu().float().numpy()
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value, np.float32)
    raise ValueError(f"not a state_dict: {key!r} holds a {type(value).__name__}, not a tensor")


def load_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> StateDict:
    """A torch `state_dict` (or a `.pth`/`.safetensors` path) as float32 numpy arrays.

    Unwraps checkpoints saved as `{'state_dict': ...}` or `{'model': ...}` (with epoch,
    optimizer, ... beside it, as the original HNC code saved them), strips DataParallel's
    `module.` prefix and drops `num_batches_tracked`. Values may be torch tensors or numpy
    arrays.
    """
    if isinstance(state_dict_or_path, str | os.PathLike):
        source = os.fspath(state_dict_or_path)
        obj = formats.read(source)
    else:
        source, obj = "state_dict", state_dict_or_path
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state_dict (dict of tensors), got {type(obj)}")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    keys = [str(k) for k in obj]
    prefix = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    return {
        k[len(prefix) :]: _to_numpy(k, v)
        for k, v in zip(keys, obj.values(), strict=True)
        if not k.endswith("num_batches_tracked")
    }


def infer_arch(state_dict: Mapping[str, Any]) -> tuple[str, int]:
    """`(model_name, num_classes)` of a torchvision ResNet state_dict, e.g. ('resnet50', 1000).

    The depth follows from the number of blocks in layer1..layer4 and the block type
    (bottleneck blocks have a `conv3`). Keys outside the accepted layouts are refused first.
    """
    unexpected = [k for k in state_dict if not _LAYOUT_KEY.fullmatch(k)]
    if unexpected:
        raise ValueError(
            f"not a torchvision ResNet state_dict ({_LAYOUT}): unexpected keys: {_few(unexpected)}"
        )
    if _PROBE_KEY not in state_dict:
        raise ValueError(
            f"not a torchvision ResNet state_dict: no {_PROBE_KEY!r} "
            f"(its keys start with: {_few(list(state_dict))})"
        )
    if "fc.weight" not in state_dict:
        raise ValueError("ResNet state_dict without its classifier: no 'fc.weight'")
    sizes = []
    for s in range(1, 5):
        n = 0
        while f"layer{s}.{n}.conv1.weight" in state_dict:
            n += 1
        sizes.append(n)
    bottleneck = "layer1.0.conv3.weight" in state_dict
    block_cls = models.BottleneckBlock if bottleneck else models.BasicBlock
    for name in models.MODEL_NAMES:
        arch = models.create_model(name, num_classes=1)
        if tuple(arch.stage_sizes) == tuple(sizes) and arch.block_cls is block_cls:
            return name, int(np.shape(state_dict["fc.weight"])[0])
    allowed = ", ".join(
        f"{n} {tuple(models.create_model(n, num_classes=1).stage_sizes)}"
        for n in models.MODEL_NAMES
    )
    kind = "bottleneck" if bottleneck else "basic"
    raise ValueError(
        f"blocks per layer {tuple(sizes)} with {kind} blocks match no ResNet; allowed: {allowed}"
    )


def _torch_key(path: tuple[str, ...]) -> str:
    """E.g. ('params', 'stage2_block0', 'downsample_conv', 'kernel') -> torchvision's
    'layer2.0.downsample.0.weight'."""
    parts = []
    for name in path[1:-1]:
        block = re.fullmatch(r"stage(\d)_block(\d+)", name)
        parts.append(f"layer{block[1]}.{block[2]}" if block else _MODULES.get(name, name))
    return ".".join([*parts, _LEAVES[path[-1]]])


def _torch_shape(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] != "kernel":
        return tuple(flax_shape)
    inverse = np.argsort(_KERNEL_PERM[len(flax_shape)])
    return tuple(flax_shape[i] for i in inverse)


@functools.cache
def _variable_shapes(name: str, num_classes: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {('params', module, ..., leaf): shape} of `create_model(name, num_classes)`."""
    model = models.create_model(name, num_classes=num_classes)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), image)
    return {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}


def from_torchvision(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> Variables:
    """Flax variables `{'params', 'batch_stats'}` of a torchvision ResNet-18..152.

    For `models.create_model(*infer_arch(sd))` (ImageNet stem, width 1, unrolled blocks;
    `models.stack_blocks` gives the `scan_blocks=True` layout). Raises ValueError naming the keys
    that are missing, unexpected or of the wrong shape.
    """
    state_dict = load_state_dict(state_dict_or_path)
    name, num_classes = infer_arch(state_dict)
    shapes = _variable_shapes(name, num_classes)
    wanted = {_torch_key(path): path for path in shapes}
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise ValueError(f"{name} state_dict is missing {len(missing)} keys: {_few(missing)}")
    unexpected = [k for k in state_dict if k not in wanted]
    if unexpected:
        raise ValueError(f"{name} state_dict has unexpected keys: {_few(unexpected)}")
    flat = {}
    for key, path in wanted.items():
        value, expected = state_dict[key], _torch_shape(path, shapes[path])
        if value.shape != expected:
            raise ValueError(f"{key} has shape {value.shape}; {name} expects {expected}")
        if path[-1] == "kernel":
            value = value.transpose(_KERNEL_PERM[value.ndim])
        flat[path] = jnp.asarray(value)
    return traverse_util.unflatten_dict(flat)


def load_pretrained(path: str | os.PathLike, variables: Variables, num_classes: int) -> Variables:
    """`variables` (from `model.init`) with every tensor replaced by the weight file's.

    Scanned layouts (`scan_blocks=True`) are recognised and filled through
    `models.stack_blocks`; the rest is `merge_pretrained`.
    """
    state_dict = load_state_dict(path)
    name, _ = infer_arch(state_dict)
    imported = from_torchvision(state_dict)
    if any(k.endswith("_blocks") for k in variables["params"]):
        imported = models.stack_blocks(
            imported, models.create_model(name, num_classes=1).stage_sizes
        )
    return merge_pretrained(variables, imported, num_classes, f"{path} holds a {name}, which")


def merge_pretrained(
    variables: Variables, imported: Variables, num_classes: int, source: str
) -> Variables:
    """`variables` with every params/batch_stats tensor taken from `imported`.

    The head is kept from `variables` (freshly initialised) when `imported`'s class count
    differs from `num_classes`; every other tensor must exist and match in shape, else
    ValueError naming the key and both shapes. `source` starts the error messages
    ("<path> holds a resnet50, which").
    """
    file_classes = np.shape(imported["params"]["head"]["bias"])[-1]
    collections = ("params", "batch_stats")  # params first: they name a misfit best
    fresh = traverse_util.flatten_dict({c: variables[c] for c in collections}, sep="/")
    loaded = traverse_util.flatten_dict({c: imported[c] for c in collections}, sep="/")
    absent = [k for k in fresh if k not in loaded]
    extra = [k for k in loaded if k not in fresh]
    if absent or extra:
        raise ValueError(
            f"{source} does not fit the model: "
            f"model-only {_few(absent) or 'none'}; file-only {_few(extra) or 'none'}"
        )
    new_head = file_classes != num_classes
    merged = {}
    for key, value in fresh.items():
        if new_head and key.startswith("params/head/"):
            merged[key] = value
        elif loaded[key].shape != value.shape:
            raise ValueError(
                f"{source} does not fit the model: {key} has shape {loaded[key].shape} in the "
                f"file, {value.shape} in the model"
            )
        else:
            merged[key] = np.asarray(loaded[key], value.dtype)
    if new_head:
        logging.info(
            "%s has %d classes, the model %d: head re-initialised, the rest loaded",
            source.removesuffix(", which"),
            file_classes,
            num_classes,
        )
    return {**variables, **traverse_util.unflatten_dict(merged, sep="/")}


_BLOCK_ORDER = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1")
_TENSOR_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torch_order(key: str) -> tuple[int, ...]:
    """Sorts torchvision keys as torch's `state_dict()` lists them (module definition order)."""
    module, tensor = key.rsplit(".", 1)
    block = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", module)
    if block:
        where = (int(block[1]), int(block[2]), _BLOCK_ORDER.index(block[3]))
    else:  # the stem (conv1, bn1) before layer1, fc after layer4
        where = (5, 0, 0) if module == "fc" else (0, 0, _BLOCK_ORDER.index(module))
    return (*where, _TENSOR_ORDER.index(tensor))


def _stage_sizes(params: Mapping[str, Any]) -> list[int]:
    """Blocks per stage of unrolled or scanned (`stage{s}_blocks`, stacked) ResNet params."""
    sizes = []
    for s in range(1, 5):
        n = sum(1 for k in params if re.fullmatch(rf"stage{s}_block\d+", k))
        if f"stage{s}_blocks" in params:
            n += jax.tree.leaves(params[f"stage{s}_blocks"])[0].shape[0]
        sizes.append(n)
    return sizes


def to_state_dict(variables: Variables) -> StateDict:
    """torchvision-named float32 numpy arrays of a Flax ResNet's variables (any depth, width
    or stem; unrolled or scanned), in torch's module order; inverse of `from_torchvision`.
    BatchNorm's `num_batches_tracked` is 0 (torch uses it only with momentum=None)."""
    variables = {c: variables[c] for c in ("params", "batch_stats")}
    if any(k.endswith("_blocks") for k in variables["params"]):
        variables = models.unstack_blocks(variables, _stage_sizes(variables["params"]))
    state_dict = {}
    for path, value in traverse_util.flatten_dict(variables).items():
        value = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            value = value.transpose(np.argsort(_KERNEL_PERM[value.ndim]))
        key = _torch_key(path)
        state_dict[key] = np.ascontiguousarray(value)
        if key.endswith(".running_var"):
            state_dict[key.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    infer_arch(state_dict)  # ValueError unless a ResNet-18..152
    return dict(sorted(state_dict.items(), key=lambda item: _torch_order(item[0])))


def to_torchvision(variables: Variables, path: str | os.PathLike) -> str:
    """Writes `to_state_dict(variables)` to `path` (`formats.write`: `.safetensors`, or
    `.pth` via torch) and returns it. torchvision's `resnet<depth>(num_classes=C)` loads it
    with `strict=True` when the model has width 1 and the ImageNet stem (other widths and stems
    keep the names, with their own shapes)."""
    return formats.write(to_state_dict(variables), path)
