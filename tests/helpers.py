"""What several test modules share: the repository root, this run's compilation cache, the
tiny configs, main.py run as users run it (a subprocess) and what it writes."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
from PIL import Image

from configs import default
from hnc_jax.training import checkpoints, job, train_step

ROOT = Path(__file__).resolve().parents[1]
# One persistent compilation cache per test run (conftest makes it and removes it at the
# end), shared by its tests and the processes they start, which inherit the variable (the
# default `compilation_cache_dir`): a program compiled once is not compiled again in this
# run, and no run starts warm from an earlier one.
CACHE = os.environ.get("HNC_JAX_CACHE_DIR") or tempfile.mkdtemp(prefix="hnc_jax_cache_")
train_step.enable_compilation_cache(CACHE)

# The default config at its smallest for main.py: width 1/16, 256 training images.
TINY = [
    "--config.model_width=0.0625",
    "--config.train_split=train[:256]",
    "--config.eval_split=test[:64]",
    "--config.batch_size=32",
    "--config.eval_batch_size=64",
]


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The default config at width 1/16 with dotted-field `overrides` ('hnc.k': 1)."""
    config = default.get_config()
    config.model_width = 0.0625
    config.log_every_steps = 2
    config.compilation_cache_dir = None
    for key, value in overrides.items():
        parent = config
        *path, leaf = key.split(".")
        for name in path:
            parent = parent[name]
        parent[leaf] = value
    return config


def digits_config(**overrides) -> ml_collections.ConfigDict:
    """`tiny_config` that trains 6 steps on 256 cluttered digits, saving every 2."""
    settings = dict(
        train_split="train[:256]",
        eval_split="test[:64]",
        batch_size=32,
        eval_batch_size=64,
        num_train_steps=6,
        checkpoint_every_steps=2,
        eval_every_steps=1000,
        image_panel_examples=2,
    )
    return tiny_config(**{**settings, **overrides})


def make_batch(n: int = 8, size: int = 16, classes: int = 10, seed: int = 0) -> dict:
    """Random uint8 images (n, size, size, 3), as the pipeline gives them, and int labels."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, size, size, 3), np.uint8),
        "label": rng.integers(0, classes, n).astype(np.int32),
    }


def final_params(config: ml_collections.ConfigDict, workdir) -> tuple[int, dict]:
    """(step, params) of the latest checkpoint of `workdir`, on the host."""
    run = job.build(config)
    manager = checkpoints.create_manager(str(workdir), config.keep_checkpoints, read_only=True)
    state = checkpoints.restore(manager, manager.latest_step(), run.state)
    return int(state.step), jax.device_get(state.params)


def run_main(*args: str, devices: int = 1, timeout: int = 600, cwd: Path = ROOT, **env_vars):
    """main.py with `args` on `devices` simulated CPU devices (and environment variables
    `env_vars`): the CompletedProcess."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), **env_vars)
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """main.py's one-line errors."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def summary_line(stdout: str) -> str:
    """main.py's result line (the last stdout line; libraries may print before it)."""
    lines = stdout.strip().splitlines()
    assert lines and "eval/top1=" in lines[-1], stdout[-2000:]
    return lines[-1]


def event_values(workdir, plugin: str = "scalars") -> dict[str, dict[int, np.ndarray]]:
    """{tag: {step: value}} of one TensorBoard plugin's values ('scalars', 'images') in the
    event files in `workdir` (clu's writer)."""
    import tensorflow as tf  # Deferred: only the tests that read event files need it.

    out: dict[str, dict[int, np.ndarray]] = {}
    for path in tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == plugin:
                    out.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return out


def write_image_folder(
    root: Path, counts: dict[str, int], classes=("a", "b"), size: int = 16, suffix: str = "jpg"
) -> None:
    """An image folder of random-noise images: `counts[split]` per class of each split, as
    `<root>/<split>/<class>/<i>.<suffix>`."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.{suffix}", quality=95)


def truncate(path: Path, keep: float = 0.5) -> str:
    """Cuts the file to `keep` of its bytes, as an interrupted copy would; its path."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return str(path)
