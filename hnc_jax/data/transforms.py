"""Per-example image transforms (TensorFlow, inside tf.data): decode, crop, flip, normalise.

Images stay uint8 pixels from decode to batch, as in a PIL pipeline (whose resize also
outputs uint8): a quarter of float32's bytes to flip, batch and copy to the device, where
the model normalises them (`ResNet.input_normalization`). `normalize` does it on the host
instead, for float batches.

Boxes are (4,) float32 [ymin, xmin, ymax, xmax] in [0, 1] of the image they belong to and are
mapped through every crop and flip. Random ops are stateless, keyed by a (2,) int seed.
"""

from __future__ import annotations

import tensorflow as tf

from hnc_jax.data.host_transforms import AREA_RANGE, ASPECT_RANGE, EVAL_CROP
from hnc_jax.data.image_stats import normalization


def random_window(shape: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Random-resized-crop window [y, x, h, w] (int32): area 8%-100%, aspect 3/4-4/3."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=key,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RANGE,
        area_range=AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def center_window(shape: tf.Tensor) -> tf.Tensor:
    """Central square window [y, x, h, w] covering 224/256 of the short side (int32); cropping
    it and resizing to S equals resizing the short side to S*256/224 and center-cropping S."""
    h, w = shape[0], shape[1]
    side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) * EVAL_CROP), tf.int32)
    return tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])


def crop_box(box: tf.Tensor, window: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Maps a box of an image of `shape` into the crop `window`, clipped to [0, 1]."""
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    y, x, ch, cw = tf.unstack(tf.cast(window, tf.float32))
    ys = (box[0::2] * h - y) / ch
    xs = (box[1::2] * w - x) / cw
    return tf.clip_by_value(tf.stack([ys[0], xs[0], ys[1], xs[1]]), 0.0, 1.0)


def decode_crop_resize(
    data: tf.Tensor, box: tf.Tensor, size: int, random: bool, key: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded image -> (size, size, 3) uint8 and its box.

    JPEGs only decode the crop window (fused `decode_and_crop_jpeg`); other formats are
    decoded whole, then cropped. The window is random-resized (`random`) or central.
    """

    def window(shape):
        return random_window(shape, key) if random else center_window(shape)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        win = window(shape)
        return tf.image.decode_and_crop_jpeg(data, win, channels=3), win, shape

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        shape = tf.shape(image)
        win = window(shape)
        return tf.slice(image, [win[0], win[1], 0], [win[2], win[3], 3]), win, shape

    image, win, shape = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image = _round_to_uint8(tf.image.resize(image, [size, size], method="bilinear"))
    return tf.ensure_shape(image, [size, size, 3]), crop_box(box, win, shape)


def _round_to_uint8(image: tf.Tensor) -> tf.Tensor:
    # Bilinear weights are convex, so values stay in [0, 255]: no clipping needed.
    return tf.cast(image + 0.5, tf.uint8)


def decode_small(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded small image -> (size, size, 3) uint8 (grey replicated to RGB, resized only
    when its side differs from `size`)."""
    image = tf.io.decode_image(data, expand_animations=False)
    image = tf.cond(
        tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image), lambda: image[..., :3]
    )
    if image.shape[0] != size:  # Static: fixed-shape datasets only come here.
        image = _round_to_uint8(tf.image.resize(image, [size, size], method="bilinear"))
    return tf.ensure_shape(image, [size, size, 3])


def pad_crop(
    image: tf.Tensor, box: tf.Tensor, padding: int, key: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Zero-pads `padding` pixels per side and crops back to the original size at a random
    offset (a random translation of up to +-padding), moving the box along."""
    size = image.shape[0]
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    offset = tf.random.stateless_uniform([2], key, 0, 2 * padding + 1, dtype=tf.int32)
    image = tf.slice(padded, [offset[0], offset[1], 0], [size, size, 3])
    shift = tf.cast(padding - offset, tf.float32) / size
    box = tf.clip_by_value(box + tf.tile(shift, [2]), 0.0, 1.0)
    return image, box


def flip(image: tf.Tensor, box: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Horizontal flip with probability 1/2, with its box."""
    do = tf.random.stateless_uniform([], key) < 0.5
    flipped_box = tf.stack([box[0], 1.0 - box[3], box[2], 1.0 - box[1]])
    # tf.cond + reverse: a strided `image[:, ::-1]` under tf.where costs 2x the JPEG decode.
    image = tf.cond(do, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return image, tf.where(do, flipped_box, box)


def normalize(image: tf.Tensor, mean, std, dtype: tf.DType) -> tf.Tensor:
    """uint8 pixels -> (x / 255 - mean) / std, cast to `dtype`."""
    scale = 1.0 / (255.0 * tf.constant(std, tf.float32))
    shift = -tf.constant(mean, tf.float32) / tf.constant(std, tf.float32)
    # Multiply-add: cheaper than a division.
    return tf.cast(tf.cast(image, tf.float32) * scale + shift, dtype)


def finish(image: tf.Tensor, image_dtype: str, dataset: str) -> tf.Tensor:
    """uint8 pixels -> the batches' image: as they are ('uint8'), or normalised with
    `dataset`'s statistics and cast ('float32', 'bfloat16')."""
    if image_dtype == "uint8":
        return image
    return normalize(image, *normalization(dataset), tf.dtypes.as_dtype(image_dtype))
