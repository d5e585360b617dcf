"""ResNet-50 + HNC-mse on ImageNet (not in the paper; lambda 0.07 as for ResNet-101).

    python main.py --workdir=gs://BUCKET/r50_hnc_mse \
        --config=configs/imagenet_resnet50_hnc_mse.py --config.data_dir=gs://BUCKET/tfds

Devices: 8 (8 GPUs or an 8-chip TPU slice). About 4.1 GFLOPs per image forward (half of
ResNet-101).
"""

from configs import imagenet_base


def get_config():
    config = imagenet_base.with_hnc(imagenet_base.get_config(), "mse", 0.07)
    config.model = "resnet50"
    return config
