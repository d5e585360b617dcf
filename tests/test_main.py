"""main.py as users run it (subprocesses): a few steps of the default config, eval-only mode
on the saved checkpoint, and the one-line errors of bad configs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train_step import CACHE

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config.model_width=0.0625",
    "--config.train_split=train[:256]",
    "--config.eval_split=test[:64]",
    "--config.batch_size=32",
    "--config.eval_batch_size=64",
    f"--config.compilation_cache_dir={CACHE}",
]


def run_main(*args, devices=1, timeout=600, cwd=ROOT):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def event_scalars(workdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the TensorBoard event files in `workdir` (clu's writer)."""
    import tensorflow as tf

    out: dict[str, dict[int, float]] = {}
    for path in tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    scalar = float(tf.make_ndarray(value.tensor))
                    out.setdefault(value.tag, {})[event.step] = scalar
    return out


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
    assert set(summary) == {"step", "eval/loss", "eval/top1", "eval/top5", "eval/num_posi"}
    assert summary["step"] == "3"
    for name in ("train/loss", "train/hnc", "train/num_posi", "train/images_per_sec", "eval/top5"):
        assert name in train.stderr  # The clu log lines.
    assert list(workdir.glob("events.out.tfevents.*")) and (workdir / "checkpoints" / "3").is_dir()
    # The last step (3) is not a multiple of log_every_steps (20) but logs num_posi too.
    scalars = event_scalars(workdir)
    assert scalars["train/num_posi"][3] > 0 and set(scalars["train/loss"]) == {3}
    evaluated = run_main(f"--workdir={workdir}", "--mode=eval", "--checkpoint=best", *TINY)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert summary_line(evaluated.stdout) == summary_line(train.stdout)


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


@pytest.mark.slow
def test_bucket_workdir_train_kill_resume_eval_cam(tmp_path, gcs_emulator, gcs_bucket,
                                                   gcs_digits_dir):  # fmt: skip
    """A pod user's run, on the GCS emulator: workdir and data in buckets, killed after its
    first checkpoint, resumed, evaluated and drawn; nothing lands on the local disk."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    bucket = gcs_bucket.removeprefix("gs://")
    workdir = f"{gcs_bucket}/run"
    flags = [f"--workdir={workdir}", f"--config.data_dir={gcs_digits_dir}", *TINY]
    flags += ["--config.num_train_steps=40", "--config.checkpoint_every_steps=2"]
    command = [sys.executable, str(ROOT / "main.py"), *flags]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    first = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    marker = "run/checkpoints/2/commit_success.txt"
    deadline = time.time() + 300
    while marker not in gcs_emulator.list_objects(bucket, "run/") and first.poll() is None:
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.2)
    first.kill()
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL, log[-3000:]  # Killed, not finished.
    resumed = run_main(*flags, cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    objects = gcs_emulator.list_objects(bucket, "run/")
    assert "run/checkpoints/40/commit_success.txt" in objects
    assert any(name.startswith("run/events.out.tfevents.") for name in objects)
    evaluated = run_main(*flags, "--mode=eval", cwd=cwd)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert summary_line(evaluated.stdout).startswith("step=40 ")
    drawn = run_main(*flags, "--mode=cam", "--num_images=2", cwd=cwd)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert "run/cams.png" in gcs_emulator.list_objects(bucket, "run/")
    assert not list(cwd.iterdir())  # Nothing written to the local working directory.


def test_config_errors_come_before_the_dataset_is_built(tmp_path):
    data_dir = tmp_path / "tfds"
    result = run_main(f"--workdir={tmp_path / 'work'}", "--config.hnc.k=10",
                      f"--config.data_dir={data_dir}", timeout=120)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: hnc.k must be in [1, 9] (cluttered_digits has 10 classes), got 10"]
    assert not data_dir.exists()  # The class count came from the metadata: nothing built.
