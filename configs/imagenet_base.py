"""Shared base of the ImageNet configs: the released HNC recipe (spec "The released ImageNet
recipe") with cross-entropy only; the configs named after a model and loss adjust it.

120 epochs, global batch 256, SGD lr 0.1 momentum 0.9, weight decay 1e-4 on every parameter
(coupled), lr x0.1 at epochs 30, 60 and 90, no warm-up, random-resized crop without flip,
224x224, per-device BatchNorm statistics. Devices: 8 (8 GPUs, as the original, or an
8-chip TPU slice such as a v5e-8). The data must be prepared in TFDS format (see
docs/data.md); point `--config.data_dir` at it (a local path or gs://).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "resnet101"
    config.model_width = 1.0
    config.stem = "imagenet"
    config.dataset = "imagenet2012"
    config.train_split = "train"
    config.eval_split = "validation"
    config.image_size = 224
    config.augment = ml_collections.ConfigDict(
        dict(random_resized_crop=True, flip=False, crop_padding=0)
    )
    config.batch_size = 256
    config.eval_batch_size = 400  # 50,000 = 125 x 400; divides 8, 16, ... 400 devices' worth.
    config.num_epochs = 120
    config.hnc = ml_collections.ConfigDict(
        dict(loss="none", weight=0.0, k=100, alpha=0.0, temperature=1.0, weight_warmup_epochs=0.0)
    )
    config.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=1e-4,
            weight_decay_mode="coupled",
        )
    )
    config.schedule = "step"
    config.lr_decay_epochs = [30, 60, 90]
    config.lr_decay_factor = 0.1
    config.warmup_epochs = 0.0
    config.log_every_steps = 100
    config.keep_checkpoints = 3
    return config


def with_hnc(config: ml_collections.ConfigDict, loss: str, weight: float):
    """`config` with HNC-`loss` at `weight` (k=100, alpha=0, T=1: the released values)."""
    config.hnc.loss = loss
    config.hnc.weight = weight
    return config
