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
LAYOUT_TRIES = 256  # Multi-digit layouts (~8% of random 3-digit ones are disjoint).


@dataclasses.dataclass(frozen=True)
class Style:
    """How a canvas is drawn: digits per canvas (distinct classes), their side in pixels, the
    clutter fragments' count, source-digit side and crop fraction (inclusive ranges)."""

    digits: tuple[int, int] = (1, 1)
    target_sizes: tuple[int, int] = TARGET_SIZES
    fragments: tuple[int, int] = FRAGMENTS
    fragment_sizes: tuple[int, int] = TARGET_SIZES
    fragment_fraction: tuple[float, float] = FRAGMENT_FRACTION

    @property
    def multi_label(self) -> bool:
        return self.digits[1] > 1


@dataclasses.dataclass
class ClutteredDigitsConfig(tfds.core.BuilderConfig):
    """`seed`: layout and split seed; `*_copies`: canvases rendered per source scan;
    `style`: the drawing; `part_pools`: a train canvas takes its clutter (and other digits)
    only from the scans of its own part, train_fit or validation, so that no scan appears in
    both (the default config predates this and draws from all of train)."""

    seed: int = 0
    train_copies: int = 4
    test_copies: int = 2
    style: Style = Style()
    part_pools: bool = False


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


def _overlap(box: np.ndarray, y: int, x: int, h: int, w: int) -> int:
    """Pixels shared by box [y0, x0, y1, x1) and the h x w rectangle at (y, x)."""
    oy = max(0, min(y + h, box[2]) - max(y, box[0]))
    ox = max(0, min(x + w, box[3]) - max(x, box[1]))
    return oy * ox


