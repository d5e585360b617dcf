"""FGSM and PGD on a trained workdir (`hnc_jax.training.attacks`, `main.py --mode=attack`):
epsilon 0 is the clean top-1 of the same checkpoint, PGD is at least as strong as FGSM, the
attack lowers top-1, and bad settings are one-line errors."""

import json
import re

import pytest

from hnc_jax.errors import ConfigError
from hnc_jax.training import attacks
from tests.helpers import run_main, summary_line, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def trained_config():
    """The config `trained_run` trained with (tests/conftest.py)."""
    return tiny_config(batch_size=32, eval_batch_size=64, eval_split="test[:64]")


@pytest.mark.parametrize(
    "attack, message",
    [
        (attacks.Attack(kinds=("cw",)), r"unknown attacks \['cw'\]; allowed: fgsm, pgd"),
        (attacks.Attack(epsilons=(-1.0,)), r"epsilons must be in \[0, 255\] pixel units"),
        (attacks.Attack(steps=0), "PGD needs steps >= 1 and step_size > 0"),
    ],
)
def test_bad_attack_settings_are_one_line_errors(attack, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        attacks.attack_checkpoint(trained_config(), str(tmp_path), attack)


def test_attack_mode_epsilon_zero_is_clean_and_pgd_is_stronger(trained_run, tmp_path):
    workdir, training = trained_run
    out = tmp_path / "attack.json"
    result = run_main(f"--workdir={workdir}", "--mode=attack", "--epsilons=0,32",
                      "--pgd_steps=3", f"--out={out}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| epsilon (of 255) | FGSM top-1 % | PGD top-1 % |"
    assert json.loads(lines[-1]) == written
    assert written["examples"] == 64 and written["step"] == 3
    fgsm, pgd = written["fgsm"], written["pgd"]
    # The training's own evaluation of this checkpoint (step 3, the same 64 test images),
    # printed to 4 decimals: enough to tell k/64 from (k +- 1)/64.
    clean = float(re.search(r"eval/top1=([0-9.]+)", summary_line(training.stdout))[1])
    assert round(fgsm["0"], 4) == round(pgd["0"], 4) == clean
    assert pgd["32"] <= fgsm["32"] <= clean
    assert pgd["32"] < clean  # 32/255 moves a 3-step model off most answers.
    bad = run_main(f"--workdir={workdir}", "--mode=attack", "--epsilons=1,x")
    assert bad.returncode == 1  # absl's flag check, before anything is imported or read.
    assert "--epsilons takes numbers in [0, 255]" in bad.stderr
