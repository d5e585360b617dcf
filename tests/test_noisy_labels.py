"""The noisy-label study's plan and summary (`hnc_jax.study.noisy_labels`): each setting is
a `sweep` (tests/test_sweep.py runs one) over its config."""

import importlib
import json

from hnc_jax.study import noisy_labels, robustness, sweep


def test_each_setting_is_a_sweep_of_its_noisy_config(tmp_path):
    args = sweep.parse_args(noisy_labels.sweep_args("asymmetric_30", str(tmp_path), 5, {}))
    assert args.config == "noisy_labels_asymmetric_30" and args.test_seeds == 5
    assert (args.mse_weights, args.kd_weights, args.val_seeds) == ("0.03,0.1", "0.003,0.01", 1)
    for name, module in noisy_labels.SETTINGS.items():
        noise = importlib.import_module(f"configs.{module}").get_config().label_noise
        assert f"{noise.kind}_{round(100 * noise.rate)}" == name
        assert noise.eval_splits == "validation"  # Selection sees the noise; test is clean.


def test_summary_holds_the_clean_study_and_each_finished_setting(tmp_path):
    groups = noisy_labels.test_records(str(tmp_path))  # Nothing run: the clean study only.
    assert [len(groups[n]) for n in ("clean", *noisy_labels.SETTINGS)] == [15, 0, 0, 0]
    study = (robustness.RECORDS / "default.jsonl").read_text().splitlines()
    study = {f"default/{r['name']}": r for r in map(json.loads, study) if r["phase"] == "test"}
    for r in groups["clean"]:  # The retrained models are the study's own, to every digit.
        ref = study[r["name"]]
        assert (r["top1"], r["max_box_acc"]) == (ref["top1"], ref["max_box_acc"])
    groups["symmetric_20"] = [
        {**r, "top1": r["top1"] - 0.1, "max_box_acc_v2": 0.5} for r in groups["clean"]
    ]
    lines = noisy_labels.summary(groups).splitlines()
    assert lines[2].startswith("| clean | cross-entropy | - | 5 | 98.1 ± 0.9 |")
    assert lines[3].endswith("| -5.2 [-8.4, -1.9], p=0.029 | -3.3 [-6.0, -0.5], p=0.074 |")
    assert lines[5].startswith("| symmetric_20 | cross-entropy | - | 5 | 88.1 ± 0.9 |")
    assert noisy_labels.figure(groups).axes[0].get_xlabel() == "training labels"
