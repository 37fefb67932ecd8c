"""Model zoo: output contract, RepDistiller key/shape compatibility, checkpoint loading.

Key names, shapes and parameter counts below are literal facts about the RepDistiller /
mdistiller CIFAR releases (``models/*.py``), written out by hand, not read back from our code.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models import ModelOutput, build_model, list_models, probe
from kdlab.models.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    load_weights,
    read_checkpoint,
    state_dict_for_export,
)




EXPECTED_NAMES = {
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2",
    "ResNet18", "ResNet34", "ResNet50",
}
# Classifier attribute per family, as released.
HEAD = {"vgg": "classifier", "MobileNetV2": "classifier", "Shuffle": "linear", "ResNet": "linear"}
# Number of stages (stem + stages) per family.
NUM_STAGES = {"resnet": 4, "wrn": 4, "vgg": 5, "MobileNetV2": 5, "Shuffle": 4, "ResNet": 5}


def _lookup(name: str, table: dict, default=None):
    return next((v for prefix, v in table.items() if name.startswith(prefix)), default)


ALL = sorted(EXPECTED_NAMES)


def test_registry_has_exactly_the_zoo():
    imagenet = {n for n in list_models() if n.startswith("imagenet_")}  # tested in test_imagenet_models.py
    assert set(list_models()) - imagenet == EXPECTED_NAMES


def test_unknown_name_suggests_close_match():
    with pytest.raises(KeyError, match="resnet56"):
        build_model("resnet65", num_classes=10)


# --------------------------------------------------------------------------- contract


def _check_contract(name: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> ModelOutput:
    out = model(x)
    assert isinstance(out, ModelOutput)
    b = x.shape[0]
    assert out.logits.shape == (b, num_classes)
    assert out.pooled.dim() == 2 and out.pooled.shape[0] == b
    assert len(out.stages) == len(out.preacts) == _lookup(name, NUM_STAGES)
    for s, p in zip(out.stages, out.preacts, strict=True):
        assert s.dim() == 4 and s.shape == p.shape and s.shape[0] == b and s.numel() > 0
    return out


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_channels,size", [(3, 32), (1, 8)], ids=["rgb32", "gray8"])
def test_forward_backward_and_contract(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=in_channels)
    x = torch.randn(2, in_channels, size, size)

    model.train()
    out = _check_contract(name, model, x, 10)
    loss = F.cross_entropy(out.logits, torch.tensor([1, 7])) + sum(s.mean() for s in out.stages)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "every parameter gets a finite grad"

    model.eval()
    with torch.no_grad():
        out = _check_contract(name, model, x, 10)
        head = getattr(model, _lookup(name, HEAD, default="fc"))
        assert model.get_classifier() is head
        torch.testing.assert_close(head(out.pooled), out.logits)
        # pooled is the global average of the last stage (except where a head conv or BN-ReLU follows it)
        if not name.startswith(("wrn", "MobileNetV2", "ShuffleV2")):
            torch.testing.assert_close(out.stages[-1].mean(dim=(2, 3)), out.pooled)
        _check_preacts(name, model, out)


def _check_preacts(name: str, model: nn.Module, out: ModelOutput) -> None:
    """Where a ReLU follows a stage: relu(preact) == stage and preact != stage (it has negatives)."""
    if name.startswith("wrn"):
        # Pre-activation net: stages are raw residual sums (RepDistiller is_feat), preacts the BN
        # outputs that feed the next ReLU (RepDistiller preact=True).
        torch.testing.assert_close(out.preacts[1], model.block2.layer[0].bn1(out.stages[1]))
        torch.testing.assert_close(out.preacts[2], model.block3.layer[0].bn1(out.stages[2]))
        torch.testing.assert_close(out.preacts[3], model.bn1(out.stages[3]))
        torch.testing.assert_close(F.relu(out.preacts[3]).mean(dim=(2, 3)), out.pooled)
        assert all(not torch.equal(s, p) for s, p in zip(out.stages, out.preacts, strict=True))
        return
    linear = {1, 2, 3, 4} if name == "MobileNetV2" else set()  # linear bottlenecks: no ReLU follows
    for i, (s, p) in enumerate(zip(out.stages, out.preacts, strict=True)):
        if i in linear:
            assert torch.equal(s, p)
        else:
            torch.testing.assert_close(F.relu(p), s)
            assert (p < 0).any(), f"{name} preacts[{i}] should keep negative pre-activations"


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18"])
def test_tiny_imagenet_size_and_probe(name):
    model = build_model(name, num_classes=200)
    p = probe(model, (3, 64, 64))
    assert p.num_classes == 200 and p.pooled_dim > 0
    assert all(h >= 1 and w >= 1 for _, h, w in p.stage_shapes)
    assert model.training  # probe restores the mode


def test_vgg_pooling_rule_for_small_and_large_inputs():
    model = build_model("vgg8", num_classes=10, in_channels=1)
    assert [s[1:] for s in probe(model, (1, 8, 8)).stage_shapes] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    # 4x4: the third max-pool would see a 1x1 map and is skipped instead of producing an empty map
    assert [s[1:] for s in probe(model, (1, 4, 4)).stage_shapes] == [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    rgb = build_model("vgg8", num_classes=10)
    # RepDistiller: pool3 skipped at 32x32, applied at 64x64
    assert probe(rgb, (3, 32, 32)).stage_shapes[-1] == (512, 4, 4)
    assert probe(rgb, (3, 64, 64)).stage_shapes[-1] == (512, 4, 4)


# --------------------------------------------------------------------------- key facts (100 classes)

KEY_FACTS = {
    "resnet56": {
        "conv1.weight": (16, 3, 3, 3),
        "bn1.running_var": (16,),
        "layer1.0.conv1.weight": (16, 16, 3, 3),
        "layer2.0.conv1.weight": (32, 16, 3, 3),
        "layer2.0.downsample.0.weight": (32, 16, 1, 1),
        "layer2.0.downsample.1.running_mean": (32,),
        "layer3.0.downsample.0.weight": (64, 32, 1, 1),
        "layer3.8.conv2.weight": (64, 64, 3, 3),
        "layer3.8.bn2.num_batches_tracked": (),
        "fc.weight": (100, 64),
        "fc.bias": (100,),
    },
    "resnet8x4": {
        "conv1.weight": (32, 3, 3, 3),
        "layer1.0.conv1.weight": (64, 32, 3, 3),
        "layer1.0.downsample.0.weight": (64, 32, 1, 1),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.0.conv2.weight": (256, 256, 3, 3),
        "fc.weight": (100, 256),
    },
    "resnet32x4": {
        "layer1.4.conv2.weight": (64, 64, 3, 3),
        "layer3.4.bn2.weight": (256,),
        "fc.weight": (100, 256),
    },
    "wrn_40_2": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.conv1.weight": (32, 16, 3, 3),
        "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "block2.layer.0.convShortcut.weight": (64, 32, 1, 1),
        "block3.layer.5.conv2.weight": (128, 128, 3, 3),
        "bn1.weight": (128,),
        "fc.weight": (100, 128),
    },
    "wrn_16_2": {
        "block1.layer.1.bn2.running_mean": (32,),
        "block3.layer.1.conv1.weight": (128, 128, 3, 3),
        "fc.weight": (100, 128),
    },
    "vgg13": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.0.bias": (64,),
        "block0.1.running_var": (64,),
        "block0.3.weight": (64, 64, 3, 3),
        "block0.4.weight": (64,),
        "block2.3.weight": (256, 256, 3, 3),
        "block4.3.weight": (512, 512, 3, 3),
        "classifier.weight": (100, 512),
        "classifier.bias": (100,),
    },
    "vgg8": {
        "block0.0.weight": (64, 3, 3, 3),
        "block1.0.weight": (128, 64, 3, 3),
        "block4.0.weight": (512, 512, 3, 3),
        "block4.1.weight": (512,),
        "classifier.weight": (100, 512),
    },
    "MobileNetV2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "conv1.1.weight": (16,),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
        "blocks.0.0.conv.6.weight": (8, 16, 1, 1),
        "blocks.1.0.conv.0.weight": (48, 8, 1, 1),
        "blocks.1.1.conv.3.weight": (72, 1, 3, 3),
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "blocks.6.0.conv.7.running_mean": (160,),
        "conv2.0.weight": (1280, 160, 1, 1),
        "classifier.0.weight": (100, 1280),
        "classifier.0.bias": (100,),
    },
    "ShuffleV1": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (54, 24, 1, 1),  # first unit: ungrouped 1x1
        "layer1.0.conv2.weight": (54, 1, 3, 3),
        "layer1.0.conv3.weight": (216, 18, 1, 1),  # 240 - 24 outputs, groups 3
        "layer1.1.conv1.weight": (60, 80, 1, 1),
        "layer2.0.conv3.weight": (240, 20, 1, 1),
        "layer3.0.conv1.weight": (120, 160, 1, 1),
        "layer3.3.conv3.weight": (960, 80, 1, 1),
        "linear.weight": (100, 960),
    },
    "ShuffleV2": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (24, 1, 3, 3),
        "layer1.0.conv2.weight": (58, 24, 1, 1),
        "layer1.0.conv3.weight": (58, 24, 1, 1),
        "layer1.0.conv4.weight": (58, 1, 3, 3),
        "layer1.0.bn5.weight": (58,),
        "layer1.3.conv1.weight": (58, 58, 1, 1),
        "layer2.7.conv3.weight": (116, 116, 1, 1),
        "layer3.3.conv2.weight": (232, 1, 3, 3),
        "conv2.weight": (1024, 464, 1, 1),
        "bn2.weight": (1024,),
        "linear.weight": (100, 1024),
    },
    "ResNet50": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.shortcut.1.running_var": (512,),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "linear.weight": (100, 2048),
    },
    "ResNet18": {
        "layer1.1.conv2.weight": (64, 64, 3, 3),
        "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.weight": (512,),
        "linear.weight": (100, 512),
    },
}
ABSENT_KEYS = {
    "resnet56": ["layer1.0.downsample.0.weight", "layer1.9.conv1.weight", "fc"],
    "resnet8x4": ["layer1.1.conv1.weight"],
    "wrn_40_2": ["block1.layer.1.convShortcut.weight", "block1.layer.6.bn1.weight"],
    "vgg8": ["block0.3.weight", "pool4.weight"],
    "ResNet18": ["layer1.0.shortcut.0.weight", "fc.weight"],
    "ResNet50": ["fc.weight"],
}


@pytest.mark.parametrize("name", sorted(KEY_FACTS))
def test_released_keys_and_shapes(name):
    sd = build_model(name, num_classes=100).state_dict()
    for key, shape in KEY_FACTS[name].items():
        assert key in sd, f"{name}: missing released key {key}"
        assert tuple(sd[key].shape) == shape, f"{name}: {key} {tuple(sd[key].shape)} != {shape}"
    for key in ABSENT_KEYS.get(name, []):
        assert key not in sd


def test_wrn_width_one_has_no_first_shortcut():
    sd = build_model("wrn_40_1", num_classes=100).state_dict()
    assert "block1.layer.0.convShortcut.weight" not in sd  # 16 -> 16: identity
    assert tuple(sd["block2.layer.0.convShortcut.weight"].shape) == (32, 16, 1, 1)


def _conv(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cin // groups * cout * k * k


def cifar_resnet_params(depth: int, widths: tuple[int, ...], classes: int) -> int:
    """Parameter count of a CIFAR ResNet, from the architecture (BN: weight + bias)."""
    n = (depth - 2) // 6
    total = _conv(3, widths[0], 3) + 2 * widths[0]
    cin = widths[0]
    for stage, cout in enumerate(widths[1:]):
        for i in range(n):
            total += _conv(cin, cout, 3) + _conv(cout, cout, 3) + 4 * cout
            if i == 0 and (stage > 0 or cin != cout):
                total += _conv(cin, cout, 1) + 2 * cout
            cin = cout
    return total + widths[-1] * classes + classes


def wrn_params(depth: int, k: int, classes: int) -> int:
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = _conv(3, 16, 3)
    cin = 16
    for cout in widths[1:]:
        for _ in range(n):
            total += 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3)
            if cin != cout:
                total += _conv(cin, cout, 1)
            cin = cout
    return total + 2 * cin + cin * classes + classes


def test_param_count_arithmetic_matches_hand_computed_values():
    # resnet56 by hand: stem 432+32, layer1 9*4672, layer2 14528+8*18560, layer3 57728+8*73984, fc 6500
    assert cifar_resnet_params(56, (16, 16, 32, 64), 100) == 861_620
    assert cifar_resnet_params(20, (16, 16, 32, 64), 100) == 278_324
    assert wrn_params(40, 2, 100) == 2_255_156


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet20", cifar_resnet_params(20, (16, 16, 32, 64), 100)),
        ("resnet56", cifar_resnet_params(56, (16, 16, 32, 64), 100)),
        ("resnet110", cifar_resnet_params(110, (16, 16, 32, 64), 100)),
        ("resnet8x4", cifar_resnet_params(8, (32, 64, 128, 256), 100)),
        ("resnet32x4", cifar_resnet_params(32, (32, 64, 128, 256), 100)),
        ("wrn_40_2", wrn_params(40, 2, 100)),
        ("wrn_16_2", wrn_params(16, 2, 100)),
        ("wrn_40_1", wrn_params(40, 1, 100)),
    ],
)
def test_exact_param_counts(name, expected):
    assert sum(p.numel() for p in build_model(name, num_classes=100).parameters()) == expected


# Sizes (millions, CIFAR-100 heads) as commonly tabulated in the KD literature (CRD / DKD tables);
# tables round or truncate to 2 decimals (vgg8 = 3,965,028 is listed as 3.96), hence < 0.01.
PUBLISHED_M = {
    "resnet56": 0.86, "resnet110": 1.74, "resnet20": 0.28, "resnet32x4": 7.43, "resnet8x4": 1.23,
    "wrn_40_2": 2.26, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "vgg13": 9.46, "vgg8": 3.96,
    "ResNet50": 23.71, "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_published_param_counts(name):
    count = sum(p.numel() for p in build_model(name, num_classes=100).parameters())
    assert abs(count / 1e6 - PUBLISHED_M[name]) < 0.01, f"{name}: {count:,}"


# --------------------------------------------------------------------------- checkpoints


def _randomised(name: str, num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else torch.randn_like(t) * 0.1)
    return model


def _repdistiller_ckpt(model: nn.Module, path, *, prefix: str = "", wrapper: str | None = "model") -> None:
    """Save like RepDistiller's train_teacher.py: {'epoch', 'model', 'best_acc', 'optimizer'}."""
    sd = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
    if wrapper is None:
        torch.save(sd, path)
        return
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    torch.save({"epoch": 240, wrapper: sd, "best_acc": torch.tensor(73.41), "optimizer": opt.state_dict()}, path)


