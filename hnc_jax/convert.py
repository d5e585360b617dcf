"""Import torchvision ResNet weights (a `state_dict` or a `.pth` file) as Flax variables.

    state_dict = convert.load_state_dict("resnet50-11ad3fa6.pth")
    name, num_classes = convert.infer_arch(state_dict)  # ('resnet50', 1000)
    variables = convert.from_torchvision(state_dict)
    logits, cams = models.create_model(name, num_classes=num_classes).apply(variables, x)

`from_torchvision` infers the depth (ResNet-18/34/50/101/152) and the class count from the
keys and returns `{'params': ..., 'batch_stats': ...}` for `models.create_model(name,
num_classes=C)` (ImageNet stem, width 1), whose outputs then match the torch model in eval
mode. `load_pretrained` merges such weights into a freshly initialised model for fine-tuning
(`init_from` in the configs), re-initialising the classifier when the class count differs.

Layouts: torch conv weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O); fc weight (C, D) ->
kernel (D, C); BatchNorm weight/bias -> params scale/bias, running_mean/running_var ->
batch_stats mean/var; `num_batches_tracked` is dropped.

torch is needed only to read `.pth` files; it is imported lazily (`pip install -r
requirements-torch.txt`). Nothing is downloaded: the weights come from a file the user has.
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


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


def _to_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; .float() also covers float16/bfloat16
        return value.detach().cpu().float().numpy()
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value, np.float32)
    raise ValueError(f"not a state_dict: {key!r} holds a {type(value).__name__}, not a tensor")


def _read_pth(path: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs torch: pip install -r requirements-torch.txt"
        ) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: truncated or not a torch checkpoint ({reason})") from e


def load_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> StateDict:
    """A torch `state_dict` (or `.pth` path) as float32 numpy arrays with torchvision keys.

    Unwraps checkpoints saved as `{'state_dict': ...}` or `{'model': ...}` (with epoch,
    optimizer, ... beside it, as the original HNC code saved them), strips DataParallel's
    `module.` prefix and drops `num_batches_tracked`. Values may be torch tensors or numpy
    arrays.
    """
    if isinstance(state_dict_or_path, str | os.PathLike):
        source = os.fspath(state_dict_or_path)
        obj = _read_pth(source)
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
    (bottleneck blocks have a `conv3`).
    """
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
    """`variables` (from `model.init`) with every tensor replaced by the `.pth` file's.

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
