"""ResNet-101 + HNC-mse on a Cloud TPU pod slice: the released recipe scaled to more chips.

Global batch 256 per 8 chips (32 per chip, as the original's GPUs) x `chips / 8`; learning
rate scaled linearly (0.1 per 256 images) with 5 epochs of linear warm-up (Goyal et al.),
bfloat16 compute and input, step decay at 30/60/90 epochs. Per-device BatchNorm statistics over
32 images, as in the original. E.g. a v4-64 (32 chips): batch 1024, lr 0.4.

    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd hnc-jax && \
      .venv/bin/python main.py --workdir=gs://BUCKET/r101_pod \
      --config=configs/imagenet_tpu_pod.py --config.data_dir=gs://BUCKET/tfds"

Devices: 32 (a v4-64 has 32 chips, one JAX device each). Other slices: 256 images per 8 chips,
e.g. `--config.batch_size=2048` on a v4-128 (64 devices) or `--config.batch_size=8192` on a
v5e-256 (256 devices); the learning rate follows the batch size unless it is set too
(`--config.optimizer.learning_rate`). eval_batch_size 1024 divides every slice up to 1024
chips.
"""

import ml_collections

from configs import imagenet_base

CHIPS = 32
BASE_BATCH, BASE_LR = 256, 0.1


def get_config() -> ml_collections.ConfigDict:
    config = imagenet_base.with_hnc(imagenet_base.get_config(), "mse", 0.07)
    config.half_precision = True
    config.batch_size = BASE_BATCH * CHIPS // 8
    config.eval_batch_size = 1024  # 50,000 = 48 x 1024 + padding; divides 8 ... 1024 chips.
    # The lr follows --config.batch_size (a FieldReference), unless set explicitly.
    config.optimizer.learning_rate = config.get_ref("batch_size").to_float() * (
        BASE_LR / BASE_BATCH
    )
    config.warmup_epochs = 5.0
    config.log_every_steps = 200
    return config
