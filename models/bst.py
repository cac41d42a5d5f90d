"""BST (Chen et al., DLP-KDD 2019): a Transformer encoder over [behaviours + position, target].

As in the paper, the sequence is the ``bst_len`` most recent behaviours (its Taobao setting: 20)
plus the target. Positions are embedded from ``hist_age`` (0 = most recent; the paper embeds the
time gap), initialised at the scale of the item and category rows (std ``dim**-0.5``; torch's
default N(0, 1) made them ~6x the token norm at dim 32 and drowned which item each token is); the
target token gets its own learned position. Post-norm blocks as in the paper (multi-head
self-attention, LeakyReLU feed-forward), padding masked out of the keys.
Deviation: the paper flattens all encoder outputs into the MLP, which ties the head to L and is not
padding invariant; we feed ``[target, encoded target, masked mean of encoded behaviours]``, plus
``target ⊙`` each of the two (``config.cross_features``, the head every attention model here gets).
``ModelOutput.attention`` is the last block's attention of the target token over the behaviours
(head average; the rest of its mass sits on the target itself), zero on the older behaviours.

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=6)
>>> BST(cfg).eval()(random_batch(cfg, batch_size=3)).attention.shape
torch.Size([3, 6])
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.layers import masked_mean


class Block(nn.Module):
    """Post-norm Transformer block that also returns its (head-averaged) attention weights."""

    def __init__(self, d: int, config: ModelConfig) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(
            d, config.n_heads, dropout=config.dropout, batch_first=True
        )
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.LeakyReLU(), nn.Linear(4 * d, d))
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # y: (B, N, D); weights: (B, N, N), averaged over heads
        y, weights = self.attn(x, x, x, key_padding_mask=pad, need_weights=True)
        x = self.norm1(x + self.dropout(y))
        x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, weights


class BST(CTRModel):
    name = "bst"
    encoder = ("position", "target_position", "blocks")

    def __init__(self, config: ModelConfig) -> None:
        d = config.token_dim
        super().__init__(config, n_features=2 * d * (1 + config.cross_features))
        self.position = nn.Embedding(config.seq_len, d)
        nn.init.normal_(self.position.weight, std=config.dim**-0.5)
        self.target_position = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(Block(d, config) for _ in range(config.transformer_layers))

    def forward(self, batch: Batch) -> ModelOutput:
        n = min(self.config.bst_len, batch.hist_mask.shape[1])  # the newest n positions
        mask = batch.hist_mask[:, -n:]  # (B, n), right-aligned like the whole history
        target, hist = self.embed_pairs(
            (batch.target_item, batch.target_category),
            (batch.hist_item[:, -n:], batch.hist_category[:, -n:]),
        )  # (B, D), (B, n, D)
        age = batch.hist_age[:, -n:].clamp(0, self.config.seq_len - 1)
        x = torch.cat([hist + self.position(age), (target + self.target_position).unsqueeze(1)], 1)
        pad = torch.cat([~mask, mask.new_zeros(mask.shape[0], 1)], dim=1)  # (B, n+1), target kept
        weights = x.new_zeros(0)
        for block in self.blocks:
            x, weights = block(x, pad)
        encoded_target, encoded_hist = x[:, -1], masked_mean(x[:, :-1], mask)  # (B, D) each
        attention = batch.hist_mask.new_zeros(batch.hist_mask.shape, dtype=x.dtype)
        attention[:, -n:] = weights[:, -1, :-1] * mask
        return ModelOutput(
            logits=self.predict(
                target, self.interests(target, [encoded_target, encoded_hist]), batch
            ),
            attention=attention,  # (B, L)
        )
