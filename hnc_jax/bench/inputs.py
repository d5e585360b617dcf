"""Input benchmark: the ImageNet train transform in tf.data vs Grain, and vs a PIL loop.

Writes ImageNet-like JPEGs (500x375, quality 90). First, the two input backends side by side:
each in a fresh process, `pipeline.train_iterator` over an image folder of those JPEGs with
the ImageNet train transform (random-resized crop, flip) at `--size`: tf.data (its own
autotuned threads) and Grain at 1 and 2 worker processes (`--workers`), reporting images/s
(wall), images/s per core (CPU seconds of the process and its children, the workers), the
peak memory of that process tree (summed RSS, sampled every 20 ms) and the time to the first
batch (from `load` on: workers start, first reads); rates count `--batches` batches after
`--warmup` more (Grain's workers start one after the other). Then alternates rounds of
  tf:  the pipeline's train transform (fused decode+random-resized crop, bilinear resize,
       flip) on a tf.data pipeline limited to one thread, batching uint8 pixels as the
       pipeline does by default (the model normalises them on the device);
  pil: Image.open + convert('RGB') + torchvision's RandomResizedCrop sampling + PIL bilinear
       resize + flip + float normalise (ToTensor + Normalize), in a Python loop;
and reports the median images per CPU-second (process time, i.e. per core) of each. A round
makes `--repeats` passes over the JPEGs through one tf.data iterator, as an epoch does: with
one pass of 128 images, building the iterator alone cost about 20 us per image. The last
line printed is a JSON object.  Usage: python -m hnc_jax.bench input [--images N] ...
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ml_collections
import numpy as np
import psutil
import tensorflow as tf
from PIL import Image

from hnc_jax.data import image_stats, transforms


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[bytes]:
    """`count` 500x375 quality-90 JPEGs of smooth noise (photo-like sizes, ~60-90 KB)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noise = rng.normal(0, 12, (375, 500, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
        path = folder / f"{i}.jpg"
        image.save(path, quality=90)
        out.append(path.read_bytes())
    return out


def _tree() -> list[psutil.Process]:
    return [psutil.Process(), *psutil.Process().children(recursive=True)]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children."""
    total = 0.0
    for proc in _tree():
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class PeakMemory(threading.Thread):
    """The peak summed RSS (bytes) of this process and its children, sampled every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            rss = 0
            for proc in _tree():
                try:
                    rss += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, rss)


def backend_config(folder: str, backend: str, workers: int, batch: int, size: int):
    """The ImageNet train transform over `folder`'s image folder, with `backend`."""
    return ml_collections.ConfigDict(
        dict(
            dataset="image_folder",
            data_dir=None,
            image_folder=folder,
            train_split="train",
            eval_split="train",
            image_size=size,
            batch_size=batch,
            eval_batch_size=batch,
            shuffle_buffer_size=16_384,
            seed=0,
            image_dtype="uint8",
            augment=dict(random_resized_crop=True, flip=True, crop_padding=0),
            input_backend=backend,
            grain_workers=workers,
        )
    )


def measure_backend(config: ml_collections.ConfigDict, batches: int, warmup: int) -> dict:
    """First-batch time, `warmup` batches, then `batches` batches timed: rates and peak
    memory (see top)."""
    from hnc_jax.data import pipeline  # Deferred: the children only.

    memory = PeakMemory()
    memory.start()
    clock = time.perf_counter()
    stream = pipeline.train_iterator(pipeline.load(config), config)
    next(stream)
    first = time.perf_counter() - clock
    for _ in range(warmup):  # Untimed: every worker process up (they start one by one).
        next(stream)
    cpu, clock = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(stream)
    wall, cpu = time.perf_counter() - clock, cpu_seconds() - cpu
    if hasattr(stream, "close"):  # Grain: its worker processes and their shared memory.
        stream.close()
    memory.done.set()
    memory.join()
    images = batches * config.batch_size
    return {
        "images_per_s": round(images / wall, 1),
        "images_per_s_per_core": round(images / cpu, 1),
        "cores": round(cpu / wall, 2),
        "peak_memory_mb": round(memory.peak / 2**20),
        "first_batch_s": round(first, 2),
    }


def backend_rows(folder: Path, args: argparse.Namespace) -> list[dict]:
    """`measure_backend` of tf.data and of Grain at each of `args.workers`, each in a fresh
    process (cold start, own memory)."""
    rows = []
    for backend, workers in [("tf_data", 0)] + [("grain", w) for w in args.workers]:
        argv = [sys.executable, "-m", "hnc_jax.bench.inputs", f"--measure={backend}:{workers}",
                f"--folder={folder}", f"--batches={args.batches}", f"--batch={args.batch}",
                f"--warmup={args.warmup}", f"--size={args.size}"]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{backend} with {workers} workers failed:\n{out.stderr[-3000:]}")
        row = {"backend": backend, "workers": workers, **json.loads(out.stdout.splitlines()[-1])}
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


def tf_dataset(data: list[bytes], size: int, repeats: int) -> tf.data.Dataset:
    """The tf.data train transform over `repeats` passes of `data`, limited to one thread
    (built once, so the timed rounds do not include tracing)."""

    def fn(i, raw):
        key = tf.stack([tf.constant(0, tf.int64), i])
        image, _ = transforms.decode_crop_resize(raw, tf.zeros([4]), size, True, key)
        image, _ = transforms.flip(image, tf.zeros([4]), key + 1)
        return transforms.finish(image, "uint8", "imagenet2012")

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False  # Its modelling thread would be charged to this core.
    ds = tf.data.Dataset.from_tensor_slices(data).repeat(repeats).enumerate().map(fn).batch(32)
    return ds.with_options(options)


def tf_round(ds: tf.data.Dataset) -> tuple[int, float]:
    """(images, CPU seconds) for one pass over `tf_dataset`."""
    start = time.process_time()
    count = sum(len(batch) for batch in ds.as_numpy_iterator())
    return count, time.process_time() - start


def _rrc_params(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision.transforms.RandomResizedCrop.get_params: (top, left, h, w)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side, side


def pil_round(data: list[bytes], size: int) -> tuple[int, float]:
    """(images, CPU seconds) for one pass of the PIL loop."""
    rng = random.Random(0)
    mean = np.array(image_stats.IMAGENET_MEAN, np.float32)
    std = np.array(image_stats.IMAGENET_STD, np.float32)
    start = time.process_time()
    for raw in data:
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        top, left, h, w = _rrc_params(*image.size, rng)
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        _ = (np.asarray(image, np.float32) / 255.0 - mean) / std
    return len(data), time.process_time() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hnc_jax.bench input")
    parser.add_argument("--images", type=int, default=128, help="JPEGs written and timed")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per side")
    parser.add_argument("--repeats", type=int, default=8, help="passes over the JPEGs a round")
    parser.add_argument("--size", type=int, default=224, help="output side")
    parser.add_argument("--batch", type=int, default=32, help="backends: batch size")
    parser.add_argument("--batches", type=int, default=16, help="backends: batches timed")
    parser.add_argument("--workers", default="1,2", help="backends: Grain worker counts ('': none)")
    parser.add_argument("--warmup", type=int, default=8, help="backends: batches untimed")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # A child's.
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("images", "rounds", "repeats", "size", "batch", "batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.batch > args.images and not args.measure:  # A batch drops an epoch's remainder.
        parser.error(f"--batch must be at most --images ({args.images}), got {args.batch}")
    if args.measure:  # A child of `backend_rows`.
        backend, workers = args.measure.split(":")
        config = backend_config(args.folder, backend, int(workers), args.batch, args.size)
        result = measure_backend(config, args.batches, args.warmup)
        print(json.dumps(result))
        return result
    args.workers = [int(w) for w in args.workers.split(",") if w]  # '': tf.data alone.
    with tempfile.TemporaryDirectory() as folder:
        data = write_jpegs(Path(folder), args.images)
        (Path(folder) / "train" / "a").mkdir(parents=True)  # One class: an image folder.
        for i, raw in enumerate(data):
            (Path(folder) / "train" / "a" / f"{i}.jpg").write_bytes(raw)
        rows = backend_rows(Path(folder), args)
    ds = tf_dataset(data, args.size, args.repeats)
    tf_round(ds)  # Warm-up.
    rates = {"tf": [], "pil": []}
    for _ in range(args.rounds):
        for name, run in (
            ("tf", lambda: tf_round(ds)),
            ("pil", lambda: pil_round(data * args.repeats, args.size)),
        ):
            count, seconds = run()
            rates[name].append(count / seconds)
            print(f"{name:>3}: {count / seconds:7.1f} images/s per core")
    tf_rate, pil_rate = statistics.median(rates["tf"]), statistics.median(rates["pil"])
    result = {
        "tf_images_per_s_per_core": round(tf_rate, 1),
        "pil_images_per_s_per_core": round(pil_rate, 1),
        "ratio": round(tf_rate / pil_rate, 2),
        "images": args.images,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "size": args.size,
        "jpeg": "500x375 q90",
        "tf_output": "uint8 (normalised on the device)",
        "pil_output": "float32 normalised",
        "mean_jpeg_kb": round(sum(map(len, data)) / len(data) / 1024, 1),
        "backends": rows,
        "batch": args.batch,
        "batches": args.batches,
        "host_cores": psutil.cpu_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
