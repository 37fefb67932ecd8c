"""ImageNet-style zoo models: output contract, torchvision / mdistiller key layouts, strict loading.

The expected state dicts are generated below from the published architecture tables (layer counts,
widths, strides, kernel sizes) in torchvision's key naming (``torchvision/models/resnet.py``,
``mobilenetv2.py``) and mdistiller's (``mdistiller/models/imagenet/mobilenetv1.py``), independently of
``kdlab.models.imagenet``; literal shapes and the parameter counts of torchvision's model documentation
(``num_params`` of the IMAGENET1K_V1 weights) pin the generators down.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from kdlab.models import ModelOutput, build_model, list_models, probe
from kdlab.models.checkpoint import CheckpointMismatch, load_weights




NAMES = ["imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50", "imagenet_resnet101",
         "imagenet_mobilenetv2", "imagenet_mobilenetv1"]
HEAD = {"imagenet_mobilenetv2": "classifier"}  # the others: fc

# torchvision model docs, num_params of the IMAGENET1K_V1 weights (1000 classes).
TORCHVISION_PARAMS = {
    "imagenet_resnet18": 11_689_512,
    "imagenet_resnet34": 21_797_672,
    "imagenet_resnet50": 25_557_032,
    "imagenet_resnet101": 44_549_160,
    "imagenet_mobilenetv2": 3_504_872,
}


# ------------------------------------------------------------------ expected layouts, from the tables
def _conv(sd, name, out_ch, in_ch, k):
    sd[f"{name}.weight"] = (out_ch, in_ch, k, k)


def _bn(sd, name, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{name}.{s}"] = (c,)
    sd[f"{name}.num_batches_tracked"] = ()


def torchvision_resnet_layout(bottleneck: bool, layers, num_classes=1000,
                              in_channels=3) -> "OrderedDict[str, tuple]":
    sd: OrderedDict[str, tuple] = OrderedDict()
    _conv(sd, "conv1", 64, in_channels, 7)
    _bn(sd, "bn1", 64)
    inplanes = 64
    for li, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2)), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            s = stride if b == 0 else 1
            if bottleneck:
                out = planes * 4
                _conv(sd, f"{p}.conv1", planes, inplanes, 1)
                _bn(sd, f"{p}.bn1", planes)
                _conv(sd, f"{p}.conv2", planes, planes, 3)
                _bn(sd, f"{p}.bn2", planes)
                _conv(sd, f"{p}.conv3", out, planes, 1)
                _bn(sd, f"{p}.bn3", out)
            else:
                out = planes
                _conv(sd, f"{p}.conv1", planes, inplanes, 3)
                _bn(sd, f"{p}.bn1", planes)
                _conv(sd, f"{p}.conv2", planes, planes, 3)
                _bn(sd, f"{p}.bn2", planes)
            if s != 1 or inplanes != out:
                _conv(sd, f"{p}.downsample.0", out, inplanes, 1)
                _bn(sd, f"{p}.downsample.1", out)
            inplanes = out
    sd["fc.weight"] = (num_classes, inplanes)
    sd["fc.bias"] = (num_classes,)
    return sd


def torchvision_mobilenetv2_layout(num_classes=1000, in_channels=3) -> "OrderedDict[str, tuple]":
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),  # t, c, n, s
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    sd: OrderedDict[str, tuple] = OrderedDict()
    _conv(sd, "features.0.0", 32, in_channels, 3)
    _bn(sd, "features.0.1", 32)
    inp, idx = 32, 1
    for t, c, n, _s in setting:
        for _ in range(n):
            p = f"features.{idx}.conv"
            hidden, j = inp * t, 0
            if t != 1:
                _conv(sd, f"{p}.0.0", hidden, inp, 1)
                _bn(sd, f"{p}.0.1", hidden)
                j = 1
            sd[f"{p}.{j}.0.weight"] = (hidden, 1, 3, 3)  # depthwise
            _bn(sd, f"{p}.{j}.1", hidden)
            _conv(sd, f"{p}.{j + 1}", c, hidden, 1)
            _bn(sd, f"{p}.{j + 2}", c)
            inp, idx = c, idx + 1
    _conv(sd, f"features.{idx}.0", 1280, inp, 1)
    _bn(sd, f"features.{idx}.1", 1280)
    sd["classifier.1.weight"] = (num_classes, 1280)
    sd["classifier.1.bias"] = (num_classes,)
    return sd


def mdistiller_mobilenetv1_layout(num_classes=1000, in_channels=3) -> "OrderedDict[str, tuple]":
    blocks = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)] + [(512, 512)] * 5 + \
             [(512, 1024), (1024, 1024)]
    sd: OrderedDict[str, tuple] = OrderedDict()
    _conv(sd, "model.0.0", 32, in_channels, 3)
    _bn(sd, "model.0.1", 32)
    for i, (inp, oup) in enumerate(blocks, start=1):
        sd[f"model.{i}.0.weight"] = (inp, 1, 3, 3)
        _bn(sd, f"model.{i}.1", inp)
        _conv(sd, f"model.{i}.3", oup, inp, 1)
        _bn(sd, f"model.{i}.4", oup)
    sd["fc.weight"] = (num_classes, 1024)
    sd["fc.bias"] = (num_classes,)
    return sd


LAYOUTS = {
    "imagenet_resnet18": lambda **kw: torchvision_resnet_layout(False, (2, 2, 2, 2), **kw),
    "imagenet_resnet34": lambda **kw: torchvision_resnet_layout(False, (3, 4, 6, 3), **kw),
    "imagenet_resnet50": lambda **kw: torchvision_resnet_layout(True, (3, 4, 6, 3), **kw),
    "imagenet_resnet101": lambda **kw: torchvision_resnet_layout(True, (3, 4, 23, 3), **kw),
    "imagenet_mobilenetv2": torchvision_mobilenetv2_layout,
    "imagenet_mobilenetv1": mdistiller_mobilenetv1_layout,
}


def _n_params(layout) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    total = 0
    for k, shape in layout.items():
        if not k.endswith(buffers):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


@pytest.fixture(scope="module")
def models_1000():
    """Each model once at 1000 classes (building resnet101 takes ~1 s)."""
    torch.manual_seed(0)
    return {n: build_model(n, num_classes=1000) for n in NAMES}


# ---------------------------------------------------------------------------------------- registry
def test_registered_without_touching_cifar_names():
    names = set(list_models())
    assert set(NAMES) <= names
    # the CIFAR variants keep their names and layouts (3x3 stem, classifier `linear`)
    cifar = build_model("ResNet18", num_classes=10)
    assert tuple(cifar.conv1.weight.shape) == (64, 3, 3, 3) and hasattr(cifar, "linear")
    inet = build_model("imagenet_resnet18", num_classes=10)
    assert tuple(inet.conv1.weight.shape) == (64, 3, 7, 7) and hasattr(inet, "fc") and not hasattr(inet, "linear")


# -------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_layout_generators_match_torchvision_parameter_counts(name):
    assert _n_params(LAYOUTS[name]()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_released_layout(name, models_1000):
    model = models_1000[name]
    got = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    want = LAYOUTS[name]()
    assert list(got) == list(want)  # same keys, same order
    assert got == want


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name, models_1000):
    assert sum(p.numel() for p in models_1000[name].parameters()) == TORCHVISION_PARAMS[name]


def test_mobilenetv1_parameter_count(models_1000):
    # 4.2M (Howard et al. 2017, MobileNet 1.0-224); exact count from the mdistiller layout
    n = sum(p.numel() for p in models_1000["imagenet_mobilenetv1"].parameters())
    assert n == _n_params(mdistiller_mobilenetv1_layout()) == 4_231_976


def test_literal_key_shapes(models_1000):
    facts = {
        "imagenet_resnet18": {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                              "layer4.1.conv2.weight": (512, 512, 3, 3), "fc.weight": (1000, 512)},
        "imagenet_resnet50": {"layer1.0.downsample.0.weight": (256, 64, 1, 1),
                              "layer2.0.conv2.weight": (128, 128, 3, 3),  # stride on the 3x3 ("v1.5")
                              "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)},
        "imagenet_mobilenetv2": {"features.0.0.weight": (32, 3, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
                                 "features.1.conv.1.weight": (16, 32, 1, 1),
                                 "features.2.conv.0.0.weight": (96, 16, 1, 1),
                                 "features.17.conv.2.weight": (320, 960, 1, 1),
                                 "features.18.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280)},
        "imagenet_mobilenetv1": {"model.0.0.weight": (32, 3, 3, 3), "model.1.0.weight": (32, 1, 3, 3),
                                 "model.13.3.weight": (1024, 1024, 1, 1), "fc.weight": (1000, 1024)},
    }
    for name, shapes in facts.items():
        sd = models_1000[name].state_dict()
        for key, shape in shapes.items():
            assert tuple(sd[key].shape) == shape, (name, key)
    r18 = models_1000["imagenet_resnet18"].state_dict()
    assert "layer1.0.downsample.0.weight" not in r18  # identity shortcut in layer1 of BasicBlock nets
    assert not any(k.startswith("model.14") for k in models_1000["imagenet_mobilenetv1"].state_dict())
    assert not any(k.startswith("classifier.0") for k in models_1000["imagenet_mobilenetv2"].state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_layout_follows_num_classes_and_in_channels(name):
    model = build_model(name, num_classes=200, in_channels=1)
    got = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert got == LAYOUTS[name](num_classes=200, in_channels=1)


# ------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("name", NAMES)
def test_released_layout_state_dict_loads_strictly(name, models_1000):
    torch.manual_seed(1)
    state = OrderedDict()
    for k, shape in LAYOUTS[name]().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape) + 0.5
        else:
            state[k] = torch.randn(shape)
    model = build_model(name, num_classes=1000)
    # torchvision's files are bare state dicts; mdistiller/RepDistiller wrap theirs as {"model": ...}
    load_weights(model, state, model_name=name)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    load_weights(model, {"model": state}, model_name=name)


def test_foreign_layout_is_refused_with_a_named_key():
    model = build_model("imagenet_resnet18", num_classes=1000)
    state = {k: torch.zeros(s) for k, s in LAYOUTS["imagenet_resnet18"]().items()}
    state["linear.weight"] = state.pop("fc.weight")  # a CIFAR-layout head
    with pytest.raises(CheckpointMismatch, match="fc.weight"):
        load_weights(model, state, model_name="imagenet_resnet18")


def test_wrong_class_count_names_the_fix():
    model = build_model("imagenet_mobilenetv2", num_classes=200)
    state = {k: torch.zeros(s) for k, s in LAYOUTS["imagenet_mobilenetv2"]().items()}
    with pytest.raises(CheckpointMismatch, match="num_classes=1000"):
        load_weights(model, state, model_name="imagenet_mobilenetv2")


# ------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("name", NAMES)
def test_contract_forward_backward_64px(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=200)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 200)
    assert out.pooled.ndim == 2 and out.pooled.shape[0] == 2
    head = getattr(model, HEAD.get(name, "fc"))
    assert model.get_classifier() is head
    assert len(out.stages) == len(out.preacts) == 5
    for s, p in zip(out.stages, out.preacts):
        assert s.shape == p.shape and s.shape[0] == 2
    # pooled = global pool of the last stage (MobileNetV2: of the 1280-channel head conv after it)
    assert out.pooled.shape[1] == (1280 if name == "imagenet_mobilenetv2" else out.stages[-1].shape[1])
    # stages are the activations of their pre-activations (ReLU; ReLU6 at the MobileNetV2 stem;
    # MobileNetV2 blocks end linear, so there stage == preact)
    act = F.relu6 if name == "imagenet_mobilenetv2" else F.relu
    assert torch.equal(out.stages[0], act(out.preacts[0]))
    for s, p in zip(out.stages[1:], out.preacts[1:]):
        assert torch.equal(s, p if name == "imagenet_mobilenetv2" else F.relu(p))
    (out.logits.logsumexp(1).mean() + out.pooled.mean() + sum(s.mean() for s in out.stages)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["imagenet_resnet18", "imagenet_mobilenetv2", "imagenet_mobilenetv1"])
def test_stage_shapes_at_224(name, models_1000):
    """At 224x224 the maps halve to 7x7 as in the releases (stem at 112x112)."""
    p = probe(models_1000[name], (3, 224, 224))
    spatial = [s[1:] for s in p.stage_shapes]
    assert spatial == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]
    want = {"imagenet_resnet18": [64, 64, 128, 256, 512], "imagenet_mobilenetv2": [32, 24, 32, 96, 320],
            "imagenet_mobilenetv1": [32, 128, 256, 512, 1024]}[name]
    assert [s[0] for s in p.stage_shapes] == want
    assert p.num_classes == 1000


def test_small_inputs_pool_adaptively():
    model = build_model("imagenet_resnet50", num_classes=10).eval()
    with torch.no_grad():
        for size in (32, 64, 96):
            out = model(torch.randn(1, 3, size, size))
            assert out.logits.shape == (1, 10) and out.pooled.shape == (1, 2048)


def test_zero_init_residual_and_dropout():
    m = build_model("imagenet_resnet50", num_classes=10, zero_init_residual=True)
    assert torch.count_nonzero(m.layer1[0].bn3.weight) == 0
    m = build_model("imagenet_resnet18", num_classes=10, zero_init_residual=True)
    assert torch.count_nonzero(m.layer1[0].bn2.weight) == 0
    mv2 = build_model("imagenet_mobilenetv2", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mv2(x).logits, mv2(x).logits)  # dropout off in eval
