"""Alignment Ω (Mehta et al. 2021) against direct O(n²) definitions and brute-force per-example gradients."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actid.data.modular import modular_equations, vocab_size
from actid.measures.alignment import alignment, gradient_alignment
from actid.models.transformer import Transformer


def pairwise_omega(vectors: torch.Tensor) -> float:
    """Ω by the definition: mean over i≠j of ⟨g_i, g_j⟩ over the squared mean norm, as a double loop."""
    g = [v.flatten().double() for v in vectors]
    n = len(g)
    dots = [float(g[i] @ g[j]) for i in range(n) for j in range(n) if i != j]
    return (sum(dots) / len(dots)) / (sum(float(v.norm()) for v in g) / n) ** 2


def gram_omega(g: torch.Tensor) -> float:
    """Ω by the definition from the full n×n Gram matrix (the double loop, vectorized)."""
    G = g @ g.T
    n = len(g)
    return float((G.sum() - G.trace()) / (n * (n - 1)) / g.norm(dim=1).mean() ** 2)


def in_class(omega, g: torch.Tensor, labels: torch.Tensor) -> float:
    values = [omega(g[labels == c]) for c in labels.unique() if (labels == c).sum() >= 2]
    return sum(values) / len(values)


def brute_force(model, inputs, labels, loss_fn) -> dict[str, float]:
    """In-class Ω from one autograd.grad per example, in eval mode."""
    model.eval()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    rows = {name: [] for name in [*names, "logits"]}
    for x, y in zip(inputs, labels):
        z = model(x[None])
        loss = loss_fn(z, y[None]).sum()
        *grads, dz = torch.autograd.grad(loss, [*params, z])
        for name, g in zip([*names, "logits"], [*grads, dz]):
            rows[name].append(g.flatten())
    return {name: in_class(gram_omega, torch.stack(g), labels) for name, g in rows.items()}


def assert_matches(result: dict, expected: dict, rtol: float = 1e-5) -> None:
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key] == pytest.approx(expected[key], rel=rtol, abs=1e-12), key


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(inplace=True), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3)).double()


def classification_data(n: int = 60, d: int = 5, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(k, (n,), generator=g)


def per_example_ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


# --- alignment of given vectors ---

def test_identical_vectors_have_alignment_one():
    v = torch.randn(7, 3, 4)
    assert alignment(v[:1].expand(7, 3, 4)) == pytest.approx(1.0, rel=1e-12)
    assert alignment(v) < 1


def test_alignment_equals_pairwise_definition_and_is_scale_invariant():
    g = torch.randn(12, 6, dtype=torch.float64) + 0.3
    assert alignment(g) == pytest.approx(pairwise_omega(g), rel=1e-10)
    assert alignment(1e3 * g) == pytest.approx(alignment(g), rel=1e-10)
    assert alignment(torch.stack([g[0], -g[0]])) == pytest.approx(-1.0, rel=1e-12)  # can be negative


def test_in_class_alignment_averages_classes_and_skips_singletons():
    g = torch.randn(15, 4, dtype=torch.float64)
    labels = torch.tensor([0] * 5 + [1] * 6 + [2] * 3 + [7])  # class 7 has one member
    expected = sum(pairwise_omega(g[labels == c]) for c in (0, 1, 2)) / 3
    assert alignment(g, labels) == pytest.approx(expected, rel=1e-10)


def test_zero_vectors_have_no_alignment():
    """Vectors of length 0 have no direction: Ω is undefined (NaN), and a class of them is left out of the mean."""
    assert math.isnan(alignment(torch.zeros(4, 3)))
    g = torch.cat([torch.zeros(3, 2), torch.tensor([[1.0, 0.0], [1.0, 0.0]])])
    assert alignment(g, torch.tensor([0, 0, 0, 1, 1])) == 1.0


def test_saturated_softmax_gradients_give_nan_not_zero():
    model = nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1e4, 0.0], [0.0, 0.0], [-1e4, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 2, 2])  # every example classified with an astronomically large margin
    result = gradient_alignment(model, x, y, per_example_ce)
    assert math.isnan(result["weight"]) and math.isnan(result["logits"])


@pytest.mark.parametrize("vectors, labels, message", [
    (torch.randn(1, 3), None, "at least 2"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2]), "one label per vector"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), None, "NaN or Inf"),
    (torch.randn(3, 2), torch.tensor([0, 1, 2]), "no class has 2 or more"),
])
def test_alignment_rejects_bad_input(vectors, labels, message):
    with pytest.raises(ValueError, match=message):
        alignment(vectors, labels)


# --- per-example gradient alignment ---

def test_mlp_matches_brute_force():
    model, (x, y) = mlp(), classification_data()
    result = gradient_alignment(model, x, y, F.cross_entropy)
    assert_matches(result, brute_force(model, x, y, F.cross_entropy))
    assert len(result) == 7  # 3 weights, 3 biases, logits


def test_chunking_and_loss_reduction_do_not_change_the_result():
    model, (x, y) = mlp(), classification_data()
    full = gradient_alignment(model, x, y, F.cross_entropy)
    assert_matches(gradient_alignment(model, x, y, F.cross_entropy, chunk_size=7), full, rtol=1e-9)
    assert_matches(gradient_alignment(model, x, y, per_example_ce, chunk_size=13), full, rtol=1e-9)


def test_cnn_in_eval_mode_with_modes_and_running_stats_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).double()
    x = torch.randn(30, 2, 6, 6, dtype=torch.float64)
    y = torch.arange(30) % 3
    model.train()
    model(x)  # non-trivial running statistics
    bn = model[1]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    model[0].eval()  # a mixed state must come back exactly as it was
    result = gradient_alignment(model, x, y, F.cross_entropy, chunk_size=8)
    assert model.training and bn.training and not model[0].training
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert_matches(result, brute_force(model, x, y, F.cross_entropy))


def test_transformer_with_several_positions_matches_brute_force():
    p = 7
    tokens, labels = modular_equations(p, "div")
    torch.manual_seed(0)
    model = Transformer(vocab_size(p), p, width=16, depth=1, heads=2, mlp_hidden=32, dropout=0.1, max_len=4).double()
    result = gradient_alignment(model, tokens, labels, per_example_ce, chunk_size=16)
    assert set(result) == {name for name, _ in model.named_parameters()} | {"logits"}
    assert_matches(result, brute_force(model, tokens, labels, per_example_ce))


def test_linear_called_twice_and_parameter_used_directly():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)
            self.scale = nn.Parameter(torch.tensor(1.5))
            self.out = nn.Linear(5, 3)

        def forward(self, x):
            return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))) * self.scale)

    torch.manual_seed(0)
    model, (x, y) = Twice().double(), classification_data(40)
    assert_matches(gradient_alignment(model, x, y, F.cross_entropy), brute_force(model, x, y, F.cross_entropy))


def test_logit_gradients_align_when_logits_are_tiny():
    # with logits ≈ 0, the CE gradient softmax(z) − onehot(y) ≈ 1/k − e_y is the same for every example of a class
    model, (x, y) = mlp(), classification_data()
    with torch.no_grad():
        model[-1].weight.mul_(1e-6)
        model[-1].bias.zero_()
    assert gradient_alignment(model, x, y, F.cross_entropy)["logits"] == pytest.approx(1.0, abs=1e-4)


def test_parameters_and_grads_are_untouched():
    model, (x, y) = mlp(), classification_data()
    model[0].weight.grad = torch.randn_like(model[0].weight)
    before = [p.detach().clone() for p in model.parameters()]
    grad_before = model[0].weight.grad.clone()
    gradient_alignment(model, x, y, F.cross_entropy, chunk_size=16)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert torch.equal(model[0].weight.grad, grad_before)
    assert all(p.grad is None for p in list(model.parameters())[1:])


def test_gradient_alignment_rejects_bad_input():
    model, (x, y) = mlp(), classification_data()
    with pytest.raises(ValueError, match="one label per input"):
        gradient_alignment(model, x, y[:-1], F.cross_entropy)
    with pytest.raises(ValueError, match="no class has 2 or more"):
        gradient_alignment(model, x[:3], torch.arange(3), F.cross_entropy)
    flat = nn.Sequential(nn.Linear(5, 3), nn.Flatten(0)).double()
    with pytest.raises(ValueError, match=r"shape \(n, k\)"):
        gradient_alignment(flat, x, y, lambda z, t: z.sum())
    with pytest.raises(ValueError, match="per-example losses"):
        gradient_alignment(model, x, y, lambda z, t: F.cross_entropy(z, t, reduction="none")[:, None])
