"""`python -m hnc_jax.bench e2e --tiny`: the train loop with its input runs and prints sane
figures, for the Grain backend (the tf.data one shares every other part)."""

import json
import math

import pytest

from hnc_jax.bench import cli


@pytest.mark.slow  # About 12 s (a ResNet-50 compiled): the pinned set runs it.
def test_tiny_e2e_prints_sane_figures(capsys):
    cli.main(["e2e", "--tiny", "--backend=grain"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0
    assert 0.0 <= result["input_wait"] <= 1.0
    assert 0.0 < result["host_cores"] < 64
    assert result["backend"] == "grain" and result["steps"] == 2
