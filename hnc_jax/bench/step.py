"""Step benchmarks (`python -m hnc_jax.bench step|startup`, see `cli`):

step     the real train step (`train_step.make_train_step`), cross-entropy only vs +HNC-mse vs
         +HNC-kd, steps interleaved after warm-up, medians of repeats. Honours
         JAX_COMPILATION_CACHE_DIR, so a second run shows the warm compile time.
startup  init / trace / compile of the +HNC-mse step and the step time, unrolled vs
         scanned blocks, each cold (empty compilation cache) and warm (a fresh process on
         the cache the cold one filled).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from hnc_jax.training import train_step

LABELS = {"none": "ce", "mse": "+hnc_mse", "kd": "+hnc_kd"}
KEYS = {"none": "ce", "mse": "hnc_mse", "kd": "hnc_kd"}


def _config(args: argparse.Namespace, loss: str):
    from configs import default  # The repository's configs/ folder, not in the package.

    config = default.get_config()
    config.model, config.model_width, config.stem = args.model, args.width, args.stem
    config.scan_blocks = args.scan_blocks
    config.image_size, config.batch_size = args.image_size, args.batch_size
    config.half_precision = args.bf16
    config.hnc.loss, config.hnc.k, config.hnc.weight = loss, args.k, 0.07
    config.log_every_steps = 10**9  # no num_posi diagnostic in the timed steps
    return config


def _build(args: argparse.Namespace, loss: str):
    """(jitted step, state, batch, init_s) for one loss variant."""
    config = _config(args, loss)
    mesh = train_step.make_mesh()
    model = train_step.create_model(config, args.num_classes)
    tx, schedule = train_step.make_optimizer(config, epoch_steps=1000)
    start = time.perf_counter()
    shape = (args.image_size, args.image_size, 3)
    state = train_step.create_train_state(config, model, tx, jax.random.key(0), mesh, shape)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    batch = train_step.shard_batch(
        mesh,
        {
            "image": rng.integers(0, 256, (args.batch_size, *shape), np.uint8),  # As the pipeline.
            "label": rng.integers(0, args.num_classes, args.batch_size).astype(np.int32),
        },
    )
    return train_step.make_train_step(config, model, tx, schedule, mesh), state, batch, init_s


def _compile(step, state, batch) -> tuple[object, float, float]:
    start = time.perf_counter()
    lowered = step.trace(state, batch).lower()
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, trace_s, time.perf_counter() - start


def time_interleaved(runs: dict[str, dict], warmup: int, repeats: int) -> None:
    """Runs each run's `step(state, batch)` `warmup + repeats` times, the runs interleaved (the
    machine's drift hits every variant alike), each call timed until its new state and metrics
    are ready (dispatch is asynchronous); appends the last `repeats` times (s) to the run's
    'times' and leaves its last state in 'state'."""
    for i in range(warmup + repeats):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["step"](run["state"], run["batch"])
            jax.block_until_ready((run["state"], metrics))
            if i >= warmup:
                run["times"].append(time.perf_counter() - start)


def bench_step(args: argparse.Namespace) -> dict:
    variants = tuple(args.variants.split(","))
    runs = {}
    for loss in variants:
        step, state, batch, init_s = _build(args, loss)
        compiled, trace_s, compile_s = _compile(step, state, batch)
        runs[loss] = dict(step=compiled, state=state, batch=batch, times=[])
        runs[loss].update(init_s=init_s, trace_s=trace_s, compile_s=compile_s)
    time_interleaved(runs, args.warmup, args.repeats)
    ms = {loss: 1000 * statistics.median(runs[loss]["times"]) for loss in variants}
    print(
        f"{args.model} width={args.width} batch={args.batch_size} size={args.image_size} "
        f"classes={args.num_classes} k={args.k} {'bfloat16' if args.bf16 else 'float32'} on "
        f"{jax.devices()[0].device_kind} "
        f"x{jax.device_count()}, median of {args.repeats}"
    )
    base = ms.get("none", float("nan"))
    print(
        f"{'step':<10}{'median ms':>12}{'images/s':>10}{'ratio':>8}{'p10 ms':>10}{'p90 ms':>10}"
        f"{'compile s':>11}"
    )
    images_per_s = {loss: args.batch_size / (ms[loss] / 1000) for loss in variants}
    for loss in variants:
        q = np.percentile(runs[loss]["times"], [10, 90]) * 1000
        print(
            f"{LABELS[loss]:<10}{ms[loss]:>12.1f}{images_per_s[loss]:>10.1f}{ms[loss] / base:>8.3f}"
            f"{q[0]:>10.1f}{q[1]:>10.1f}{runs[loss]['compile_s']:>11.1f}"
        )
    timed = runs["mse"] if "mse" in runs else runs[variants[0]]
    result = {f"{KEYS[loss]}_ms": ms[loss] for loss in variants}
    result |= {f"{KEYS[loss]}_images_per_s": images_per_s[loss] for loss in variants}
    result |= {f"{KEYS[loss]}_ratio": ms[loss] / base for loss in variants if loss != "none"}
    result |= {key: timed[key] for key in ("compile_s", "trace_s", "init_s")}
    return result | dict(
        batch_size=args.batch_size,
        bf16=args.bf16,
        repeats=args.repeats,
        device=jax.devices()[0].device_kind,
        num_devices=jax.device_count(),
        compilation_cache_dir=jax.config.jax_compilation_cache_dir,
    )


def bench_startup(args: argparse.Namespace) -> dict:
    """Cold and warm start-up, unrolled and scanned, each in a fresh process."""
    results = {}
    layouts = args.layouts.split(",")
    for scan in [layout == "scan" for layout in layouts]:
        with tempfile.TemporaryDirectory() as cache:
            for phase in ("cold", "warm"):
                cmd = [sys.executable, "-m", "hnc_jax.bench", "step", "--variants=mse"]
                cmd += [f"--{k}={v}" for k, v in _step_flags(args).items()]
                cmd += ["--scan_blocks"] if scan else []
                env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                results[("scan" if scan else "unrolled", phase)] = json.loads(
                    out.stdout.strip().splitlines()[-1]
                )
    print(f"{args.model} batch={args.batch_size} size={args.image_size}: +HNC-mse train step")
    print(f"{'layout':<10}{'cache':<6}{'init s':>8}{'trace s':>9}{'compile s':>11}{'step ms':>9}")
    for (layout, phase), r in results.items():
        print(
            f"{layout:<10}{phase:<6}{r['init_s']:>8.1f}{r['trace_s']:>9.1f}"
            f"{r['compile_s']:>11.1f}{r['hnc_mse_ms']:>9.1f}"
        )
    summary = {
        f"{layout}_{phase}_{key}": r[key]
        for (layout, phase), r in results.items()
        for key in ("init_s", "trace_s", "compile_s", "hnc_mse_ms")
    }
    for layout in layouts:
        summary[f"{layout}_warm_speedup"] = (
            summary[f"{layout}_cold_compile_s"] / summary[f"{layout}_warm_compile_s"]
        )
    if len(layouts) == 2:
        summary["scan_step_cost"] = (
            summary["scan_cold_hnc_mse_ms"] / summary["unrolled_cold_hnc_mse_ms"]
        )
    return summary


def _step_flags(args: argparse.Namespace) -> dict:
    keys = ("model", "width", "stem", "batch_size", "image_size", "num_classes", "k")
    return {key: getattr(args, key) for key in keys} | {"repeats": args.repeats, "warmup": 1}
