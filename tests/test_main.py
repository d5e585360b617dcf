"""main.py as users run it (subprocesses): a few steps of the default config, eval-only mode
on the saved checkpoint, and the one-line errors of bad configs."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, TINY, error_lines, event_values, run_main, summary_line


def test_default_config_trains_then_evaluates_its_best_checkpoint(trained_run):
    workdir, train = trained_run
    summary = dict(item.split("=") for item in summary_line(train.stdout).split())
    assert set(summary) == {"step", "eval/loss", "eval/top1", "eval/top5", "eval/num_posi"}
    assert summary["step"] == "3"
    for name in ("train/loss", "train/hnc", "train/num_posi", "train/images_per_sec", "eval/top5"):
        assert name in train.stderr  # The clu log lines.
    assert list(workdir.glob("events.out.tfevents.*")) and (workdir / "checkpoints" / "3").is_dir()
    # The last step (3) is not a multiple of log_every_steps (20) but logs num_posi too.
    scalars = event_values(workdir)
    assert scalars["train/num_posi"][3] > 0 and set(scalars["train/loss"]) == {3}
    # The CAM panel of the evaluation (4 examples: one PNG of 4 rows of 5 maps).
    (panel,) = event_values(workdir, "images")["cams"].values()
    width, height = (int(v) for v in panel[:2])
    assert (width, height) == (5 * 160, 4 * 160) and panel[2].startswith(b"\x89PNG")
    # Eval-only takes the workdir's stored config: no --config flags needed.
    evaluated = run_main(f"--workdir={workdir}", "--mode=eval", "--checkpoint=best", devices=2)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert summary_line(evaluated.stdout) == summary_line(train.stdout)


@pytest.mark.slow
def test_changed_config_is_refused_before_anything_runs(trained_run):
    workdir, _ = trained_run
    before = sorted(p.name for p in workdir.iterdir())
    flags = [f"--workdir={workdir}", "--config.num_train_steps=4", *TINY]
    changed = run_main(*flags, "--config.batch_size=64", "--config.hnc.weight=0.2", devices=2)
    assert changed.returncode == 2
    (line,) = error_lines(changed.stderr)
    assert line.startswith(f"error: {workdir / 'config.json'} was written by a run with another "
                           "config: batch_size 32 -> 64, hnc.weight 0.1 -> 0.2;")  # fmt: skip
    assert line.endswith("--allow_config_change=batch_size,hnc.weight")
    # Another model cannot be evaluated with this run's weights either.
    other = run_main(f"--workdir={workdir}", "--mode=eval", "--config.model=resnet34")
    assert other.returncode == 2 and "model 'resnet18' -> 'resnet34'" in other.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before  # Nothing written, no owner.


# One of each kind (a field, the device count, missing data) as main.py prints it; every
# validator message is tested in process (test_train_step, test_pipeline).
@pytest.mark.parametrize(
    "args, devices, message",
    [
        (["--config.model=resnet7"], 1, "error: unknown model 'resnet7'; allowed: resnet18,"),
        ([], 3, "error: batch_size=128 must be a positive multiple of the 3 devices"),
        (
            ["--config=configs/imagenet_resnet50_hnc_mse.py", "--config.data_dir=/no/tfds"],
            1,
            "error: dataset imagenet2012 is not prepared in /no/tfds/imagenet2012/",
        ),
    ],
)
@pytest.mark.slow
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, args, devices, message):
    workdir = tmp_path / "work"
    result = run_main(f"--workdir={workdir}", *args, devices=devices, timeout=120)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
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
    # 16 steps: after the first checkpoint (2) the run still has 7 saves to the emulator before
    # it could finish, far longer than the 0.2 s poll, so the kill lands mid-run.
    flags += ["--config.num_train_steps=16", "--config.checkpoint_every_steps=2"]
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
    # The killed run's owner record is left behind: its process is gone, so it is taken over.
    resumed = run_main(*flags, cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr and "taking over" in resumed.stderr
    objects = gcs_emulator.list_objects(bucket, "run/")
    assert "run/checkpoints/16/commit_success.txt" in objects
    assert any(name.startswith("run/events.out.tfevents.") for name in objects)
    evaluated = run_main(*flags, "--mode=eval", cwd=cwd)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert summary_line(evaluated.stdout).startswith("step=16 ")
    drawn = run_main(*flags, "--mode=cam", "--num_images=2", cwd=cwd)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert "run/cams.png" in gcs_emulator.list_objects(bucket, "run/")
    assert not list(cwd.iterdir())  # Nothing written to the local working directory.


@pytest.mark.slow
def test_a_cluster_that_cannot_connect_is_an_error_not_one_host_alone(tmp_path):
    result = run_main(f"--workdir={tmp_path / 'work'}", timeout=120, SLURM_JOB_ID="1")
    assert error_lines(result.stderr) == [
        "error: cluster environment (SLURM_JOB_ID) but jax.distributed could not connect the "
        "processes: pass --coordinator_address, --num_processes and --process_id"
    ]
    assert result.returncode == 2 and not (tmp_path / "work").exists()


@pytest.mark.slow
def test_config_errors_come_before_the_dataset_is_built(tmp_path):
    data_dir = tmp_path / "tfds"
    result = run_main(f"--workdir={tmp_path / 'work'}", "--config.hnc.k=10",
                      f"--config.data_dir={data_dir}", timeout=120)  # fmt: skip
    lines = error_lines(result.stderr)
    assert lines == ["error: hnc.k must be in [1, 9] (cluttered_digits has 10 classes), got 10"]
    assert not data_dir.exists()  # The class count came from the metadata: nothing built.


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_is_refused_and_sigterm_stops_the_first(tmp_path):
    workdir = tmp_path / "work"
    flags = [f"--workdir={workdir}", "--config.num_train_steps=100000", *TINY]
    command = [sys.executable, str(ROOT / "main.py"), *flags]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    deadline = time.time() + 300
    while not (workdir / "owner.json").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.2)
    second = run_main(*flags)
    assert second.returncode == 2 and first.poll() is None, second.stderr[-3000:]
    (line,) = error_lines(second.stderr)
    assert line.startswith(f"error: {workdir} is in use by another run (pid {first.pid} on ")
    assert line.endswith("if that run is gone, start again with --force_owner")
    first.send_signal(signal.SIGTERM)  # A preemption: the step is saved, the owner released.
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    step = int(out.strip().splitlines()[-1].removeprefix("stopped by SIGTERM at step "))
    assert (workdir / "checkpoints" / str(step)).is_dir() and not (workdir / "owner.json").exists()
