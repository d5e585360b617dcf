"""The harder embedded variant: cluttered_digits/hard, where cross-entropy does not saturate.

Command (from the repository root; builds the dataset on first use, about 20 s):

    python main.py --workdir=workdir/hard --config=configs/cluttered_digits_hard.py

Smaller targets (12-18 px) among 3-6 fragments cut from larger other digits (16-26 px, 50-85%
of their side): the default recipe, model and schedule (8 epochs = 352 steps of 128) otherwise.
Hardware: 2 CPU cores (Devices: 1), about the default's time (150 s with the cores free).
Expected: see the README, "CE vs HNC" (`python -m hnc_jax.sweep --config=cluttered_digits_hard`).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "cluttered_digits/hard"
    return config
