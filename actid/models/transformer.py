"""A small GPT-2-shaped decoder-only transformer classifier (Brown et al. 2022's grokking model).

Shape as the paper's ``GPT2ForSequenceClassification``: width 128, 2 blocks, 4 heads, MLP 512 with
GELU (tanh form, GPT-2's ``gelu_new``), pre-LayerNorm, learned positions, dropout 0.1 on
embeddings, attention weights and residual branches, causal attention, N(0, 0.02) init with the
scaled output projections. The class is read from the final LayerNorm at the last position (the
'=' token), and the head has no bias.

ID layers are the sublayer outputs *before* the residual add, as hooked by the paper:
``blocks.{i}.attn`` and ``blocks.{i}.mlp``; LLID is ``blocks.{last}.mlp``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, last_query_only: bool = False) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if last_query_only:  # the last position attends to every position: no causal mask needed
            q, t = q[:, :, -1:], 1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=not last_query_only,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden, dropout)

    def forward(self, x: torch.Tensor, last_position_only: bool = False) -> torch.Tensor:
        if last_position_only:
            x = x[:, -1:] + self.attn(self.ln_attn(x), last_query_only=True)
        else:
            x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class Transformer(nn.Module):
    """Decoder-only transformer that classifies a token sequence from its last position."""

    def __init__(self, vocab_size: int, n_classes: int, *, width: int = 128, depth: int = 2, heads: int = 4,
                 mlp_hidden: int = 512, dropout: float = 0.1, max_len: int = 16):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_len, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_hidden, dropout) for _ in range(depth))
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def id_layers(self) -> list[str]:
        """The paper's ID layers: each block's attention and MLP sublayer output."""
        return [f"blocks.{i}.{part}" for i in range(len(self.blocks)) for part in ("attn", "mlp")]

    @property
    def llid_layer(self) -> str:
        return f"blocks.{len(self.blocks) - 1}.mlp"

    def forward(self, tokens: torch.Tensor, all_positions: bool | None = None) -> torch.Tensor:
        """Logits (batch, classes) read at the last position.

        The logits depend on the other positions only through the last block's keys and values,
        so by default training skips the last block's queries, attention output and MLP at those
        positions (about 1.4x fewer flops for 4 tokens; same loss and gradients). Evaluation (and
        so activation capture) computes every position, as the paper's hooks see them.
        """
        all_positions = not self.training if all_positions is None else all_positions
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, last_position_only=not all_positions and i == len(self.blocks) - 1)
        return self.head(self.ln_final(x[:, -1]))
