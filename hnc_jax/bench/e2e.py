"""End-to-end train throughput with the input in the loop: `python -m hnc_jax.bench e2e`.

The path of `loop.train_and_evaluate`'s steps: `pipeline.train_iterator` (either backend)
over an image folder of photo-sized JPEGs the bench writes (`inputs.write_jpegs`, 500x375),
the ImageNet train transform (random-resized crop, flip) at `--image_size`, batches sent to
the devices two ahead (`train_step.device_batches`), the jitted HNC-mse step of
configs/imagenet_resnet50_hnc_mse.py (ResNet-50), metrics fetched one step late. After
`--warmup` steps (compile) it times `--steps` steps and reports
  images_per_s:  global batch x steps / wall seconds;
  input_wait:    the fraction of that wall time spent waiting for the next host batch;
  host_cores:    CPU seconds of this process and its children (Grain workers) / wall.
`--tiny`: a width-1/16 ResNet-50 at 32 px, batch 8, 4 + 2 steps over 32 JPEGs (CI).
Run from the repository root (it reads configs/). The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax

from hnc_jax.bench import inputs
from hnc_jax.data import pipeline
from hnc_jax.training import job, train_step


def make_config(args: argparse.Namespace, folder: str):
    from configs import imagenet_resnet50_hnc_mse  # The repository's configs/.

    config = imagenet_resnet50_hnc_mse.get_config()
    config.update(
        dict(
            dataset="image_folder",
            image_folder=folder,
            train_split="train",
            eval_split="train",
            image_size=args.image_size,
            batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            model_width=args.width,
            input_backend=args.backend,
            grain_workers=args.workers,
            compilation_cache_dir=None,
        )
    )
    config.hnc.k = min(config.hnc.k, args.classes - 1)
    config.augment.flip = True
    return config


class Timed:
    """`batches`, with the seconds spent waiting in `next` added up in `wait`."""

    def __init__(self, batches):
        self.batches, self.wait = batches, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.batches)
        self.wait += time.perf_counter() - start
        return {key: batch[key] for key in ("image", "label")}


def measure(config, warmup: int, steps: int) -> dict:
    run = job.build(config)
    step_fn = train_step.make_train_step(
        config, run.model, run.tx, run.schedule, run.mesh, epoch_steps=run.epoch_steps
    )
    stream = pipeline.train_iterator(run.dataset, config, 0)
    timed = Timed(stream)
    batches = train_step.device_batches(timed, run.mesh)
    state, pending = run.state, None
    for i in range(warmup + steps):
        if i == warmup:  # Compiled and primed: the timed span starts.
            jax.block_until_ready(state)
            timed.wait, cpu, start = 0.0, inputs.cpu_seconds(), time.perf_counter()
        state, metrics = step_fn(state, next(batches))
        if pending is not None:  # The previous step's metrics, while this one runs.
            float(jax.device_get(pending)["loss"])
        pending = metrics
    float(jax.device_get(pending)["loss"])
    wall = time.perf_counter() - start
    cores = (inputs.cpu_seconds() - cpu) / wall
    if hasattr(stream, "close"):  # Grain: its worker processes and their shared memory.
        stream.close()
    return {
        "images_per_s": round(steps * config.batch_size / wall, 2),
        "input_wait": round(timed.wait / wall, 3),
        "host_cores": round(cores, 2),
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hnc_jax.bench e2e")
    parser.add_argument("--backend", default="tf_data", choices=pipeline.BACKENDS)
    parser.add_argument("--workers", type=int, default=0, help="grain_workers")
    parser.add_argument("--tiny", action="store_true", help="small model, images and steps")
    parser.add_argument("--images", type=int, default=512, help="JPEGs written")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="model_width")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.tiny:
        args.images, args.classes, args.batch_size = 32, 2, 8
        args.image_size, args.width, args.warmup, args.steps = 32, 0.0625, 4, 2
    for name in ("images", "batch_size", "image_size", "steps", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.classes < 2 or args.workers < 0:
        parser.error("--classes must be >= 2 and --workers >= 0")
    with tempfile.TemporaryDirectory() as folder:
        per_class = -(-args.images // args.classes)
        for c in range(args.classes):
            (Path(folder) / "train" / f"c{c}").mkdir(parents=True)
            inputs.write_jpegs(Path(folder) / "train" / f"c{c}", per_class, seed=c)
        config = make_config(args, folder)
        result = measure(config, args.warmup, args.steps)
    result.update(
        backend=args.backend,
        workers=args.workers,
        model=f"resnet50 x{args.width}",
        image_size=args.image_size,
        batch_size=args.batch_size,
        steps=args.steps,
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    )
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
