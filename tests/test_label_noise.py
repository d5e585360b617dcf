"""Label noise (`hnc_jax.data.label_noise`): the definition's properties checked by counting,
its independence of everything but (seed, example), and its config errors (the pipeline
applies it: tests/test_pipeline.py)."""

import hashlib

import ml_collections
import numpy as np
import pytest

from hnc_jax.data import label_noise
from hnc_jax.errors import ConfigError
from hnc_jax.training import job
from tests.helpers import tiny_config


def noise(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"kind": "symmetric", "rate": 0.2, "flips": "", "seed": 0, "eval_splits": "", **fields}
    )


def images(n: int) -> list[bytes]:
    """n distinct stand-ins for encoded images."""
    return [f"image {i}".encode() for i in range(n)]


def test_symmetric_noise_flips_at_the_rate_to_uniform_other_classes():
    n, classes = 40_000, 10
    labels = np.arange(n) % classes
    noisy = label_noise.noisy_labels(labels, images(n), noise(rate=0.3), classes)
    flipped = noisy != labels
    assert abs(flipped.mean() - 0.3) < 0.01  # 3.5 standard errors.
    # Every other class equally often (each about 1/9 of the flips); never the same class.
    shifts = np.bincount((noisy - labels)[flipped] % classes, minlength=classes)
    assert shifts[0] == 0
    assert np.all(np.abs(shifts[1:] / flipped.sum() - 1 / 9) < 0.01)


def test_asymmetric_noise_flips_only_the_mapped_classes():
    n = 20_000
    labels = np.arange(n) % 10
    config = noise(kind="asymmetric", rate=0.3, flips="2:7,3:8,5:6,7:1")
    noisy = label_noise.noisy_labels(labels, images(n), config, 10)
    target = {2: 7, 3: 8, 5: 6, 7: 1}
    for c in range(10):
        mine = noisy[labels == c]
        if c in target:
            assert set(mine) == {c, target[c]}
            assert abs(np.mean(mine == target[c]) - 0.3) < 0.03
        else:
            assert set(mine) == {c}


def test_noise_is_a_pure_function_of_seed_and_example():
    labels, data = np.arange(500) % 10, images(500)
    base = label_noise.noisy_labels(labels, data, noise(), 10)
    # Any subset, in any order: the same labels.
    order = np.random.default_rng(0).permutation(500)[:100]
    some = label_noise.noisy_labels(labels[order], [data[i] for i in order], noise(), 10)
    np.testing.assert_array_equal(some, base[order])
    assert np.any(label_noise.noisy_labels(labels, data, noise(seed=1), 10) != base)
    # u and shift as the module documents them: BLAKE2b keyed by the seed, 2 x 64 bits.
    digest = hashlib.blake2b(data[7], digest_size=16, key=(0).to_bytes(8, "little")).digest()
    first, second = np.frombuffer(digest, "<u8")
    u, shift = label_noise.draws([data[7]], 0, 10)
    assert u[0] == (int(first) >> 11) / 2**53 and shift[0] == 1 + int(second) % 9


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(kind="uniform"), "unknown label_noise.kind 'uniform'; allowed: none, symmetric"),
        (dict(rate=1.0), r"label_noise.rate must be in \[0, 1\), got 1.0"),
        (dict(kind="asymmetric", flips=""), "label_noise.flips must be 'from:to,...'"),
        (dict(kind="asymmetric", flips="2:7,2:8"), "label_noise.flips must be 'from:to,...'"),
        (dict(kind="asymmetric", flips="2:17"), r"classes must be in \[0, 10\)"),
        (dict(eval_splits="validation,test"), r"\['test'\]: test labels are never noisy"),
    ],
)
def test_bad_noise_is_a_one_line_error_before_any_data(fields, message):
    config = tiny_config()
    config.label_noise.update(noise(**fields))
    with pytest.raises(ConfigError, match=message):
        job.check(config)
    config.label_noise.update(kind="none", rate=0.2, flips="", eval_splits="")
    with pytest.raises(ConfigError, match="label_noise.kind is 'none': set it to"):
        job.check(config)


def test_multi_label_data_refuses_noise():  # From the metadata: nothing is built.
    config = tiny_config(dataset="cluttered_digits/multi")
    config.label_noise.update(noise())
    with pytest.raises(ConfigError, match="label_noise needs single-label data"):
        job.check(config)
