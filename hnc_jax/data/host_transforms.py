"""Per-example image transforms in numpy and PIL, for the Grain backend (no TensorFlow).

The same recipes as `transforms` (the tf.data backend's), with the same ranges and outputs:
- small fixed-shape images (CIFAR, digits): decoded whole, grey replicated to RGB, resized
  only when their side differs; train: zero pad and crop back at a random offset (up to
  +-padding), then a flip with probability 1/2;
- others (ImageNet, image folders): train takes a random-resized-crop window (area 8%-100%
  of the image, aspect 3/4-4/3, uniform as TF's `sample_distorted_bounding_box`, 10 tries,
  else the whole image), eval the central 224/256 of the short side; the window is resized
  to (S, S) bilinearly, then flipped (train).
Output: (S, S, 3) uint8 (or normalised float32/bfloat16) and the box mapped through crops and
flips. Not pixel-equal to the tf.data backend: PIL decodes the whole JPEG (TF decodes only the
window) and its bilinear resize filters over the whole source footprint when shrinking (TF's
samples 2x2 pixels), so downscaled crops are smoother; random draws come from numpy, not TF.
"""

from __future__ import annotations

import io
import math

import ml_dtypes
import numpy as np
from PIL import Image

from hnc_jax.data.image_stats import normalization

# Shared with the tf.data backend's `transforms`.
IMAGE_DTYPES = ("uint8", "float32", "bfloat16")  # Batches: raw pixels, or normalised.
EVAL_CROP = 224 / 256  # Eval: short side resized to size*256/224, then a central size crop.
AREA_RANGE, ASPECT_RANGE = (0.08, 1.0), (3 / 4, 4 / 3)
TRIES = 10  # Random-resized-crop windows tried before falling back to the whole image.


def random_window(height: int, width: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Random-resized-crop window (y, x, h, w): area 8%-100%, aspect (w/h) 3/4-4/3."""
    for _ in range(TRIES):
        area = rng.uniform(*AREA_RANGE) * height * width
        aspect = rng.uniform(*ASPECT_RANGE)
        h = int(round(math.sqrt(area / aspect)))
        w = int(round(h * aspect))
        if 0 < h <= height and 0 < w <= width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


def center_window(height: int, width: int) -> tuple[int, ...]:
    """Central square window (y, x, h, w) covering 224/256 of the short side."""
    side = int(round(min(height, width) * EVAL_CROP))
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def crop_box(box: np.ndarray, window: tuple[int, ...], height: int, width: int) -> np.ndarray:
    """Maps a (4,) box of an image of (height, width) into `window`, clipped to [0, 1]."""
    y, x, h, w = window
    ys = (box[0::2] * height - y) / h
    xs = (box[1::2] * width - x) / w
    return np.clip(np.array([ys[0], xs[0], ys[1], xs[1]], np.float32), 0.0, 1.0)


def _rgb(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    return image if image.mode == "RGB" else image.convert("RGB")  # Grey is replicated.


def decode_crop_resize(
    data: bytes, box: np.ndarray, size: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded image -> (size, size, 3) uint8 of a random-resized (`rng`) or central window,
    and its box."""
    image = _rgb(data)
    width, height = image.size
    y, x, h, w = window = (
        random_window(height, width, rng) if rng is not None else center_window(height, width)
    )
    out = image.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
    return np.asarray(out), crop_box(box, window, height, width)


def decode_small(data: bytes, size: int) -> np.ndarray:
    """Encoded small image -> (size, size, 3) uint8, resized only when its side differs."""
    image = _rgb(data)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def pad_crop(
    image: np.ndarray, box: np.ndarray, padding: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads `padding` pixels per side and crops back to the original size at a random
    offset (a random translation of up to +-padding), moving the box along."""
    size = image.shape[0]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    dy, dx = rng.integers(0, 2 * padding + 1, 2)
    shift = np.array([padding - dy, padding - dx] * 2, np.float32) / size
    return padded[dy : dy + size, dx : dx + size], np.clip(box + shift, 0.0, 1.0)


def flip(
    image: np.ndarray, box: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip with probability 1/2, with its box."""
    if rng.random() < 0.5:
        return image[:, ::-1], np.array([box[0], 1 - box[3], box[2], 1 - box[1]], np.float32)
    return image, box


def finish(image: np.ndarray, image_dtype: str, dataset: str) -> np.ndarray:
    """uint8 pixels -> the batches' image: as they are ('uint8'), or (x / 255 - mean) / std
    with `dataset`'s statistics, cast to 'float32' or 'bfloat16'."""
    if image_dtype == "uint8":
        return np.ascontiguousarray(image)
    mean, std = (np.asarray(v, np.float32) for v in normalization(dataset))
    out = image.astype(np.float32) * (1 / (255 * std)) - mean / std
    return out.astype(ml_dtypes.bfloat16 if image_dtype == "bfloat16" else np.float32)
