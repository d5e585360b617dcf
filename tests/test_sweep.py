"""The CE / HNC-mse / HNC-kd sweep: its table, and a tiny end-to-end run."""

import json

import numpy as np
import pytest

from hnc_jax import sweep


def _run(loss, seed, value):
    metrics = {key: value for key, _ in sweep.COLUMNS}
    return {"loss": loss, "seed": seed, **metrics}


def test_format_table_means_and_spreads():
    runs = [_run("none", 0, 0.5), _run("none", 1, 0.7), _run("mse", 0, 0.9)]
    summary = sweep.summarize(runs)
    mean, std = summary["none"]["top1"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summary["mse"]["neg_peak"] == (0.9, 0.0)
    lines = sweep.format_table(runs, note="n").splitlines()
    assert lines[0].startswith("| loss | seeds | test top-1 |")
    # Percent columns are scaled, the others not.
    assert lines[2].startswith("| cross-entropy | 2 | 60.0 ± 14.1 |")
    assert "| 0.60 ± 0.14 |" in lines[2]  # neg-CAM peak
    assert lines[3].startswith("| HNC-mse | 1 | 90.0 ± 0.0 |") and lines[-1] == "n"


def test_bad_sweep_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown losses"):
        sweep.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "t.md"), "--losses=ce"])
    with pytest.raises(ValueError, match="steps > 0"):
        sweep.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "t.md"), "--steps=0"])


@pytest.mark.slow
def test_tiny_sweep_writes_its_table(tmp_path):
    out = tmp_path / "sweep.md"
    args = ["--workdir", str(tmp_path / "runs"), "--out", str(out), "--seeds=1", "--steps=2",
            "--batch_size=16", "--eval_batch_size=32", "--train_split=train[:64]",
            "--eval_split=test[:32]"]  # fmt: skip
    runs = sweep.main(args)
    assert [r["loss"] for r in runs] == ["none", "mse", "kd"]
    table = out.read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:5]] == [
        "cross-entropy", "HNC-mse", "HNC-kd"
    ]  # fmt: skip
    saved = json.loads((tmp_path / "sweep.md.json").read_text())
    assert saved == json.loads(json.dumps(runs))
    for run in runs:
        for key in ("top1", "gt_known_loc", "top1_loc", "max_box_acc", "peak_on_clutter"):
            assert 0.0 <= run[key] <= 1.0
        assert run["num_posi"] <= 9 * 6 * 6 and run["neg_peak"] > -1e3
    # A finished run resumes from its checkpoint instead of retraining: same numbers.
    again = sweep.main([*args, "--losses=mse"])
    assert again[0]["top1"] == runs[1]["top1"] and again[0]["neg_peak"] == runs[1]["neg_peak"]
