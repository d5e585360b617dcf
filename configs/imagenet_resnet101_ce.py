"""ResNet-101, cross-entropy only (the baseline of the HNC runs): same recipe, no HNC.

    python main.py --workdir=gs://BUCKET/r101_ce \
        --config=configs/imagenet_resnet101_ce.py --config.data_dir=gs://BUCKET/tfds

Any HNC config becomes its baseline with `--config.hnc.loss=none` (or `--config.hnc.weight=0`);
for ResNet-152 add `--config.model=resnet152`. Devices: 8 (8 GPUs or an 8-chip TPU slice).
"""

from configs import imagenet_base


def get_config():
    return imagenet_base.get_config()
