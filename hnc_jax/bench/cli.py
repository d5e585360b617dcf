"""Benchmarks (never timed tests):
`python -m hnc_jax.bench {step,startup,input,resume,e2e,aot} [flags]`.

step     (`step.py`) the real train step (`train_step.make_train_step`), cross-entropy
         only vs +HNC-mse vs +HNC-kd, steps interleaved after warm-up, medians of repeats. Honours
         JAX_COMPILATION_CACHE_DIR, so a second run shows the warm compile time.
startup  (`step.py`) init / trace / compile of the +HNC-mse step and the step time, unrolled vs
         scanned blocks, each cold (empty compilation cache) and warm (a fresh process on
         the cache the cold one filled).
input    the ImageNet train transform at 224 px: tf.data vs Grain at 1 and 2 workers (images/s
         per core, peak memory, first batch), and a PIL + RandomResizedCrop loop (`inputs.py`).
resume   records read to resume the train stream mid-epoch (tf.data and Grain), and the
         epoch-boundary stall, against a baseline commit's pipeline (`resume.py`).
e2e      the train loop with its input: images/s, input wait, host cores (`e2e.py`).
aot      a config's train and eval steps compiled for a TPU slice on this host: memory per
         chip, FLOPs and bytes per image, roofline images/s per chip (`aot.py`; needs
         requirements-tpu.txt).

Each prints a readable table and, as its last line, one JSON object.
"""

import argparse
import json
import os

from hnc_jax.bench import aot, step
from hnc_jax.training import train_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hnc_jax.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("step", "startup"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="resnet50")
        p.add_argument("--width", type=float, default=1.0)
        p.add_argument("--stem", default="imagenet", choices=("imagenet", "small"))
        p.add_argument("--batch_size", type=int, default=8)
        p.add_argument("--image_size", type=int, default=224)
        p.add_argument("--num_classes", type=int, default=1000)
        p.add_argument("--k", type=int, default=100)
        p.add_argument("--repeats", type=int, default=15 if name == "step" else 3)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--bf16", action="store_true", help="bfloat16 compute")
        p.add_argument("--scan_blocks", action="store_true")
        p.add_argument("--variants", default="none,mse,kd", help="comma-separated of none,mse,kd")
        if name == "startup":
            p.add_argument("--layouts", default="unrolled,scan", help="of unrolled,scan")
    sub.add_parser("input", add_help=False)
    sub.add_parser("resume", add_help=False)
    sub.add_parser("e2e", add_help=False)
    sub.add_parser("aot", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "input":
        from hnc_jax.bench import inputs  # Deferred: TensorFlow, for this command only.

        inputs.main(rest)
        return
    if args.command == "resume":
        from hnc_jax.bench import resume  # Deferred: TensorFlow, for this command only.

        resume.main(rest)
        return
    if args.command == "e2e":
        from hnc_jax.bench import e2e  # Deferred: TensorFlow, for this command only.

        e2e.main(rest)
        return
    if args.command == "aot":
        print(json.dumps(aot.main(rest)))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.k < 1 or args.k >= args.num_classes:
        parser.error(f"--k must be in [1, {args.num_classes - 1}], got {args.k}")
    train_step.enable_compilation_cache(os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    if args.command == "startup":
        if not args.layouts or not set(args.layouts.split(",")) <= {"unrolled", "scan"}:
            parser.error("--layouts must be a comma-separated subset of unrolled,scan")
        result = step.bench_startup(args)
    else:
        if not set(args.variants.split(",")) <= set(step.LABELS):
            parser.error("--variants must be a comma-separated subset of none,mse,kd")
        result = step.bench_step(args)
    print(json.dumps(result))
