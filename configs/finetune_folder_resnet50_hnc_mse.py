"""Fine-tunes a torchvision ResNet-50 with HNC-mse on your images in class folders.

    python main.py --workdir=workdir/folder_r50 \
        --config=configs/finetune_folder_resnet50_hnc_mse.py \
        --config.init_from=/path/to/resnet50.pth --config.image_folder=/data/myset

reads `/data/myset/train/<class>/*.jpg` and `/data/myset/val/<class>/*.jpg`; k must stay
below the number of classes (`--config.hnc.k=...`). Same recipe as the CUB config.
Devices: 1 (one GPU).
"""

import ml_collections

from configs import finetune_cub_resnet50_hnc_mse


def get_config() -> ml_collections.ConfigDict:
    config = finetune_cub_resnet50_hnc_mse.get_config()
    config.dataset = "image_folder"
    config.image_folder = ""  # Required: the root with train/ and val/.
    config.eval_split = "val"
    config.hnc.k = 5
    return config
