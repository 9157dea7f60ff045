# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: language_info
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   language_info:
#     codemirror_mode:
#       name: ipython
#       version: 3
#     file_extension: .py
#     mimetype: text/x-python
#     name: python
#     nbconvert_exporter: python
#     pygments_lexer: ipython3
#     version: 3.11.7
# ---

# %% [markdown]
# # The ID of a transformer's hidden states: which tokens make the points
#
# A transformer layer outputs one vector per token, `(batch, seq, hidden)`. An intrinsic dimension needs one point
# per example, so a study must say which tokens form the point cloud, and the answer changes the number.
# `actid.integrations.hf` makes the choice an argument (`pooling`) and records it with the result:
#
# * `last`: the last non-padding token of each sequence (what a causal model predicts from);
# * `mean`: the mean over each sequence's non-padding tokens;
# * `all`: every non-padding token, one point per token (points of one sequence are not independent).
#
# Padding never enters a point: the `attention_mask` decides. Two models here, neither downloaded:
# a randomly initialized GPT-2-shaped model from `transformers` (every layer through `output_hidden_states`) and
# actid's own grokking transformer (any module, through forward hooks on named layers), briefly trained on modular
# division. Needs `pip install -e ".[hf]"`.

# %% tags=["parameters"]
out_dir = "build/hidden_states"  # relative to the repository root, or absolute: profiles.csv, protocols.json, PNG
n_sequences = 600  # sequences given to GPT-2 (variable lengths, right-padded)
train_steps = 300  # training steps of the grokking transformer before its profile (0: at initialization)
seed = 0

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.nn import functional as F
from transformers import GPT2Config, GPT2Model

import actid
from actid import plotting
from actid.data.modular import modular_equations, train_val_split, vocab_size
from actid.integrations.hf import POOLINGS, id_profile
from actid.models.transformer import Transformer
from actid.paths import resolve

plotting.use_style()
out = resolve(out_dir)
out.mkdir(parents=True, exist_ok=True)
estimator = actid.TwoNN(n_resamples=10)  # error bars: the spread over 10 subsamples of 90%
p = 97
tokens, labels = modular_equations(p, "div")  # [a, op, b, =] -> a / b mod 97

# %% [markdown]
# ## A GPT-2-shaped model at initialization (`transformers`, no download)
#
# Each sequence chains 1 to 3 division equations with their answers, `a ÷ b = c` (5 to 15 tokens), padded on the
# right with a padding token of its own. `hidden_states.0` is the embeddings; GPT-2 applies its final LayerNorm to
# the last entry.

# %%
torch.manual_seed(seed)
pad = vocab_size(p)
gpt2 = GPT2Model(GPT2Config(vocab_size=pad + 1, n_positions=16, n_embd=64, n_layer=4, n_head=4,
                            bos_token_id=pad, eos_token_id=pad, pad_token_id=pad)).eval()
g = torch.Generator().manual_seed(seed)
n_equations = torch.randint(1, 4, (n_sequences,), generator=g)
picks = torch.randint(0, len(tokens), (n_sequences, 3), generator=g)
equations = torch.cat([tokens, (labels + 2)[:, None]], 1)  # [a, op, b, =, c]
input_ids = equations[picks].reshape(n_sequences, 15)
attention_mask = (torch.arange(15) < 5 * n_equations[:, None]).long()
input_ids = input_ids.masked_fill(attention_mask == 0, pad)
print(f"{n_sequences} sequences, {int(attention_mask.sum())} tokens; sequences of 5, 10, 15 tokens:",
      torch.bincount(n_equations)[1:].tolist())

gpt2_list = [id_profile(gpt2, input_ids, attention_mask, pooling=pooling, estimator=estimator) for pooling in POOLINGS]
protocols = {"gpt2-random": [profile.attrs["protocol"] for profile in gpt2_list]}
gpt2_profiles = pd.concat(gpt2_list, ignore_index=True)
gpt2_profiles.round(2)

