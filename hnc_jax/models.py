"""ResNets (torchvision layout) that return logits and class activation maps.

`model.apply(variables, images, train=...)` returns `(logits, cams)`:

- images: (B, H, W, 3), NHWC: normalised floats, or raw [0, 255] pixels (e.g. uint8) when
  the model has `input_normalization` (it then normalises them itself, on the device).
- logits: (B, C) float32, `mean_hw(F) @ W + b` for the last stage's output F.
- cams: (B, H', W', C) float32, `F[b, h, w] @ W + b` at every position
  (`class_activation_maps`; the bias is included, so `cams.mean(axis=(1, 2)) == logits` up
  to float rounding). 7x7 at 224x224 with the ImageNet stem.

With `return_features=True` it returns `(logits, features)`, F of shape (B, H', W', D), so
that training can build only the CAMs it needs (`losses.hnc_from_features`) from
`params['head']['kernel']` (D, C) and `params['head']['bias']` (C,).

Layers, padding and initialisation follow torchvision (stride on the 3x3 conv of the
bottleneck, explicit symmetric padding, Kaiming-normal fan_out convolutions, BN scale 1 and
bias 0, Kaiming-normal classifier kernel and zero bias), so parameter counts match
torchvision's and its weights can be imported exactly (`weights.convert`).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any
ModuleDef = Any

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.init.kaiming_normal_ with its defaults (fan_in, gain sqrt(2)), as the original.
head_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # torchvision pads symmetrically; 'SAME' would pad (0, 1) on strided convs.
    p = kernel_size // 2
    return ((p, p), (p, p))


def _add_shortcut(block: nn.Module, x: Array, y: Array) -> Array:
    """relu(shortcut(x) + y) inside `block`'s compact call; where the shapes differ the
    shortcut is a strided 1x1 conv + BN (torchvision's `downsample`)."""
    if x.shape != y.shape:
        x = block.conv(y.shape[-1], (1, 1), block.strides, name="downsample_conv")(x)
        x = block.norm(name="downsample_bn")(x)
    return nn.relu(x + y)


def batch_norm(dtype: Any, train: bool, axis_name: str | None = None) -> ModuleDef:
    """torch's BatchNorm2d defaults (momentum 0.1, eps 1e-5) computing in `dtype`.

    The batch variance is always accumulated in float32. In float32 compute it takes two
    passes, E[(x - mean)^2], as torch (E[x^2] - mean^2 cancels badly on near-constant inputs
    such as black canvas borders). In lower precision (bfloat16) it takes one pass,
    E[x^2] - mean^2 from the two float32 sums of one read of x: x itself then carries only 8
    significant bits, whose rounding (relative 2^-9 of |mean|) outweighs the float32
    cancellation (2^-24 of mean^2 per term); it saves a read of every activation (see
    docs/benchmarks.md).
    """
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,  # torch's momentum=0.1
        epsilon=1e-5,
        dtype=dtype,
        axis_name=axis_name,
        use_fast_variance=bool(jnp.dtype(dtype) != jnp.float32),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); `filters` output channels."""

    filters: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
        y = self.norm(name="bn2")(y)
        return _add_shortcut(self, x, y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4 (ResNet-50/101/152); `4 * filters` output channels."""

    filters: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = self.conv(self.filters, (1, 1), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.filters * 4, (1, 1), name="conv3")(y)
        y = self.norm(name="bn3")(y)
        return _add_shortcut(self, x, y)


class _ScanBody(nn.Module):
    """Adapts a stride-1 block to `nn.scan`'s (carry, x) -> (carry, y) signature."""

    block_cls: ModuleDef
    filters: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: Array, _: None) -> tuple[Array, None]:
        return self.block_cls(self.filters, 1, self.conv, self.norm, name="block")(x), None


