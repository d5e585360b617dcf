"""The instability probes: consistent with the train step, box masks, the plot."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from hnc_jax.study import diagnose


def test_box_mask_marks_cells_whose_centre_is_inside():
    boxes = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 0.9]])
    mask = np.asarray(diagnose._box_mask(boxes, 4, 4))
    expected = np.zeros((2, 4, 4), bool)
    expected[0, :2, :2] = True  # Cell centres 0.125, 0.375 are < 0.5; 0.625, 0.875 are not.
    expected[1, 1:, 2:] = True  # y in [0.25, 1): rows 1-3; x in [0.5, 0.9): columns 2-3.
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.slow
def test_trace_agrees_with_the_train_step(tmp_path):
    out = tmp_path / "kd.json"
    args = ["--out", str(out), "--loss=kd", "--weight=0.5", "--steps=3", "--every=1",
            "--train_split=train[:64]", "--eval_split=test[:32]", "--batch_size=16"]  # fmt: skip
    result = diagnose.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    records = result["records"]
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        # The probe sees the step's batch and parameters: same loss parts as the step.
        assert r["ce"] == pytest.approx(r["loss"] - 0.5 * r["kd"], rel=1e-5)
        assert r["kd"] == pytest.approx(r["hnc"], rel=1e-5)
        # The step's gradient is g_ce + w g_kd: its norm by the law of cosines.
        g_ce, g_kd, cos = r["grad_ce_all"], r["grad_kd_all"], r["cos_ce_kd"]
        norm = np.sqrt(g_ce**2 + 0.25 * g_kd**2 + 2 * 0.5 * cos * g_ce * g_kd)
        assert r["grad_norm"] == pytest.approx(norm, rel=1e-3)
        parts = [r[f"grad_kd_{g}"] ** 2 for g in ("head", "bn", "conv")]
        assert r["grad_kd_all"] == pytest.approx(np.sqrt(sum(parts)), rel=1e-5)
        assert 0 <= r["feat_zero_frac"] <= 1 and r["weight"] == 0.5
    assert 0 <= result["eval"]["eval/top1"] <= 1
    png = tmp_path / "trace.png"
    diagnose.main(["--plot", str(png), str(out)])
    assert png.stat().st_size > 0
