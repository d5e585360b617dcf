"""Ahead-of-time compilation for a TPU slice, on any host: `python -m hnc_jax.bench aot`.

    python -m hnc_jax.bench aot --config=configs/imagenet_resnet50_hnc_mse.py \
        --topology=v5e:2x4 --config.half_precision=True

With libtpu installed (`pip install -r requirements-tpu.txt`) the TPU compiler runs on a CPU
host: `jax.experimental.topologies` describes the slice's chips, and the real train step
(`train_step.make_train_step`, the variant that almost every step runs) and eval step
(`evaluation.make_eval_step`) are lowered on abstract, sharded arguments and compiled for them.
The executables' `memory_analysis()` gives what each chip must hold, `cost_analysis()` the
FLOPs and bytes accessed per chip, from which a roofline bounds the images/s per chip:
one step takes at least max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) (ResNet training on
TPUs is bound by the bytes). `--anchor` compiles the anchor instead
(`flax_anchor.py`, flax's ImageNet example) on the same slice and batch.

Prints a table and, as its last line, one JSON object; per-image figures divide a chip's
FLOPs and bytes by its share of the global batch.
"""

import dataclasses
import importlib.util
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from hnc_jax.bench import flax_anchor
from hnc_jax.training import train_step

GIB = 2.0**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation's peak bf16 FLOP/s, HBM bandwidth (bytes/s) and HBM size per chip."""

    name: str
    peak_flops: float
    hbm_bandwidth: float
    hbm_bytes: float


# From the generations' "System architecture" pages of the Cloud TPU documentation
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): peak bf16 compute per chip, HBM capacity
# and bandwidth per chip. Keyed by the JAX device_kind of that generation's devices.
CHIPS = {
    "TPU v4": Chip("v4", 275e12, 1200e9, 32 * GIB),
    "TPU v5 lite": Chip("v5e", 197e12, 819e9, 16e9),
    "TPU v5": Chip("v5p", 459e12, 2765e9, 95e9),
    "TPU v6 lite": Chip("v6e", 918e12, 1640e9, 32e9),
}
GENERATIONS = {chip.name: kind for kind, chip in CHIPS.items()}


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def topology_mesh(name: str) -> tuple[Mesh, Chip]:
    """A 1-D 'data' mesh over the chips of TPU topology `name` (e.g. 'v5e:2x4', 'v4:2x2x2');
    raises ValueError for an unknown generation or shape. v4 is described in megacore mode,
    one device per chip, as a v4 VM shows it."""
    if not has_libtpu():
        raise ValueError("libtpu is not installed: pip install -r requirements-tpu.txt")
    generation = name.split(":")[0]
    if generation not in GENERATIONS:
        raise ValueError(
            f"unknown TPU generation in --topology={name!r}; allowed: "
            + ", ".join(f"{g}:<shape>" for g in GENERATIONS)
        )
    # libtpu takes /tmp/libtpu_lockfile so that one process at a time drives the chips; a
    # compile-only topology drives none, and tests or other compiles may run beside it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

    kwargs = {"chip_config_name": "megacore"} if generation == "v4" else {}
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
    except Exception as e:  # The runtime's message says which shapes it accepts.
        raise ValueError(f"--topology={name!r}: {str(e).splitlines()[0]}") from None
    devices = topology.devices
    return Mesh(np.asarray(devices), ("data",)), CHIPS[devices[0].device_kind]


def _replicated(tree: Any, mesh: Mesh) -> Any:
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _batch(mesh: Mesh, size: int, image_size: int, image_dtype: Any, **extra: Any) -> dict:
    sharding = NamedSharding(mesh, P("data"))
    arrays = {
        "image": ((size, image_size, image_size, 3), image_dtype),
        "label": ((size,), jnp.int32),
        **extra,
    }
    return {
        key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        for key, (shape, dtype) in arrays.items()
    }


def config_steps(config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int) -> dict:
    """{'train': (jitted step, abstract args), 'eval': ...} of `config` over `mesh`."""
    from hnc_jax.training import evaluation  # Deferred: TensorFlow (its eval input).

    model = train_step.create_model(config, num_classes)
    tx, schedule = train_step.make_optimizer(config, epoch_steps=1000)
    size = config.image_size

    def init():
        rng = jax.random.key(config.seed)
        return train_step.create_train_state(config, model, tx, rng, mesh, (size, size, 3))

    state = _replicated(jax.eval_shape(init), mesh)
    image_dtype = jnp.dtype(config.image_dtype)
    train_batch = _batch(mesh, config.batch_size, size, image_dtype)
    eval_batch = _batch(
        mesh, config.eval_batch_size, size, image_dtype, mask=((config.eval_batch_size,), bool)
    )
    return {
        "train": (
            train_step.make_train_step(config, model, tx, schedule, mesh),
            (state, train_batch),
        ),
        "eval": (
            evaluation.make_eval_step(model, mesh),
            (state, eval_batch, _replicated(evaluation.abstract_totals(), mesh)),
        ),
    }


def anchor_steps(config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int) -> dict:
    """{'train': ...}: flax's ImageNet example step at the config's batch and image size."""
    step, init = flax_anchor.make_train_step(mesh, num_classes, config.image_size)
    state = _replicated(jax.eval_shape(init, jax.random.key(0)), mesh)
    batch = _batch(mesh, config.batch_size, config.image_size, jnp.bfloat16)
    return {"train": (step, (state, batch))}


