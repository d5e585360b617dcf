"""CIFAR-100, small-stem ResNet-18 + HNC-mse (k 10; 200 epochs, cosine, flip + 4-pixel
crop padding). TFDS downloads CIFAR-100 (160 MB) on first use.

    python main.py --workdir=workdir/cifar100 --config=configs/cifar100_resnet18_hnc_mse.py

Not in the paper; lambda and k are starting points, not tuned results. Baseline:
`--config.hnc.loss=none`. Devices: 1 (one GPU). Cost: about 0.56 GFLOPs per 32x32 image forward: an
hour or two on one modern GPU.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model_width = 1.0
    config.dataset = "cifar100"
    config.image_size = 32
    config.augment = ml_collections.ConfigDict(
        dict(random_resized_crop=False, flip=True, crop_padding=4)
    )
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 200
    config.hnc.weight = 0.07
    config.hnc.k = 10
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.warmup_epochs = 1.0
    config.log_every_steps = 100
    return config
