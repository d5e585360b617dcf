"""`bench aot`: a tiny config compiled for a 4-chip TPU v5e slice on this host (the TPU
compiler of libtpu, requirements-tpu.txt); its JSON is checked for consistency and against
the matmul FLOPs of JAX's trace of the same step; bad flags and configs get one-line errors."""

import json
import math

import jax
import jax.extend
import pytest

from configs import default
from hnc_jax.bench import aot, cli

pytest.importorskip("libtpu", reason="needs libtpu: pip install -r requirements-tpu.txt")

TINY = ["--config=configs/default.py", "--topology=v5e:2x2", "--config.image_size=32"]


def _matmul_flops(jaxpr) -> float:
    """2 x multiply-adds of the convolutions and dot products in a jaxpr and its sub-jaxprs
    (shard_map bodies are per device)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval
        if eqn.primitive.name == "conv_general_dilated":
            kernel, spec = eqn.invars[1].aval, eqn.params["dimension_numbers"].rhs_spec
            total += 2 * out.size * math.prod(kernel.shape[d] for d in spec[1:])
        elif eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            total += 2 * out.size * math.prod(eqn.invars[0].aval.shape[d] for d in contracting)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _matmul_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _matmul_flops(sub)
    return total


def _run(capsys, argv: list[str]) -> dict:
    cli.main(["aot", *argv])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_tiny_config_compiles_for_a_v5e_slice_with_consistent_figures(capsys):
    # 8 images per chip: TPU tiles pad a batch of 4 to 8 (the FLOPs of a batch of 4 count 8).
    small = _run(capsys, [*TINY, "--config.batch_size=32", "--config.eval_batch_size=32"])
    assert small["chips"] == 4 and small["chip"] == "v5e" and small["global_batch"] == 32
    chip = aot.CHIPS["TPU v5 lite"]
    assert small["hbm_gib_per_chip"] == pytest.approx(chip.hbm_bytes / aot.GIB)
    for step in ("train", "eval"):
        r = {k[len(step) + 1 :]: v for k, v in small.items() if k.startswith(step + "_")}
        held = r["argument_gib"] + r["output_gib"] + r["temp_gib"] - r["alias_gib"]
        assert r["total_gib"] == pytest.approx(held + r["code_gib"])
        assert r["hbm_fraction"] == pytest.approx(r["total_gib"] * aot.GIB / chip.hbm_bytes)
        assert 0 < r["hbm_fraction"] < 0.01 and r["compile_s"] > 0
        per_image_s = max(
            r["gflop_per_image"] * 1e9 / chip.peak_flops,
            r["mb_per_image"] * 1e6 / chip.hbm_bandwidth,
        )
        assert r["roofline_images_per_s_per_chip"] == pytest.approx(1 / per_image_s)
    # The state is donated: the new state reuses the old one's buffers.
    assert small["train_alias_gib"] == pytest.approx(small["train_output_gib"], rel=0.01)
    # Training is forward + backward (two convolutions per forward one) + the update: 3-5x
    # the forward-only eval step's FLOPs per image in this tiny net (4.0 measured).
    assert 3 < small["train_gflop_per_image"] / small["eval_gflop_per_image"] < 5
    # The FLOPs the TPU compiler counts are those of the step's convolutions and matmuls, as
    # JAX's own trace of the same step has them (per device), within 25%: a wrong batch share
    # or device count would be off by 2x or more.
    config = default.get_config()
    config.image_size, config.batch_size, config.eval_batch_size = 32, 32, 32
    mesh, _ = aot.topology_mesh("v5e:2x2")
    for step_name, per_device_batch in (("train", 8), ("eval", 8)):
        step, args = aot.config_steps(config, mesh, num_classes=10)[step_name]
        traced = _matmul_flops(step.trace(*args).jaxpr) / per_device_batch / 1e9
        ratio = small[f"{step_name}_gflop_per_image"] / traced
        assert 0.75 < ratio < 1.25, (step_name, ratio)
    # FLOPs are per image: the same at twice the batch; bytes per image fall (the parameters'
    # traffic is shared by more images).
    big = _run(capsys, [*TINY, "--config.batch_size=64", "--steps=train"])
    assert "eval_gflop_per_image" not in big
    ratio = big["train_gflop_per_image"] / small["train_gflop_per_image"]
    assert ratio == pytest.approx(1, abs=0.1)
    assert big["train_mb_per_image"] < small["train_mb_per_image"]  # Parameters amortised.


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--topology=v5e:2x2"], "--config is required"),
        ([*TINY, "--topology=v9:2x2"], "unknown TPU generation in --topology='v9:2x2'"),
        ([*TINY, "--topology=v5e:3x3"], "--topology='v5e:3x3': INVALID_ARGUMENT"),
        ([*TINY, "--config.batch_size=6"], "batch_size=6 must be a positive multiple of the"),
        ([*TINY, "--config.hnc.k=10"], "hnc.k must be in [1, 9]"),
        ([*TINY, "--config.model=resnet7"], "unknown model 'resnet7'"),
        ([*TINY, "--config.dataset=no_such_set"], "unknown dataset 'no_such_set'"),
        ([*TINY, "--steps=train,predict"], "--steps must be a subset of train,eval"),
        ([*TINY, "--anchor", "--steps=eval"], "--anchor compiles a train step only"),
        ([*TINY, "--config.hnc.loss=hinge"], "unknown hnc.loss 'hinge'"),
        ([*TINY, "--bogus=1"], "Unknown command line flag 'bogus'"),
    ],
)
def test_bad_flags_and_configs_exit_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(["aot", *argv])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_libtpu_names_the_requirements_file(monkeypatch, capsys):
    monkeypatch.setattr(aot, "has_libtpu", lambda: False)
    with pytest.raises(SystemExit):
        cli.main(["aot", *TINY])
    assert "pip install -r requirements-tpu.txt" in capsys.readouterr().err
