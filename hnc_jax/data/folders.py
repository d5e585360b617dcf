"""Image folders (`<config.image_folder>/<split>/<class>/*`): listing, checks and naming the
images that fail to decode, for both input backends.

Hidden files and folders (`.DS_Store`, macOS `._x.jpg`) are skipped; both splits must have
the same class folders and at least one image (`classes`, `no_images`: directories only);
`check_images` decodes every image; `named_bad_images` turns a tf.data decode error into a
ConfigError naming the batch's unreadable files (found from the epoch's order, off the normal
path). Listed once per run by `folder_dataset` (`pipeline.load`).
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from hnc_jax.data.dataset import Dataset, DatasetInfo
from hnc_jax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")  # PIL formats TF decodes too.
NAMED_FILES = 5  # Unreadable images named in an error; the rest are counted.


def visible(folder: str) -> list[str]:
    """The sorted names in `folder`, less hidden ones (`.DS_Store`, macOS `._x.jpg`, `.git`)."""
    names = (n.rstrip("/") for n in tf.io.gfile.listdir(folder))  # GCS marks folders by "/".
    return sorted(n for n in names if not n.startswith("."))


def image_names(folder: str) -> list[str]:
    return [n for n in visible(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]


def splits(config: ml_collections.ConfigDict) -> list[str]:
    return list(dict.fromkeys([config.train_split, config.eval_split]))


def no_images(config: ml_collections.ConfigDict, split: str) -> ConfigError:
    folder = f"{config.image_folder}/{split}"
    return ConfigError(
        f"image folder split {folder} has no images: expected {folder}/<class>/*.jpg "
        "(or .jpeg, .png, .bmp, .gif)"
    )


def classes(config: ml_collections.ConfigDict) -> list[str]:
    """The class folders of the train split, which the eval split must have too."""
    found = {}
    for split in splits(config):
        folder = f"{config.image_folder}/{split}"
        if not tf.io.gfile.isdir(folder):
            raise ConfigError(
                f"image folder split {folder} is not a directory: expected "
                f"{config.image_folder}/{{{config.train_split},{config.eval_split}}}/<class>/"
            )
        found[split] = [n for n in visible(folder) if tf.io.gfile.isdir(f"{folder}/{n}")]
    train, evals = found[config.train_split], found[config.eval_split]
    if not train:
        raise ConfigError(
            f"image folder split {config.image_folder}/{config.train_split} has no class "
            f"folders: expected {config.image_folder}/{config.train_split}/<class>/*.jpg"
        )
    if train != evals:
        missing = [
            f"missing from {split}/: {some(sorted(set(other) - set(have)))}"
            for split, have, other in (
                (config.eval_split, evals, train),
                (config.train_split, train, evals),
            )
            if set(other) - set(have)
        ]
        raise ConfigError(
            f"image folder {config.image_folder}: {config.train_split}/ and "
            f"{config.eval_split}/ must have the same class folders; " + "; ".join(missing)
        )
    return train


def some(items: Sequence[str]) -> str:
    """The first `NAMED_FILES` items, comma-separated, and how many more."""
    more = len(items) - NAMED_FILES
    return ", ".join(items[:NAMED_FILES]) + (f" and {more} more" if more > 0 else "")


def image_problem(path: str) -> str | None:
    """Why `path` cannot be decoded (PIL's full decode, as TF would; TF's own decoder for
    formats it may lack), or None."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.OpError as error:
        return "cannot read it: " + " ".join(error.message.split())
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # verify() alone misses a truncated JPEG.
            fmt = image.format
    except Image.DecompressionBombError:
        return None  # Readable, only larger than PIL allows by default; TF decodes it.
    except Image.UnidentifiedImageError:
        return "not an image"
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... on bad data.
        return " ".join(str(error).split()) or type(error).__name__
    if fmt not in TF_FORMATS:
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            return f"{fmt} images are not decoded by TensorFlow"
    return None


def unreadable(paths: Sequence[str]) -> list[str]:
    """'path (why)' of each of `paths` that cannot be decoded, in order; decoded in threads."""
    if not paths:
        return []
    with concurrent.futures.ThreadPoolExecutor(min(32, len(paths))) as pool:
        problems = pool.map(image_problem, paths)
        return [f"{p} ({why})" for p, why in zip(paths, problems, strict=True) if why]


def check_images(config: ml_collections.ConfigDict, dataset: Dataset) -> None:
    """`config.check_images`: every image of both splits decoded, once, before training."""
    paths = [p for split in splits(config) for p in dataset.files[split][0]]
    logging.info("check_images: decoding the %d images of %s", len(paths), config.image_folder)
    bad = unreadable(paths)
    if bad:
        raise ConfigError(
            f"check_images: {len(bad)} of the {len(paths)} images in {config.image_folder} "
            f"cannot be decoded: {some(bad)}; remove them"
        )


def named_bad_images(
    batches: Iterator[dict[str, np.ndarray]],
    dataset: Dataset,
    split: str,
    order: np.ndarray,
    batch: int,
    first: int,
) -> Iterator[dict[str, np.ndarray]]:
    """`batches` (batches `first`, `first` + 1, ... of an image folder read in `order`, files
    `order[i * batch:(i + 1) * batch]` in batch i); a decode error in batch i becomes a
    ConfigError naming its unreadable files. Nothing is checked until an error comes."""
    for i in itertools.count(first):
        try:
            out = next(batches)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            paths = dataset.files[split][0]
            bad = unreadable([paths[j] for j in order[i * batch : (i + 1) * batch]])
            if not bad:  # Not where the order says: look through the whole part.
                logging.warning("decode error: checking the %d %s images", len(order), split)
                bad = unreadable([paths[j] for j in order])
            if not bad:
                raise
            raise ConfigError(
                f"cannot decode {len(bad)} image{'s' * (len(bad) > 1)} of the {split} split: "
                f"{some(bad)}; remove {'them' if len(bad) > 1 else 'it'}, or run with "
                "--config.check_images=True to find every unreadable image before training"
            ) from error
        yield out


def folder_dataset(config: ml_collections.ConfigDict) -> Dataset:
    root = config.image_folder
    names = classes(config)
    files = {}
    for split in splits(config):
        paths, labels = [], []
        for label, name in enumerate(names):
            folder = f"{root}/{split}/{name}"
            paths += [f"{folder}/{n}" for n in image_names(folder)]
            labels += [label] * (len(paths) - len(labels))
        if not paths:
            raise no_images(config, split)
        files[split] = (paths, labels)
    info = DatasetInfo(
        "image_folder",
        len(names),
        len(files[config.train_split][0]),
        len(files[config.eval_split][0]),
        False,
        names,
        False,
    )
    return Dataset(info=info, small=False, files=files)
