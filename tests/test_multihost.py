"""Two processes with two CPU devices each (gloo collectives over loopback) train like one
process with four devices."""

import socket

import jax
import numpy as np
import optax
import pytest

from hnc_jax import trainer
from tests.test_main import TINY, run_main
from tests.test_train import tiny_config
from tests.test_trainer import final_params

# The whole (tiny) split in every global batch, no augmentation and synchronised BatchNorm:
# the loss is then invariant to how examples are split over processes and devices.
SETUP = [
    *TINY,
    "--config.train_split=train[:64]",
    "--config.batch_size=64",
    "--config.eval_split=test[:16]",
    "--config.eval_batch_size=16",
    "--config.augment.crop_padding=0",
    "--config.sync_batch_norm=True",
    "--config.num_train_steps=3",
    "--config.optimizer.learning_rate=0.02",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    import os
    import subprocess
    import sys

    from tests.test_main import ROOT

    port = _free_port()
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                f"--workdir={tmp_path / 'multi'}",
                *SETUP,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    single = run_main(f"--workdir={tmp_path / 'single'}", *SETUP, devices=4)
    assert single.returncode == 0, single.stderr[-3000:]
    config = tiny_config(
        train_split="train[:64]",
        batch_size=64,
        eval_batch_size=16,
        eval_split="test[:16]",
        sync_batch_norm=True,
    )
    step_m, multi = final_params(config, tmp_path / "multi")
    step_s, one = final_params(config, tmp_path / "single")
    assert step_m == step_s == 3
    # The runs agree to float rounding. Rounding is amplified here (a BN-normalised stem over
    # mostly-black canvases: its weight gradient is a small difference of large sums), so the
    # check is relative to how far training moved the parameters: a wrong gradient scale,
    # batch or BN grouping moves them differently by tens of percent.
    init = jax.device_get(trainer.setup(config).state.params)
    moved = optax.global_norm(jax.tree.map(np.subtract, one, init))
    apart = optax.global_norm(jax.tree.map(np.subtract, multi, one))
    assert float(apart) < 0.01 * float(moved), (float(apart), float(moved))
    # Only process 0 prints the summary (its last stdout line; gloo prints connection lines).
    summaries = [[line for line in out.splitlines() if "eval/top1=" in line] for out, _ in outputs]
    assert len(summaries[0]) == 1 and not summaries[1]
    assert summaries[0][0].split()[0].startswith("eval/loss=")