def render(
    targets: np.ndarray,
    pool: np.ndarray,
    rng: np.random.Generator,
    canvas: int = CANVAS,
    style: Style = Style(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one canvas.

    Args:
      targets: (n, 8, 8) scans in [0, 16], the canvas's labelled digits (n=1: single-label).
      pool: (N, 8, 8) scans the clutter fragments are cut from.
      rng: the example's generator.
      canvas: output side.
      style: sizes and counts.
    Returns:
      image (canvas, canvas) uint8, ink (n, canvas, canvas) bool (each target's own ink,
      before clutter), boxes (n, 4) int [ymin, xmin, ymax, xmax) in pixels (end exclusive).
    """
    sizes = [int(rng.integers(style.target_sizes[0], style.target_sizes[1] + 1))]
    glyphs = [_resize(targets[0], sizes[0]) / 16.0 * rng.uniform(0.75, 1.0)]
    for target in targets[1:]:
        sizes.append(int(rng.integers(style.target_sizes[0], style.target_sizes[1] + 1)))
        glyphs.append(_resize(target, sizes[-1]) / 16.0 * rng.uniform(0.75, 1.0))
    for _ in range(LAYOUT_TRIES):  # Whole layouts until the digits' squares are disjoint.
        corners = [rng.integers(0, canvas - size + 1, size=2) for size in sizes]
        squares = [np.r_[c, c + size] for c, size in zip(corners, sizes, strict=True)]
        if all(
            _overlap(squares[j], *squares[i][:2], sizes[i], sizes[i]) == 0
            for i in range(len(sizes))
            for j in range(i)
        ):
            break
    image, inks, boxes = np.zeros((canvas, canvas)), [], []
    for (top, left), size, glyph in zip(corners, sizes, glyphs, strict=True):
        layer = np.zeros((canvas, canvas))
        layer[top : top + size, left : left + size] = glyph
        ink = layer * 255 >= INK_THRESHOLD
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        boxes.append(np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]))
        inks.append(ink)
        image = np.maximum(image, layer)
    for _ in range(rng.integers(style.fragments[0], style.fragments[1] + 1)):
        scan = pool[rng.integers(len(pool))]
        side = int(rng.integers(style.fragment_sizes[0], style.fragment_sizes[1] + 1))
        scaled = _resize(scan, side)
        fh, fw = (rng.uniform(*style.fragment_fraction, size=2) * len(scaled)).astype(int)
        fy, fx = rng.integers(0, len(scaled) - np.array([fh, fw]) + 1)
        piece = scaled[fy : fy + fh, fx : fx + fw] / 16.0 * rng.uniform(0.75, 1.0)
        # Clutter goes "around" the targets: retry a few placements to keep overlap with their
        # boxes small, so the boxes stay a fair localization reference.
        for _ in range(8):
            py, px = rng.integers(0, canvas - fh + 1), rng.integers(0, canvas - fw + 1)
            if max(_overlap(box, py, px, fh, fw) for box in boxes) <= 0.25 * fh * fw:
                break
        image = image.copy()
        region = image[py : py + fh, px : px + fw]
        image[py : py + fh, px : px + fw] = np.maximum(region, piece)
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return image, np.stack(inks), np.stack(boxes)


HARD = Style(target_sizes=(12, 18), fragments=(3, 6), fragment_sizes=(16, 26),
             fragment_fraction=(0.5, 0.85))  # fmt: skip
MULTI = Style(digits=(2, 3), target_sizes=(14, 20), fragments=(1, 2))


def _features(style: Style) -> tfds.features.FeaturesDict:
    image = tfds.features.Image(shape=(CANVAS, CANVAS, 3), encoding_format="png")
    if style.multi_label:  # One label, box and source per digit, in drawing order.
        return tfds.features.FeaturesDict(
            {
                "image": image,
                "labels": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=10)),
                "bboxes": tfds.features.Sequence(tfds.features.BBoxFeature()),
                "source_ids": tfds.features.Sequence(np.int32),
            }
        )
    return tfds.features.FeaturesDict(
        {
            "image": image,
            "label": tfds.features.ClassLabel(num_classes=10),
            "bbox": tfds.features.BBoxFeature(),
            "source_id": np.int32,
        }
    )


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """Cluttered handwritten digits with target boxes; no download needed."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "train_fit and validation splits (train and test unchanged); 'hard' and "
        "'multi' configs.",
    }
    BUILDER_CONFIGS = [
        ClutteredDigitsConfig(name="default", description="48x48, seed 0."),
        ClutteredDigitsConfig(
            name="hard",
            description="Smaller targets among more and larger fragments of other digits.",
            style=HARD,
            part_pools=True,
        ),
        ClutteredDigitsConfig(
            name="multi",
            description="2-3 distinct digits per canvas: multi-hot labels, one box per digit.",
            style=MULTI,
            part_pools=True,
        ),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 derives this through `importlib_resources`, a package it does not
        # install; the path only locates (absent) checksum files.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        style = self.builder_config.style
        return self.dataset_info_from_configs(
            description=__doc__,
            features=_features(style),
            supervised_keys=("image", "labels" if style.multi_label else "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything ships with scikit-learn.
        cfg = self.builder_config
        ids = source_split(cfg.seed)
        parts = (ids["train_fit"], ids["validation"]) if cfg.part_pools else (ids["train"],)
        return {
            "train": self._generate_examples(ids["train"], cfg.train_copies, 0, parts),
            "test": self._generate_examples(ids["test"], cfg.test_copies, 1, (ids["test"],)),
            **{
                name: self._generate_examples(ids["train"], cfg.train_copies, 0, parts, ids[name])
                for name in ("train_fit", "validation")
            },
        }

    def _generate_examples(
        self,
        ids: np.ndarray,
        copies: int,
        split_id: int,
        pools: tuple[np.ndarray, ...],
        targets: np.ndarray | None = None,
    ):
        """Canvases of split `split_id` over scans `ids` (the first digit of canvas i is scan
        `ids[i // copies]`); other digits and clutter come from the pool (of `pools`) holding
        that scan. With `targets`, only canvases whose first digit is in it (same keys and
        examples as in the full split)."""
        cfg = self.builder_config
        images, labels = _digits()
        for i in range(len(ids) * copies):
            source = int(ids[i // copies])
            if targets is not None and source not in targets:
                continue
            pool = next(p for p in pools if source in p)
            rng = np.random.default_rng([cfg.seed, split_id, i])
            sources = [source]
            if cfg.style.multi_label:  # Further digits of other classes, from the same pool.
                count = rng.integers(cfg.style.digits[0], cfg.style.digits[1] + 1)
                while len(sources) < count:
                    pick = int(pool[rng.integers(len(pool))])
                    if labels[pick] not in labels[sources]:
                        sources.append(pick)
            image, _, boxes = render(images[sources], images[pool], rng, CANVAS, cfg.style)
            boxes = [tfds.features.BBox(*(box / CANVAS).astype(np.float32)) for box in boxes]
            example = {"image": np.repeat(image[..., None], 3, axis=-1)}
            if cfg.style.multi_label:
                example |= {"labels": labels[sources], "bboxes": boxes, "source_ids": sources}
            else:
                example |= {"label": int(labels[source]), "bbox": boxes[0], "source_id": source}
            yield i, example
