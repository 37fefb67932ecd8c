"""k networks stacked as one program (kdlab.models.stacked) against k separate networks.

The reference is always k separately built networks, each with its own SGD optimizer (momentum, weight decay),
stepped on its own loss: what k separate runs do. The stacked module gets copies of the same initial networks
and one optimizer over its parameters, stepped on ``sum_i loss_i``.

Tolerance. In float64 the two computations differ only in summation order (a grouped conv, a batched matmul
and vmap's batching rules reduce in other blockings than the separate conv / addmm), so every compared tensor
satisfies ``|a - b| <= 1e-12 + 1e-9 |b|`` (measured worst relative gap ~2e-15 after 3 steps). The absolute
floor matters for the conv biases VGG puts before a BatchNorm: their true gradient is zero, so both sides hold
rounding noise of ~1e-19 that no relative test could match. In float32 the same comparison needs
``rtol=atol=2e-5`` (measured worst ~2.5e-6 relative to the tensor's scale after 3 steps).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kdlab.models import build_model
from kdlab.models.stacked import stack_networks

K = 3
B = 6
CLASSES = 10
F64 = {"rtol": 1e-9, "atol": 1e-12}
F32 = {"rtol": 2e-5, "atol": 2e-5}


def make_nets(arch: str, dtype=torch.float64, k: int = K, **kw) -> list[torch.nn.Module]:
    """k networks built and initialised separately, as k runs with seeds 100, 101, ... would."""
    nets = []
    for i in range(k):
        torch.manual_seed(100 + i)
        nets.append(build_model(arch, num_classes=CLASSES, **kw).to(dtype))
    return nets


def batches(shared: bool, step: int, dtype, hw: int, k: int = K):
    g = torch.Generator().manual_seed(1000 + step)
    if shared:  # one batch for every copy (teacher variants with one seed)
        x = torch.randn(B, 3, hw, hw, generator=g, dtype=dtype)
        y = torch.randint(0, CLASSES, (B,), generator=g)
        return x, [x] * k, [y] * k
    xs = [torch.randn(B, 3, hw, hw, generator=g, dtype=dtype) for _ in range(k)]
    ys = [torch.randint(0, CLASSES, (B,), generator=g) for _ in range(k)]
    return torch.stack(xs), xs, ys


def assert_outputs_close(outs, refs, tol) -> None:
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o.logits, r.logits, **tol)
        torch.testing.assert_close(o.pooled, r.pooled, **tol)
        assert len(o.stages) == len(r.stages) and len(o.preacts) == len(r.preacts)
        for a, b in zip(o.stages + o.preacts, r.stages + r.preacts):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **tol)


def assert_states_close(stacked, refs, tol) -> None:
    for i, ref in enumerate(refs):
        got, want = stacked.copy_state_dict(i), ref.state_dict()
        assert list(got) == list(want)  # the separate network's keys, in its order
        for key in want:
            assert got[key].shape == want[key].shape, key
            torch.testing.assert_close(got[key], want[key], **tol, msg=lambda m, key=key: f"{key}: {m}")


FORWARD_CASES = [(a, s) for a in ("resnet8", "resnet8x4", "wrn_16_1", "vgg8", "MobileNetV2") for s in ("grouped", "vmap")]
FORWARD_CASES += [("ShuffleV1", "vmap"), ("ShuffleV2", "vmap")]  # channel shuffles: vmap only
FORWARD_CASES += [("ResNet18", "grouped")]  # 11M parameters: one case, two copies


@pytest.mark.parametrize("arch,strategy", FORWARD_CASES)
def test_forward_and_gradients_equal_separate(arch, strategy):
    nets = make_nets(arch, k=2 if arch == "ResNet18" else K)
    refs = copy.deepcopy(nets)
    stacked = stack_networks(nets, strategy)
    x, xs, ys = batches(shared=False, step=0, dtype=torch.float64, hw=8, k=len(nets))
    outs = stacked(x)
    ref_outs = [r(xi) for r, xi in zip(refs, xs)]
    assert_outputs_close(outs, ref_outs, F64)
    sum(F.cross_entropy(o.logits, y) for o, y in zip(outs, ys)).backward()
    for r, o, y in zip(refs, ref_outs, ys):
        F.cross_entropy(o.logits, y).backward()
    for i, r in enumerate(refs):
        grads = stacked.copy_grads(i)
        assert list(grads) == [n for n, _ in r.named_parameters()]
        for n, p in r.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, **F64)
    assert_states_close(stacked, refs, F64)  # BN running statistics after one train-mode forward


def train_both(arch: str, strategy: str, shared: bool, dtype, hw: int, steps: int = 3, channels_last: bool = False):
    nets = make_nets(arch, dtype)
    refs = copy.deepcopy(nets)
    stacked = stack_networks(nets, strategy)
    if channels_last:
        stacked = stacked.to_channels_last()
        refs = [r.to(memory_format=torch.channels_last) for r in refs]
    sgd = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    opt = torch.optim.SGD(stacked.parameters(), **sgd)
    ref_opts = [torch.optim.SGD(r.parameters(), **sgd) for r in refs]
    for step in range(steps):
        x, xs, ys = batches(shared, step, dtype, hw)
        opt.zero_grad(set_to_none=True)
        sum(F.cross_entropy(o.logits, y) for o, y in zip(stacked(x), ys)).backward()
        opt.step()
        for r, o, xi, y in zip(refs, ref_opts, xs, ys):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(r(xi).logits, y).backward()
            o.step()
    return stacked, refs, opt, ref_opts


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
@pytest.mark.parametrize("arch,shared", [("resnet8", True), ("resnet8", False), ("resnet20", False),
                                         ("resnet8x4", True), ("wrn_16_1", False)])
def test_three_sgd_steps_equal_separate(arch, shared, strategy):
    stacked, refs, opt, ref_opts = train_both(arch, strategy, shared, torch.float64, hw=8)
    assert_states_close(stacked, refs, F64)  # parameters and BN running stats / num_batches_tracked
    for i, (r, o) in enumerate(zip(refs, ref_opts)):  # each copy's momentum buffers (for its checkpoint)
        state = stacked.copy_optimizer_state(opt, i)
        assert list(state) == [n for n, _ in r.named_parameters()]
        for n, p in r.named_parameters():
            torch.testing.assert_close(state[n]["momentum_buffer"], o.state[p]["momentum_buffer"], **F64)
    # eval mode (running statistics) on a fresh batch gives each separate network's outputs
    stacked.eval()
    x, xs, _ = batches(shared, 99, torch.float64, hw=8)
    with torch.no_grad():
        assert_outputs_close(stacked(x), [r.eval()(xi) for r, xi in zip(refs, xs)], F64)
    # the weights go back into k separate networks with their own keys
    fresh = make_nets(arch)
    stacked.write_back(fresh)
    for f, r in zip(fresh, refs):
        for key, t in r.state_dict().items():
            torch.testing.assert_close(f.state_dict()[key], t, **F64)


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
def test_three_sgd_steps_float32_channels_last(strategy):
    stacked, refs, _, _ = train_both("resnet8", strategy, False, torch.float32, hw=16, channels_last=True)
    assert_states_close(stacked, refs, F32)


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
def test_per_copy_input_as_a_list_of_batches(strategy):
    nets = make_nets("resnet8", k=2)
    refs = copy.deepcopy(nets)
    _, xs, _ = batches(shared=False, step=0, dtype=torch.float64, hw=8, k=2)
    assert_outputs_close(stack_networks(nets, strategy)(xs), [r(xi) for r, xi in zip(refs, xs)], F64)


@pytest.mark.parametrize("arch", ["resnet8", "MobileNetV2"])
def test_grouped_pooled_is_what_the_logits_were_computed_from(arch):
    """The gradnorm λ of the intra objective differentiates L_CE with respect to ``pooled``: a grouped copy's
    ``pooled`` gives the separate network's gradient."""
    nets = make_nets(arch, k=2)
    refs = copy.deepcopy(nets)
    x, xs, ys = batches(shared=False, step=0, dtype=torch.float64, hw=8, k=2)
    outs = stack_networks(nets, "grouped")(x)
    for o, r, xi, y in zip(outs, refs, xs, ys):
        ro = r(xi)
        got, = torch.autograd.grad(F.cross_entropy(o.logits, y), o.pooled)
        want, = torch.autograd.grad(F.cross_entropy(ro.logits, y), ro.pooled)
        torch.testing.assert_close(got, want, **F64)


