"""DARE (Feng et al., "Long-Sequence Recommendation Models Need Decoupled Embeddings", ICLR 2025).

Two sets of item/category tables: attention tables (width d_A = ``attn_dim``) and representation
tables (width d_R = ``dim``, the base class's tables, also used for the target in the head).
The relevance of behaviour j is ``q_A·k_A,j / √(2 d_A) + τ·T[age_j] / √d_A``: attention tokens
only, plus the reference code's relative-position ("time") embedding T indexed by ``hist_age``
and matched with a learned target-time vector τ (the target is always "now"). The search keeps
the ``topk`` most relevant behaviours; softmax over them; the weighted sum uses their
representation tokens only. So the representation tables get no gradient through the attention
weights, and the attention tables get all of theirs from them.
Efficiency: the history is embedded once in the attention tables and scored once (one matmul);
only the k kept behaviours are looked up in the representation tables. Head input
``[v_t, h, v_t ⊙ h]`` (the reference's ``use_cross_feature``).

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=8, attn_dim=4, seq_len=8, topk=3)
>>> DARE(cfg).eval()(random_batch(cfg, batch_size=2, min_len=4)).attended_index.shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.embedding import EmbeddingTable
from models.layers import keys_dot_query, masked_softmax, scatter_steps
from models.twin import top_k


class DARE(CTRModel):
    name = "dare"

    def __init__(self, config: ModelConfig) -> None:
        assert config.attn_dim is not None
        d_a, sparse = config.attn_dim, config.sparse_embeddings
        super().__init__(config, n_features=2 * config.token_dim)
        self.attn_item = EmbeddingTable(config.n_items, d_a, sparse)
        self.attn_category = EmbeddingTable(config.n_categories, d_a, sparse)
        self.time = nn.Embedding(config.seq_len, d_a)  # relative position (age) embedding
        self.target_time = nn.Parameter(torch.randn(d_a) * d_a**-0.5)
        nn.init.normal_(self.time.weight, std=d_a**-0.5)

    def time_bias(self, age: torch.Tensor) -> torch.Tensor:
        """(B, L) ages → (B, L) score bias τ·T[age]/√d_A (one small matvec, then a lookup)."""
        per_age = self.time.weight @ self.target_time / math.sqrt(self.time.embedding_dim)
        return per_age[age.clamp(0, self.config.seq_len - 1)]

    def relevance(self, batch: Batch) -> torch.Tensor:
        """(B, L) attention logits from the attention tables and the age embedding only.

        q·k over ``[item, category]`` tokens, summed per table so that no (B, L, 2·d_A) token
        tensor is built.
        """
        item = keys_dot_query(*self.attn_item.many(batch.hist_item, batch.target_item))
        category = keys_dot_query(
            *self.attn_category.many(batch.hist_category, batch.target_category)
        )
        scale = math.sqrt(2 * self.time.embedding_dim)  # √(2·d_A), the token width
        return (item + category) / scale + self.time_bias(batch.hist_age)  # (B, L)

    def forward(self, batch: Batch) -> ModelOutput:
        return self.attend(batch, self.config.topk)

    def attend(self, batch: Batch, k: int | None) -> ModelOutput:
        """Search the top ``k`` behaviours then attend over them; ``k=None``: exact attention."""
        mask = batch.hist_mask
        b, length = mask.shape
        scores = self.relevance(batch)  # (B, L)
        every = torch.arange(length, device=mask.device).expand(b, length)
        index = every if k is None else top_k(scores, mask, k)  # (B, K)
        kept = mask.gather(1, index)  # (B, K)
        weights = masked_softmax(scores.gather(1, index), kept)  # (B, K)
        values, target = self.embed_pairs(  # (B, K, D), (B, D) from the representation tables
            (batch.hist_item.gather(1, index), batch.hist_category.gather(1, index)),
            (batch.target_item, batch.target_category),
        )
        h = (weights.unsqueeze(-1) * values).sum(dim=1)  # (B, D) from the K representations only
        return ModelOutput(
            logits=self.predict(target, [h, target * h], batch),
            attention=scatter_steps(weights, index, length),  # (B, L)
            attended_index=None if k is None else index.masked_fill(~kept, -1),
        )
