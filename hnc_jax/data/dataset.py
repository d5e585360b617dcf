"""What a prepared dataset is: its info (classes, sizes, labels) and where its records come
from. Below the pipeline: `records` reads from it, `pipeline` makes it (`pipeline.load`)."""

from __future__ import annotations

import dataclasses

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