def test_vmap_pooled_is_not_an_ancestor_of_the_logits():
    """The documented limit of the vmap strategy: a copy's outputs are slices of vmap's stacked outputs."""
    outs = stack_networks(make_nets("resnet8", k=2), "vmap")(torch.randn(4, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(outs[0].logits.sum(), outs[0].pooled)


def test_trained_parameters_really_moved():
    """Guard for the tests above: three steps change every copy, and the copies stay different."""
    nets = make_nets("resnet8")
    start = [copy.deepcopy(n.state_dict()) for n in nets]
    stacked, *_ = train_both("resnet8", "grouped", False, torch.float64, hw=8)
    after = [stacked.copy_state_dict(i) for i in range(K)]
    for s, a in zip(start, after):
        assert (s["conv1.weight"] - a["conv1.weight"]).abs().max() > 1e-4
        assert int(a["bn1.num_batches_tracked"]) == 3
    assert (after[0]["fc.weight"] - after[1]["fc.weight"]).abs().max() > 1e-3


def test_refuses_unsupported_architectures():
    with pytest.raises(ValueError, match=r"^grouped stacking does not support ShuffleNetV1 .*use strategy='vmap'$"):
        stack_networks(make_nets("ShuffleV1", k=2), "grouped")
    for strategy in ("grouped", "vmap"):
        with pytest.raises(ValueError, match=f"^{strategy} stacking does not support dropout"):
            stack_networks(make_nets("wrn_16_1", k=2, drop_rate=0.3), strategy)


def test_stacking_refuses_mixed_or_single_networks():
    with pytest.raises(ValueError, match="network 1 differs"):
        stack_networks([build_model("resnet8", 10), build_model("resnet8", 100)], "vmap")
    with pytest.raises(ValueError, match="network 1 is a WideResNet"):
        stack_networks([build_model("resnet8", 10), build_model("wrn_16_1", 10)], "grouped")
    with pytest.raises(ValueError, match="at least 2"):
        stack_networks([build_model("resnet8", 10)], "grouped")
    with pytest.raises(ValueError, match="unknown stacking strategy"):
        stack_networks(make_nets("resnet8", k=2), "loop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs 2 batches"):
        stack_networks(make_nets("resnet8", k=2), "grouped")(torch.zeros(3, 4, 3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_load_copy_optimizer_state_is_the_inverse_of_copy_optimizer_state(strategy, optimizer):
    """Each copy's state (SGD momentum; Adam's moments and its shared ``step``) taken from k separate optimizers
    into a fresh stacked optimizer, read back per copy, equals the separate state; one more step from there
    equals one more separate step (the state really is where the stacked optimizer looks for it)."""
    make_opt = (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)) if optimizer == "sgd" else \
        (lambda ps: torch.optim.Adam(ps, lr=1e-3))
    nets = make_nets("resnet8")
    opts = [make_opt(n.parameters()) for n in nets]
    for step in range(2):
        _, xs, ys = batches(False, step, torch.float64, hw=8)
        for n, o, xi, y in zip(nets, opts, xs, ys):
            o.zero_grad()
            F.cross_entropy(n(xi).logits, y).backward()
            o.step()
    stacked = stack_networks(nets, strategy)
    opt = make_opt(stacked.parameters())
    for i, (n, o) in enumerate(zip(nets, opts)):
        stacked.load_copy_optimizer_state(opt, i, {name: o.state[p] for name, p in n.named_parameters()})
    for i, (n, o) in enumerate(zip(nets, opts)):
        back = stacked.copy_optimizer_state(opt, i)
        for name, p in n.named_parameters():
            assert back[name].keys() == o.state[p].keys()
            for key, v in o.state[p].items():
                assert torch.equal(back[name][key], v), f"copy {i}: {name}.{key}"
    x, xs, ys = batches(False, 5, torch.float64, hw=8)
    opt.zero_grad()
    sum(F.cross_entropy(out.logits, y) for out, y in zip(stacked(x), ys)).backward()
    opt.step()
    for n, o, xi, y in zip(nets, opts, xs, ys):
        o.zero_grad()
        F.cross_entropy(n(xi).logits, y).backward()
        o.step()
    assert_states_close(stacked, nets, F64)


def test_load_copy_optimizer_state_refuses_copies_at_different_steps():
    nets = make_nets("resnet8", k=2)
    stacked = stack_networks(nets, "grouped")
    opt = torch.optim.Adam(stacked.parameters())
    name, p = next(iter(nets[0].named_parameters()))
    moment = torch.zeros_like(p)
    stacked.load_copy_optimizer_state(opt, 0, {name: {"step": torch.tensor(3.0), "exp_avg": moment}})
    with pytest.raises(ValueError, match="different steps"):
        stacked.load_copy_optimizer_state(opt, 1, {name: {"step": torch.tensor(4.0), "exp_avg": moment}})
