"""A small GPT-2-shaped decoder-only transformer classifier (Brown et al. 2022's grokking model).

Shape as the paper's ``GPT2ForSequenceClassification``: width 128, 2 blocks, 4 heads, MLP 512 with
GELU (tanh form, GPT-2's ``gelu_new``), pre-LayerNorm, learned positions, dropout 0.1 on
embeddings, attention weights and residual branches, causal attention, N(0, 0.02) init with the
scaled output projections. The class is read from the final LayerNorm at the last position (the
'=' token), and the head has no bias.

ID layers are the sublayer outputs *before* the residual add, as hooked by the paper:
``blocks.{i}.attn`` and ``blocks.{i}.mlp``; LLID is ``blocks.{last}.mlp``.

Dropout masks are drawn explicitly (:meth:`Transformer.dropout_masks`), all at the start of a training
forward, in the order the layers use them. With torch's default generator this draws exactly what
``nn.Dropout`` and the CPU attention kernel draw (same values, same order), and it lets
:mod:`actid.batched` train several runs as one model, each drawing its masks from its own generator.
Dropout follows the model's own train/eval mode (there are no dropout submodules to switch one by one).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    """Causal multi-head self-attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, last_query_only: bool = False, masks: dict | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if last_query_only:  # the last position attends to every position: no causal mask needed
            q, t = q[:, :, -1:], 1
        if masks:
            y = attention_with_dropout(q, k, v, causal=not last_query_only, mask=masks["weights"])
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=not last_query_only)
        y = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return y * masks["out"] if masks else y


def attention_with_dropout(q, k, v, causal: bool, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention with a given dropout mask on its weights, computed as torch's CPU kernel computes it
    (q and k each scaled by d^-1/4), so that on the CPU it equals ``scaled_dot_product_attention(dropout_p=p)``
    drawing the same mask, bit for bit."""
    scale = math.sqrt(1 / math.sqrt(q.shape[-1]))
    weights = (q * scale) @ (k * scale).transpose(-2, -1)
    if causal:
        t, s = weights.shape[-2:]
        weights = weights.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return (weights.softmax(-1) * mask) @ v


class MLP(nn.Module):
    """The block's feed-forward sublayer: Linear, GELU, Linear."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return y if mask is None else y * mask


class Block(nn.Module):
    """A pre-LN transformer block: attention and MLP sublayers, each added to the residual stream."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden)

    def forward(self, x: torch.Tensor, last_position_only: bool = False, masks: dict | None = None) -> torch.Tensor:
        masks = masks or {}
        attn_masks = {"weights": masks["attn.weights"], "out": masks["attn"]} if masks else None
        if last_position_only:
            x = x[:, -1:] + self.attn(self.ln_attn(x), last_query_only=True, masks=attn_masks)
        else:
            x = x + self.attn(self.ln_attn(x), masks=attn_masks)
        return x + self.mlp(self.ln_mlp(x), masks.get("mlp"))


class Transformer(nn.Module):
    """Decoder-only transformer that classifies a token sequence from its last position."""

    def __init__(self, vocab_size: int, n_classes: int, *, width: int = 128, depth: int = 2, heads: int = 4,
                 mlp_hidden: int = 512, dropout: float = 0.1, max_len: int = 16):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_len, width)
        self.dropout, self.heads = dropout, heads
        self.blocks = nn.ModuleList(Block(width, heads, mlp_hidden) for _ in range(depth))
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

    def dropout_masks(self, batch: int, seq_len: int, all_positions: bool = False,
                      generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
        """The dropout masks of one training forward pass on ``batch`` sequences, drawn in the order the layers
        use them (embedding; then per block its attention weights, attention output, MLP output), each already
        divided by the keep probability as ``nn.Dropout`` does. Empty when dropout is 0."""
        if not self.dropout:
            return {}
        keep, width, device = 1 - self.dropout, self.head.in_features, device or self.head.weight.device
        shapes = {"embedding": (batch, seq_len, width)}
        for i in range(len(self.blocks)):
            queries = 1 if not all_positions and i == len(self.blocks) - 1 else seq_len
            shapes |= {f"blocks.{i}.attn.weights": (batch, self.heads, queries, seq_len),
                       f"blocks.{i}.attn": (batch, queries, width), f"blocks.{i}.mlp": (batch, queries, width)}
        return {name: torch.empty(shape, device=device).bernoulli_(keep, generator=generator).div_(keep)
                for name, shape in shapes.items()}

    def forward(self, tokens: torch.Tensor, all_positions: bool | None = None,
                masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (batch, classes) read at the last position.

        The logits depend on the other positions only through the last block's keys and values,
        so by default training skips the last block's queries, attention output and MLP at those
        positions (about 1.4x fewer flops for 4 tokens; same loss and gradients). Evaluation (and
        so activation capture) computes every position, as the paper's hooks see them.

        ``masks``: the dropout masks (:meth:`dropout_masks`); in training they are drawn from torch's default
        generator when not given. Not in training, there is no dropout.
        """
        all_positions = not self.training if all_positions is None else all_positions
        if not self.training:
            masks = {}
        elif masks is None:
            masks = self.dropout_masks(*tokens.shape, all_positions=all_positions, device=tokens.device)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        if "embedding" in masks:
            x = x * masks["embedding"]
        for i, block in enumerate(self.blocks):
            block_masks = {k[len(f"blocks.{i}."):]: m for k, m in masks.items() if k.startswith(f"blocks.{i}.")}
            x = block(x, last_position_only=not all_positions and i == len(self.blocks) - 1, masks=block_masks)
        return self.head(self.ln_final(x[:, -1]))
