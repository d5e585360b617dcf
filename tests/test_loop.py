"""The training job in process: resume after a crash and after SIGTERM is bit-identical, a
non-finite loss stops at its step, eval-only of a saved checkpoint, mock-data ImageNet."""

import itertools
import re
import signal

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import imagenet_resnet101_hnc_mse
from hnc_jax.data import pipeline
from hnc_jax.errors import ConfigError
from hnc_jax.training import checkpoints, job, loop
from tests.helpers import digits_config, final_params, truncate, write_image_folder


class Interrupting:
    """`batches` (a train iterator) running `action(batch)` on its batch `batch_index`; the
    Grain iterator's `state` passes through."""

    def __init__(self, batches, batch_index, action):
        self.batches, self.index, self.action = batches, itertools.count(), (batch_index, action)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        return self.action[1](batch) if next(self.index) == self.action[0] else batch

    def state(self, step):
        return self.batches.state(step)


def interrupt_at(monkeypatch, batch_index, action):
    """Makes the next train_iterator run `action()` when its batch `batch_index` is asked."""
    original = pipeline.train_iterator

    def iterator(dataset, config, start_step=0, state=None):
        return Interrupting(original(dataset, config, start_step, state), batch_index, action)

    monkeypatch.setattr(pipeline, "train_iterator", iterator)


def crash(batch):
    raise KeyboardInterrupt("killed")


@pytest.fixture(params=["tf_data", pytest.param("grain", marks=pytest.mark.slow)])
def backend_config(request):
    """digits_config for each input backend (Grain reads the ArrayRecord build; about 20 s
    more, in the pinned set only)."""
    if request.param == "tf_data":
        return digits_config()
    data_dir = request.getfixturevalue("digits_array_record")
    return digits_config(input_backend="grain", data_dir=data_dir)


def test_resume_after_crash_and_sigterm_is_bit_identical(tmp_path, monkeypatch, backend_config):
    config = backend_config
    result = loop.train_and_evaluate(config, str(tmp_path / "a"))
    assert set(result) == {"step", "eval/loss", "eval/top1", "eval/top5", "eval/num_posi"}
    step_a, params_a = final_params(config, tmp_path / "a")
    workdir = str(tmp_path / "b")
    # The loop reads batches two steps ahead: batch i is read as step i - 1 is dispatched.
    with monkeypatch.context() as patch:  # Killed at step 4: resumes from step 2.
        interrupt_at(patch, 5, crash)
        with pytest.raises(KeyboardInterrupt):
            loop.train_and_evaluate(config, workdir)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with monkeypatch.context() as patch:  # SIGTERM during step 3: saves step 3, stops.
            interrupt_at(patch, 0, lambda b: signal.raise_signal(signal.SIGTERM) or b)
            assert loop.train_and_evaluate(config, workdir) == {"step": 3, "preempted": 1}
        assert signal.getsignal(signal.SIGTERM) is handler  # The loop's handler is gone.
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert final_params(config, workdir)[0] == 3
    loop.train_and_evaluate(config, workdir)
    step_b, params_b = final_params(config, workdir)
    assert step_a == step_b == 6
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    # Grain: its iterator state is in each checkpoint (it resumed the stream), a file a process.
    saved = (tmp_path / "b" / "checkpoints" / "6" / "data" / "process_0-of-1.json").exists()
    assert saved == (config.input_backend == "grain")
    # Eval-only of the best (here: the only evaluated) checkpoint gives the run's result.
    evaluated = loop.evaluate_checkpoint(config, str(tmp_path / "a"), "best")
    assert evaluated == result


@pytest.mark.slow
def test_non_finite_loss_stops_with_its_step(tmp_path, monkeypatch):
    config = digits_config()
    config.image_dtype = "float32"  # Normalised on the host, so a NaN image can be fed.
    interrupt_at(monkeypatch, 2, lambda b: {**b, "image": np.full_like(b["image"], np.nan)})
    with pytest.raises(FloatingPointError, match="at step 3; the last good checkpoint is step 2"):
        loop.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_a_failed_evaluation_keeps_its_step_and_releases_the_workdir(tmp_path):
    folder, workdir = tmp_path / "images", tmp_path / "work"
    write_image_folder(folder, {"train": 4, "val": 2})
    good = (folder / "val" / "b" / "1.jpg").read_bytes()
    bad = truncate(folder / "val" / "b" / "1.jpg")
    fields = dict(dataset="image_folder", image_folder=str(folder), train_split="train",
                  eval_split="val", image_size=16, batch_size=4, eval_batch_size=4)  # fmt: skip
    config = digits_config(**fields, num_train_steps=4, eval_every_steps=2, **{"hnc.k": 1})
    with pytest.raises(
        ConfigError, match=f"cannot decode 1 image of the val split: {re.escape(bad)}"
    ):
        loop.train_and_evaluate(config, str(workdir))
    # Step 2's evaluation failed after its training: the step is on disk, the owner gone.
    with checkpoints.create_manager(str(workdir), 2, read_only=True) as manager:
        assert manager.all_steps() == [2]
    assert not (workdir / "owner.json").exists() and (workdir / "config.json").exists()
    (folder / "val" / "b" / "1.jpg").write_bytes(good)  # Repaired: the run goes on from 2.
    assert loop.train_and_evaluate(config, str(workdir))["step"] == 4


