"""Train step, optimizer, schedules, eval sums and config validation (one device, in process);
multi-device equivalence in a subprocess with 8 simulated CPU devices."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hnc_jax import losses
from hnc_jax.training import evaluation, job, train_step
from tests.helpers import ROOT, make_batch, tiny_config


def build(config, size=16):
    mesh = train_step.make_mesh()
    model = train_step.create_model(config, 10)
    tx, schedule = train_step.make_optimizer(config, epoch_steps=10)
    state = train_step.create_train_state(
        config, model, tx, jax.random.key(0), mesh, (size,) * 2 + (3,)
    )
    step = train_step.make_train_step(config, model, tx, schedule, mesh)
    return mesh, model, tx, state, step


@pytest.fixture(scope="module")
def hnc_step():
    config = tiny_config()
    return config, *build(config)


def test_step_loss_matches_full_cam_reference(hnc_step):
    config, mesh, model, tx, state, step = hnc_step
    batch = make_batch()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    (logits, cams), _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    ce = losses.cross_entropy(logits, batch["label"])
    hnc = losses.hnc_mse(cams, batch["label"], k=config.hnc.k)
    # Positive pixels of the negative CAMs, counted in numpy.
    negative = np.arange(10)[None, None, None, :] != batch["label"][:, None, None, None]
    num_posi = np.mean(np.sum((np.asarray(cams) > 0) & negative, axis=(1, 2, 3)))
    schedule = train_step.make_schedule(config, 10)
    log_step = train_step.make_train_step(config, model, tx, schedule, mesh, with_num_posi=True)
    log_state = jax.tree.map(jnp.copy, state)
    _, first = step(state, train_step.shard_batch(mesh, batch))  # Not a log step: no num_posi.
    np.testing.assert_allclose(first["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(first["hnc"], hnc, rtol=1e-4)
    np.testing.assert_allclose(first["loss"], ce + config.hnc.weight * hnc, rtol=1e-5)
    assert "num_posi" not in first
    _, logged = log_step(log_state, train_step.shard_batch(mesh, batch))
    np.testing.assert_allclose(logged["num_posi"], num_posi, rtol=1e-6)
    assert num_posi > 0
    for key in first:  # Both variants train alike.
        np.testing.assert_array_equal(first[key], logged[key])


def test_hnc_weight_warmup_ramps_from_zero():
    config = tiny_config()
    mesh, model, tx, state, _ = build(config)  # A fresh state: the fixture's may be donated.
    assert train_step.hnc_weight(config, 10) == config.hnc.weight  # The original: a constant.
    warm = tiny_config(**{"hnc.weight_warmup_epochs": 0.5})  # 5 steps of 10 per epoch.
    weight = train_step.hnc_weight(warm, 10)
    np.testing.assert_allclose([weight(s) for s in (0, 2, 5, 9)], [0, 0.04, 0.1, 0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="needs make_train_step"):
        train_step.make_train_step(warm, model, tx, optax.constant_schedule(0.1), mesh)
    step = train_step.make_train_step(
        warm, model, tx, optax.constant_schedule(0.1), mesh, epoch_steps=10
    )
    batch = train_step.shard_batch(mesh, make_batch())
    for at, factor in ((0, 0.0), (2, 0.4)):
        start = jax.tree.map(jnp.copy, state).replace(step=jnp.int32(at))
        _, mets = step(start, batch)
        expected = mets["ce"] + factor * config.hnc.weight * mets["hnc"]
        np.testing.assert_allclose(mets["loss"], expected, rtol=1e-6)
        assert float(mets["hnc"]) > 0


def _hard_negative_selections(hlo: str, k: int) -> int:
    return sum("top_k" in line and f"k = {k})" in line for line in hlo.splitlines())


def test_baseline_is_cross_entropy_only(hnc_step):
    config, mesh, _, _, state, step = hnc_step
    batch = train_step.shard_batch(mesh, make_batch())
    assert _hard_negative_selections(step.lower(state, batch).as_text(), config.hnc.k) == 1
    assert not train_step.hnc_enabled(tiny_config(**{"hnc.weight": 0.0}))
    baseline = tiny_config(**{"hnc.loss": "none"})
    mesh, _, _, state, step = build(baseline)
    # No hard-negative selection (nor CAMs) in the baseline's step.
    assert _hard_negative_selections(step.lower(state, batch).as_text(), config.hnc.k) == 0
    _, mets = step(state, batch)
    assert float(mets["hnc"]) == 0.0 and float(mets["loss"]) == float(mets["ce"])


def test_coupled_weight_decay_is_torch_sgd():
    # torch.optim.SGD(lr, momentum, weight_decay): d = g + wd*p; buf = m*buf + d; p -= lr*buf
    config = tiny_config(**{"optimizer.nesterov": False, "schedule": "step", "warmup_epochs": 0.0})
    lr, m, wd = 0.2, 0.9, 5e-4
    tx, _ = train_step.make_optimizer(config, epoch_steps=10)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    grads = [
        {"w": jnp.array([0.1, 0.3]), "b": jnp.array([-1.0])},
        {"w": jnp.array([0.2, 0.0]), "b": jnp.array([2.0])},
    ]
    opt_state = tx.init(params)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for g in grads:
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        for k in p:
            buf[k] = m * buf[k] + np.asarray(g[k]) + wd * p[k]
            p[k] = p[k] - lr * buf[k]
    for k in p:
        np.testing.assert_allclose(params[k], p[k], rtol=1e-6)


def test_decoupled_weight_decay_skips_bn_and_bias():
    config = tiny_config(**{"optimizer.weight_decay_mode": "decoupled", "warmup_epochs": 0.0})
    config.optimizer.weight_decay = 0.1
    config.schedule = "step"
    tx, _ = train_step.make_optimizer(config, epoch_steps=10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.2 * 0.1)  # lr * wd * p
    np.testing.assert_array_equal(updates["bias"], 0.0)


def test_schedules():
    step_cfg = tiny_config(schedule="step", warmup_epochs=0.0, lr_decay_epochs=[1, 2])
    _, schedule = train_step.make_optimizer(step_cfg, epoch_steps=10)
    assert [float(schedule(s)) for s in (0, 9, 10, 19, 20)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002]
    )
    # With warm-up, the decay boundaries stay at absolute epochs (1 and 2: steps 10, 20).
    warm_cfg = tiny_config(schedule="step", warmup_epochs=0.5, lr_decay_epochs=[1, 2])
    _, schedule = train_step.make_optimizer(warm_cfg, epoch_steps=10)
    assert [float(schedule(s)) for s in (0, 4, 5, 9, 10, 19, 20)] == pytest.approx(
        [0.0, 0.16, 0.2, 0.2, 0.02, 0.02, 0.002]
    )
    cos_cfg = tiny_config(num_train_steps=100, warmup_epochs=1.0)
    _, schedule = train_step.make_optimizer(cos_cfg, epoch_steps=10)
    assert float(schedule(5)) == pytest.approx(0.1)  # Half-way through the warm-up.
    assert float(schedule(55)) == pytest.approx(0.1, rel=1e-5)  # Cosine midpoint.
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_eval_sums_ignore_padding(hnc_step):
    config, mesh, model, tx, _, _ = hnc_step
    state = train_step.create_train_state(config, model, tx, jax.random.key(1), mesh, (16, 16, 3))
    batch = make_batch(n=8)
    batch["mask"] = np.array([True] * 5 + [False] * 3)
    eval_step = evaluation.make_eval_step(model, mesh)
    sums = eval_step(state, train_step.shard_batch(mesh, batch), evaluation.zero_totals(mesh))
    # Totals accumulate: the same batch again doubles every sum.
    twice = eval_step(state, train_step.shard_batch(mesh, batch), jax.tree.map(jnp.copy, sums))
    for key in sums:
        np.testing.assert_allclose(twice[key], 2 * sums[key], rtol=1e-6)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, cams = model.apply(variables, batch["image"][:5])
    labels = batch["label"][:5]
    assert float(sums["count"]) == 5
    np.testing.assert_allclose(sums["loss"] / 5, losses.cross_entropy(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(sums["top1"], np.sum(np.argmax(logits, -1) == labels))
    np.testing.assert_allclose(
        sums["num_posi"] / 5, losses.num_positive_negative_pixels(cams, labels), rtol=1e-6
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "resnet7"}, "unknown model 'resnet7'"),
        ({"dataset": "no_such_dataset"}, "unknown dataset 'no_such_dataset'"),
        ({"hnc.k": 10}, "hnc.k must be in [1, 9]"),
        ({"hnc.weight": -0.1}, "hnc.weight must be >= 0"),
        ({"init_from": "/no/r50.pth"}, "init_from '/no/r50.pth' does not exist"),
        ({"hnc.weight_warmup_epochs": -1.0}, "hnc.weight_warmup_epochs must be >= 0"),
        ({"hnc.loss": "l1"}, "unknown hnc.loss 'l1'"),
        ({"schedule": "linear"}, "unknown schedule 'linear'"),
        (
            {"schedule": "step", "lr_decay_epochs": [0.2, 3]},
            "lr_decay_epochs [0.2, 3] must all be after warmup_epochs=0.5",
        ),
    ],
)
def test_validate_config_errors(overrides, message):
    with pytest.raises(ValueError, match=None) as error:
        job.check(tiny_config(**overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from hnc_jax import losses
    from hnc_jax.training import train_step
    from tests.helpers import make_batch, tiny_config
    from tests.test_train_step import multi_hot_labels

    def reference(config, model, tx, state, batch, chunks):
        # One device, the whole batch: CE and HNC over all of it, HNC from the full CAMs;
        # the forward pass in `chunks` BN groups (per-device BatchNorm statistics).
        hnc_fn = losses.hnc_mse if config.hnc.loss == "mse" else losses.hnc_kd
        def loss_fn(params):
            outputs, stats = [], []
            for images in jnp.split(batch["image"], chunks):
                out, upd = model.apply(
                    {"params": params, "batch_stats": state.batch_stats}, images, train=True,
                    mutable=["batch_stats"])
                outputs.append(out)
                stats.append(upd["batch_stats"])
            logits, cams = (jnp.concatenate(parts) for parts in zip(*outputs))
            hnc = hnc_fn(cams, batch["label"], config.hnc.k)
            ce = losses.cross_entropy(logits, batch["label"], multi_label=batch["label"].ndim == 2)
            loss = ce + config.hnc.weight * hnc
            return loss, jax.tree.map(lambda *s: sum(s) / chunks, *stats)
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, _ = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), stats


    single = make_batch(n=16)
    multi = {**single, "label": multi_hot_labels()}
    cases = [("per-device", False, "mse", single), ("sync", True, "mse", single),
             ("multi-hot-mse", True, "mse", multi), ("multi-hot-kd", True, "kd", multi)]
    for name, sync, loss, batch in cases:
        # No warm-up: the first step must move the parameters for the comparison to count.
        # HNC weight 1 and k 4: multi-hot images with 7+ positives have fewer valid maps.
        config = tiny_config(sync_batch_norm=sync, warmup_epochs=0.0,
                             **{"hnc.loss": loss, "hnc.weight": 1.0, "hnc.k": 4})
        mesh = train_step.make_mesh()
        assert mesh.size == 8
        model = train_step.create_model(config, 10)
        tx, schedule = train_step.make_optimizer(config, 10)
        init = lambda: train_step.create_train_state(
            config, model, tx, jax.random.key(0), mesh, (16, 16, 3))
        ref_params, ref_stats = jax.jit(
            lambda state, batch: reference(config, model.clone(bn_axis_name=None), tx, state,
                                           batch, 1 if sync else 8))(init(), batch)
        step = train_step.make_train_step(config, model, tx, schedule, mesh)
        new, _ = step(init(), train_step.shard_batch(mesh, batch))
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
        moved = [not np.allclose(a, b) for a, b in zip(*map(jax.tree.leaves, (new, init())))]
        assert sum(moved) > len(moved) // 2
        for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(ref_stats)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
        print("ok", name)
    """
)


def multi_hot_labels() -> np.ndarray:
    """(16, 10) multi-hot labels whose count of negatives differs over 8 devices of 2 images:
    device 0 holds images with 9 and 8 positives (1 and 2 negatives, fewer than k=4), device 1
    an image without any object, the rest 1 to 3 positives."""
    rng = np.random.default_rng(3)
    counts = [9, 8, 0, 2, 1, 3, 2, 1, 3, 1, 2, 2, 1, 3, 1, 2]
    labels = np.zeros((16, 10), np.float32)
    for row, count in enumerate(counts):
        labels[row, rng.choice(10, count, replace=False)] = 1.0
    return labels


def test_eight_devices_match_one_device_reference():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["per-device", "sync", "multi-hot-mse", "multi-hot-kd"]
    assert result.stdout.split() == [word for name in names for word in ("ok", name)]