@pytest.mark.parametrize(
    "prefix,wrapper",
    [("module.", "model"), ("", "model"), ("", "state_dict"), ("module.", "net"), ("", None)],
    ids=["dataparallel-model", "model", "state_dict", "dataparallel-net", "bare"],
)
def test_load_repdistiller_style_checkpoint(tmp_path, prefix, wrapper):
    src = _randomised("resnet8", 100).eval()
    path = tmp_path / "ckpt_epoch_240.pth"
    _repdistiller_ckpt(src, path, prefix=prefix, wrapper=wrapper)

    dst = build_model("resnet8", num_classes=100)
    assert load_weights(dst, path, model_name="resnet8") is dst
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x).logits, src(x).logits)


def test_read_checkpoint_returns_metadata(tmp_path):
    path = tmp_path / "ckpt.pth"
    _repdistiller_ckpt(_randomised("resnet8", 100), path, prefix="module.")
    sd, meta = read_checkpoint(path)
    assert "fc.weight" in sd and not any(k.startswith("module.") for k in sd)
    assert meta["epoch"] == 240 and float(meta["best_acc"]) == pytest.approx(73.41)


def test_load_in_memory_state_and_into_wrapped_model():
    src = _randomised("wrn_16_1", 10)
    dst = nn.DataParallel(build_model("wrn_16_1", num_classes=10))
    load_weights(dst, {"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, model_name="wrn_16_1")
    assert torch.equal(dst.module.fc.weight, src.fc.weight)


def test_missing_bn_counters_are_tolerated():
    src = _randomised("vgg8", 10)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = build_model("vgg8", num_classes=10)
    load_weights(dst, {"model": sd}, model_name="vgg8")
    assert torch.equal(dst.block4[1].running_var, src.block4[1].running_var)


def test_wrong_class_count_is_a_clear_mismatch(tmp_path):
    path = tmp_path / "cifar10.pth"
    _repdistiller_ckpt(_randomised("resnet8", 10), path, prefix="module.")
    with pytest.raises(CheckpointMismatch) as info:
        load_weights(build_model("resnet8", num_classes=100), path, model_name="resnet8")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'resnet8'" in msg and "first mismatching key: 'fc.weight'" in msg
    assert "fc.weight: checkpoint (10, 64) vs model (100, 64)" in msg
    assert "fc.bias: checkpoint (10,) vs model (100,)" in msg
    assert "different architecture or class count" in msg
    assert "checkpoint has 10 classes, the model 100; build the model with num_classes=10" in msg


def test_wrong_architecture_is_a_clear_mismatch(tmp_path):
    path = tmp_path / "resnet8.pth"
    _repdistiller_ckpt(_randomised("resnet8", 100), path)
    with pytest.raises(CheckpointMismatch) as info:
        load_weights(build_model("resnet20", num_classes=100), path, model_name="resnet20")
    msg = str(info.value)
    assert "'resnet20'" in msg and "first mismatching key: 'layer1.1.conv1.weight'" in msg
    assert "missing keys (" in msg and "different architecture or class count" in msg

    # and the other way round: extra blocks are reported as unexpected keys
    path20 = tmp_path / "resnet20.pth"
    _repdistiller_ckpt(_randomised("resnet20", 100), path20)
    with pytest.raises(CheckpointMismatch, match=r"unexpected keys \(\d+\): layer1\.1\.conv1\.weight"):
        load_weights(build_model("resnet8", num_classes=100), path20, model_name="resnet8")

    # a different family entirely
    with pytest.raises(CheckpointMismatch, match="first mismatching key: 'block0.0.weight'"):
        load_weights(build_model("vgg8", num_classes=100), path, model_name="vgg8")


def _bn_keys(prefix: str, c: int):
    yield from ((f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var"))
    yield f"{prefix}.num_batches_tracked", ()


def released_cifar_resnet_layout(depth: int, widths: tuple[int, ...], classes: int):
    """RepDistiller models/resnet.py key order: conv1, bn1, layer*.i.{conv1,bn1,conv2,bn2,downsample}, fc."""
    n = (depth - 2) // 6
    yield "conv1.weight", (widths[0], 3, 3, 3)
    yield from _bn_keys("bn1", widths[0])
    cin = widths[0]
    for s, cout in enumerate(widths[1:], start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            yield f"{p}.conv1.weight", (cout, cin, 3, 3)
            yield from _bn_keys(f"{p}.bn1", cout)
            yield f"{p}.conv2.weight", (cout, cout, 3, 3)
            yield from _bn_keys(f"{p}.bn2", cout)
            if i == 0 and (s > 1 or cin != cout):
                yield f"{p}.downsample.0.weight", (cout, cin, 1, 1)
                yield from _bn_keys(f"{p}.downsample.1", cout)
            cin = cout
    yield "fc.weight", (classes, cin)
    yield "fc.bias", (classes,)


def released_wrn_layout(depth: int, k: int, classes: int):
    """RepDistiller models/wrn.py key order: conv1, block*.layer.i.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc."""
    n = (depth - 4) // 6
    yield "conv1.weight", (16, 3, 3, 3)
    cin = 16
    for b, cout in enumerate((16 * k, 32 * k, 64 * k), start=1):
        for i in range(n):
            p = f"block{b}.layer.{i}"
            yield from _bn_keys(f"{p}.bn1", cin)
            yield f"{p}.conv1.weight", (cout, cin, 3, 3)
            yield from _bn_keys(f"{p}.bn2", cout)
            yield f"{p}.conv2.weight", (cout, cout, 3, 3)
            if cin != cout:
                yield f"{p}.convShortcut.weight", (cout, cin, 1, 1)
            cin = cout
    yield from _bn_keys("bn1", cin)
    yield "fc.weight", (classes, cin)
    yield "fc.bias", (classes,)


@pytest.mark.parametrize(
    "name,layout",
    [
        ("resnet20", released_cifar_resnet_layout(20, (16, 16, 32, 64), 100)),
        ("resnet8x4", released_cifar_resnet_layout(8, (32, 64, 128, 256), 100)),
        ("wrn_16_2", released_wrn_layout(16, 2, 100)),
        ("wrn_40_1", released_wrn_layout(40, 1, 100)),
    ],
)
def test_checkpoint_from_independently_enumerated_release_layout(tmp_path, name, layout):
    """A teacher file written from the release's key list alone (not from our model) loads strictly."""
    layout = list(layout)
    gen = torch.Generator().manual_seed(1)
    sd = OrderedDict(
        (key, torch.tensor(240) if not shape else torch.rand(shape, generator=gen) + 0.5) for key, shape in layout
    )
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": OrderedDict(("module." + k, v) for k, v in sd.items()), "best_acc": 70.0}, path)
    model = load_weights(build_model(name, num_classes=100), path, model_name=name)
    ours = model.state_dict()
    assert list(ours) == [key for key, _ in layout]  # same keys, same order
    assert all(torch.equal(ours[k], v) for k, v in sd.items())


class _Exploit:
    """Pickles as a call to os.system -- what a malicious checkpoint looks like."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickled_callable_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "hacked"
    path = tmp_path / "evil.pth"
    state = build_model("resnet8", num_classes=10).state_dict()
    torch.save({"model": state, "epoch": 240, "payload": _Exploit(f"echo hacked > {marker}")}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model("resnet8", num_classes=10), path, model_name="resnet8")
    assert not isinstance(info.value, CheckpointMismatch)
    msg = str(info.value)
    assert "weights_only" in msg and "system" in msg and "'resnet8'" in msg
    assert not marker.exists()


def test_whole_module_pickle_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_weights(nn.Linear(2, 2), path, model_name="linear")


@pytest.mark.parametrize(
    "content", [b"", b"this is not a checkpoint", b"\x80\x02K\x01."], ids=["empty", "text", "pickled-int"]
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="resnet8"):
        load_weights(build_model("resnet8", num_classes=10), path, model_name="resnet8")


def test_checkpoint_without_state_dict(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "best_acc": 50.0}, path)
    with pytest.raises(CheckpointError, match="no state dict.*'epoch'"):
        load_weights(build_model("resnet8", num_classes=10), path, model_name="resnet8")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(build_model("resnet8", num_classes=10), tmp_path / "nope.pth", model_name="resnet8")


def test_export_round_trip(tmp_path):
    src = _randomised("ShuffleV2", 10)
    wrapped = nn.DataParallel(src)
    sd = state_dict_for_export(wrapped)
    assert list(sd) == list(src.state_dict())
    assert all(v.device.type == "cpu" and not v.requires_grad for v in sd.values())
    sd["linear.bias"].add_(1.0)  # a copy: the model is untouched
    assert not torch.equal(sd["linear.bias"], src.linear.bias)
    sd["linear.bias"].sub_(1.0)

    path = tmp_path / "export.pth"
    torch.save({"model": sd, "epoch": 1}, path)
    dst = build_model("ShuffleV2", num_classes=10)
    load_weights(dst, path, model_name="ShuffleV2")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x).logits, src.eval()(x).logits)
