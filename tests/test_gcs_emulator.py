"""The GCS emulator of tests/gcs_emulator.py: each gs:// client the project relies on (tf.io.gfile
and etils.epath, orbax over tensorstore, clu event files, TFDS) round-trips through it, the
objects are in the emulator, and nothing lands in the local working directory."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from clu import metric_writers
from etils import epath
from etils.epath import backend as epath_backend

from hnc_jax.data import cluttered_digits

# TFDS, orbax and clu on the emulator: the same versions in both tested sets.
pytestmark = pytest.mark.slow


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """Runs the test in an empty working directory and checks it is still empty after."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_gfile_and_epath_round_trip(gcs_emulator, gcs_bucket, empty_cwd):
    bucket = gcs_bucket.removeprefix("gs://")
    root = epath.Path(gcs_bucket) / "run"
    assert root._backend is epath_backend.tf_backend  # With TF installed, epath uses gfile.
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("hello")
    with tf.io.gfile.GFile(f"{gcs_bucket}/run/a/y.bin", "wb") as f:
        f.write(b"\0\1\2")
    assert (root / "a" / "x.txt").read_text() == "hello"
    assert tf.io.gfile.stat(f"{gcs_bucket}/run/a/y.bin").length == 3
    assert sorted(p.name for p in (root / "a").iterdir()) == ["x.txt", "y.bin"]
    assert [p.name for p in root.glob("a/*.txt")] == ["x.txt"]
    (root / "a" / "x.txt").rename(root / "a" / "z.txt")
    (root / "a").rename(root / "b")  # A directory: TF asks the bucket's storageLayout first.
    assert not (root / "a").exists() and (root / "b").is_dir()
    assert (root / "b" / "z.txt").read_text() == "hello"
    # mkdir made a placeholder object "a/"; the rename copied it like the files.
    assert gcs_emulator.list_objects(bucket, "run/b/") == ["run/b/", "run/b/y.bin", "run/b/z.txt"]
    (root / "b").rmtree()
    assert not (root / "b").exists()
    assert gcs_emulator.list_objects(bucket, "run/b") == []


def test_clu_writes_event_files_that_read_back(gcs_emulator, gcs_bucket, empty_cwd):
    logdir = f"{gcs_bucket}/run"
    writer = metric_writers.create_default_writer(logdir)
    for step in (1, 2, 3):
        writer.write_scalars(step, {"train/loss": 1.0 / step})
    writer.close()
    files = tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*")
    assert len(files) == 1
    values = [
        (event.step, float(tf.make_ndarray(value.tensor)))
        for event in tf.compat.v1.train.summary_iterator(files[0])
        for value in event.summary.value
        if value.tag == "train/loss"
    ]
    assert values == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    name = files[0].removeprefix(f"{gcs_bucket}/")
    assert gcs_emulator.list_objects(gcs_bucket.removeprefix("gs://")) == ["run/", name]


def _state(step: int) -> dict:
    return {"w": jnp.full((8, 4), float(step)), "step": jnp.asarray(step)}


def _manager(directory: epath.Path, read_only: bool = False) -> ocp.CheckpointManager:
    """The project's policy (`training.checkpoints`): the last 2 steps and the best top-1."""
    top1 = lambda metrics: metrics["eval/top1"]  # noqa: E731
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=2),
            ocp.checkpoint_managers.BestN(get_metric_fn=top1, n=1),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=top1,
        enable_async_checkpointing=True,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options)


def _restore(manager: ocp.CheckpointManager, step: int) -> dict:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0))
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def test_orbax_saves_async_keeps_latest_and_best_and_restores(gcs_emulator, gcs_bucket, empty_cwd):
    directory = epath.Path(gcs_bucket) / "run" / "checkpoints"
    with _manager(directory) as manager:
        for step, top1 in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.2)]:
            metrics = {"eval/top1": top1}
            manager.save(step, args=ocp.args.StandardSave(_state(step)), metrics=metrics)
        manager.wait_until_finished()
    with _manager(directory, read_only=True) as manager:
        assert manager.all_steps() == [2, 3, 4]  # Step 1 was deleted from the bucket.
        assert (manager.latest_step(), manager.best_step()) == (4, 2)
        restored = _restore(manager, 4)
    np.testing.assert_array_equal(restored["w"], _state(4)["w"])
    objects = gcs_emulator.list_objects(gcs_bucket.removeprefix("gs://"), "run/checkpoints/")
    assert {name.split("/")[2] for name in objects} == {"", "2", "3", "4"}  # "": the dir itself.
    for step in (2, 3, 4):  # On GCS orbax commits a step with a marker file, not a rename.
        assert f"run/checkpoints/{step}/commit_success.txt" in objects


_KILLED_SAVE = """
import os, time, jax.numpy as jnp, orbax.checkpoint as ocp
from etils import epath
options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
manager = ocp.CheckpointManager({directory!r}, options=options)
manager.save(1, args=ocp.args.StandardSave({{"w": jnp.ones((512, 512))}}))
manager.wait_until_finished()
manager.save(2, args=ocp.args.StandardSave({{"w": jnp.full((512, 512), 2.0)}}))
while not epath.Path({directory!r}, "2", "_CHECKPOINT_METADATA").exists():
    time.sleep(0.001)
os._exit(0)  # Killed while step 2 is being written (its commit takes dozens of requests).
"""


def test_orbax_save_killed_midway_is_ignored_then_redone(gcs_emulator, gcs_bucket, empty_cwd):
    directory = f"{gcs_bucket}/run/checkpoints"
    script = textwrap.dedent(_KILLED_SAVE.format(directory=directory))
    # A subprocess inherits the emulator's env (tensorstore, TF and google-cloud-storage).
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    objects = gcs_emulator.list_objects(gcs_bucket.removeprefix("gs://"), "run/checkpoints/2/")
    assert objects and "run/checkpoints/2/commit_success.txt" not in objects
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
    with ocp.CheckpointManager(directory, options=options) as manager:
        assert manager.latest_step() == 1
        manager.save(2, args=ocp.args.StandardSave({"w": jnp.full((512, 512), 3.0)}))
        manager.wait_until_finished()
        abstract = {"w": jax.ShapeDtypeStruct((512, 512), jnp.float32)}
        restored = manager.restore(2, args=ocp.args.StandardRestore(abstract))
    assert float(restored["w"][0, 0]) == 3.0


def test_tfds_reads_a_dataset_prepared_in_a_bucket(gcs_emulator, gcs_digits_dir, empty_cwd):
    builder = tfds.builder("cluttered_digits", data_dir=gcs_digits_dir)
    assert builder.is_prepared() and builder.data_dir.startswith("gs://tfds/")
    examples = list(tfds.as_numpy(builder.as_dataset("test")))
    assert len(examples) == builder.info.splits["test"].num_examples == 718
    labels = cluttered_digits._digits()[1]
    assert all(example["label"] == labels[example["source_id"]] for example in examples)
    prefix = f"data/cluttered_digits/default/{builder.version}/"
    objects = gcs_emulator.list_objects("tfds", prefix)
    assert f"{prefix}cluttered_digits-test.tfrecord-00000-of-00001" in objects
