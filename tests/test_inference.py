"""Prediction from a workdir: `main.py --mode=cam` on eval images and image files, padding of
any image count to whole device batches (3 simulated devices), the missing-checkpoint error."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from configs import default
from hnc_jax.training import inference
from tests.test_main import ROOT, TINY, run_main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir trained for 2 steps of the tiny default."""
    path = tmp_path_factory.mktemp("inference") / "work"
    result = run_main(f"--workdir={path}", "--config.num_train_steps=2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return path


def tiny_config():
    config = default.get_config()
    config.model_width = 0.0625
    config.batch_size, config.eval_batch_size = 32, 64
    config.eval_split = "test[:64]"
    return config


def test_cam_mode_draws_eval_images_and_files(workdir, tmp_path):
    config = tiny_config()
    path = inference.render_cams(config, str(workdir), None, 3, str(tmp_path / "eval.png"))
    assert Image.open(path).size == (5 * 160, 3 * 160)
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(tmp_path / "a.png")
    files = [str(tmp_path / "a.png")] * 2
    path = inference.render_cams(config, str(workdir), files, 0, str(tmp_path / "files.png"))
    assert Image.open(path).size == (5 * 160, 2 * 160)
    with pytest.raises(ValueError, match="no checkpoint"):
        inference.render_cams(config, str(tmp_path / "empty"), None, 2, str(tmp_path / "x.png"))


PADDING_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from hnc_jax.training import inference, train_step
    from tests.test_train_step import make_batch, tiny_config

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
def test_any_image_count_predicts_on_three_devices(workdir, tmp_path):
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
