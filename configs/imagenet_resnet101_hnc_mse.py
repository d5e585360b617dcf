"""ResNet-101 + HNC-mse (lambda 0.07, k 100) on ImageNet: the released recipe.

    python main.py --workdir=gs://BUCKET/r101_hnc_mse \
        --config=configs/imagenet_resnet101_hnc_mse.py --config.data_dir=gs://BUCKET/tfds

Hardware: 8 GPUs as the original (32 images each), or an 8-chip TPU slice. Devices: 8. Expected
result: the paper's ResNet-101 HNC row (best validation top-1 over the 120 epochs); not run here (no
ImageNet and no accelerator in this workplace). The cross-entropy baseline is
configs/imagenet_resnet101_ce.py. Cost: 120 epochs = 600k steps of 256 images (about 7.8 GFLOPs x 3
per image): days on 8 V100s, hours on a v4-32/v5e-64 slice (with configs/imagenet_tpu_pod.py's
scaling).
"""

from configs import imagenet_base


def get_config():
    return imagenet_base.with_hnc(imagenet_base.get_config(), "mse", 0.07)
