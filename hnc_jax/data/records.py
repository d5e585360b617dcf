"""This process's part of a split, and the order in which each train epoch reads its records.

Epoch e of process p reads the process's even part of the split (`tfds.even_splits`, or
`shard_bounds` of a folder's file list) in an order seeded by `epoch_seed` (seed, p, e):
- image folders: a seeded permutation of the part's files (`folder_order`);
- a TFDS part of at most `buffer` records: a seeded file order and a tf.data shuffle buffer
  holding the whole part;
- a larger one (ImageNet: 1,024 files): the files in a seeded order, read one after the
  other, cut into consecutive blocks of `buffer` records, each permuted by a permutation
  seeded by (epoch seed, block index). A run resumed at record r of the epoch starts at the
  first record of r's block: TFDS's per-file record counts tell which files to skip
  unopened and how many records to skip in the one that holds it (`epoch_files`), so it
  reads at most one file and one block more than it yields. A shuffle buffer's order
  instead depends on every record before r, which the resumed run would have to re-read.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

from hnc_jax.data import dataset as dataset_lib
from hnc_jax.data.dataset import Dataset, process_split, shard_bounds


def num_examples(builder: tfds.core.DatasetBuilder, split: tfds.typing.SplitArg) -> int:
    """The number of examples in a split (or part of one) of a prepared TFDS dataset."""
    try:
        return builder.info.splits[split].num_examples
    except KeyError:  # Split sizes unknown (e.g. under tfds.testing.mock_data): count.
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        n = int(ds.cardinality())
        return n if n >= 0 else int(ds.reduce(0, lambda count, _: count + 1))


def epoch_seed(seed: int, epoch: int) -> int:
    """Python int seed of this process's epoch: file order and shuffle."""
    return dataset_lib.epoch_seed(seed, jax.process_index(), epoch)


def part_size(dataset: Dataset, split: str, drop_remainder: bool) -> int:
    """The number of records in this process's part of `split`."""
    index, count = jax.process_index(), jax.process_count()
    if dataset.files is not None:
        start, end = shard_bounds(len(dataset.files[split][0]), index, count, drop_remainder)
        return end - start
    return num_examples(dataset.builder, process_split(split, index, count, drop_remainder))


def folder_order(
    dataset: Dataset, split: str, drop_remainder: bool, seed: int | None
) -> np.ndarray:
    """Indices into `dataset.files[split]` (an image folder) of this process's part, in the
    order `read` reads them: record i of the epoch is file `folder_order(...)[i]` (in order
    when `seed` is None, else a permutation seeded by it). The pipeline uses it to name the
    files of a batch that failed to decode."""
    n = len(dataset.files[split][0])
    begin, end = shard_bounds(n, jax.process_index(), jax.process_count(), drop_remainder)
    order = np.arange(begin, end)
    return order if seed is None else np.random.default_rng(seed).permutation(order)


def epoch_files(
    files: Sequence[shard_utils.FileInstruction], seed: int, start: int
) -> list[shard_utils.FileInstruction]:
    """`files` (a part of a split, one instruction per file) in the epoch's seeded order, less
    the first `start` records of that order: the files before record `start` are dropped
    unread, and the one that holds it is entered with a skip (TFDS reads within one file)."""
    out = []
    for i in np.random.default_rng(seed).permutation(len(files)):
        file = files[i]
        if start >= file.take:
            start -= file.take
        else:
            out.append(dataclasses.replace(file, skip=file.skip + start, take=file.take - start))
            start = 0
    return out


def _tfds_records(
    dataset: Dataset, part: tfds.typing.SplitArg, shuffle_files: bool, read_config
) -> tf.data.Dataset:
    """The records of a TFDS split part: {'image': encoded bytes, 'label', ['bbox']}."""
    ds = dataset.builder.as_dataset(
        split=part,
        shuffle_files=shuffle_files,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    num_classes, key = dataset.info.num_classes, dataset.label_key

    def select(ex):
        out = {"image": ex["image"]}
        if dataset.info.multi_label:
            labels = ex[key.split("/")[0]][key.split("/")[1]] if "/" in key else ex[key]
            # A sum, not a max: an image without objects has an all-zero row (the max over
            # no rows is -inf).
            out["label"] = tf.minimum(tf.reduce_sum(tf.one_hot(labels, num_classes), 0), 1.0)
            out["label"] = tf.ensure_shape(out["label"], [num_classes])
        else:
            out["label"] = ex[key]
        if dataset.info.has_boxes:
            out["bbox"] = ex["bbox"]
        return out

    return ds.map(select)


def _shuffle_blocks(
    records: tf.data.Dataset, seed: int, buffer: int, first_block: int
) -> tf.data.Dataset:
    """`records` cut into consecutive blocks of `buffer` (block `first_block` first), each
    permuted by a permutation seeded by (seed, block index). The next block is read while
    one is consumed."""

    def permute(index, block):
        seeds = tf.stack([tf.constant(seed, tf.int64), index])
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(block["label"])[0]), seeds
        )
        return tf.nest.map_structure(lambda x: tf.gather(x, order), block)

    return records.batch(buffer).enumerate(first_block).map(permute).prefetch(1).unbatch()


def read(
    dataset: Dataset,
    split: str,
    drop_remainder: bool,
    seed: int | None,
    buffer: int,
    start: int = 0,
) -> tuple[tf.data.Dataset, int]:
    """This process's records {'image': encoded bytes, 'label', ['bbox']} of `split` from the
    `first` of the epoch's order on (`first` <= `start`), and `first`.

    In order when `seed` is None. Otherwise: image folders are permuted whole (first =
    start); a TFDS part of at most `buffer` records gets a seeded file order and shuffle
    buffer (first = 0); a larger one a seeded file order and blocks of `buffer` records,
    each permuted (first = start of the block that holds record `start`).
    """
    index, count = jax.process_index(), jax.process_count()
    if dataset.files is not None:
        paths, labels = dataset.files[split]
        order = folder_order(dataset, split, drop_remainder, seed)[start:]  # Skipped unread.
        ds = tf.data.Dataset.from_tensor_slices(
            {
                "image": np.array(paths, dtype=object)[order].astype(str),
                "label": np.array(labels, np.int64)[order],
            }
        )
        return ds.map(lambda r: {**r, "image": tf.io.read_file(r["image"])}), start
    part = process_split(split, index, count, drop_remainder)
    if seed is None:
        return _tfds_records(dataset, part, False, tfds.ReadConfig(try_autocache=False)), 0
    n = num_examples(dataset.builder, part)
    if n <= buffer:
        read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
        records = _tfds_records(dataset, part, True, read_config)
        return records.shuffle(n, seed=seed, reshuffle_each_iteration=False), 0
    block = start // buffer
    read_config = tfds.ReadConfig(
        interleave_cycle_length=1,  # One file after the other, in `epoch_files` order.
        experimental_interleave_sort_fn=functools.partial(
            epoch_files, seed=seed, start=block * buffer
        ),
        try_autocache=False,
    )
    records = _tfds_records(dataset, part, False, read_config)
    return _shuffle_blocks(records, seed, buffer, block), block * buffer
