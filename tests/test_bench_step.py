"""The benchmark module runs end to end on tiny settings (the timings themselves are not
tested: targets live in `python -m hnc_jax.bench`, see docs/benchmarks.md)."""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hnc_jax.bench import cli, inputs, step
from hnc_jax.training import train_step


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


TINY_STEP = ["--model=resnet18", "--width=0.125", "--stem=small", "--image_size=16"]
TINY_STEP += ["--batch_size=4", "--num_classes=10", "--k=3", "--repeats=2", "--warmup=1"]


@pytest.mark.slow
def test_step_bench_reports_every_variant(capsys):
    cli.main(["step", *TINY_STEP])
    result = _last_json(capsys)
    assert {f"{loss}_images_per_s" for loss in ("ce", "hnc_mse", "hnc_kd")} <= set(result)
    assert result["compile_s"] > 0 and result["repeats"] == 2 and result["batch_size"] == 4


def test_the_timed_step_is_the_train_step():
    parsed = argparse.Namespace(
        model="resnet18", width=0.125, stem="small", scan_blocks=False, image_size=16,
        batch_size=4, num_classes=10, k=3, bf16=False,
    )  # fmt: skip
    train, state, batch, _ = step._build(parsed, "mse")
    config = step._config(parsed, "mse")
    mesh = train_step.make_mesh()
    model = train_step.create_model(config, parsed.num_classes)
    tx, schedule = train_step.make_optimizer(config, epoch_steps=1000)
    real = train_step.make_train_step(config, model, tx, schedule, mesh)
    copy = jax.tree.map(jnp.copy, state)
    got_state, got = train(state, batch)
    want_state, want = real(copy, batch)
    jax.tree.map(np.testing.assert_array_equal, (got_state, got), (want_state, want))
    assert int(got_state.step) == 1 and float(got["hnc"]) > 0  # A step of HNC-mse training.


def test_timing_waits_for_the_device():
    # A step of 20 chained 1000x1000 matmuls (~0.2 s here) whose dispatch returns at once.
    @jax.jit
    def slow_step(state, batch):
        x = jax.lax.fori_loop(0, 20, lambda i, x: jnp.tanh(x @ batch), jnp.full((1000,) * 2, state))
        return state + x[0, 0], {"loss": x[0, 0]}

    runs = {
        "slow": dict(step=slow_step, state=jnp.float32(1.0), batch=0.5 * jnp.eye(1000), times=[])
    }
    step.time_interleaved(runs, warmup=1, repeats=3)
    waited = []  # The step run to completion, timed here: what a timing must include.
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(slow_step(runs["slow"]["state"], runs["slow"]["batch"]))
        waited.append(time.perf_counter() - start)
    # Not waiting would time the dispatch alone (milliseconds, tens under load); half the
    # fastest full run leaves room for a loaded machine's noise either way.
    assert len(runs["slow"]["times"]) == 3 and min(runs["slow"]["times"]) > 0.5 * min(waited)
    assert float(runs["slow"]["state"]) > 1.0  # Every call's state fed the next.


def test_input_bench_times_both_pipelines(capsys):
    # The backends' rows: tf.data alone here (a Grain worker starts a process of its own).
    inputs.main(["--images=3", "--rounds=1", "--repeats=2", "--size=32", "--batch=2",
                 "--batches=1", "--warmup=0", "--workers="])  # fmt: skip
    result = _last_json(capsys)
    assert result["tf_images_per_s_per_core"] > 0 and result["pil_images_per_s_per_core"] > 0
    want = result["tf_images_per_s_per_core"] / result["pil_images_per_s_per_core"]
    assert result["ratio"] == pytest.approx(want, abs=0.01)
    (row,) = result["backends"]
    assert row["backend"] == "tf_data" and row["images_per_s_per_core"] > 0
    assert row["peak_memory_mb"] > 0 and row["first_batch_s"] > 0


def test_input_bench_tf_side_is_the_uint8_train_transform(tmp_path):
    data = inputs.write_jpegs(tmp_path, 2)
    batches = list(inputs.tf_dataset(data, 32, repeats=3).as_numpy_iterator())
    images = np.concatenate(batches)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert not np.array_equal(images[0], images[2])  # Each pass draws new crops.


@pytest.mark.parametrize(
    "argv,message",
    [
        (["step", "--k=0"], "--k must be in"),
        (["step", "--variants=ce"], "--variants must be"),
        (["input", "--repeats=0"], "--repeats must be >= 1"),
        (["input", "--images=3"], "--batch must be at most --images (3), got 32"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err
