"""ResNet shapes, parameter counts, CAM/logit consistency, stems, dtypes and init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hnc_jax import models

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_parameter_counts_equal_torchvision(name):
    model = models.create_model(name, num_classes=1000)
    variables = abstract_variables(model, (1, 224, 224, 3))
    assert models.count_params(variables["params"]) == TORCHVISION_PARAMS[name]
    _, cams = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3))), variables)
    assert cams.shape == (2, 7, 7, 1000)


def test_constructors_match_factory():
    assert models.ResNet101(num_classes=5).stage_sizes == (3, 4, 23, 3)
    assert models.ResNet18(num_classes=5).block_cls is models.BasicBlock
    assert models.create_model("resnet152", num_classes=5).stage_sizes == (3, 8, 36, 3)


@pytest.mark.parametrize(
    "name,stem,size,cam_size",
    [("resnet18", "small", 48, 6), ("resnet50", "small", 32, 4), ("resnet34", "imagenet", 64, 2)],
)
def test_logits_are_mean_of_cams(name, stem, size, cam_size):
    model = models.create_model(name, num_classes=7, width=0.125, stem=stem)
    x = jax.random.normal(jax.random.key(1), (3, size, size, 3))
    variables = model.init(jax.random.key(0), x)
    for train in (False, True):
        (logits, cams), _ = model.apply(variables, x, train=train, mutable=["batch_stats"])
        assert logits.shape == (3, 7) and logits.dtype == jnp.float32
        assert cams.shape == (3, cam_size, cam_size, 7)
        np.testing.assert_allclose(cams.mean(axis=(1, 2)), logits, rtol=1e-5, atol=1e-5)
    # CAMs are the classifier applied at every position of the features, bias included
    logits, features = model.apply(variables, x, return_features=True)
    head = variables["params"]["head"]
    _, cams = model.apply(variables, x)
    np.testing.assert_allclose(cams, features @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(features) >= 0)  # after the last ReLU


def test_input_normalization_of_raw_pixels():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    plain = models.ResNet18(num_classes=4, width=0.125, stem="small")
    raw = plain.clone(input_normalization=(mean, std))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
    normalised = ((pixels / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
    variables = plain.init(jax.random.key(0), normalised)
    assert jax.tree.map(jnp.shape, raw.init(jax.random.key(0), pixels)) == jax.tree.map(
        jnp.shape, variables
    )
    for train in (False, True):
        (want, _), _ = plain.apply(variables, normalised, train=train, mutable=["batch_stats"])
        (got, _), _ = raw.apply(variables, pixels, train=train, mutable=["batch_stats"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
    model = models.ResNet18(num_classes=4, width=0.125, stem="small", dtype=jnp.bfloat16)
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    logits, cams = model.apply(variables, x)
    assert cams.dtype == logits.dtype == jnp.float32  # Accumulated in float32.
    ref_logits, _ = models.ResNet18(num_classes=4, width=0.125, stem="small").apply(variables, x)
    np.testing.assert_allclose(logits, ref_logits, rtol=0.1, atol=0.1)


def test_initialisation_follows_the_spec():
    model = models.ResNet50(num_classes=1000)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))()
    params = variables["params"]
    kernel = params["stage3_block0"]["conv2"]["kernel"]  # 3x3, 256 -> 256
    fan_out = 3 * 3 * kernel.shape[-1]
    np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / fan_out), rtol=0.02)
    head = params["head"]
    np.testing.assert_allclose(np.std(head["kernel"]), np.sqrt(2 / 2048), rtol=0.02)
    assert not np.any(head["bias"])
    bn = params["stage2_block1"]["bn3"]
    assert np.all(bn["scale"] == 1) and not np.any(bn["bias"])
    assert "bias" not in params["stem_conv"]


def test_sync_batch_norm_over_an_axis_equals_full_batch():
    model = models.ResNet18(num_classes=3, width=0.125, stem="small")
    synced = models.ResNet18(num_classes=3, width=0.125, stem="small", bn_axis_name="data")
    x = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
    variables = model.init(jax.random.key(0), x)

    def run(m, images):
        (logits, _), state = m.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, state["batch_stats"]

    full_logits, full_stats = run(model, x)
    shards = x.reshape(4, 2, *x.shape[1:])
    logits, stats = jax.vmap(lambda s: run(synced, s), axis_name="data")(shards)
    np.testing.assert_allclose(logits.reshape(8, 3), full_logits, rtol=1e-4, atol=1e-5)
    for got, want in zip(
        jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(full_stats), strict=True
    ):
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-6)
    # per-device BN sees only its shard: different outputs
    local, _ = jax.vmap(lambda s: run(model, s))(shards)
    assert not np.allclose(local.reshape(8, 3), full_logits, atol=1e-3)


def test_scanned_blocks_compute_the_same_function():
    kwargs = dict(num_classes=5, width=0.125, stem="small")
    unrolled = models.ResNet50(**kwargs)
    scanned = models.ResNet50(scan_blocks=True, **kwargs)
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    variables = unrolled.init(jax.random.key(0), x)
    stacked = models.stack_blocks(variables, unrolled.stage_sizes)
    assert models.count_params(stacked["params"]) == models.count_params(variables["params"])
    want = unrolled.apply(variables, x)
    got = scanned.apply(stacked, x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    np.testing.assert_equal(
        jax.tree_util.tree_map(np.asarray, models.unstack_blocks(stacked, unrolled.stage_sizes)),
        jax.tree_util.tree_map(np.asarray, variables),
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(name="resnet20"), "allowed: resnet18, resnet34"),
        (dict(name="resnet18", stem="cifar"), "allowed: imagenet, small"),
        (dict(name="resnet18", width=0), "width must be > 0"),
    ],
)
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.create_model(num_classes=3, **kwargs)
