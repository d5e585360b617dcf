"""hnc-jax: the HNC loss (ECCV 2020) in JAX/Flax.

The library: `models` (ResNets returning logits and CAMs), `losses` (HNC-mse, HNC-kd,
cross-entropy), `cam` (CAM maps, boxes, localization metrics), `multilabel` (mAP, F1),
`figures` (the paper's CAM overlays). The training system: `training`, `data`, `weights`;
tools: `bench`, `study`. Importing the library loads neither TensorFlow nor torch.
"""

__version__ = "0.2.0"
