"""Two processes with two CPU devices each (gloo collectives over loopback) train like one
process with four devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from hnc_jax.training import job
from tests.helpers import (
    ROOT,
    TINY,
    final_params,
    run_main,
    summary_line,
    tiny_config,
    write_image_folder,
)

pytestmark = pytest.mark.slow  # Processes over loopback, each a main.py run.


def _noise_folder(root) -> None:
    """Two classes of random-noise PNGs: 64 train, 16 test. Noise, not the digits: on the
    digits' black canvases thousands of positions share one pre-activation, so a rounding
    difference flips many ReLUs at once and runs on 1, 2 or 4 devices drift apart by a few
    percent within 3 steps; on noise they agree to ~2e-6."""
    write_image_folder(root, {"train": 32, "test": 8}, size=20, suffix="png")


def _setup(folder) -> tuple[list[str], object]:
    """Flags and config: the whole split in every global batch, no augmentation and
    synchronised BatchNorm, so the loss does not depend on how examples are split over
    processes and devices."""
    fields = dict(
        dataset="image_folder",
        image_folder=str(folder),
        image_size=16,
        train_split="train",
        eval_split="test",
        batch_size=64,
        eval_batch_size=16,
        sync_batch_norm=True,
        num_train_steps=3,
        **{"augment.random_resized_crop": False, "optimizer.learning_rate": 0.02, "hnc.k": 1},
    )
    flags = [*TINY, *(f"--config.{key}={value}" for key, value in fields.items())]
    return flags, tiny_config(**fields)


def _two_processes(flags: list[str]) -> list[tuple[str, str]]:
    """Runs main.py with `flags` as 2 processes of 2 CPU devices over loopback; their
    (stdout, stderr), each checked for exit status 0."""
    port = _free_port()
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                *flags,
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
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    _noise_folder(tmp_path / "noise")
    flags, config = _setup(tmp_path / "noise")
    outputs = _two_processes([f"--workdir={tmp_path / 'multi'}", *flags])
    single = run_main(f"--workdir={tmp_path / 'single'}", *flags, devices=4)
    assert single.returncode == 0, single.stderr[-3000:]
    step_m, multi = final_params(config, tmp_path / "multi")
    step_s, one = final_params(config, tmp_path / "single")
    assert step_m == step_s == 3
    # Equal up to float rounding (the collectives sum in another order), measured relative
    # to how far training moved the parameters: a wrong gradient scale, batch or BN grouping
    # moves them differently by tens of percent.
    init = jax.device_get(job.build(config).state.params)
    moved = optax.tree.norm(jax.tree.map(np.subtract, one, init))
    apart = optax.tree.norm(jax.tree.map(np.subtract, multi, one))
    assert float(moved) > 0.1 and float(apart) < 1e-4 * float(moved), (apart, moved)
    # Only process 0 prints the summary (its last stdout line; gloo prints connection lines).
    summaries = [[line for line in out.splitlines() if "eval/top1=" in line] for out, _ in outputs]
    assert len(summaries[0]) == 1 and not summaries[1]
    first, second = summaries[0][0].split()[:2]
    assert first == "step=3" and second.startswith("eval/loss=")
    # Eval-only on 2 processes restores the checkpoint there; each process reads its own
    # part of the split (16 images in local batches of 6: padded) and the sums are combined:
    # the training's own final evaluation (local batches of 8, no padding) is reproduced.
    eval_flags = [f"--workdir={tmp_path / 'multi'}", "--mode=eval", "--config.eval_batch_size=12"]
    two = _two_processes(eval_flags)[0][0]
    results = [_metrics(summary_line(out)) for out in (two, outputs[0][0])]
    assert results[0].keys() == results[1].keys() and results[0]["step"] == 3
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], abs=2e-4), key  # 4 decimals.


def _metrics(line: str) -> dict[str, float]:
    return {key: float(value) for key, value in (item.split("=") for item in line.split())}
