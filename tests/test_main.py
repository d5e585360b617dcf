"""main.py as users run it (subprocesses): a few steps of the default config, eval-only mode
on the saved checkpoint, and the one-line errors of bad configs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import CACHE

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config.model_width=0.0625",
    "--config.train_split=train[:256]",
    "--config.eval_split=test[:64]",
    "--config.batch_size=32",
    "--config.eval_batch_size=64",
    f"--config.compilation_cache_dir={CACHE}",
]


def run_main(*args, devices=1, timeout=600):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary_line(stdout: str) -> str:
    """main.py's result line (the last stdout line; libraries may print before it)."""
    lines = stdout.strip().splitlines()
    assert lines and "eval/top1=" in lines[-1], stdout[-2000:]
    return lines[-1]


def test_default_config_trains_then_evaluates_its_best_checkpoint(tmp_path):
    workdir = tmp_path / "work"
    train = run_main(f"--workdir={workdir}", "--config.num_train_steps=3", *TINY)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = dict(item.split("=") for item in summary_line(train.stdout).split())
    assert set(summary) == {"eval/loss", "eval/top1", "eval/top5", "eval/num_posi"}
    for name in ("train/loss", "train/hnc", "train/num_posi", "train/images_per_sec", "eval/top5"):
        assert name in train.stderr  # The clu log lines.
    assert list(workdir.glob("events.out.tfevents.*")) and (workdir / "checkpoints" / "3").is_dir()
    evaluated = run_main(f"--workdir={workdir}", "--mode=eval", "--checkpoint=best", *TINY)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert summary_line(evaluated.stdout).split() == [
        "step=3.0000",
        *summary_line(train.stdout).split(),
    ]


@pytest.mark.parametrize(
    "args, devices, message",
    [
        (["--config.model=resnet7"], 1, "error: unknown model 'resnet7'; allowed: resnet18,"),
        (["--config.dataset=nope"], 1, "error: unknown dataset 'nope'"),
        (["--config.hnc.k=10"], 1, "error: hnc.k must be in [1, 9]"),
        (["--config.hnc.weight=-1"], 1, "error: hnc.weight must be >= 0, got -1"),
        (["--config.init_from=/no/r50.pth"], 1, "error: init_from '/no/r50.pth' does not exist"),
        ([], 3, "error: batch_size=128 must be a positive multiple of the 3 devices"),
        (
            ["--config=configs/imagenet_resnet50_hnc_mse.py", "--config.data_dir=/no/tfds"],
            1,
            "error: dataset imagenet2012 is not prepared in /no/tfds/imagenet2012/",
        ),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, args, devices, message):
    workdir = tmp_path / "work"
    result = run_main(f"--workdir={workdir}", *args, devices=devices, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert not workdir.exists()
