"""Per-dataset RGB statistics for input normalisation (no TensorFlow: the train step and the
model use them on the device, the tf.data pipeline on the host)."""

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Channel statistics of each train split; anything else uses ImageNet's.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cluttered_digits": ((0.104,) * 3, (0.224,) * 3),
}


def normalization(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel of `dataset`, for images scaled to [0, 1]; a TFDS config or
    version ('cluttered_digits/hard', 'cifar10:3.0.2') uses its dataset's."""
    return STATS.get(dataset.split("/")[0].split(":")[0], (IMAGENET_MEAN, IMAGENET_STD))
