"""The default run with noisy training labels: each training label replaced,
with probability 0.2, by a uniformly drawn other class.

Command (from the repository root; needs no download):

    python main.py --workdir=workdir/noisy_20 \
        --config=configs/noisy_labels_symmetric_20.py

The noise is a pure function of (label_noise.seed, the image), the same for every training seed
(hnc_jax/data/label_noise.py). The validation split, which only the study's selection reads,
has the same noise; the test split is clean. HNC-mse at the default's weight 0.1 ramped up over
2 epochs (the clean data's selected setting); the study (docs/claims.md, noisy labels:
`python -m hnc_jax.study.noisy_labels`) selects each loss's weight under this noise.
Hardware: 2 CPU cores (Devices: 1); about the default's time (150 s with the cores free).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.hnc.weight_warmup_epochs = 2.0
    config.label_noise.update(kind="symmetric", rate=0.2, flips="", eval_splits="validation")
    return config
