"""`noisy_labels_symmetric_20.py` with class-dependent noise: with probability 0.3, each
training label of a digit 2, 3, 5 or 7 flipped to the digit it is often mistaken for (2 -> 7,
3 -> 8, 5 -> 6, 7 -> 1); other digits keep theirs (validation equally noisy, test clean).

    python main.py --workdir=workdir/noisy_30 --config=configs/noisy_labels_asymmetric_30.py

Hardware: 2 CPU cores (Devices: 1); about the default's time.
"""

import ml_collections

from configs import noisy_labels_symmetric_20


def get_config() -> ml_collections.ConfigDict:
    config = noisy_labels_symmetric_20.get_config()
    config.label_noise.update(kind="asymmetric", rate=0.3, flips="2:7,3:8,5:6,7:1")
    return config
