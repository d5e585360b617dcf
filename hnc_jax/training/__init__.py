"""The training system: config checks, optimizer and the `shard_map` train step
(`train_step`), the job a config builds (`job`), evaluation, orbax checkpoints, the
train-and-evaluate loop (`loop`) and inference from a workdir (`inference`)."""
