"""Activation capture with forward hooks; LLID and PID helpers."""

import pytest
import torch
from torch import nn

from actid import TwoNN, capture_activations, layer_ids, llid, peak_id
from actid.models.transformer import Transformer


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 16, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_capture_cnn_layers_flattened_per_example_in_eval_mode():
    model = small_cnn().train()
    x = torch.randn(50, 1, 12, 12)
    acts = capture_activations(model, x, ["1", "4", "6"], batch_size=16)
    assert acts["1"].shape == (50, 8 * 12 * 12)
    assert acts["4"].shape == (50, 16 * 5 * 5)
    assert acts["6"].shape == (50, 16)
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        expected = model.eval()[:2](x).flatten(1)  # dropout is off during capture
    assert torch.equal(acts["1"], expected[:, :])


def test_capture_from_a_dataloader_of_pairs_matches_a_tensor():
    model = small_cnn()
    x = torch.randn(40, 1, 12, 12)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(40)), batch_size=7)
    a = capture_activations(model, loader, ["6"])
    b = capture_activations(model, x, ["6"])
    assert torch.allclose(a["6"], b["6"], atol=1e-6)


def test_capture_transformer_sublayers_that_return_tuples():
    class TupleAttention(nn.Module):  # like HF attention modules: (output, weights)
        def forward(self, x):
            return x * 2, None

    model = nn.Sequential(nn.Linear(4, 4), TupleAttention())
    acts = capture_activations(model, torch.randn(5, 4), ["1"])
    assert acts["1"].shape == (5, 4)

    torch.manual_seed(0)
    gpt = Transformer(vocab_size=99, n_classes=97)
    tokens = torch.randint(0, 99, (30, 4))
    acts = capture_activations(gpt, tokens, gpt.id_layers)
    assert list(acts) == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert all(a.shape == (30, 4 * 128) for a in acts.values())


def test_unknown_layer_name_lists_the_valid_names():
    with pytest.raises(KeyError, match=r"unknown layer name\(s\) \['avgpool'\].*valid .* are: 0, 1, 2, 3"):
        capture_activations(small_cnn(), torch.randn(2, 1, 12, 12), ["avgpool"])


def test_half_precision_activations_on_device_give_the_same_estimate():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 256), nn.Tanh(), nn.Linear(256, 256))
    x = torch.randn(3000, 6, generator=g)
    full = capture_activations(model, x, ["2"])["2"]
    half = capture_activations(model, x, ["2"], dtype=torch.float16, keep_on_device=True)["2"]
    assert half.dtype == torch.float16
    assert TwoNN().fit(half).dimension_ == pytest.approx(TwoNN().fit(full).dimension_, rel=0.01)


def test_layer_ids_and_the_llid_pid_definitions():
    model = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 3))
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(1))
    ids = layer_ids(capture_activations(model, x, ["0", "2"]), TwoNN())
    dims = {name: r["dimension"] for name, r in ids.items()}
    assert dims["0"] == pytest.approx(5, rel=0.15)  # a linear image of 5-d data
    assert dims["2"] <= 3.3  # at most the 3 output dimensions
    assert llid(dims, "2") == dims["2"]  # LLID: the layer feeding the classifier, as named
    assert peak_id(dims) == max(dims.values()) == dims["0"]  # PID: the maximum over layers
    with pytest.raises(KeyError, match="LLID layer 'fc' was not measured"):
        llid(dims, "fc")


def test_a_module_run_twice_per_forward_is_refused_by_name():
    from torchvision.models.resnet import BasicBlock
    block = BasicBlock(4, 4).eval()  # its relu runs twice per forward
    x = torch.randn(6, 4, 8, 8)
    with pytest.raises(RuntimeError, match=r"layer 'relu' ran 2 times in one forward pass of BasicBlock"):
        capture_activations(block, x, ["relu"])
    assert capture_activations(block, x, ["bn2", ""])["bn2"].shape == (6, 4 * 8 * 8)  # modules run once are fine
    assert not block._forward_hooks and not block.relu._forward_hooks and not block._forward_pre_hooks


def test_layer_names_must_be_strings_and_the_error_says_how():
    model = small_cnn()
    with pytest.raises(TypeError, match=r"pass \['3'\]"):
        capture_activations(model, torch.randn(4, 1, 12, 12), [3])


def test_float64_input_with_a_large_offset_is_centred_before_the_float32_search():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 20, generator=g, dtype=torch.float64)
    X = 1e-3 * X
    plain = TwoNN().fit(X).dimension_
    shifted = TwoNN().fit(X + 1e4).dimension_
    assert shifted == pytest.approx(plain, rel=0.01)
    assert plain == pytest.approx(5, rel=0.1)


def test_capture_keeps_each_submodules_own_mode():
    model = small_cnn().train()
    model[2].eval()  # a user froze this dropout
    capture_activations(model, torch.randn(4, 1, 12, 12), ["1"])
    assert model.training and model[0].training and not model[2].training
