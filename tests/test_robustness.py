"""The robustness study's design and report (`hnc_jax.study.robustness`) on records made
here; running it is `main.py --mode=attack` per model (tests/test_attacks.py) after the
study's own training (tests/test_sweep.py)."""

import numpy as np

from hnc_jax.study import design, robustness


def test_settings_are_the_study_selection_read_from_its_records():
    default = robustness.selected_settings("default")
    assert default == [
        design.Setting("none", 0.0, 3, 0.0),
        design.Setting("mse", 0.1, 3, 2.0),
        design.Setting("kd", 0.01, 3, 0.0),
    ]
    assert [s.loss for s in robustness.selected_settings("hard")] == ["none", "mse", "kd"]
    runs = robustness.planned_runs(["default", "hard"], seeds=5)
    assert len(runs) == 30 and runs[0] == ("default", design.Run("test", default[0], 0))
    assert runs[3][1].seed == 1  # Seed-major: every loss's seed 0 first.


def record(loss: str, seed: int, shift: float) -> dict:
    rng = np.random.default_rng(seed)
    clean = 0.95 + shift + 0.01 * rng.standard_normal()
    return {
        "data": "default", "loss": loss, "weight": 0.1 * (loss != "none"), "k": 3,
        "warmup": 0.0, "seed": seed, "top1": clean, "max_box_acc_v2": 0.6 + shift,
        "fgsm": {"0": clean, "4": clean - 0.3, "8": clean - 0.6},
        "pgd": {"0": clean, "4": clean - 0.5 + shift, "8": clean - 0.9 + 3 * shift},
    }  # fmt: skip


def test_tables_and_figure_from_records():
    records = [record(loss, seed, shift) for seed in range(5)
               for loss, shift in (("none", 0.0), ("mse", 0.02))]  # fmt: skip
    text = robustness.tables(records)
    lines = text.splitlines()
    assert lines[0] == "### default data (test split)"
    assert lines[4].startswith("| HNC-mse | w=0.1, k=3 | 5 | ")
    assert lines[4].split(" | ")[5].startswith("+2.0 [+2.0, +2.0], p=")  # MaxBoxAccV2.
    pgd_4 = next(line for line in lines if line.startswith("| PGD | 4 |"))
    assert pgd_4.split(" | ")[4].startswith("+4.0 [")  # HNC-mse vs CE under PGD at 4/255.
    # Averaged over the epsilons > 0: (+4.0 at 4/255 + 8.0 at 8/255) / 2.
    pgd_mean = next(line for line in lines if line.startswith("| PGD | mean over epsilon > 0 |"))
    assert pgd_mean.split(" | ")[4].startswith("+6.0 [")
    fig = robustness.figure(records)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "default data, PGD"
