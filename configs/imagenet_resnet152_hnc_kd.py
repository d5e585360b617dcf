"""ResNet-152 + HNC-kd (lambda 0.0048, k 100, T 1) on ImageNet: the released recipe.

    python main.py --workdir=gs://BUCKET/r152_hnc_kd \
        --config=configs/imagenet_resnet152_hnc_kd.py --config.data_dir=gs://BUCKET/tfds

Devices: 8 (8 GPUs as the original, or an 8-chip TPU slice).
"""

from configs import imagenet_base


def get_config():
    config = imagenet_base.with_hnc(imagenet_base.get_config(), "kd", 0.0048)
    config.model = "resnet152"
    return config
