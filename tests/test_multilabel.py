"""Multi-label metrics against scikit-learn and hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from hnc_jax import multilabel


def test_average_precision_hand_cases():
    # Hits at ranks 1 and 3: precision 1/1 and 2/3, each at a recall step of 1/2.
    ap = multilabel.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Tied scores are one threshold: precision 1/2 at recall 1 (not 1 at recall 1).
    assert multilabel.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert multilabel.average_precision([0.5, 0.2, 0.5], [0, 1, 1]) == pytest.approx(
        0.5 * 0.5 + 0.5 * 2 / 3
    )
    assert np.isnan(multilabel.average_precision([0.1, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    targets = rng.random((200, 6)) < 0.3
    # Rounded scores: many ties, the case where AP definitions differ.
    scores = np.round(rng.normal(size=(200, 6)) + targets, 1)
    for c in range(6):
        assert multilabel.average_precision(scores[:, c], targets[:, c]) == pytest.approx(
            average_precision_score(targets[:, c], scores[:, c]), abs=1e-12
        )
    expected = average_precision_score(targets, scores, average="macro")
    assert multilabel.mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)


def test_map_skips_classes_without_positives():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1], [0.3, 0.4, 0.7]])
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1)])
    assert multilabel.mean_average_precision(scores, targets) == pytest.approx(expected)


def test_example_f1():
    logits = np.array([[2.0, 1.0, -1.0], [-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [1.0, 1, 1]])
    targets = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 1]])
    # {0, 1} vs {1, 2}: 2*1/4; both empty: 1; nothing predicted: 0; exact: 1.
    np.testing.assert_allclose(multilabel.example_f1(logits, targets), [0.5, 1.0, 0.0, 1.0])
    expected = f1_score(targets, logits > 0, average="samples", zero_division=1.0)
    assert np.mean(multilabel.example_f1(logits, targets)) == pytest.approx(expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="must have one shape"):
        multilabel.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="multi-hot"):
        multilabel.mean_average_precision(np.zeros((2, 2)), np.full((2, 2), 2))
    with pytest.raises(ValueError, match="differ"):
        multilabel.example_f1(np.zeros((2, 2)), np.zeros((2, 3)))


def test_evaluate_masks_padding():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 4))
    targets = (rng.random((6, 3)) < 0.5).astype(np.float32)
    targets[:, 0] = 1.0

    def apply_fn(x):  # A fixed linear "model": logits and 1x1 CAMs equal to them.
        logits = x[:, :3] - x[:, 3:]
        return logits, logits[:, None, None, :]

    batches = [
        {"image": images[:4], "label": targets[:4], "mask": np.ones(4, bool)},
        {"image": np.r_[images[4:], np.zeros((2, 4))], "label": np.r_[targets[4:], np.ones((2, 3))],
         "mask": np.array([True, True, False, False])},
    ]  # fmt: skip
    out = multilabel.evaluate(apply_fn, batches, k=1)
    logits = apply_fn(images)[0]
    assert out["mAP"] == pytest.approx(multilabel.mean_average_precision(logits, targets))
    assert out["f1"] == pytest.approx(np.mean(multilabel.example_f1(logits, targets)))
    assert out["top1"] == pytest.approx(np.mean(targets[np.arange(6), logits.argmax(-1)]))
