"""A run built from a config: checks first, then the dataset, mesh, model, optimizer and a
fresh replicated state. Training, evaluation and prediction all start here.

Checks come before anything expensive: the config's own fields and the dataset's class
count (from its metadata) first, then the dataset is prepared (the embedded one is built in
seconds; a missing manual download is a one-line FileNotFoundError), and only then is
anything initialised or compiled. Nothing is written to a workdir here.
"""

import dataclasses

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from hnc_jax import input_pipeline, models, train


@dataclasses.dataclass
class Job:
    """What every mode needs, built from a validated config."""

    config: ml_collections.ConfigDict
    dataset: input_pipeline.Dataset
    mesh: Mesh
    model: models.ResNet
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: train.TrainState
    epoch_steps: int
    total_steps: int

    @property
    def info(self) -> input_pipeline.DatasetInfo:
        return self.dataset.info


def check(config: ml_collections.ConfigDict) -> int:
    """Raises ValueError (one line) for a config that cannot run; reads no data. Returns the
    dataset's class count."""
    input_pipeline.validate(config)
    num_classes = input_pipeline.num_classes(config)
    train.validate_config(config, num_classes)
    return num_classes


def build(config: ml_collections.ConfigDict) -> Job:
    """`check`s `config`, prepares its dataset, and builds the mesh over every device, the
    model, the optimizer and a fresh state replicated over the mesh."""
    check(config)
    dataset = input_pipeline.load(config)
    cache = config.compilation_cache_dir
    train.enable_compilation_cache(train.DEFAULT_CACHE_DIR if cache == "" else cache)
    mesh = train.make_mesh()
    model = train.create_model(config, dataset.info.num_classes)
    epoch_steps = train.steps_per_epoch(config, dataset.info.num_train)
    tx, schedule = train.make_optimizer(config, epoch_steps)
    shape = (config.image_size, config.image_size, 3)
    state = train.create_train_state(config, model, tx, jax.random.key(config.seed), mesh, shape)
    total = train.num_train_steps(config, epoch_steps)
    return Job(config, dataset, mesh, model, tx, schedule, state, epoch_steps, total)
