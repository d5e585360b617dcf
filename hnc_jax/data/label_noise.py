"""Training-label noise (`config.label_noise`), for studying the paper's noisy-label claim.

- 'symmetric': each label is replaced, with probability `rate`, by a uniformly drawn *other*
  class (label + s mod C, s uniform in 1..C-1).
- 'asymmetric': each label of a class in `flips` ('2:7,3:8,5:6,7:1': 2 -> 7, ...) is flipped
  to its target with probability `rate`; other classes keep their labels.

Whether an example is flipped, and to what, is a pure function of (`label_noise.seed`, the
example's encoded image bytes, its clean label): keyed by content, the noise is the same for
every training seed, epoch, read order, process count, resume and input backend, and needs
no example index (TFDS's record ids do not survive a reordered file list). The train split
is noisy; an eval split only when named in `eval_splits` (a validation split with the same
noise, as a user with noisy data would have); test splits never are.

`noisy_labels` is the definition in numpy; `tf_noise` applies it in tf.data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from hnc_jax.errors import ConfigError

KINDS = ("none", "symmetric", "asymmetric")


def base_split(split: str) -> str:
    """'train[:50%]' -> 'train'."""
    return split.split("[")[0]


def _eval_splits(noise: ml_collections.ConfigDict) -> list[str]:
    return [s for s in noise.eval_splits.split(",") if s]


def parse_flips(text: str, num_classes: int) -> dict[int, int]:
    """'2:7,3:8' -> {2: 7, 3: 8}; ConfigError for anything else."""
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]
        flips = dict(pairs)
    except ValueError:
        flips, pairs = {}, [()]
    if any(len(p) != 2 for p in pairs) or not flips or len(flips) != len(pairs):
        raise ConfigError(
            f"label_noise.flips must be 'from:to,...' with each class once (e.g. "
            f"'2:7,3:8,5:6,7:1'), got {text!r}"
        )
    bad = [c for pair in flips.items() for c in pair if not 0 <= c < num_classes]
    if bad or any(a == b for a, b in flips.items()):
        raise ConfigError(
            f"label_noise.flips {text!r}: classes must be in [0, {num_classes}) and differ"
        )
    return flips


def check(config: ml_collections.ConfigDict, num_classes: int, multi_label: bool) -> None:
    """ConfigError (one line) for a bad `config.label_noise`; nothing when absent or off."""
    noise = config.get("label_noise")
    if noise is None:
        return
    if noise.kind == "none":
        if noise.rate or noise.flips or noise.eval_splits:
            raise ConfigError(
                "label_noise.kind is 'none': set it to 'symmetric' or 'asymmetric' for "
                "label_noise.rate, flips and eval_splits to apply"
            )
        return
    if noise.kind not in KINDS:
        raise ConfigError(f"unknown label_noise.kind {noise.kind!r}; allowed: {', '.join(KINDS)}")
    if not 0.0 <= noise.rate < 1.0:
        raise ConfigError(f"label_noise.rate must be in [0, 1), got {noise.rate}")
    if multi_label:
        raise ConfigError(f"label_noise needs single-label data; {config.dataset} is multi-label")
    if noise.kind == "asymmetric":
        parse_flips(noise.flips, num_classes)
    if test := [s for s in _eval_splits(noise) if base_split(s).startswith("test")]:
        raise ConfigError(f"label_noise.eval_splits {test}: test labels are never noisy")


def applies(config: ml_collections.ConfigDict, split: str, train: bool) -> bool:
    """Whether `split`'s labels get noise: the train split, and listed eval splits."""
    noise = config.get("label_noise")
    if noise is None or noise.kind == "none" or noise.rate == 0:
        return False
    return train or base_split(split) in {base_split(s) for s in _eval_splits(noise)}


def draws(images: Sequence[bytes], seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(u (N,) float64 in [0, 1), shift (N,) int64 in [1, C)) of N encoded images: from the
    BLAKE2b digest of each image's bytes keyed by `seed`."""
    key = int(seed).to_bytes(8, "little", signed=True)
    digests = [hashlib.blake2b(bytes(data), digest_size=16, key=key).digest() for data in images]
    words = np.frombuffer(b"".join(digests), "<u8").reshape(-1, 2)
    u = (words[:, 0] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    shift = 1 + (words[:, 1] % np.uint64(num_classes - 1)).astype(np.int64)
    return u, shift


def noisy_labels(
    labels: np.ndarray, images: Sequence[bytes], noise: ml_collections.ConfigDict, num_classes: int
) -> np.ndarray:
    """Labels (N,) of the examples whose encoded images are `images` (N), with the noise of
    `noise` (`config.label_noise`). The definition; `tf_noise` calls it from tf.data."""
    labels = np.asarray(labels, np.int64)
    u, shift = draws(images, noise.seed, num_classes)
    flip = u < noise.rate
    if noise.kind == "symmetric":
        return np.where(flip, (labels + shift) % num_classes, labels)
    target = np.arange(num_classes)
    for a, b in parse_flips(noise.flips, num_classes).items():
        target[a] = b
    return np.where(flip, target[labels], labels)


def tf_noise(noise: ml_collections.ConfigDict, num_classes: int):
    """fn(label, encoded image) -> noisy label, for tf.data: `noisy_labels` in a
    tf.numpy_function (a digest per record: microseconds beside decoding the image)."""
    import tensorflow as tf  # Deferred: only the tf.data pipeline needs it.

    def one(label, data):
        return noisy_labels([label], [data], noise, num_classes)[0].astype(label.dtype)

    def fn(label, data):
        noisy = tf.numpy_function(one, [label, data], label.dtype, stateful=False)
        return tf.ensure_shape(noisy, label.shape)

    return fn
