"""Train-stream benchmark at scale: what a mid-epoch resume reads, and the epoch-boundary stall.

For each dataset (a synthetic TFDS dataset of `--records` small records in `--files` files,
and the embedded cluttered_digits) and each pipeline (this tree's with each input backend,
tf.data over TFRecord and Grain over ArrayRecord, and `--baseline`'s `hnc_jax` package,
unpacked from git, e.g. the commit before the resumable order), a fresh process resumes
`train_iterator` at the middle of epoch 0 and reports
  records_read:  records read from the files when the first batch arrives (tf.data: counted
                 on the raw record stream, skipped records included; Grain: the ArrayRecord
                 source's reads), and the process's bytes read (/proc/self/io rchar) as a
                 check;
  first_batch_s: time to that first batch;
then consumes the rest of epoch 0, epoch 1 and a few batches of epoch 2, sleeping
`--step_ms` per batch as a training step would, and reports the waits for the first batches
of epochs 1 and 2 (`boundary_ms`: after half an epoch and after a whole one) against the
median and the longest wait for any other batch (`steady_ms`, `max_other_ms`; block
boundaries included).
Usage: python -m hnc_jax.bench resume [--baseline=COMMIT] ...; the last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SIZES = (2_000, 100_000)  # NumberedImages configs: n2000 (tests), n100000 (this bench).


class NumberedImages(tfds.core.GeneratorBasedBuilder):
    """Synthetic records: example i is an 8x8 RGB PNG whose first 4 bytes hold i (uint32,
    little-endian; see `identity`), label i % 10. Written in as many files as the
    `download_and_prepare` call's DownloadConfig(num_shards=...) asks."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"n{n}") for n in SIZES]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(int(self.builder_config.name[1:]))}

    def _generate_examples(self, count: int):
        for i in range(count):
            pixels = np.zeros(8 * 8 * 3, np.uint8)
            pixels[:4] = np.frombuffer(np.uint32(i).tobytes(), np.uint8)
            data = io.BytesIO()
            Image.fromarray(pixels.reshape(8, 8, 3)).save(data, "PNG")
            yield i, {"image": data.getvalue(), "label": i % 10}


def identity(images: np.ndarray) -> np.ndarray:
    """(B, 8, 8, 3) uint8 unaugmented NumberedImages -> (B,) example indices."""
    return images.reshape(len(images), -1)[:, :4].copy().view("<u4")[:, 0]


def prepare(name: str, data_dir: str, files: int, file_format: str | None = None) -> None:
    """Builds dataset `name` into `data_dir` unless there (NumberedImages in `files` files;
    others as they come, so that cluttered_digits is the usual one), in `file_format`."""
    builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
    if not builder.is_prepared():
        numbered = isinstance(builder, NumberedImages)
        config = tfds.download.DownloadConfig(num_shards=files) if numbered else None
        builder.download_and_prepare(download_config=config)


class _Count:
    def __init__(self):
        self.value = 0

    def numpy(self) -> int:
        return self.value


@contextlib.contextmanager
def count_source_reads() -> Iterator[_Count]:
    """A counter of the records TFDS's random-access sources (Grain's) read while active."""
    from tensorflow_datasets.core.data_sources import base  # Not exported by tfds.core.

    source = base.BaseDataSource
    one, many, counter = source.__getitem__, source.__getitems__, _Count()

    def getitem(self, key):
        counter.value += 1
        return one(self, key)

    def getitems(self, keys):
        counter.value += len(keys)
        return many(self, keys)

    source.__getitem__, source.__getitems__ = getitem, getitems
    try:
        yield counter
    finally:
        source.__getitem__, source.__getitems__ = one, many


@contextlib.contextmanager
def count_records_read() -> Iterator[tf.Variable]:
    """A counter of the records TFDS reads from its TFRecord files while active: every
    record the file reader yields, including those a skip drops."""
    adapter = tfds.core.file_adapters.TfRecordFileAdapter
    original = adapter.make_tf_data
    counter = tf.Variable(0, dtype=tf.int64, trainable=False)

    def counted(filename, buffer_size=None):
        return original(filename, buffer_size).map(lambda r: (counter.assign_add(1), r)[1])

    adapter.make_tf_data = counted
    try:
        yield counter
    finally:
        adapter.make_tf_data = original


def bytes_read() -> int:
    """Bytes this process has read through read(2) and friends (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar line")


def bench_config(
    name: str, data_dir: str, buffer: int, batch: int, backend: str = "tf_data"
) -> ml_collections.ConfigDict:
    """A train-stream config for `name`: NumberedImages at 8x8 or the default digits run's."""
    digits = name == "cluttered_digits"
    return ml_collections.ConfigDict(
        dict(
            dataset=name,
            data_dir=data_dir,
            image_folder=None,
            train_split="train",
            eval_split="test" if digits else "train",
            image_size=48 if digits else 8,
            batch_size=batch,
            eval_batch_size=batch,
            shuffle_buffer_size=buffer,
            seed=0,
            image_dtype="uint8",
            augment=dict(random_resized_crop=False, flip=digits, crop_padding=4 * digits),
            input_backend=backend,
        )
    )


