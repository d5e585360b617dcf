"""A run built from a config: checks first, then the dataset, mesh, model, optimizer and a
fresh replicated state. Training, evaluation and prediction all start here.

Checks come before anything expensive: the config's own fields and the dataset's class
count (from its metadata) first, then the dataset is prepared (the embedded one is built in
seconds; a missing manual download is a one-line ConfigError), and only then is
anything initialised or compiled. Nothing is written to a workdir here.
"""

import dataclasses

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from hnc_jax import models
from hnc_jax.data import pipeline
from hnc_jax.data.dataset import Dataset, DatasetInfo
from hnc_jax.training import train_step


@dataclasses.dataclass
class Job:
    """What every mode needs, built from a validated config."""

    config: ml_collections.ConfigDict
    dataset: Dataset
    mesh: Mesh
    model: models.ResNet
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: train_step.TrainState
    epoch_steps: int
    total_steps: int

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info


def check(config: ml_collections.ConfigDict) -> int:
    """Raises ConfigError (one line) for a config that cannot run; reads no data. Returns the
    dataset's class count."""
    pipeline.validate(config)
    num_classes = pipeline.num_classes(config)
    train_step.validate_config(config, num_classes)
    return num_classes


def build(config: ml_collections.ConfigDict, dataset: Dataset | None = None) -> Job:
    """`check`s `config` and prepares its dataset (unless `dataset` is given: the caller has
    done both), then builds the mesh over every device, the model, the optimizer and a fresh
    state replicated over the mesh."""
    if dataset is None:
        check(config)
        dataset = pipeline.load(config)
    cache = config.compilation_cache_dir
    train_step.enable_compilation_cache(train_step.DEFAULT_CACHE_DIR if cache == "" else cache)
    mesh = train_step.make_mesh()
    model = train_step.create_model(config, dataset.info.num_classes)
    epoch_steps = train_step.steps_per_epoch(config, dataset.info.num_train)
    tx, schedule = train_step.make_optimizer(config, epoch_steps)
    shape = (config.image_size, config.image_size, 3)
    state = train_step.create_train_state(
        config, model, tx, jax.random.key(config.seed), mesh, shape
    )
    total = train_step.num_train_steps(config, epoch_steps)
    return Job(config, dataset, mesh, model, tx, schedule, state, epoch_steps, total)
