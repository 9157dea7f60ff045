"""CIFAR ResNet-18: parameter counts, shapes, ID layers and where dropout sits."""

import pytest
import torch
from torch import nn

from actid.models.resnet import ResNet18


def expected_params(n_classes: int, w: int = 64, c_in: int = 3) -> int:
    """Parameter count written out from the architecture (conv weights, BN weight+bias, fc)."""
    conv = lambda a, b, k=3: a * b * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(c_in, w) + bn(w)
    c = w
    for c_out in (w, 2 * w, 4 * w, 8 * w):
        for block in range(2):
            c_prev = c if block == 0 else c_out
            total += conv(c_prev, c_out) + bn(c_out) + conv(c_out, c_out) + bn(c_out)
            if c_prev != c_out:
                total += conv(c_prev, c_out, 1) + bn(c_out)
        c = c_out
    return total + 8 * w * n_classes + n_classes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("n_classes, count", [(10, 11_173_962), (100, 11_220_132)])
def test_parameter_count_matches_kuangliu_resnet18(n_classes, count):
    assert expected_params(n_classes) == count
    assert n_params(ResNet18(n_classes)) == count


def test_width_and_in_channels():
    model = ResNet18(7, width=8, in_channels=1)
    assert n_params(model) == expected_params(7, w=8, c_in=1)
    assert model.fc.in_features == 64
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)  # global pooling accepts other sizes


def hooked_outputs(model, x):
    """{ID layer: output} for one forward pass."""
    modules = dict(model.named_modules())
    outs = {}
    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o))
               for name in model.id_layers]
    model(x)
    for h in handles:
        h.remove()
    return outs


def test_id_layers_and_sizes():
    model = ResNet18(10).eval()
    assert model.id_layers == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "avg_pool"]
    assert model.llid_layer == "avg_pool"
    assert set(model.id_layers) <= dict(model.named_modules()).keys()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        outs = hooked_outputs(model, torch.randn(2, 3, 32, 32))
    sizes = [outs[name].flatten(1).shape[1] for name in model.id_layers]
    assert sizes == [65536, 65536, 32768, 16384, 8192, 512]


def test_dropout_applied_six_times_after_the_id_layers():
    torch.manual_seed(0)
    model = ResNet18(10, width=8, dropout=0.5).train()
    dropout_modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropout_modules) == 1 and dropout_modules[0].p == 0.5
    calls = []
    model.dropout.register_forward_hook(lambda m, i, o: calls.append((i[0], o)))
    outs = hooked_outputs(model, torch.randn(4, 3, 32, 32))
    assert len(calls) == 6
    # each ID layer's hooked output is exactly what goes *into* dropout, and dropout changes it
    for (inp, out), name in zip(calls, model.id_layers):
        assert torch.equal(inp.flatten(1), outs[name].flatten(1)), name
        assert not torch.equal(inp, out), name
    assert (calls[-1][1] == 0).any()  # the pre-fc features are dropped, the hooked avg_pool ones are not


def test_dropout_is_identity_in_eval():
    a, b = ResNet18(10, width=8, dropout=0.5), ResNet18(10, width=8, dropout=0.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
