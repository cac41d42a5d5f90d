"""TWIN (Chang et al., KDD 2023): one target attention for both search (GSU) and exact (ESU) stage.

Per head, the relevance of behaviour j to the target is
``α_j = (W_q v_t)·(W_k k_h,j) / √d_head + β·(W_c k_c,j)`` with k_h the behaviour's item/category
token and k_c its cross features, compressed to a 1-D bias per head: the dense side features
(``hist_dense``, when there are any) and the behaviour's relative position (``hist_age``, a learned
bias per age and head, zero at start), the time-gap cross feature that TWIN uses and that the
DARE reference code gives every model. Without it an offline log with no side features left TWIN
blind to recency. GSU: keep the ``topk`` behaviours with the largest head-mean α.
ESU: for each head, softmax of α over the kept behaviours only, weighted sum of their value
projections; heads are concatenated and projected to h. The scores are computed once and reused
by both stages, which is TWIN's "consistency-preserved" design. Head input ``[v_t, h, v_t ⊙ h]``.

Values (``config.twin_values``): ``"projected"`` (the default) is the TWIN paper's ESU above, per
head ``Softmax(α)·K W^v``, concatenated, times ``W^o``. ``"tokens"`` is the DARE reference code's
TWIN: h is the sum of the kept tokens themselves weighted by the heads' mean softmax, so h lives
in the target's space and the head's ``v_t ⊙ h`` compares target and history directly; with the
projections that product is between the target and a randomly rotated history. On MovieLens
(taste matches) token values lift TWIN from mean pooling's level to DIN's; on Taobao-154 the
projections are better (trainer/RESULTS-offline.md, "Fifth TWIN-V2 round"); choose on valid AUC.
When ``topk`` ≥ L the kept set is every behaviour and the result is exact target attention;
:meth:`TWIN.attend` with ``k=None`` computes that exact attention directly (for evaluating the
search stage, e.g. NDCG of the top-k against it).

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=8, topk=3, dense_features=2)
>>> out = TWIN(cfg).eval()(random_batch(cfg, batch_size=2, min_len=5))
>>> out.attended_index.shape, (out.attention > 0).sum(1).tolist()
(torch.Size([2, 3]), [3, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.base import CTRModel, ModelConfig, ModelOutput, Values
from models.batch import Batch
from models.layers import gather_steps, is_shared, masked_softmax, once_per_user, scatter_steps


class TwinAttention(nn.Module):
    """Multi-head target attention with a cross-feature bias, usable on any subset of keys."""

    def __init__(
        self, d: int, n_heads: int, n_dense: int, n_ages: int = 0, values: Values = "projected"
    ) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d // n_heads
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        projected = values == "projected"  # else the tokens themselves (see the module docstring)
        self.value = nn.Linear(d, d, bias=False) if projected else None
        self.out = nn.Linear(d, d) if projected else None
        self.cross = nn.Linear(n_dense, n_heads, bias=False) if n_dense > 0 else None
        self.age = nn.Embedding(n_ages, n_heads) if n_ages > 0 else None  # 1-D bias per age, head
        if self.age is not None:
            nn.init.zeros_(self.age.weight)

    def scores(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        dense: torch.Tensor,
        age: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, D) target, (B, L, D) tokens, (B, L, F) cross features, (B, L) ages → (B, H, L)."""
        b, length, _ = keys.shape
        q = self.query(query).view(b, self.n_heads, self.d_head)  # (B, H, d)
        k = once_per_user(self.key, keys).view(b, length, self.n_heads, self.d_head)  # (B, L, H, d)
        alpha = per_head(q, k, "bhd,blhd->bhl") / math.sqrt(self.d_head)  # (B, H, L)
        if self.cross is not None:
            alpha = alpha + once_per_user(self.cross, dense).transpose(1, 2)  # + β·(W_c k_c)
        if self.age is not None and age is not None:
            rows = age.clamp(0, self.age.num_embeddings - 1)
            alpha = alpha + self.age.weight[rows].transpose(1, 2)  # + time-gap bias, (B, H, L)
        return alpha

    def pool(
        self, alpha: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, K) logits, (B, K, D) tokens, (B, K) mask → h (B, D), weights (B, H, K)."""
        b, k, _ = tokens.shape
        weights = masked_softmax(alpha, mask.unsqueeze(1))  # (B, H, K) softmax over K per head
        if self.value is None or self.out is None:  # token values: (B, K) @ (B, K, D) → (B, D)
            return torch.einsum("bk,bkd->bd", weights.mean(1), tokens), weights
        v = once_per_user(self.value, tokens).view(b, k, self.n_heads, self.d_head)  # (B, K, H, d)
        heads = per_head(weights, v, "bhk,bkhd->bhd")  # (B, H, d)
        return self.out(heads.reshape(b, -1)), weights


def per_head(x: torch.Tensor, seq: torch.Tensor, equation: str) -> torch.Tensor:
    """``einsum(equation, x, seq)`` with ``seq`` (B, S, H, d); when ``seq`` is one user's sequence
    broadcast over the batch, contract against its first row only (no per-candidate copy)."""
    if is_shared(seq):
        return torch.einsum(equation.replace(",b", ","), x, seq[0])
    return torch.einsum(equation, x, seq)


def top_k(relevance: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L) relevance → (B, min(k, L)) positions of the largest real entries (padding last)."""
    filled = relevance.masked_fill(~mask, torch.finfo(relevance.dtype).min)
    return filled.topk(min(k, filled.shape[1]), dim=1).indices


