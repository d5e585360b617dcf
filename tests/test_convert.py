"""torchvision ResNet weights -> Flax: parity with the torch model, layouts and bad files.

The reference is a torchvision-layout ResNet written here in plain torch (torchvision's module
names, so its `state_dict()` has torchvision's keys) with random weights and random BatchNorm
statistics; nothing is downloaded. Tests that need torch are skipped without it.
"""

import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import default
from hnc_jax import models
from hnc_jax.errors import ConfigError
from hnc_jax.training import checkpoints, train_step
from hnc_jax.weights import convert, formats
from tests.helpers import ROOT, error_lines, run_main

TORCH_REASON = "torch is optional: pip install -r requirements-torch.txt"
ARCHS = {  # depth -> (blocks per layer, bottleneck)
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def torch_resnet(
    depth: int, num_classes: int, seed: int = 0, width: float = 1.0, stem: str = "imagenet"
):
    """torchvision's ResNet in eval mode with random weights and BN statistics (also timm's:
    its resnet.py keeps torchvision's module names). `width` and `stem` as in `models.ResNet`:
    width 1 and the ImageNet stem are torchvision's `resnet<depth>`.

    forward(x NCHW) -> (logits (N, C), layer4 output (N, D, h, w)).
    """
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    nn = torch.nn
    sizes, bottleneck = ARCHS[depth]
    expansion = 4 if bottleneck else 1

    class Block(nn.Module):
        def __init__(self, cin: int, planes: int, stride: int):
            super().__init__()
            cout = planes * expansion
            if bottleneck:
                self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(cout)
            else:
                self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if bottleneck:
                y = self.bn3(self.conv3(torch.relu(y)))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    base = max(1, round(64 * width))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            if stem == "imagenet":
                self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            else:
                self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            cin = base
            for s, n in enumerate(sizes, start=1):
                planes = base * 2 ** (s - 1)
                blocks = []
                for b in range(n):
                    blocks.append(Block(cin, planes, 2 if s > 1 and b == 0 else 1))
                    cin = planes * expansion
                setattr(self, f"layer{s}", nn.Sequential(*blocks))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            if stem == "imagenet":
                x = nn.functional.max_pool2d(x, 3, 2, 1)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean(dim=(2, 3))), x

    torch.manual_seed(seed)
    model = ResNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # so that every statistic matters
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def torch_outputs(model, images_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (B, C) and CAMs (B, h, w, C) from layer4's output and the fc layer."""
    import torch

    with torch.no_grad():
        logits, features = model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2)))
        cams = torch.einsum("ndhw,cd->nhwc", features, model.fc.weight) + model.fc.bias
    return logits.numpy(), cams.numpy()


def flax_outputs(name, num_classes, variables, images, **kwargs):
    model = models.create_model(name, num_classes=num_classes, **kwargs)
    with jax.default_matmul_precision("highest"):
        logits, cams = model.apply(variables, jnp.asarray(images))
    return np.asarray(logits), np.asarray(cams)


@pytest.mark.parametrize(
    ("depth", "size", "num_classes"),
    [(18, 64, 1000), (34, 64, 7), (50, 64, 200), (101, 64, 10), (152, 64, 5), (50, 224, 100)],
)
def test_parity_with_torch(depth, size, num_classes):
    model = torch_resnet(depth, num_classes, seed=depth)
    images = np.random.default_rng(depth).normal(size=(2, size, size, 3)).astype(np.float32)
    want_logits, want_cams = torch_outputs(model, images)

    name = f"resnet{depth}"
    assert convert.infer_arch(model.state_dict()) == (name, num_classes)
    variables = convert.from_torchvision(model.state_dict())
    logits, cams = flax_outputs(name, num_classes, variables, images)

    assert cams.shape == want_cams.shape == (2, size // 32, size // 32, num_classes)
    errors = rel_err(logits, want_logits), rel_err(cams, want_cams)
    print(f"{name} {size}x{size}: max rel err logits {errors[0]:.1e}, cams {errors[1]:.1e}")
    assert max(errors) <= 1e-4


def shapes_of(model) -> dict:
    """The variables' tree of `model.init`, leaves replaced by their shapes."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return jax.tree.map(lambda x: x.shape, shapes)


def fresh_variables(model) -> dict:
    """Stands in for `model.init` (same tree and shapes, random values), without its cost."""
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda shape: rng.normal(size=shape).astype(np.float32),
        shapes_of(model),
        is_leaf=lambda x: isinstance(x, tuple),
    )


@pytest.fixture(scope="module")
def resnet18():
    return torch_resnet(18, 10)


@pytest.fixture(scope="module")
def resnet18_pth(resnet18, tmp_path_factory):
    """The model's state_dict saved as torchvision saves it."""
    import torch

    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18.state_dict(), path)
    return path


