"""The multi-label embedded variant: cluttered_digits/multi, 2-3 distinct digits per canvas.

Command (from the repository root; builds the dataset on first use, about 20 s):

    python main.py --workdir=workdir/multi --config=configs/cluttered_digits_multi.py

Labels are multi-hot (10 classes); the loss is the sigmoid cross-entropy plus HNC over the k=3
highest-scoring absent classes (every present class is excluded). Evaluation reports eval/mAP
(mean over classes of average precision) and eval/f1 (example-based F1 of the classes with a
positive logit); eval/top1 is the fraction of images whose highest-scoring class is present.
The default recipe, model and schedule otherwise. Hardware: 2 CPU cores (Devices: 1), about
the default's time. Expected: see the README, "CE vs HNC".
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "cluttered_digits/multi"
    return config