def measure(config: ml_collections.ConfigDict, step_ms: float, after: int) -> dict:
    """Resumes at the middle of epoch 0 and runs to `after` batches into epoch 2 (see top)."""
    # Deferred, and either layout: this runs over this tree's `hnc_jax` or a baseline commit's,
    # which may predate the subpackages.
    try:
        from hnc_jax.data import pipeline  # This layout's.
    except ModuleNotFoundError:
        from hnc_jax import input_pipeline as pipeline  # A baseline's from before it.

    dataset = pipeline.load(config)
    steps = dataset.info.num_train // config.batch_size
    start = steps // 2
    grain = config.get("input_backend", "tf_data") == "grain"
    with count_source_reads() if grain else count_records_read() as counter:
        before, clock = bytes_read(), time.perf_counter()
        batches = pipeline.train_iterator(dataset, config, start)
        next(batches)
        first_s = time.perf_counter() - clock
        records, nbytes = int(counter.numpy()), bytes_read() - before
        waits = {}
        for step in range(start + 1, 2 * steps + after):
            time.sleep(step_ms / 1000)
            clock = time.perf_counter()
            next(batches)
            waits[step] = 1000 * (time.perf_counter() - clock)
    boundaries = [waits.pop(steps), waits.pop(2 * steps)]  # First batches of epochs 1, 2.
    return {
        "dataset": config.dataset,
        "records": dataset.info.num_train,
        "resume_step": start,
        "records_before_resume": start * config.batch_size,
        "records_read": records,
        "mb_read": round(nbytes / 2**20, 2),
        "first_batch_s": round(first_s, 3),
        "steady_ms": round(statistics.median(waits.values()), 2),
        "max_other_ms": round(max(waits.values()), 2),
        "boundary_ms": [round(b, 2) for b in boundaries],
    }


def _run_measure(
    tree: Path, args: argparse.Namespace, name: str, batch: int, backend: str = "tf_data"
) -> dict:
    """`measure` in a fresh process whose `hnc_jax` package is `tree`'s."""
    data_dir = _data_dir(args.data_dir, backend)
    argv = [sys.executable, __file__, "--measure", name, "--data_dir", data_dir]
    argv += ["--backend", backend] if backend != "tf_data" else []
    argv += [f"--{k}={getattr(args, k)}" for k in ("buffer", "step_ms", "after")]
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(argv + [f"--batch={batch}"], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"measure {name} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _data_dir(root: str, backend: str) -> str:
    """TFDS keeps one file format per directory: Grain's ArrayRecord builds go in their own."""
    return root if backend == "tf_data" else f"{root}/array_record"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hnc_jax.bench resume")
    parser.add_argument("--records", type=int, default=100_000, choices=SIZES)
    parser.add_argument("--files", type=int, default=64, help="files of the synthetic set")
    parser.add_argument("--buffer", type=int, default=16_384, help="shuffle_buffer_size")
    parser.add_argument("--batch", type=int, default=256, help="synthetic set's batch size")
    parser.add_argument("--step_ms", type=float, default=50.0, help="simulated step time")
    parser.add_argument("--after", type=int, default=5, help="batches read into epoch 2")
    parser.add_argument("--baseline", default="", help="git commit to compare with")
    parser.add_argument("--data_dir", default="", help="TFDS data dir (default: a temp dir)")
    parser.add_argument("--backends", default="tf_data,grain", help="this tree's backends")
    parser.add_argument("--backend", default="tf_data", help=argparse.SUPPRESS)  # A child's.
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("files", "buffer", "batch", "after"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.measure:  # A child of `_run_measure`.
        config = bench_config(args.measure, args.data_dir, args.buffer, args.batch, args.backend)
        result = measure(config, args.step_ms, args.after)
        print(json.dumps(result))
        return result
    with contextlib.ExitStack() as stack:
        if not args.data_dir:
            args.data_dir = stack.enter_context(tempfile.TemporaryDirectory())
        trees = {"current": REPO}
        if args.baseline:
            trees[args.baseline] = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline, "hnc_jax"],
                capture_output=True,
                check=True,
            )
            tar = ["tar", "-x", "-C", str(trees[args.baseline])]
            subprocess.run(tar, input=archive.stdout, check=True)
        # Deferred: this file also runs as a script over a baseline tree without `hnc_jax.data`.
        from hnc_jax.data import cluttered_digits  # noqa: F401  (registers the TFDS builder)

        runs = [(f"numbered_images/n{args.records}", args.batch), ("cluttered_digits", 128)]
        backends = args.backends.split(",")
        for name, _ in runs:
            for backend in backends:
                file_format = "array_record" if backend == "grain" else None
                prepare(name, _data_dir(args.data_dir, backend), args.files, file_format)
        rows = []
        for name, batch in runs:
            pipelines = [(f"current/{b}", REPO, b) for b in backends]
            pipelines += [(label, tree, "tf_data") for label, tree in trees.items() if tree != REPO]
            for label, tree, backend in pipelines:
                row = _run_measure(tree, args, name, batch, backend)
                rows.append({"pipeline": label, **row})
                print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    result = {"buffer": args.buffer, "files": args.files, "step_ms": args.step_ms, "runs": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