def analyse(compiled: Any, images_per_device: int, chip: Chip) -> dict[str, float]:
    """Per-chip memory (GiB), per-image GFLOP and MB accessed, and the roofline images/s of
    one chip running `compiled` on `images_per_device` images."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops, bytes_accessed = cost["flops"], cost["bytes accessed"]
    held = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    step_s = max(flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth)
    return {
        "argument_gib": memory.argument_size_in_bytes / GIB,
        "output_gib": memory.output_size_in_bytes / GIB,
        "temp_gib": memory.temp_size_in_bytes / GIB,
        "alias_gib": memory.alias_size_in_bytes / GIB,
        "code_gib": memory.generated_code_size_in_bytes / GIB,
        "total_gib": held / GIB,
        "hbm_fraction": held / chip.hbm_bytes,
        "gflop_per_image": flops / images_per_device / 1e9,
        "mb_per_image": bytes_accessed / images_per_device / 1e6,
        "roofline_images_per_s_per_chip": images_per_device / step_s,
        "bound": "memory"
        if bytes_accessed / chip.hbm_bandwidth > flops / chip.peak_flops
        else "flops",
    }


def _num_classes(config: ml_collections.ConfigDict, given: int) -> int:
    """`given`, or the class count in the config's dataset metadata (nothing is downloaded)."""
    if given > 0:
        return given
    from hnc_jax.data import pipeline  # Deferred: TensorFlow, only to read the metadata.

    return pipeline.num_classes(config)


def _parse(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    define = {"flag_values": values}
    argv = ["aot", *argv]
    config_flags.DEFINE_config_file(
        "config", None, "Config file (get_config()).", sys_argv=argv, **define
    )
    flags.DEFINE_string("topology", "v5e:2x4", "TPU slice, e.g. v5e:2x4, v4:2x2x2.", **define)
    flags.DEFINE_bool("anchor", False, "Compile the anchor, flax's ImageNet example train "
                      "step, at the config's batch and image size.", **define)  # fmt: skip
    flags.DEFINE_list("steps", "train,eval", "Which steps to compile (of train,eval).", **define)
    flags.DEFINE_integer("num_classes", 0, "Classes (0: from the config's dataset).", **define)
    flags.DEFINE_string("hlo_out", None, "Write the train step's optimized HLO here.", **define)
    try:
        values(argv)
        if values.config is None:
            raise flags.Error("--config is required (a configs/*.py file)")
        if not values.steps or not set(values.steps) <= {"train", "eval"}:
            raise flags.Error(f"--steps must be a subset of train,eval, got {values.steps}")
        if values.anchor and "train" not in values.steps:
            raise flags.Error("--anchor compiles a train step only: --steps=train")
    except (flags.Error, FileNotFoundError, AttributeError, KeyError, ValueError) as e:
        _fail(str(e).splitlines()[0])
    return values


def main(argv: list[str]) -> dict:
    values = _parse(argv)
    config = values.config
    try:
        mesh, chip = topology_mesh(values.topology)
        num_classes = _num_classes(config, values.num_classes)
        train_step.validate_config(config, num_classes, devices=mesh.size)
        build = anchor_steps if values.anchor else config_steps
        steps = build(config, mesh, num_classes)  # Unknown model, stem, ...: ValueError.
    except ValueError as e:
        _fail(str(e))
    steps = {name: step for name, step in steps.items() if name in values.steps}
    result: dict[str, Any] = {
        "topology": values.topology,
        "chip": chip.name,
        "chips": mesh.size,
        "step": "flax_imagenet" if values.anchor else "config",
        "model": "resnet50" if values.anchor else config.model,
        "half_precision": bool(config.half_precision or values.anchor),
        "global_batch": config.batch_size,
        "hbm_gib_per_chip": chip.hbm_bytes / GIB,
    }
    for name, (step, args) in steps.items():
        start = time.perf_counter()
        try:
            lowered = step.lower(*args)
        except ValueError as e:  # A config the step cannot trace, e.g. an unknown hnc.loss.
            _fail(str(e).splitlines()[0])
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        hlo = compiled.as_text()
        if name == "train" and values.hlo_out:
            epath.Path(values.hlo_out).write_text(hlo)
        batch = config.batch_size if name == "train" else config.eval_batch_size
        figures = analyse(compiled, batch // mesh.size, chip) | {"compile_s": compile_s}
        # XLA's cost analysis counts a while loop's body once, not once per iteration.
        figures["cost_counts_loop_bodies_once"] = " while(" in hlo
        result |= {f"{name}_{key}": value for key, value in figures.items()}
    _print_table(result, list(steps))
    return result


def _print_table(result: dict, names: list[str]) -> None:
    print(
        f"{result['model']} ({result['step']} step) on {result['topology']}: "
        f"{result['chips']} x TPU {result['chip']} ({result['hbm_gib_per_chip']:.1f} GiB HBM "
        f"each), global batch {result['global_batch']}"
    )
    print(
        f"{'step':<7}{'arg GiB':>9}{'temp GiB':>10}{'out GiB':>9}{'total/HBM':>11}"
        f"{'GFLOP/img':>11}{'MB/img':>9}{'img/s/chip':>12}{'bound':>8}{'compile s':>11}"
    )
    for name in names:
        r = {key[len(name) + 1 :]: v for key, v in result.items() if key.startswith(name + "_")}
        print(
            f"{name:<7}{r['argument_gib']:>9.3f}{r['temp_gib']:>10.3f}{r['output_gib']:>9.3f}"
            f"{r['hbm_fraction']:>11.1%}{r['gflop_per_image']:>11.2f}{r['mb_per_image']:>9.1f}"
            f"{r['roofline_images_per_s_per_chip']:>12.0f}{r['bound']:>8}{r['compile_s']:>11.1f}"
        )
        if r["cost_counts_loop_bodies_once"]:
            print(
                f"  {name}: has while loops (scan_blocks): XLA counts each loop body once, so its "
                "GFLOP, MB and roofline figures are lower bounds"
            )
