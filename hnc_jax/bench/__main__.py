"""`python -m hnc_jax.bench ...`: see `cli`."""

from hnc_jax.bench import cli

cli.main()
