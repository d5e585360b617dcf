"""hnc-jax: the HNC loss (ECCV 2020) in JAX/Flax."""
