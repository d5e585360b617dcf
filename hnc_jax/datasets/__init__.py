"""Datasets shipped with hnc-jax. Importing this package registers them with TFDS."""

from hnc_jax.datasets.cluttered_digits import ClutteredDigits

__all__ = ["ClutteredDigits"]
