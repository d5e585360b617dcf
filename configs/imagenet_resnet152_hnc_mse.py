"""ResNet-152 + HNC-mse (lambda 0.07, k 100) on ImageNet: the released recipe.

    python main.py --workdir=gs://BUCKET/r152_hnc_mse \
        --config=configs/imagenet_resnet152_hnc_mse.py --config.data_dir=gs://BUCKET/tfds

Devices: 8 (8 GPUs as the original, or an 8-chip TPU slice). Cost: about 1.5x ResNet-101's
(11.5 GFLOPs per image forward).
"""

from configs import imagenet_base


def get_config():
    config = imagenet_base.with_hnc(imagenet_base.get_config(), "mse", 0.07)
    config.model = "resnet152"
    return config