def test_layouts(resnet18):
    sd = resnet18.state_dict()
    variables = convert.from_torchvision(sd)
    params, stats = variables["params"], variables["batch_stats"]
    w = sd["layer2.0.conv2.weight"].numpy()  # (O, I, kh, kw)
    np.testing.assert_array_equal(
        params["stage2_block0"]["conv2"]["kernel"][1, 2, 5, 7], w[7, 5, 1, 2]
    )
    np.testing.assert_array_equal(params["head"]["kernel"], sd["fc.weight"].numpy().T)
    down = "layer3.0.downsample.1"
    np.testing.assert_array_equal(
        params["stage3_block0"]["downsample_bn"]["scale"], sd[f"{down}.weight"]
    )
    np.testing.assert_array_equal(
        stats["stage3_block0"]["downsample_bn"]["var"], sd[f"{down}.running_var"]
    )
    np.testing.assert_array_equal(stats["stem_bn"]["mean"], sd["bn1.running_mean"])
    # Same tree as the model's own init: nothing left out, nothing extra.
    assert jax.tree.map(jnp.shape, variables) == shapes_of(models.ResNet18(10))


def test_numpy_wrapped_and_dataparallel_checkpoints(resnet18, tmp_path):
    import torch

    sd = resnet18.state_dict()
    want = convert.from_torchvision(sd)
    as_numpy = {k: v.numpy() for k, v in sd.items()}
    # As the original HNC code saved it: DataParallel's prefix, inside a training checkpoint.
    path = tmp_path / "checkpoint.pth.tar"
    wrapped = {
        "epoch": 3,
        "arch": "resnet18",
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
    }
    torch.save(wrapped, path)
    for source in (as_numpy, {"model": sd}, path, str(path)):
        got = convert.from_torchvision(source)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_stack_blocks_gives_the_scanned_model():
    model = torch_resnet(50, 6)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    scanned = models.stack_blocks(
        convert.from_torchvision(model.state_dict()), models.ResNet50(num_classes=1).stage_sizes
    )
    stacked = scanned["params"]["stage3_blocks"]["block"]["conv2"]["kernel"]  # 6 blocks
    assert stacked.shape == (5, 3, 3, 256, 256)
    assert jax.tree.map(jnp.shape, scanned) == shapes_of(models.ResNet50(6, scan_blocks=True))
    got = flax_outputs("resnet50", 6, scanned, images, scan_blocks=True)
    for g, w in zip(got, torch_outputs(model, images), strict=True):
        assert rel_err(g, w) <= 1e-4


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_load_pretrained_new_head(resnet18_pth, caplog, scan_blocks):
    path = resnet18_pth
    fresh = fresh_variables(models.ResNet18(3, scan_blocks=scan_blocks))
    with caplog.at_level(logging.INFO):
        loaded = convert.load_pretrained(path, fresh, num_classes=3)
    assert "head re-initialised" in caplog.text
    np.testing.assert_array_equal(
        loaded["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"]
    )
    want = convert.from_torchvision(path)
    if scan_blocks:
        want = models.stack_blocks(want, models.ResNet18(3).stage_sizes)
    del want["params"]["head"], loaded["params"]["head"]
    jax.tree.map(np.testing.assert_array_equal, loaded, want)