class ResNet(nn.Module):
    """ResNet returning `(logits, cams)`; see the module docstring.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
      block_cls: `BasicBlock` or `BottleneckBlock`.
      num_classes: C.
      width: multiplier of every stage's channels (64 * width in the first stage).
      stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool, total stride 32) or 'small'
        (3x3/1 conv, no pool, total stride 8) for small images.
      dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
      bn_axis_name: mesh axis over which BatchNorm averages batch statistics (sync BN),
        or None for per-device statistics.
      scan_blocks: run each stage's identical stride-1 blocks with `nn.scan`: compiles
        faster on deep nets, but XLA:CPU runs scanned convs much slower (docs/benchmarks.md).
      input_normalization: (mean, std) per RGB channel: the input is raw [0, 255] pixels,
        mapped to (x / 255 - mean) / std in float32 first. None: the input is normalised.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    width: float = 1.0
    stem: str = "imagenet"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    scan_blocks: bool = False
    input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @nn.compact
    def __call__(
        self, x: Array, train: bool = False, return_features: bool = False
    ) -> tuple[Array, Array]:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = batch_norm(self.dtype, train, self.bn_axis_name)
        base = max(1, round(64 * self.width))
        if self.input_normalization is not None:
            mean, std = (jnp.asarray(v, jnp.float32) for v in self.input_normalization)
            # The host pipeline's multiply-add, so both places give the same floats.
            x = jnp.asarray(x, jnp.float32) * (1.0 / (255.0 * std)) - mean / std
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(base, (7, 7), (2, 2), padding=_pad(7), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        else:
            x = conv(base, (3, 3), padding=_pad(3), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        for s, num_blocks in enumerate(self.stage_sizes, start=1):
            filters = base * 2 ** (s - 1)
            strides = 1 if s == 1 else 2
            x = self.block_cls(filters, strides, conv, norm, name=f"stage{s}_block0")(x)
            if self.scan_blocks and num_blocks > 1:
                body = nn.scan(
                    _ScanBody,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True},
                    length=num_blocks - 1,
                )
                x, _ = body(self.block_cls, filters, conv, norm, name=f"stage{s}_blocks")(x, None)
            else:
                for b in range(1, num_blocks):
                    x = self.block_cls(filters, 1, conv, norm, name=f"stage{s}_block{b}")(x)
        features = x
        head = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=head_init, name="head")
        logits = head(jnp.mean(features, axis=(1, 2))).astype(jnp.float32)
        if return_features:
            return logits, features
        return logits, class_activation_maps(features, head.variables["params"])


def class_activation_maps(features: Array, head: Any) -> Array:
    """All C CAMs (B, H, W, C) float32: `F @ W + b` at every position of the last stage's
    features F (B, H, W, D), from the classifier's params {'kernel' (D, C), 'bias' (C,)}."""
    kernel = jnp.asarray(head["kernel"]).astype(features.dtype)
    cams = jnp.einsum("bhwd,dc->bhwc", features, kernel, preferred_element_type=jnp.float32)
    return cams + jnp.asarray(head["bias"], jnp.float32)


_ARCHS: dict[str, tuple[tuple[int, ...], ModuleDef]] = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), BottleneckBlock),
    "resnet101": ((3, 4, 23, 3), BottleneckBlock),
    "resnet152": ((3, 8, 36, 3), BottleneckBlock),
}
MODEL_NAMES = tuple(_ARCHS)
STEMS = ("imagenet", "small")

ResNet18 = functools.partial(ResNet, *_ARCHS["resnet18"])
ResNet34 = functools.partial(ResNet, *_ARCHS["resnet34"])
ResNet50 = functools.partial(ResNet, *_ARCHS["resnet50"])
ResNet101 = functools.partial(ResNet, *_ARCHS["resnet101"])
ResNet152 = functools.partial(ResNet, *_ARCHS["resnet152"])


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Builds a ResNet by name ('resnet18' ... 'resnet152'); kwargs go to `ResNet`."""
    if name not in _ARCHS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    if kwargs.get("stem", "imagenet") not in STEMS:
        raise ValueError(f"unknown stem {kwargs['stem']!r}; allowed: {', '.join(STEMS)}")
    if kwargs.get("width", 1.0) <= 0:
        raise ValueError(f"model width must be > 0, got {kwargs['width']}")
    return ResNet(*_ARCHS[name], **kwargs)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def stack_blocks(variables: dict, stage_sizes: Sequence[int]) -> dict:
    """Unrolled variables -> the `scan_blocks=True` layout (blocks 1.. of a stage stacked)."""
    out = {}
    for collection, tree in variables.items():
        tree = dict(tree)
        for s, num_blocks in enumerate(stage_sizes, start=1):
            if num_blocks > 1:
                blocks = [tree.pop(f"stage{s}_block{b}") for b in range(1, num_blocks)]
                stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)
                tree[f"stage{s}_blocks"] = {"block": stacked}
        out[collection] = tree
    return out


def unstack_blocks(variables: dict, stage_sizes: Sequence[int]) -> dict:
    """The `scan_blocks=True` layout -> unrolled variables (inverse of `stack_blocks`)."""
    out = {}
    for collection, tree in variables.items():
        tree = dict(tree)
        for s, num_blocks in enumerate(stage_sizes, start=1):
            if num_blocks > 1:
                stacked = tree.pop(f"stage{s}_blocks")["block"]
                for b in range(1, num_blocks):
                    tree[f"stage{s}_block{b}"] = jax.tree_util.tree_map(
                        lambda x, i=b - 1: x[i], stacked
                    )
        out[collection] = tree
    return out
