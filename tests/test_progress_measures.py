"""Progress measures (Golechha 2024) and the participation ratio: known values, exactness and no side effects."""

import copy
import math

import pytest
import torch
from torch import nn

from actid.measures.linear import participation_ratio
from actid.measures.progress import (activation_sparsity, local_circuit_complexity, weight_entropies, weight_entropy,
                                     weight_norms)


def mlp(seed: int = 0) -> nn.Sequential:
    """Small float64 MLP; names "0", "3", "5" have weights. Dropout makes train mode visible in the output."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 4)).double()


def inputs(n: int = 50, seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# weight entropy

@pytest.mark.parametrize("a", [0.0781, 0.286])
def test_weight_entropy_of_uniform_weights_matches_closed_form(a):
    # E[-|w| log|w|] for w ~ U(-a, a) is a/4 - (a/2) log a.
    m, n = 200, 300
    w = (2 * torch.rand(m, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1) * a
    expected = m * n * (a / 4 - (a / 2) * math.log(a))
    assert weight_entropy(w) == pytest.approx(expected, rel=0.01)


def test_weight_entropy_exact_on_small_tensor_with_zero_entry():
    w = torch.tensor([[0.5, -0.25], [0.0, 1.0]], dtype=torch.float32)
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25))  # 0 log 0 = 0 and 1 log 1 = 0
    assert weight_entropy(w) == pytest.approx(expected, rel=1e-15)


def test_weight_entropies_cover_only_matrices_and_sum_to_total():
    model = mlp()
    ent = weight_entropies(model)
    assert set(ent) == {"0.weight", "3.weight", "5.weight", "total"}
    assert ent["3.weight"] == weight_entropy(model[3].weight)
    assert ent["total"] == pytest.approx(ent["0.weight"] + ent["3.weight"] + ent["5.weight"], rel=1e-15)


# weight norms

def test_weight_norms_per_tensor_and_global():
    model = mlp()
    norms = weight_norms(model)
    params = dict(model.named_parameters())
    assert set(norms) == set(params) | {"total"}
    for name, p in params.items():
        assert norms[name] == pytest.approx(float(p.detach().norm()), rel=1e-12)
    flat = torch.cat([p.detach().flatten() for p in params.values()])
    assert norms["total"] == pytest.approx(float(flat.norm()), rel=1e-12)


# participation ratio

def test_participation_ratio_of_isotropic_gaussian_is_its_dimension():
    # Finite-sample bias is about d/n, so n = 100 d keeps it near 1%.
    d = 10
    X = torch.randn(100 * d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert participation_ratio(X) == pytest.approx(d, rel=0.05)


def test_participation_ratio_of_embedded_isotropic_data_with_fewer_points_than_features():
    g = torch.Generator().manual_seed(0)
    d, D, n = 5, 1000, 500  # n < D: the Gram-matrix path
    Q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
    X = torch.randn(n, d, generator=g, dtype=torch.float64) @ Q.T + 3.0
    assert participation_ratio(X) == pytest.approx(d, rel=0.05)
    assert participation_ratio(X.reshape(n, 10, 100)) == participation_ratio(X)  # flattened per example


@pytest.mark.parametrize("n,D", [(300, 40), (30, 80)])
def test_participation_ratio_equals_eigenvalue_formula(n, D):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(n, D, generator=g, dtype=torch.float64) * torch.logspace(0, -2, D, dtype=torch.float64) + 1.0
    lam = torch.linalg.eigvalsh(torch.cov(X.T))
    assert participation_ratio(X) == pytest.approx(float(lam.sum() ** 2 / (lam ** 2).sum()), rel=1e-10)


def test_participation_ratio_rejects_too_few_rows_and_nonfinite_values():
    with pytest.raises(ValueError, match="at least 2"):
        participation_ratio(torch.ones(1, 5))
    with pytest.raises(ValueError, match="NaN"):
        participation_ratio(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))


# activation sparsity

def test_activation_sparsity_known_fraction_over_all_examples_and_features():
    acts = torch.zeros(4, 2, 5)
    acts[0, 0, :3] = 1.0
    acts[2, 1, :] = 2.0  # 8 of 40 entries active
    assert activation_sparsity(acts, threshold=0.5) == 32 / 40


def test_activation_sparsity_threshold_is_strict():
    acts = torch.tensor([[0.0, 0.1, 0.2], [0.3, -1.0, 0.1]])
    assert activation_sparsity(acts, threshold=0.1) == 2 / 6  # entries equal to 0.1 do not count
    assert activation_sparsity(acts, threshold=0.1000001) == 4 / 6


# local circuit complexity

def lcc_by_hand(model, layer, x, fraction, n_masks, seed):
    model = copy.deepcopy(model).eval()
    weight = dict(model.named_modules())[layer].weight
    with torch.no_grad():
        p = torch.softmax(model(x), dim=-1)
        original = weight.clone()
        total = 0.0
        for m in range(n_masks):
            u = torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed + m), dtype=torch.float64)
            weight.copy_(torch.where(u < fraction, 0.0, original))
            q = torch.softmax(model(x), dim=-1)
            total += float((p * (p.log() - q.log())).sum())
    return total / n_masks


def test_local_circuit_complexity_matches_direct_computation():
    model, x = mlp(), inputs()
    ours = local_circuit_complexity(model, "3", x, fraction=0.2, n_masks=3, seed=5, batch_size=16)
    assert ours > 0
    assert ours == pytest.approx(lcc_by_hand(model, "3", x, 0.2, 3, 5), rel=1e-10)


def test_local_circuit_complexity_is_zero_without_ablation():
    assert abs(local_circuit_complexity(mlp(), "3", inputs(), fraction=0.0)) < 1e-12


def test_local_circuit_complexity_sums_over_inputs():
    model, x = mlp(), inputs()
    once = local_circuit_complexity(model, "0", x, n_masks=2, batch_size=16)
    twice = local_circuit_complexity(model, "0", torch.cat([x, x]), n_masks=2, batch_size=16)
    assert twice == pytest.approx(2 * once, rel=1e-10)


def test_local_circuit_complexity_leaves_weights_and_modes_untouched():
    model = mlp().train()
    model[4].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    local_circuit_complexity(model, "3", inputs(), fraction=0.5)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class FailsWhenAblated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3).double()

    def forward(self, x):
        if (self.lin.weight == 0).any():
            raise RuntimeError("ablated forward failed")
        return self.lin(x)


def test_local_circuit_complexity_restores_weights_and_modes_on_error():
    model = FailsWhenAblated().train()
    weight = model.lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match="ablated forward failed"):
        local_circuit_complexity(model, "lin", inputs(), fraction=0.5)
    assert torch.equal(model.lin.weight, weight)
    assert model.training and model.lin.training


def test_local_circuit_complexity_layer_name_errors():
    model = mlp()
    with pytest.raises(TypeError, match='"3"'):
        local_circuit_complexity(model, 3, inputs())
    with pytest.raises(KeyError, match="0, 3, 5"):
        local_circuit_complexity(model, "1", inputs())  # ReLU has no weight


def test_participation_ratio_of_float32_activations_matches_float64_despite_an_offset():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 300, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 300, dtype=torch.float64)
    X = X + 1e3  # a large common offset, as post-activation features can have
    assert participation_ratio(X.float()) == pytest.approx(participation_ratio(X), rel=1e-5)
