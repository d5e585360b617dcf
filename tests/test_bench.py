"""The benchmark module runs end to end on tiny settings (the timings themselves are not
tested: targets live in `python -m hnc_jax.bench`, see the README)."""

import json

import numpy as np
import pytest

from hnc_jax import bench, input_bench


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_step_bench_reports_every_variant(capsys):
    bench.main(
        ["step", "--model=resnet18", "--width=0.125", "--stem=small", "--image_size=16"]
        + ["--batch_size=4", "--num_classes=10", "--k=3", "--repeats=2", "--warmup=1"]
    )
    result = _last_json(capsys)
    for loss in ("ce", "hnc_mse", "hnc_kd"):
        assert result[f"{loss}_ms"] > 0
        want = result["batch_size"] / (result[f"{loss}_ms"] / 1000)
        assert result[f"{loss}_images_per_s"] == pytest.approx(want)
    for loss in ("hnc_mse", "hnc_kd"):
        assert result[f"{loss}_ratio"] == pytest.approx(result[f"{loss}_ms"] / result["ce_ms"])
    assert result["compile_s"] > 0 and result["repeats"] == 2


def test_input_bench_times_both_pipelines(capsys):
    input_bench.main(["--images=3", "--rounds=1", "--repeats=2", "--size=32"])
    result = _last_json(capsys)
    assert result["tf_images_per_s_per_core"] > 0 and result["pil_images_per_s_per_core"] > 0
    want = result["tf_images_per_s_per_core"] / result["pil_images_per_s_per_core"]
    assert result["ratio"] == pytest.approx(want, abs=0.01)


def test_input_bench_tf_side_is_the_uint8_train_transform(tmp_path):
    data = input_bench.write_jpegs(tmp_path, 2)
    batches = list(input_bench.tf_dataset(data, 32, repeats=3).as_numpy_iterator())
    images = np.concatenate(batches)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert not np.array_equal(images[0], images[2])  # Each pass draws new crops.


@pytest.mark.parametrize(
    "argv,message",
    [
        (["step", "--k=0"], "--k must be in"),
        (["step", "--variants=ce"], "--variants must be"),
        (["input", "--repeats=0"], "--repeats must be >= 1"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err
