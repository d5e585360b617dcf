"""Fine-tunes a torchvision ResNet-50 with HNC-mse on CUB-200-2011 (`caltech_birds2011`).

    tfds build caltech_birds2011 --data_dir=$DATA  # Once: downloads 1.1 GB, prepares it.
    python main.py --workdir=workdir/cub_r50 --config=configs/finetune_cub_resnet50_hnc_mse.py \
        --config.init_from=/path/to/resnet50.pth --config.data_dir=$DATA
    python main.py --workdir=workdir/cub_r50 --mode=eval  # + localization: MaxBoxAccV2, ...

`init_from`: a torchvision `.pth` state_dict (see docs/weights.md) or an orbax checkpoint
directory of this project; the 1000-class head is replaced by a fresh 200-class one. The run
never downloads (`download_data=False`): an unprepared dataset is a one-line error. `--mode=eval`
also scores the true class's CAM against CUB's boxes (`eval_localization`: GT-known loc,
MaxBoxAcc, MaxBoxAccV2 as published WSOL tables report it; docs/cams.md).
Devices: 1 (one GPU): about 5,994 train images x 40 epochs at batch 64.
Expected result: not measured here (no GPU, no data download in this workplace); run the same
command with `--config.hnc.loss=none` for the cross-entropy baseline the paper compares with.
"""

import ml_collections

from configs import imagenet_base


def get_config() -> ml_collections.ConfigDict:
    config = imagenet_base.with_hnc(imagenet_base.get_config(), "mse", 0.07)
    config.model = "resnet50"
    config.init_from = ""  # Required: a .pth file or a workdir of this project.
    config.dataset = "caltech_birds2011"
    config.download_data = False
    config.eval_localization = True
    config.train_split = "train"
    config.eval_split = "test"
    config.augment.flip = True
    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 40
    config.hnc.k = 20  # 200 classes: the hard negatives are the closest bird species.
    config.optimizer.learning_rate = 0.01
    config.schedule = "cosine"
    config.warmup_epochs = 1.0
    config.log_every_steps = 20
    return config
