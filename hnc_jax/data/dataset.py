"""What a prepared dataset is: its info (classes, sizes, labels), where its records come from,
and which part of a split each process reads. Below the pipelines: `records` and
`grain_pipeline` read from it, `pipeline` makes it (`pipeline.load`). Imports no TensorFlow
(the Grain backend's modules import this one)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    num_train: int
    num_eval: int
    multi_label: bool
    class_names: list[str]
    has_boxes: bool


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A validated, prepared dataset (`pipeline.load`): its info and where its records come from, a
    TFDS builder or the (paths, labels) of each image-folder split, listed once."""

    info: DatasetInfo
    small: bool
    builder: tfds.core.DatasetBuilder | None = None
    label_key: str = "label"
    files: dict[str, tuple[list[str], list[int]]] | None = None


def process_split(
    split: str, process_index: int, process_count: int, drop_remainder: bool
) -> tfds.typing.SplitArg:
    """This process's even part of a TFDS split (parts are disjoint and cover the split,
    less up to `process_count - 1` examples when `drop_remainder`)."""
    return tfds.even_splits(split, process_count, drop_remainder=drop_remainder)[process_index]


def shard_bounds(
    n: int, process_index: int, process_count: int, drop_remainder: bool
) -> tuple[int, int]:
    """[start, end) of this process's even part of n indexed examples (image folders)."""
    if drop_remainder:
        size = n // process_count
        return process_index * size, (process_index + 1) * size
    return n * process_index // process_count, n * (process_index + 1) // process_count


def epoch_seed(seed: int, process_index: int, epoch: int) -> int:
    """Python int seed (a uint32) of one process's epoch: record order and augmentation."""
    return int(np.random.SeedSequence([seed, process_index, epoch]).generate_state(1)[0])