# %% [markdown]
# The same layers give IDs from below 1 to above 30 depending on the protocol, so a reported ID without its
# protocol cannot be compared. In a randomly initialized GPT-2 the residual stream is still mostly the embedding
# of the token and its position: under `last`, sequences ending with the same answer at the same length are
# near-copies that differ only by a small contribution of their context, and TwoNN, which reads the ratio of the
# two nearest distances, sees those tight clusters (an ID below 1 is the signature of such clustered data, not of
# a one-dimensional manifold). `mean` averages over positions and tokens and sees a spread cloud. `n_duplicates`
# counts exact copies, removed before the fit: at the embeddings, two sequences ending with the same token at the
# same position give the same `last` point.
#
# ## actid's grokking transformer, by forward hooks
#
# The grokking figures measure `blocks.{i}.attn` and `blocks.{i}.mlp` with a fourth protocol: the four positions
# flattened into one 512-feature vector per equation (`actid.capture_activations`). Here the same layers under the
# three pooling protocols and that one, after `train_steps` steps of AdamW on 30% of the equations (the default
# profile's recipe, shortened), measured on the validation equations.

# %%
torch.manual_seed(seed)
model = Transformer(vocab_size(p), p)
train, val = train_val_split(len(tokens), 0.3)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=1.0)
g = torch.Generator().manual_seed(seed)
model.train()
for step in range(train_steps):
    batch = train[torch.randint(0, len(train), (512,), generator=g)]
    loss = F.cross_entropy(model(tokens[batch]), labels[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    accuracy = {name: (model(tokens[idx]).argmax(1) == labels[idx]).float().mean().item()
                for name, idx in [("train", train), ("val", val)]}
print(f"after {train_steps} steps: train accuracy {accuracy['train']:.3f}, validation accuracy {accuracy['val']:.3f}")

probe = tokens[val[:2000]]
grok_list = [id_profile(model, probe, pooling=pooling, layers=model.id_layers, estimator=estimator)
             for pooling in POOLINGS]
protocols["grokking-transformer"] = [{**profile.attrs["protocol"], "train_steps": train_steps, "accuracy": accuracy}
                                     for profile in grok_list]
flattened = []
for name, X in actid.capture_activations(model, probe, model.id_layers).items():  # the grokking figures' protocol
    fit = estimator.fit(X)
    flattened.append({"layer": name, "dimension": fit.dimension_, "error": fit.error_, "n_points": len(X),
                      "n_used": fit.n_used_, "n_duplicates": fit.n_duplicates_, "pooling": "flattened positions"})
grok_profiles = pd.concat([*grok_list, pd.DataFrame(flattened)], ignore_index=True)
grok_profiles.round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, profiles, title in [(axes[0], gpt2_profiles, "GPT-2-shaped, random init"),
                            (axes[1], grok_profiles, f"grokking transformer, {train_steps} steps")]:
    for pooling, rows in profiles.groupby("pooling", sort=False):
        ax.errorbar(range(len(rows)), rows["dimension"], yerr=rows["error"], marker="o", capsize=3, label=pooling)
        ax.set_xticks(range(len(rows)), rows["layer"].str.replace("hidden_states.", "h"), rotation=30)
    ax.set(title=f"{title}\nTwoNN ID by layer and pooling", xlabel="layer", ylabel="ID (± spread of 10 subsamples)")
    ax.legend(title="pooling", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
fig.tight_layout()
fig.savefig(out / "hidden_states.png", dpi=120)
plt.show()

# %% [markdown]
# After 300 steps the transformer fits part of its training equations and none of the validation ones (it has not
# grokked; the default profile trains 1,800 steps). Under `all`, the first two tokens of an equation (`a` and the
# operator) see only `a` (causal attention), so the 2,000 equations give at most 97 distinct points at each of
# those positions: the 3,806 copies are counted in `n_duplicates` and removed before the fit.
#
# The record travels with the numbers: `profiles.csv` has the pooling of every row, `protocols.json` the rest of
# the choices (padding side, counts of sequences and tokens, how the states were read, the estimator).

# %%
pd.concat([gpt2_profiles.assign(model="gpt2-random"), grok_profiles.assign(model="grokking-transformer")]).to_csv(
    out / "profiles.csv", index=False)
(out / "protocols.json").write_text(json.dumps(protocols, indent=1))
protocols