def test_load_pretrained_same_classes_loads_everything(resnet18_pth):
    path = resnet18_pth
    fresh = fresh_variables(models.ResNet18(10))
    loaded = convert.load_pretrained(path, fresh, num_classes=10)
    jax.tree.map(np.testing.assert_array_equal, loaded, convert.from_torchvision(path))


def test_load_pretrained_wrong_depth(resnet18_pth):
    path = resnet18_pth
    fresh = fresh_variables(models.ResNet34(10))
    with pytest.raises(ValueError, match=r"holds a resnet18.*model-only params/stage1_block2/"):
        convert.load_pretrained(path, fresh, num_classes=10)
    # A scanned ResNet-34 has the same keys; the stacked shapes differ.
    fresh = fresh_variables(models.ResNet34(10, scan_blocks=True))
    with pytest.raises(
        ValueError,
        match=r"params/stage1_blocks/block/\w+/\w+ has shape \(1, .*\) in the file, \(2, .*\) in",
    ):
        convert.load_pretrained(path, fresh, num_classes=10)


def test_init_from_pth_fills_a_train_state(resnet18_pth):
    config = default.get_config()
    config.update(dict(model="resnet18", model_width=1.0, stem="imagenet"))
    model = train_step.create_model(config, 3)
    tx, _ = train_step.make_optimizer(config, epoch_steps=10)
    mesh = train_step.make_mesh()
    state = train_step.create_train_state(config, model, tx, jax.random.key(0), mesh, (32, 32, 3))
    loaded = checkpoints.init_from(str(resnet18_pth), state, num_classes=3)
    want = convert.from_torchvision(resnet18_pth)
    np.testing.assert_array_equal(loaded.params["head"]["bias"], state.params["head"]["bias"])
    del want["params"]["head"]
    got = {"params": dict(loaded.params), "batch_stats": loaded.batch_stats}
    del got["params"]["head"]
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert loaded.params["stem_conv"]["kernel"].sharding == state.params["head"]["bias"].sharding


def edited(sd, drop=(), **replace):
    out = {k: v.numpy() for k, v in sd.items() if k not in drop}
    return out | {k.replace("__", "."): v for k, v in replace.items()}


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (
            lambda sd: edited(sd, drop=[k for k in sd if k.startswith("layer3.1.")]),
            r"blocks per layer \(2, 2, 1, 2\) with basic blocks match no ResNet",
        ),
        (
            lambda sd: edited(sd, drop=["layer2.0.bn1.running_var", "fc.bias"]),
            "resnet18 state_dict is missing 2 keys: layer2.0.bn1.running_var, fc.bias",
        ),
        (
            lambda sd: edited(sd, layer1__0__se__weight=np.zeros(3)),
            "unexpected keys: layer1.0.se.weight",
        ),
        (
            lambda sd: edited(sd, layer1__1__conv2__weight=np.zeros((64, 64, 1, 1))),
            r"layer1.1.conv2.weight has shape \(64, 64, 1, 1\); resnet18 expects \(64, 64, 3, 3\)",
        ),
        (lambda sd: edited(sd, drop=["fc.weight"]), "no 'fc.weight'"),
    ],
)
def test_bad_state_dicts(resnet18, make, pattern):
    with pytest.raises(ValueError, match=pattern) as err:
        convert.from_torchvision(make(resnet18.state_dict()))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("state_dict", "pattern"),
    [
        ({"features.0.weight": np.zeros((64, 3, 3, 3))}, "not a torchvision ResNet"),
        ({"conv1.weight": "not a tensor"}, "holds a str"),
        ([np.zeros(3)], "expected a state_dict"),
    ],
)
def test_not_a_resnet_without_torch(state_dict, pattern):
    with pytest.raises(ValueError, match=pattern):
        convert.from_torchvision(state_dict)


