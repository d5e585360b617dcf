"""Prediction from a workdir: `main.py --mode=cam` on eval images and image files, padding of
any image count to whole device batches (3 simulated devices), the missing-checkpoint error."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from hnc_jax.data import pipeline
from hnc_jax.training import inference
from tests.helpers import ROOT, TINY, run_main, tiny_config, write_image_folder


def test_cam_mode_draws_eval_images_and_files(trained_run, tmp_path):
    workdir = trained_run[0]
    config = tiny_config(batch_size=32, eval_batch_size=64, eval_split="test[:64]")
    path = inference.render_cams(config, str(workdir), None, 3, str(tmp_path / "eval.png"))
    assert Image.open(path).size == (5 * 160, 3 * 160)
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(tmp_path / "a.png")
    files = [str(tmp_path / "a.png")] * 2
    path = inference.render_cams(config, str(workdir), files, 0, str(tmp_path / "files.png"))
    assert Image.open(path).size == (5 * 160, 2 * 160)
    with pytest.raises(ValueError, match="no checkpoint"):
        inference.render_cams(config, str(tmp_path / "empty"), None, 2, str(tmp_path / "x.png"))


@pytest.mark.parametrize("dataset", ["cluttered_digits", "image_folder"])
def test_image_files_are_preprocessed_as_the_eval_pipeline_does(dataset, tmp_path):
    """Digits are decoded whole, folder images (however small) centrally cropped: an image
    file drawn by --mode=cam gives the model what evaluation gave it."""
    if dataset == "image_folder":
        write_image_folder(tmp_path, {"train": 1, "val": 3}, size=40)
        config = tiny_config(dataset=dataset, image_folder=str(tmp_path), eval_split="val",
                             image_size=16, eval_batch_size=2)  # fmt: skip
    else:
        config = tiny_config(eval_split="test[:4]", eval_batch_size=2)
    data = pipeline.load(config)
    count = 6 if dataset == "image_folder" else 4  # The whole split.
    want = inference.first_eval_examples(data, config, count)["image"]
    if dataset == "image_folder":
        paths = data.files["val"][0]
    else:  # The digits' test images, written out as PNG files.
        paths = [str(tmp_path / f"{i}.png") for i in range(len(want))]
        for path, image in zip(paths, want, strict=True):
            Image.fromarray(image).save(path)
    assert len(paths) == len(want) == count
    np.testing.assert_array_equal(inference.load_images(paths, config), want)


PADDING_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from hnc_jax.training import inference, train_step
    from tests.helpers import make_batch, tiny_config

    config = tiny_config()
    mesh = train_step.make_mesh()
    assert mesh.size == 3
    model = train_step.create_model(config, 10)
    tx, _ = train_step.make_optimizer(config, 10)
    state = train_step.create_train_state(config, model, tx, jax.random.key(0), mesh, (16, 16, 3))
    predict = inference.make_predict(model, mesh)
    variables = train_step.model_variables(state)
    for n in (1, 4, 6):  # Padded to 3, 6 and 6 rows.
        images = make_batch(n=n)["image"]
        logits, cams = predict(variables, images)
        want_logits, want_cams = model.apply(variables, images)
        assert logits.shape == (n, 10) and cams.shape == want_cams.shape
        np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cams, want_cams, rtol=1e-5, atol=1e-5)
    print("ok")
    """
)


@pytest.mark.slow
def test_any_image_count_predicts_on_three_devices(trained_run, tmp_path):
    workdir = trained_run[0]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="3", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", PADDING_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.split() == ["ok"], result.stderr[-3000:]
    # main.py's CAM mode with one image file on 3 devices (batch sizes that divide 3).
    Image.fromarray(np.full((48, 48), 90, np.uint8)).save(tmp_path / "one.png")
    out = tmp_path / "one_cam.png"
    flags = [*TINY, "--config.batch_size=48", "--config.eval_batch_size=96"]
    drawn = run_main(f"--workdir={workdir}", "--mode=cam", f"--images={tmp_path / 'one.png'}",
                     f"--out={out}", *flags, devices=3)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert Image.open(out).size == (5 * 160, 160)
