"""Cluttered digits: an offline TFDS dataset with object boxes, built from scikit-learn's digits.

Each example is a `CANVAS` x `CANVAS` x 3 uint8 canvas (grey replicated to 3 channels) holding
one target digit -- a real 8x8 handwritten scan from `sklearn.datasets.load_digits`, scaled to
`TARGET_SIZES` pixels -- at a random position, plus 2-4 clutter fragments: partial crops of
other scans of the same split. Every example carries the target's `label`, its tight ink
`bbox` ([ymin, xmin, ymax, xmax] in [0, 1]) and `source_id` (the index of the scan in
`load_digits`). Train and test use disjoint scans; rendering is a pure function of
(seed, split, example index), so rebuilding gives the same records in the same order (the
decoded features; protobuf may order a record's fields differently in another process).

Model selection: `train_fit` and `validation` partition `train` by target scan (no scan is
the target of canvases in both; ~20% of train's scans validate). Their examples are train's
(same keys, pixels, labels and boxes), and `train` and `test` are those of version 1.0.0;
clutter fragments in all three are cut from the whole train pool (they carry no label).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

CANVAS = 48  # The default small-stem ResNet (total stride 8) gives 6x6 CAMs.
TARGET_SIZES = (16, 24)  # Inclusive range of the target digit's side, in pixels.
FRAGMENTS = (2, 4)  # Inclusive range of clutter fragments per canvas.
FRAGMENT_FRACTION = (0.4, 0.7)  # A fragment's side as a fraction of its scaled digit.
INK_THRESHOLD = 32  # uint8 level above which a target pixel counts as ink for the box.
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2  # Of train's scans.


@dataclasses.dataclass
class ClutteredDigitsConfig(tfds.core.BuilderConfig):
    """`seed`: layout and split seed; `*_copies`: canvases rendered per source scan."""

    seed: int = 0
    train_copies: int = 4
    test_copies: int = 2


def source_split(seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted `load_digits` indices: disjoint 'train' (~80%) and 'test' (~20%), and train's
    partition into 'train_fit' and 'validation' (~20% of train)."""
    n = len(_digits()[0])
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    train = perm[n_test:]
    n_val = round(len(train) * VALIDATION_FRACTION)
    return {
        "train": np.sort(train),
        "test": np.sort(perm[:n_test]),
        "train_fit": np.sort(train[n_val:]),
        "validation": np.sort(train[:n_val]),
    }


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float64 scans in [0, 16] and (1797,) int labels, shipped with sklearn."""
    from sklearn.datasets import load_digits  # Imported lazily: only needed to build.

    digits = load_digits()
    return digits.images, digits.target


def _resize(scan: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (align-corners) resize of a 2-D array to (size, size), in pure numpy so the
    rendering does not depend on an image library's version."""
    h, w = scan.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = scan[y0][:, x0] * (1 - wx) + scan[y0][:, x1] * wx
    bottom = scan[y1][:, x0] * (1 - wx) + scan[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def render(
    target: np.ndarray, pool: np.ndarray, rng: np.random.Generator, canvas: int = CANVAS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one canvas.

    Args:
      target: (8, 8) scan in [0, 16].
      pool: (N, 8, 8) scans the clutter fragments are cut from.
      rng: the example's generator.
      canvas: output side.
    Returns:
      image (canvas, canvas) uint8, target_ink (canvas, canvas) bool (the target's own ink,
      before clutter), box (4,) int [ymin, xmin, ymax, xmax) in pixels (end exclusive).
    """
    size = int(rng.integers(TARGET_SIZES[0], TARGET_SIZES[1] + 1))
    glyph = _resize(target, size) / 16.0 * rng.uniform(0.75, 1.0)
    top, left = rng.integers(0, canvas - size + 1, size=2)
    layer = np.zeros((canvas, canvas))
    layer[top : top + size, left : left + size] = glyph
    target_ink = layer * 255 >= INK_THRESHOLD
    rows, cols = np.flatnonzero(target_ink.any(1)), np.flatnonzero(target_ink.any(0))
    box = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
    image = layer
    for _ in range(rng.integers(FRAGMENTS[0], FRAGMENTS[1] + 1)):
        scan = pool[rng.integers(len(pool))]
        scaled = _resize(scan, int(rng.integers(TARGET_SIZES[0], TARGET_SIZES[1] + 1)))
        fh, fw = (rng.uniform(*FRAGMENT_FRACTION, size=2) * len(scaled)).astype(int)
        fy, fx = rng.integers(0, len(scaled) - np.array([fh, fw]) + 1)
        piece = scaled[fy : fy + fh, fx : fx + fw] / 16.0 * rng.uniform(0.75, 1.0)
        # Clutter goes "around" the target: retry a few placements to keep overlap with the
        # target's box small, so the box stays a fair localization reference.
        for _ in range(8):
            py, px = rng.integers(0, canvas - fh + 1), rng.integers(0, canvas - fw + 1)
            oy = max(0, min(py + fh, box[2]) - max(py, box[0]))
            ox = max(0, min(px + fw, box[3]) - max(px, box[1]))
            if oy * ox <= 0.25 * fh * fw:
                break
        image = image.copy()
        region = image[py : py + fh, px : px + fw]
        image[py : py + fh, px : px + fw] = np.maximum(region, piece)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), target_ink, box


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """Cluttered handwritten digits with target boxes; no download needed."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "train_fit and validation splits (train and test unchanged).",
    }
    BUILDER_CONFIGS = [ClutteredDigitsConfig(name="default", description="48x48, seed 0.")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 derives this through `importlib_resources`, a package it does not
        # install; the path only locates (absent) checksum files.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(CANVAS, CANVAS, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "bbox": tfds.features.BBoxFeature(),
                    "source_id": np.int32,
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything ships with scikit-learn.
        cfg = self.builder_config
        ids = source_split(cfg.seed)
        train = self._generate_examples(ids["train"], cfg.train_copies, 0)
        return {
            "train": train,
            "test": self._generate_examples(ids["test"], cfg.test_copies, 1),
            **{
                name: self._generate_examples(ids["train"], cfg.train_copies, 0, ids[name])
                for name in ("train_fit", "validation")
            },
        }

    def _generate_examples(
        self, ids: np.ndarray, copies: int, split_id: int, targets: np.ndarray | None = None
    ):
        """Canvases of split `split_id` over scans `ids`; with `targets`, only those whose
        target scan is in it (same keys and bytes as in the full split)."""
        images, labels = _digits()
        pool = images[ids]
        for i in range(len(ids) * copies):
            source = int(ids[i // copies])
            if targets is not None and source not in targets:
                continue
            rng = np.random.default_rng([self.builder_config.seed, split_id, i])
            image, _, box = render(images[source], pool, rng)
            yield (
                i,
                {
                    "image": np.repeat(image[..., None], 3, axis=-1),
                    "label": int(labels[source]),
                    "bbox": tfds.features.BBox(*(box / CANVAS).astype(np.float32)),
                    "source_id": source,
                },
            )