def test_bad_files(resnet18_pth, tmp_path):
    import torch

    good = resnet18_pth
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("hello")
    a_tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), a_tensor)
    for path, pattern in [
        (truncated, "truncated.pth: truncated or not a torch checkpoint"),
        (not_torch, "notes.txt: truncated or not a torch checkpoint"),
        (a_tensor, "tensor.pth: expected a state_dict"),
    ]:
        with pytest.raises(ValueError, match=pattern) as err:
            convert.from_torchvision(path)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        convert.from_torchvision(tmp_path / "absent.pth")


def test_files_import_without_torch(resnet18, resnet18_pth, tmp_path):
    """`.pth` and `.safetensors` files import in a process where `import torch` fails."""
    import safetensors.torch

    st_path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(resnet18.state_dict(), st_path)
    script = f"""
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError
import numpy as np
from flax import traverse_util
from hnc_jax.weights import convert
for name, path in [("pth", {str(resnet18_pth)!r}), ("safetensors", {str(st_path)!r})]:
    flat = traverse_util.flatten_dict(convert.from_torchvision(path), sep="/")
    np.savez({str(tmp_path)!r} + f"/{{name}}.npz", **flat)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    want = traverse_util.flatten_dict(convert.from_torchvision(resnet18.state_dict()), sep="/")
    for name in ("pth", "safetensors"):
        with np.load(tmp_path / f"{name}.npz") as got:
            assert sorted(got) == sorted(want)
            for key, value in want.items():
                np.testing.assert_array_equal(got[key], value)


def test_timm_layout_safetensors_reproduces_torch(tmp_path):
    """A file as timm's hub files are written (`safetensors.torch.save_file` of the model's
    state_dict, metadata format 'pt')."""
    model = torch_resnet(50, 12, seed=3)
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), path, metadata={"format": "pt"})
    images = np.random.default_rng(3).normal(size=(2, 64, 64, 3)).astype(np.float32)
    assert convert.infer_arch(convert.load_state_dict(path)) == ("resnet50", 12)
    got = flax_outputs("resnet50", 12, convert.from_torchvision(path), images)
    errors = [rel_err(g, w) for g, w in zip(got, torch_outputs(model, images), strict=True)]
    print(f"timm-layout resnet50: max rel err logits {errors[0]:.1e}, cams {errors[1]:.1e}")
    assert max(errors) <= 1e-4


@pytest.mark.parametrize(
    ("extra", "first"),
    [
        ({"conv1.0.weight": (32, 3, 3, 3), "conv1.1.weight": (32,)}, "conv1.0.weight"),  # timm d
        ({"layer1.0.se.fc1.weight": (8, 64, 1, 1)}, "layer1.0.se.fc1.weight"),  # SE blocks
        ({"layer2.0.downsample.2.weight": (128,)}, "layer2.0.downsample.2.weight"),  # avg_down
        ({"head.fc.weight": (10, 512)}, "head.fc.weight"),
    ],
)
def test_other_layouts_are_refused_naming_the_first_unexpected_key(extra, first):
    sd = {k: np.zeros(v.shape) for k, v in convert.to_state_dict(fresh_flax(18, 10)).items()}
    sd |= {k: np.zeros(shape) for k, shape in extra.items()}
    with pytest.raises(ValueError, match=rf"torchvision/timm .*: unexpected keys: {first}") as e:
        convert.from_torchvision(sd)
    assert "\n" not in str(e.value)


def fresh_flax(depth: int, num_classes: int, seed: int = 0, **kwargs) -> dict:
    """`model.init` variables with random BatchNorm scales, biases and statistics and a random
    classifier bias (so that every tensor matters)."""
    model = models.create_model(f"resnet{depth}", num_classes=num_classes, **kwargs)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(seed)
    ranges = {"scale": (0.5, 1.5), "var": (0.5, 2.0), "bias": (-0.2, 0.2), "mean": (-0.2, 0.2)}

    def randomise(path, x):
        name = path[-1].key
        if name in ranges:
            return rng.uniform(*ranges[name], size=x.shape).astype(np.float32)
        return np.asarray(x)

    return jax.tree_util.tree_map_with_path(randomise, variables)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("scan_blocks", [False, True])
def test_export_round_trip_is_exact(tmp_path, suffix, scan_blocks):
    if suffix == ".pth":
        pytest.importorskip("torch", reason=TORCH_REASON)
    variables = fresh_flax(34, 7)
    exported = variables
    if scan_blocks:
        exported = models.stack_blocks(variables, models.ResNet34(num_classes=1).stage_sizes)
    path = convert.to_torchvision(exported, tmp_path / f"resnet34{suffix}")
    jax.tree.map(np.testing.assert_array_equal, convert.from_torchvision(path), variables)


def test_export_loads_strictly_into_torch_and_matches(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    variables = fresh_flax(50, 6, seed=1)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    for suffix in (".safetensors", ".pth"):
        path = convert.to_torchvision(variables, tmp_path / f"resnet50{suffix}")
        model = torch_resnet(50, 6, seed=9)
        state_dict = formats.read(path)
        assert sorted(state_dict) == sorted(model.state_dict())
        if suffix == ".pth":  # safetensors sorts the names
            assert list(state_dict) == list(model.state_dict())  # torch's module order
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
        got = torch_outputs(model, images)
        want = flax_outputs("resnet50", 6, variables, images)
        errors = [rel_err(g, w) for g, w in zip(got, want, strict=True)]
        print(f"resnet50{suffix}: max rel err logits {errors[0]:.1e}, cams {errors[1]:.1e}")
        assert max(errors) <= 1e-4


def test_export_refuses_bad_paths_and_models(tmp_path, monkeypatch):
    variables = fresh_flax(18, 3)
    with pytest.raises(ValueError, match=r"give a .safetensors or .pth file"):
        convert.to_torchvision(variables, tmp_path / "model.npz")
    broken = {"params": dict(variables["params"]), "batch_stats": variables["batch_stats"]}
    del broken["params"]["stage1_block1"]
    with pytest.raises(ValueError, match=r"resnet18 state_dict is missing|blocks per layer"):
        convert.to_torchvision(broken, tmp_path / "model.safetensors")
    workdir, out = str(tmp_path / "work"), str(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"no best checkpoint in .*work/checkpoints"):
        checkpoints.export_checkpoint(workdir, out, "best")
    with pytest.raises(ValueError, match=r"unknown checkpoint 'first'; allowed: latest, best"):
        checkpoints.export_checkpoint(workdir, out, "first")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install -r requirements-torch.txt"):
        convert.to_torchvision(variables, tmp_path / "resnet18.pth")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_main_exports_a_trained_workdir(trained_run, tmp_path):
    """main.py --mode=export on a tiny trained workdir (narrow, small stem; trained on 2
    devices, exported on 1): the file holds the checkpoint exactly and a torch model of the
    same width and stem reproduces it."""
    workdir = trained_run[0]
    out = tmp_path / "exported" / "model.safetensors"
    done = run_main(f"--workdir={workdir}", "--mode=export", f"--out={out}", "--checkpoint=best")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"wrote {out}"
    with checkpoints.create_manager(str(workdir), keep=1, read_only=True) as manager:
        assert manager.latest_step() == manager.best_step() == 3
    # The reference: the checkpoint's arrays as saved, restored onto one device.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    variables = jax.device_get(checkpoints.load_variables(str(workdir), device))
    got, want = formats.read(out), convert.to_state_dict(variables)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)
    bad = run_main(f"--workdir={workdir}", "--mode=export", f"--out={tmp_path / 'model.npz'}")
    errors = error_lines(bad.stderr)
    assert bad.returncode == 2 and len(errors) == 1, bad.stderr[-2000:]
    assert errors[0].endswith("model.npz: give a .safetensors or .pth file")

    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    model = torch_resnet(18, 10, width=0.0625, stem="small")
    model.load_state_dict({k: torch.tensor(v) for k, v in got.items()}, strict=True)
    images = np.random.default_rng(0).normal(size=(2, 48, 48, 3)).astype(np.float32)
    flax = flax_outputs("resnet18", 10, variables, images, width=0.0625, stem="small")
    for g, w in zip(torch_outputs(model, images), flax, strict=True):
        assert rel_err(g, w) <= 1e-4
