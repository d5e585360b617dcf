"""HNC losses against an independent numpy reference written from the spec (explicit loops).

Gradients are checked against central finite differences of the float64 reference.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hnc_jax import losses

# --- the reference, from ../shared/HNC_SPEC.md, one image and one map at a time ---------


def ref_positives(labels, num_classes):
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels > 0
    pos = np.zeros((labels.shape[0], num_classes), bool)
    for b, c in enumerate(labels):
        pos[b, c] = True
    return pos


def ref_selected(cams, labels, k):
    """Per image: the list of (class, counts) for the k top negatives by sum_hw M."""
    batch, _, _, num_classes = cams.shape
    pos = ref_positives(labels, num_classes)
    out = []
    for b in range(batch):
        scores = []
        for c in range(num_classes):
            s = -math.inf if pos[b, c] else sum(float(v) for v in cams[b, :, :, c].ravel())
            scores.append((s, c))
        # stable descending order; a selected class with score -inf counts for nothing
        ranked = sorted(scores, key=lambda t: -t[0])[:k]
        out.append([(c, s != -math.inf) for s, c in ranked])
    return out


def ref_mse(cams, labels, k, alpha=0.0):
    cams = np.asarray(cams, np.float64)
    total, count = 0.0, 0
    for b, chosen in enumerate(ref_selected(cams, labels, k)):
        for c, valid in chosen:
            if not valid:
                continue
            for h in range(cams.shape[1]):
                for w in range(cams.shape[2]):
                    total += (cams[b, h, w, c] - alpha) ** 2
                    count += 1
    return total / count if count else 0.0


def ref_kd(cams, labels, k, temperature=1.0):
    cams = np.asarray(cams, np.float64)
    batch = cams.shape[0]
    total = 0.0
    for b, chosen in enumerate(ref_selected(cams, labels, k)):
        for c, valid in chosen:
            if not valid:
                continue
            z = cams[b, :, :, c].ravel() / temperature
            log_norm = math.log(sum(math.exp(v - z.max()) for v in z)) + z.max()
            total += -sum(v - log_norm for v in z) / len(z)
    return total / batch


def numeric_grad(f, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


# --- data -------------------------------------------------------------------------------


def make_cams(rng, shape, scale=1.0):
    return rng.normal(size=shape).astype(np.float32) * scale


def make_labels(rng, batch, num_classes, multi_hot, max_pos=None):
    if not multi_hot:
        return rng.integers(0, num_classes, size=batch).astype(np.int32)
    max_pos = max_pos or num_classes
    labels = np.zeros((batch, num_classes), np.float32)
    for b in range(batch):
        n = rng.integers(1, max_pos + 1)
        labels[b, rng.choice(num_classes, n, replace=False)] = 1
    return labels


CASES = [
    # (shape (B, H, W, C), k, multi_hot)
    ((3, 4, 4, 7), 1, False),
    ((3, 4, 4, 7), 3, False),
    ((2, 3, 5, 6), 5, False),
    ((4, 3, 3, 8), 2, True),
    ((4, 3, 3, 8), 7, True),  # k beyond the negatives of some images
]


@pytest.mark.parametrize("shape,k,multi_hot", CASES)
@pytest.mark.parametrize("alpha", [0.0, 0.7, -1.5])
def test_mse_value_matches_reference(shape, k, multi_hot, alpha):
    rng = np.random.default_rng(0)
    cams = make_cams(rng, shape)
    labels = make_labels(rng, shape[0], shape[-1], multi_hot)
    got = losses.hnc_mse(jnp.asarray(cams), jnp.asarray(labels), k, alpha)
    np.testing.assert_allclose(got, ref_mse(cams, labels, k, alpha), rtol=1e-5)


@pytest.mark.parametrize("shape,k,multi_hot", CASES)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_kd_value_matches_reference(shape, k, multi_hot, temperature):
    rng = np.random.default_rng(1)
    cams = make_cams(rng, shape, scale=2.0)
    labels = make_labels(rng, shape[0], shape[-1], multi_hot)
    got = losses.hnc_kd(jnp.asarray(cams), jnp.asarray(labels), k, temperature)
    np.testing.assert_allclose(got, ref_kd(cams, labels, k, temperature), rtol=1e-5)


@pytest.mark.parametrize("shape,k,multi_hot", [CASES[1], CASES[4]])
@pytest.mark.parametrize("loss", ["mse", "kd"])
def test_gradients_match_finite_differences(shape, k, multi_hot, loss):
    rng = np.random.default_rng(2)
    cams = make_cams(rng, shape)
    labels = make_labels(rng, shape[0], shape[-1], multi_hot)
    if loss == "mse":
        got = jax.grad(losses.hnc_mse)(jnp.asarray(cams), jnp.asarray(labels), k, 0.3)
        want = numeric_grad(lambda x: ref_mse(x, labels, k, 0.3), cams)
    else:
        got = jax.grad(losses.hnc_kd)(jnp.asarray(cams), jnp.asarray(labels), k, 0.8)
        want = numeric_grad(lambda x: ref_kd(x, labels, k, 0.8), cams)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-3)


@pytest.mark.parametrize("loss", [losses.hnc_mse, losses.hnc_kd])
def test_only_selected_negatives_get_gradient(loss):
    rng = np.random.default_rng(3)
    cams = make_cams(rng, (3, 4, 4, 9))
    labels = np.array([0, 4, 8], np.int32)
    k = 3
    grad = np.asarray(jax.grad(loss)(jnp.asarray(cams), jnp.asarray(labels), k))
    touched = np.abs(grad).sum(axis=(1, 2)) > 0  # (B, C)
    for b, chosen in enumerate(ref_selected(cams, labels, k)):
        want = np.zeros(9, bool)
        want[[c for c, _ in chosen]] = True
        np.testing.assert_array_equal(touched[b], want)
        assert not touched[b, labels[b]]


def test_positives_never_count_in_multi_label():
    rng = np.random.default_rng(4)
    cams = make_cams(rng, (2, 3, 3, 5))
    labels = np.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], np.float32)
    # image 0 has one negative: with k=4 only class 4 counts; image 1 has four
    got = float(losses.hnc_mse(jnp.asarray(cams), jnp.asarray(labels), 4))
    want = (np.sum(cams[0, ..., 4] ** 2) + np.sum(cams[1, ..., 1:] ** 2)) / (5 * 9)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # huge positive CAMs change nothing
    boosted = cams + 100 * labels[:, None, None, :]
    np.testing.assert_allclose(losses.hnc_mse(jnp.asarray(boosted), jnp.asarray(labels), 4), got)


def test_all_positive_image_gives_zero_not_nan():
    cams = jnp.ones((1, 2, 2, 3))
    labels = jnp.ones((1, 3))
    assert float(losses.hnc_mse(cams, labels, 2)) == 0.0
    assert float(losses.hnc_kd(cams, labels, 2)) == 0.0


def test_kd_is_shift_invariant_and_mse_is_not():
    rng = np.random.default_rng(5)
    cams = jnp.asarray(make_cams(rng, (2, 4, 4, 6)))
    labels = jnp.array([1, 3])
    shifted = cams + 5.0  # same shift for every class keeps the selection
    np.testing.assert_allclose(
        losses.hnc_kd(shifted, labels, 3), losses.hnc_kd(cams, labels, 3), rtol=1e-5
    )
    assert abs(float(losses.hnc_mse(shifted, labels, 3)) - float(losses.hnc_mse(cams, labels, 3)))
    # the kd value carries the constant k*log(H*W) per image: a flat map reaches it exactly
    flat = jnp.zeros((2, 4, 4, 6))
    np.testing.assert_allclose(losses.hnc_kd(flat, labels, 3), 3 * math.log(16), rtol=1e-6)


def test_bfloat16_cams_accumulate_in_float32():
    rng = np.random.default_rng(6)
    cams = make_cams(rng, (2, 7, 7, 20), scale=3.0)
    labels = np.array([1, 2], np.int32)
    bf16 = jnp.asarray(cams, jnp.bfloat16)
    exact = np.asarray(bf16, np.float32)  # the values the bf16 array holds
    for fn, ref in [(losses.hnc_mse, ref_mse), (losses.hnc_kd, ref_kd)]:
        got = fn(bf16, jnp.asarray(labels), 5)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref(exact, labels, 5), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    num_classes=st.integers(2, 8),
    data=st.data(),
)
def test_property_matches_reference(batch, height, width, num_classes, data):
    k = data.draw(st.integers(1, num_classes - 1))
    multi_hot = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    cams = make_cams(rng, (batch, height, width, num_classes))
    labels = make_labels(rng, batch, num_classes, multi_hot)
    np.testing.assert_allclose(
        losses.hnc_mse(jnp.asarray(cams), jnp.asarray(labels), k, 0.25),
        ref_mse(cams, labels, k, 0.25),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        losses.hnc_kd(jnp.asarray(cams), jnp.asarray(labels), k, 1.5),
        ref_kd(cams, labels, k, 1.5),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("loss", ["mse", "kd"])
def test_fast_path_equals_full_cams(loss, multi_hot):
    rng = np.random.default_rng(7)
    batch, height, width, dim, num_classes, k = 3, 5, 5, 16, 12, 4
    features = jnp.asarray(np.maximum(rng.normal(size=(batch, height, width, dim)), 0), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(dim, num_classes)) * 0.3, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(num_classes,)), jnp.float32)
    labels = jnp.asarray(make_labels(rng, batch, num_classes, multi_hot, max_pos=10))

    def full(features, kernel, bias):
        cams = features @ kernel + bias
        if loss == "mse":
            return losses.hnc_mse(cams, labels, k, 0.2)
        return losses.hnc_kd(cams, labels, k, 2.0)

    def fast(features, kernel, bias):
        logits = features.mean(axis=(1, 2)) @ kernel + bias
        return losses.hnc_from_features(
            features, kernel, bias, logits, labels, loss=loss, k=k, alpha=0.2, temperature=2.0
        )

    args = (features, kernel, bias)
    want_value, want_grads = jax.value_and_grad(full, argnums=(0, 1, 2))(*args)
    got_value, got_grads = jax.jit(jax.value_and_grad(fast, argnums=(0, 1, 2)))(*args)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
    for got, want in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_selection_carries_no_gradient():
    scores = jnp.array([[3.0, 1.0, 2.0, 0.5], [0.0, 4.0, 1.0, 2.0]])
    labels = jnp.array([0, 3])
    idx, valid = losses.select_hard_negatives(scores, labels, 2)
    np.testing.assert_array_equal(idx, [[2, 1], [1, 2]])
    assert bool(valid.all())

    def picked_sum(s):
        idx, _ = losses.select_hard_negatives(s, labels, 2)
        return jnp.take_along_axis(s, idx, axis=-1).sum()

    # the gradient is that of the gathered values alone: 1 at the picks, 0 elsewhere
    np.testing.assert_array_equal(jax.grad(picked_sum)(scores), [[0, 1, 1, 0], [0, 1, 1, 0]])


def test_works_under_vmap_and_jit():
    rng = np.random.default_rng(8)
    cams = jnp.asarray(make_cams(rng, (3, 2, 4, 4, 6)))  # a stack of 3 batches
    labels = jnp.asarray(rng.integers(0, 6, size=(3, 2)).astype(np.int32))
    got = jax.jit(jax.vmap(lambda c, y: losses.hnc_mse(c, y, 2)))(cams, labels)
    want = [ref_mse(np.asarray(cams[i]), np.asarray(labels[i]), 2) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


# --- cross-entropy: numpy references from the definitions, one example at a time --------


def ref_softmax_ce(logits, targets):
    """mean_b -sum_c t[b, c] log softmax(z_b)[c], targets (B, C) probabilities."""
    total = 0.0
    for z, t in zip(np.asarray(logits, np.float64), np.asarray(targets, np.float64), strict=True):
        log_norm = math.log(sum(math.exp(v - z.max()) for v in z)) + z.max()
        total += -sum(tc * (zc - log_norm) for zc, tc in zip(z, t, strict=True))
    return total / len(logits)


def ref_sigmoid_bce(logits, targets):
    """mean over (b, c) of -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z)))."""
    values = []
    for z_row, t_row in zip(np.asarray(logits, np.float64), targets, strict=True):
        for z, t in zip(z_row, np.asarray(t_row, np.float64), strict=True):
            p = 1 / (1 + math.exp(-z))
            values.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
    return sum(values) / len(values)


def ref_smoothed_one_hot(ids, num_classes, smoothing):
    targets = np.full((len(ids), num_classes), smoothing / num_classes)
    for b, c in enumerate(ids):
        targets[b, c] += 1 - smoothing
    return targets


CE_LOGITS = np.random.default_rng(10).normal(size=(4, 5)).astype(np.float32) * 2


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35])
def test_cross_entropy_int_labels_is_softmax_ce(smoothing):
    ids = np.array([0, 4, 2, 2], np.int32)
    want = ref_softmax_ce(CE_LOGITS, ref_smoothed_one_hot(ids, 5, smoothing))
    got = losses.cross_entropy(jnp.asarray(CE_LOGITS), jnp.asarray(ids), smoothing)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, bool])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_multi_label_is_mean_sigmoid_bce(smoothing, dtype):
    multi = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 1]])
    targets = multi * (1 - smoothing) + 0.5 * smoothing  # towards 0.5
    got = losses.cross_entropy(CE_LOGITS, multi.astype(dtype), smoothing, multi_label=True)
    np.testing.assert_allclose(got, ref_sigmoid_bce(CE_LOGITS, targets), rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35])
def test_soft_cross_entropy_matches_numpy_loop(smoothing):
    rng = np.random.default_rng(11)
    soft = rng.dirichlet(np.ones(5), size=4).astype(np.float32)  # rows sum to 1
    smoothed = soft * (1 - smoothing) + smoothing / 5
    got = losses.soft_cross_entropy(jnp.asarray(CE_LOGITS), jnp.asarray(soft), smoothing)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_softmax_ce(CE_LOGITS, smoothed), rtol=1e-5)
    # one-hot targets: the int-label softmax cross-entropy
    ids = np.array([3, 1, 0, 4])
    one_hot = np.eye(5, dtype=np.float32)[ids]
    np.testing.assert_allclose(
        losses.soft_cross_entropy(CE_LOGITS, one_hot, smoothing),
        ref_softmax_ce(CE_LOGITS, ref_smoothed_one_hot(ids, 5, smoothing)),
        rtol=1e-5,
    )


def test_jitted_multi_hot_labels_are_not_value_checked():
    # Under jit the labels are tracers: their values cannot be read, so no check (and no
    # error from converting a tracer to numpy).
    multi = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 1, 0, 0, 1]])
    multi = multi.astype(np.float32)
    ce = jax.jit(lambda z, y: losses.cross_entropy(z, y, multi_label=True))
    np.testing.assert_allclose(ce(CE_LOGITS, multi), ref_sigmoid_bce(CE_LOGITS, multi), rtol=1e-5)
    cams = make_cams(np.random.default_rng(12), (4, 3, 3, 5))
    mse = jax.jit(lambda c, y: losses.hnc_mse(c, y, 2))
    np.testing.assert_allclose(mse(cams, multi), ref_mse(cams, multi, 2), rtol=1e-5)
    idx, valid = jax.jit(lambda s, y: losses.select_hard_negatives(s, y, 2))(CE_LOGITS, multi)
    assert idx.shape == valid.shape == (4, 2)
    # the documented limit: traced soft targets pass unchecked
    soft = np.full((4, 5), 0.2, np.float32)
    assert np.isfinite(float(ce(CE_LOGITS, soft)))


SHAPE_REFUSALS = [
    # (labels, multi_label, message)
    (
        np.eye(5, dtype=np.float32)[[0, 1]],
        False,
        r"^cross_entropy got \(B, C\) labels of shape \(2, 5\) without multi_label=True; "
        r"allowed: int class ids \(2,\), multi_label=True for multi-hot 0/1 \(2, 5\), or "
        r"soft_cross_entropy for probability targets$",
    ),
    (np.eye(5, dtype=np.int32)[[0, 1]], False, r"shape \(2, 5\) without multi_label=True"),
    (np.full((2, 5), 0.2, np.float32), False, r"soft_cross_entropy for probability targets"),
    (
        np.array([0, 3], np.int32),
        True,
        r"^cross_entropy\(multi_label=True\) needs multi-hot labels \(2, 5\), got shape "
        r"\(2,\); int class ids \(2,\) go without multi_label$",
    ),
]


@pytest.mark.parametrize("labels,multi_label,message", SHAPE_REFUSALS)
def test_cross_entropy_refuses_labels_that_do_not_match_multi_label(labels, multi_label, message):
    logits = jnp.zeros((2, 5))
    for y in (labels, jnp.asarray(labels)):
        with pytest.raises(ValueError, match=message) as err:
            losses.cross_entropy(logits, y, multi_label=multi_label)
        assert "\n" not in str(err.value)
    # The shapes are known under jit too (jax appends a traceback note: no `$` there).
    with pytest.raises(ValueError, match=message.removesuffix("$")):
        jax.jit(lambda z, y: losses.cross_entropy(z, y, multi_label=multi_label))(logits, labels)


NOT_0_1 = [
    # (multi-hot labels (2, 5), the message's count and range)
    (
        np.array([[0.1, 0, 0.7, 0, 0.2], [0, 1, 0, 0, 0]], np.float32),
        r"3 other values in \[0.1, 0.7\]",
    ),
    (np.full((2, 5), 0.2, np.float32), r"10 other values in \[0.2, 0.2\]"),
    (np.array([[2, 0, 1, 0, 0], [0, 1, 0, 0, -1]], np.int32), r"2 other values in \[-1, 2\]"),
]
HARD_LABEL_CALLS = {
    "cross_entropy": lambda y: losses.cross_entropy(jnp.zeros((2, 5)), y, multi_label=True),
    "hnc_mse": lambda y: losses.hnc_mse(jnp.zeros((2, 3, 3, 5)), y, 2),
    "hnc_kd": lambda y: losses.hnc_kd(jnp.zeros((2, 3, 3, 5)), y, 2),
    "hnc_from_features": lambda y: losses.hnc_from_features(
        jnp.zeros((2, 3, 3, 4)),
        jnp.zeros((4, 5)),
        jnp.zeros(5),
        jnp.zeros((2, 5)),
        y,
        loss="mse",
        k=2,
    ),  # fmt: skip
    "select_hard_negatives": lambda y: losses.select_hard_negatives(jnp.zeros((2, 5)), y, 2),
}


@pytest.mark.parametrize("name", sorted(HARD_LABEL_CALLS))
@pytest.mark.parametrize("labels,count", NOT_0_1)
def test_multi_hot_labels_must_be_0_or_1(name, labels, count):
    call = HARD_LABEL_CALLS[name]
    message = (
        r"^labels \(2, 5\) must be multi-hot 0/1; got " + count + r": for soft targets use "
        r"soft_cross_entropy \(HNC needs hard labels\)$"
    )
    for y in (labels, jnp.asarray(labels)):  # numpy and concrete jax arrays
        with pytest.raises(ValueError, match=message):
            call(y)
    hard = (labels == 1).astype(labels.dtype)
    assert np.isfinite(np.asarray(jax.tree.leaves(call(hard))[0], np.float64)).all()


def test_num_posi_counts_positive_pixels_of_negative_maps():
    rng = np.random.default_rng(9)
    cams = make_cams(rng, (3, 3, 3, 5))
    labels = np.array([0, 1, 4], np.int32)
    want = [
        sum(cams[b, h, w, c] > 0 for h in range(3) for w in range(3) for c in range(5) if c != y)
        for b, y in enumerate(labels)
    ]
    got = losses.num_positive_negative_pixels_per_image(cams, labels)
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(losses.num_positive_negative_pixels(cams, labels), np.mean(want))


def test_correct_top_k():
    logits = jnp.array([[0.1, 0.9, 0.5], [0.8, 0.1, 0.3]])
    np.testing.assert_array_equal(losses.correct_top_k(logits, jnp.array([1, 2]), 1), [1, 0])
    np.testing.assert_array_equal(losses.correct_top_k(logits, jnp.array([1, 2]), 2), [1, 1])
    multi = jnp.array([[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(losses.correct_top_k(logits, multi, 1), [0, 0])


BAD = [
    (lambda: losses.hnc_mse(jnp.zeros((2, 3, 3, 5)), jnp.zeros(2, int), 0), "k must be"),
    (lambda: losses.hnc_mse(jnp.zeros((2, 3, 3, 5)), jnp.zeros(2, int), 5), r"\[1, 4\]"),
    (lambda: losses.hnc_kd(jnp.zeros((2, 3, 3, 5)), jnp.zeros(2, int), 2.5), "k must be"),
    (lambda: losses.hnc_kd(jnp.zeros((2, 3, 3, 5)), jnp.zeros(2, int), 2, 0.0), "temperature"),
    (lambda: losses.hnc_kd(jnp.zeros((2, 3, 3, 5)), jnp.zeros(2, int), 2, -1), "temperature"),
    (lambda: losses.hnc_mse(jnp.zeros((2, 9, 5)), jnp.zeros(2, int), 2), "rank 4"),
    (lambda: losses.hnc_mse(jnp.zeros((2, 3, 3, 5)), jnp.zeros(3, int), 2), "do not fit"),
    (lambda: losses.hnc_mse(jnp.zeros((2, 3, 3, 5)), jnp.zeros((2, 4)), 2), "multi-hot"),
    (lambda: losses.hnc_mse(jnp.zeros((2, 3, 3, 5)), jnp.zeros(2), 2), "int class ids"),
    (lambda: losses.cross_entropy(jnp.zeros((2, 5)), jnp.zeros(2, int), 1.0), "label_smoothing"),
    (lambda: losses.soft_cross_entropy(jnp.zeros((2, 5)), jnp.eye(5)[:2], -0.1), "label_smoothing"),
    (lambda: losses.soft_cross_entropy(jnp.zeros((2, 5)), jnp.zeros(2, int)), "do not fit logits"),
    (lambda: losses.soft_cross_entropy(jnp.zeros((2, 5)), jnp.zeros((2, 4))), r"\(2, 4\)"),
    (
        lambda: losses.hnc_from_features(
            jnp.zeros((1, 2, 2, 3)),
            jnp.zeros((3, 4)),
            jnp.zeros(4),
            jnp.zeros((1, 4)),
            jnp.zeros(1, int),
            loss="l1",
            k=1,
        ),
        "allowed: mse, kd",
    ),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_arguments_fail_at_trace_time_with_clear_message(call, message):
    with pytest.raises(ValueError, match=message) as err:
        jax.jit(call)()  # errors are raised while tracing, before anything runs
    assert "\n" not in str(err.value)