@dataclass(frozen=True)
class Attended:
    """One sequence's interest: ``h`` (B, D), weights (B, S) and kept positions (B, K) or None."""

    h: torch.Tensor
    weights: torch.Tensor
    index: torch.Tensor | None

    def attended_index(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Kept positions with -1 where the slot fell on padding."""
        if self.index is None:
            return None
        return self.index.masked_fill(~mask.gather(1, self.index), -1)


def two_stage(
    attn: TwinAttention,
    target: torch.Tensor,
    tokens: torch.Tensor,
    dense: torch.Tensor,
    mask: torch.Tensor,
    k: int | None,
    esu_bias: torch.Tensor | None = None,
    age: torch.Tensor | None = None,
) -> Attended:
    """GSU top-k over α then ESU over the kept tokens; ``k=None`` = exact attention over all.

    ``esu_bias`` (B, S) is added to α in the ESU only (TWIN-V2 adds ln N there); ``age`` (B, S)
    feeds the attention's time-gap bias, in both stages.
    """
    alpha = attn.scores(target, tokens, dense, age)  # (B, H, S), computed once for both stages
    logits = alpha if esu_bias is None else alpha + esu_bias.unsqueeze(1)
    if k is None:
        h, weights = attn.pool(logits, tokens, mask)
        return Attended(h, weights.mean(1), None)
    index = top_k(alpha.mean(1), mask, k)  # (B, K) GSU
    kept = index.unsqueeze(1).expand(-1, alpha.shape[1], -1)  # (B, H, K)
    h, weights = attn.pool(
        logits.gather(2, kept), gather_steps(tokens, index), mask.gather(1, index)
    )
    return Attended(h, scatter_steps(weights.mean(1), index, mask.shape[1]), index)


class TWIN(CTRModel):
    name = "twin"

    def __init__(self, config: ModelConfig) -> None:
        d = config.token_dim
        super().__init__(config, n_features=2 * d)
        self.attn = TwinAttention(
            d, config.n_heads, config.dense_features, config.seq_len, config.twin_values
        )

    def forward(self, batch: Batch) -> ModelOutput:
        return self.attend(batch, self.config.topk)

    def attend(self, batch: Batch, k: int | None) -> ModelOutput:
        """Search the top ``k`` behaviours then attend over them; ``k=None``: exact attention."""
        target = self.embed_target(batch)  # (B, D)
        tokens = self.embed_history(batch)  # (B, L, D)
        mask = batch.hist_mask
        out = two_stage(self.attn, target, tokens, batch.hist_dense, mask, k, age=batch.hist_age)
        return ModelOutput(
            logits=self.predict(target, [out.h, target * out.h], batch),  # [v_t, h, v_t ⊙ h]
            attention=out.weights,
            attended_index=out.attended_index(mask),
        )
