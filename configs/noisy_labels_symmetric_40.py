"""`noisy_labels_symmetric_20.py` at twice the noise: each training label replaced, with
probability 0.4, by a uniformly drawn other class (validation equally noisy, test clean).

    python main.py --workdir=workdir/noisy_40 --config=configs/noisy_labels_symmetric_40.py

Hardware: 2 CPU cores (Devices: 1); about the default's time.
"""

import ml_collections

from configs import noisy_labels_symmetric_20


def get_config() -> ml_collections.ConfigDict:
    config = noisy_labels_symmetric_20.get_config()
    config.label_noise.rate = 0.4
    return config
