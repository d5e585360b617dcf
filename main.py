"""Trains or evaluates an HNC (or cross-entropy) ResNet. With no --config: the embedded
cluttered-digits default (configs/default.py).

    python main.py --workdir=workdir/default
    python main.py --workdir=w --config=configs/imagenet_resnet101_hnc_mse.py \
        --config.data_dir=gs://bucket/tfds --config.hnc.weight=0.07
    python main.py --workdir=w --mode=eval --checkpoint=best
    python main.py --workdir=w --mode=export --out=model.safetensors  # torchvision layout
    python main.py --workdir=w --mode=attack --epsilons=0,1,2,4,8  # FGSM and PGD top-1

Multi-process (one process per host): --coordinator_address, --num_processes and
--process_id go to `jax.distributed.initialize`; without them, a Cloud TPU pod or SLURM
allocation is detected automatically, anything else runs as a single process.
"""

import json
import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from hnc_jax import errors

flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard events go here.")
config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Config file (get_config()).",
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "cam", "export", "attack"],
    "train (resumes), eval, cam, export or attack (FGSM/PGD top-1 on the eval split).",
)
flags.DEFINE_list("images", None, "--mode=cam: image files (default: the first eval images).")
flags.DEFINE_integer("num_images", 8, "--mode=cam: how many eval images without --images.")
flags.DEFINE_string(
    "out",
    None,
    "--mode=cam: output PNG (default: <workdir>/cams.png); --mode=export: "
    "the .safetensors or .pth file (torchvision's state_dict layout); --mode=attack: "
    "a JSON file of the results (default: <workdir>/attack_<checkpoint>.json).",
)
flags.DEFINE_list("attacks", ["fgsm", "pgd"], "--mode=attack: fgsm, pgd.")
flags.DEFINE_list("epsilons", ["0", "0.5", "1", "2", "4", "8"], "--mode=attack: of 255.")


def _numbers(values: list[str]) -> bool:
    try:
        return all(0 <= float(v) <= 255 for v in values)
    except ValueError:
        return False


flags.register_validator("epsilons", _numbers, "--epsilons takes numbers in [0, 255]")
flags.DEFINE_integer("pgd_steps", 10, "--mode=attack: PGD iterations.")
flags.DEFINE_float("pgd_step_size", None, "--mode=attack: of 255 (default 2.5 * eps / steps).")
flags.DEFINE_bool("pgd_random_start", True, "--mode=attack: PGD starts anywhere in the ball.")
flags.DEFINE_enum(
    "checkpoint", "latest", ["latest", "best"], "Checkpoint to evaluate, draw or export."
)
flags.DEFINE_list(
    "allow_config_change",
    [],
    "Config fields that may differ from the workdir's stored config, on purpose (recorded).",
)
flags.DEFINE_bool("force_owner", False, "--mode=train: take the workdir over from a run gone.")
flags.DEFINE_integer(
    "restore_step", None, "--mode=train: resume from this kept step (later ones set aside)."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


# Set by the clusters `jax.distributed.initialize()` detects (Cloud TPU, SLURM, Open MPI).
CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
               "OMPI_MCA_orte_hnp_uri", "JAX_COORDINATOR_ADDRESS")  # fmt: skip


def init_distributed() -> None:
    """Connects the processes (explicit flags, else cluster auto-detection, else alone). In a
    cluster's environment a failed detection is an error: each host training alone against
    the shared workdir would be silently wrong."""
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        return
    try:
        jax.distributed.initialize()  # Cloud TPU, SLURM, MPI, ... when detected.
    except ValueError:
        if found := [name for name in CLUSTER_ENV if name in os.environ]:
            raise errors.ConfigError(
                f"cluster environment ({', '.join(found)}) but jax.distributed could not "
                "connect the processes: pass --coordinator_address, --num_processes and "
                "--process_id"
            ) from None
        logging.info("no cluster detected: running as a single process")


def selected_config(workdirs):
    """The run's config: `--config` for training (the loop checks it against the workdir);
    for eval, cam and export the workdir's stored config (with any --config.* overrides)
    unless --config=FILE is given, checked against the stored one all the same."""
    config = FLAGS.config
    if FLAGS.mode == "train":
        return config
    if not FLAGS["config"].present and (stored := workdirs.stored_config(FLAGS.workdir)):
        stored.update_from_flattened_dict(config_flags.get_override_values(FLAGS["config"]))
        config = stored
    may_change = (*workdirs.RESUMABLE, *workdirs.EVAL_ONLY, *workdirs.TRAINING_ONLY)
    workdirs.check_config(FLAGS.workdir, config, FLAGS.allow_config_change, may_change)
    return config


def summary(result: dict) -> str:
    """`key=value ...`: integers as integers, other metrics to 4 decimals."""
    return " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}" for k, v in result.items())


def main(argv: list[str]) -> None:
    del argv
    # Orbax logs every save step at INFO: keep its warnings and errors, drop the chatter.
    logging.get_absl_handler().addFilter(
        lambda record: "/orbax/" not in record.pathname or record.levelno >= std_logging.WARNING
    )
    from hnc_jax.training import (  # After flags: TensorFlow.
        attacks,
        checkpoints,
        inference,
        loop,
        workdirs,
    )

    try:
        init_distributed()
        logging.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
                     jax.devices())  # fmt: skip
        config = selected_config(workdirs)
        if FLAGS.mode == "train":
            result = loop.train_and_evaluate(
                config, FLAGS.workdir, FLAGS.allow_config_change, FLAGS.force_owner,
                FLAGS.restore_step,
            )  # fmt: skip
            if "preempted" in result or set(result) == {"step"}:
                done = "stopped by SIGTERM" if "preempted" in result else "already finished"
                if jax.process_index() == 0:
                    print(f"{done} at step {result['step']}")
                return
        elif FLAGS.mode == "cam":
            out = FLAGS.out or str(epath.Path(FLAGS.workdir) / "cams.png")
            args = (config, FLAGS.workdir, FLAGS.images, FLAGS.num_images, out)
            path = inference.render_cams(*args, which=FLAGS.checkpoint)
            if jax.process_index() == 0:
                print(f"wrote {path}")
            return
        elif FLAGS.mode == "export":
            if not FLAGS.out:
                raise errors.ConfigError("--mode=export needs --out=<file>.safetensors (or .pth)")
            path = checkpoints.export_checkpoint(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint)
            print(f"wrote {path}")
            return
        elif FLAGS.mode == "attack":
            attack = attacks.Attack(
                tuple(FLAGS.attacks), tuple(map(float, FLAGS.epsilons)), FLAGS.pgd_steps,
                FLAGS.pgd_step_size, FLAGS.pgd_random_start,
            )  # fmt: skip
            result = attacks.attack_checkpoint(config, FLAGS.workdir, attack, FLAGS.checkpoint)
            if jax.process_index() == 0:
                name = f"attack_{FLAGS.checkpoint}.json"
                out = epath.Path(FLAGS.out or epath.Path(FLAGS.workdir) / name)
                out.write_text(json.dumps(result) + "\n")
                print(attacks.report(result, attack.kinds))
            return
        else:
            result = loop.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint)
    except (errors.ConfigError, FloatingPointError) as e:  # Bad input; a diverged run.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("final: %s", result)
    if jax.process_index() == 0:
        print(summary(result))


if __name__ == "__main__":
    app.run(main)