@pytest.mark.slow
def test_imagenet_config_trains_a_step_on_mock_data(tmp_path, monkeypatch):
    # mock_data fakes the records but not `is_prepared`, which guards manual datasets.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    config = imagenet_resnet101_hnc_mse.get_config()
    config.update(
        dict(
            model="resnet50",
            model_width=0.0625,
            image_size=32,
            batch_size=4,
            eval_batch_size=4,
            num_train_steps=1,
            image_panel_examples=0,
            data_dir=str(tmp_path / "tfds"),
        )
    )
    # At init a ResNet-50's gradient norm on a batch of 4 noise images is ~2,000 (torch's
    # too): the recipe's lr of 0.1 would blow the weights up in this one step.
    config.optimizer.learning_rate = 1e-5
    with tfds.testing.mock_data(num_examples=8):
        result = loop.train_and_evaluate(config, str(tmp_path / "work"))
    assert 0.0 <= result["eval/top5"] <= 1.0
    # Running BN statistics barely moved in one step, so not ln(1000) = 6.9, but no blow-up
    # (lr 0.1 gave 3e28 or NaN).
    assert 3.0 < result["eval/loss"] < 100.0


@pytest.mark.slow
def test_eval_localization_adds_the_cam_metrics(trained_run):
    config = digits_config(eval_localization=True)
    result = loop.evaluate_checkpoint(config, str(trained_run[0]))
    v2 = [f"eval/max_box_acc_v2_iou{d}" for d in (30, 50, 70)]
    for key in ("eval/max_box_acc", "eval/max_box_acc_v2", *v2, "eval/gt_known_loc"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["eval/max_box_acc_v2"] == pytest.approx(np.mean([result[k] for k in v2]))


def test_init_from_another_run_loads_its_weights_only(tmp_path):
    config = digits_config(num_train_steps=2)
    loop.train_and_evaluate(config, str(tmp_path / "a"))
    _, params_a = final_params(config, tmp_path / "a")
    run = job.build(config.copy_and_resolve_references())
    state = checkpoints.init_from(str(tmp_path / "a"), run.state, run.info.num_classes)
    assert int(state.step) == 0  # A new run: step and optimizer state start afresh.
    jax.tree.map(np.testing.assert_array_equal, params_a, jax.device_get(state.params))
    jax.tree.map(np.testing.assert_array_equal, run.state.opt_state, state.opt_state)
    # The trainer uses it for a new workdir (and ignores it when resuming).
    config.init_from = str(tmp_path / "a")
    result = loop.train_and_evaluate(config, str(tmp_path / "b"))
    assert result["eval/top1"] >= 0.0
    with pytest.raises(ValueError, match="no latest checkpoint in .*none/checkpoints"):
        checkpoints.init_from(str(tmp_path / "none"), run.state, run.info.num_classes)


def test_rates_exclude_evaluation_and_num_posi_is_the_log_steps():
    clock = iter([0.0, 4.0, 10.0, 12.0]).__next__
    watch = loop.Stopwatch(clock)  # Starts at 0.
    watch.pause()  # An evaluation from 4 ...
    watch.resume()  # ... to 10: not training time.
    assert watch.lap() == 6.0  # 4 s before the evaluation + 2 s after it.
    window = [
        {"loss": 1.0, "lr": 0.1, "grad_norm": 2.0},
        {"loss": 3.0, "lr": 0.2, "grad_norm": 4.0, "num_posi": 7.0},
    ]
    summary = loop.summarize(window, 8.0, batch_size=16)
    assert summary == {
        "train/loss": 2.0,
        "train/grad_norm": 3.0,
        "train/num_posi": 7.0,  # Only the log step computes it.
        "train/lr": 0.2,
        "train/steps_per_sec": 0.25,
        "train/images_per_sec": 4.0,
    }
