"""Modular arithmetic equations ``a op b = c (mod p)`` for grokking (Power et al. 2022).

Tokens follow the official code: 0 = the operator, 1 = '=', number k -> k + 2. An example is
``[a, op, b, =]`` and its label is c in {0, ..., p-1}.
"""

from __future__ import annotations

import random

import torch

OPERATIONS = ("div", "add", "sub", "mul")
OP_TOKEN, EQ_TOKEN, NUMBER_OFFSET = 0, 1, 2


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, int(p**0.5) + 1))


def modular_equations(p: int = 97, operation: str = "div") -> tuple[torch.Tensor, torch.Tensor]:
    """All equations of ``operation`` mod p as (tokens (n, 4) long, labels (n,) long).

    Division takes b in 1..p-1 (9312 equations for p = 97) and needs a prime p;
    the other operations take all p^2 pairs.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; choose one of {OPERATIONS}")
    if operation == "div" and not is_prime(p):
        raise ValueError(f"division mod {p} needs a prime modulus (every b != 0 must be invertible); try p = 97")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if operation == "div":
        a, b = a[b != 0], b[b != 0]
        inverse = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)])
        c = a * inverse[b] % p
    else:
        c = {"add": a + b, "sub": a - b, "mul": a * b}[operation] % p
    tokens = torch.stack([a + NUMBER_OFFSET, torch.full_like(a, OP_TOKEN), b + NUMBER_OFFSET,
                          torch.full_like(a, EQ_TOKEN)], dim=1)
    return tokens, c


def vocab_size(p: int) -> int:
    return p + NUMBER_OFFSET


def train_val_split(n: int, train_fraction: float, split_seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the train and validation equations.

    As the official code: shuffle ``range(n)`` with ``random.Random(split_seed)`` (fixed, independent
    of the training seed) and put the first ``int(n * train_fraction)`` in train.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    order = list(range(n))
    random.Random(split_seed).shuffle(order)
    cut = int(n * train_fraction)
    return torch.tensor(order[:cut]), torch.tensor(order[cut:])
