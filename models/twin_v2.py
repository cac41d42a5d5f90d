"""TWIN-V2 (Si et al., arXiv 2407.16357, KDD 2024): TWIN over the clustered lifelong sequence.

The feature store clusters a user's lifelong behaviours; each cluster arrives as one token (its
representative item and category), its mean dense features and its size N (``cluster_*``). The
GSU is TWIN's, over the clusters: top-k by the target-attention logit α. The ESU is the paper's
cluster-aware target attention: the softmax runs over ``α' = α + ln N``, i.e. a cluster weighs as
much as its N members would if each scored α (weight ∝ N·e^α). ``ModelOutput.attention`` covers
the cluster sequence (``attends = "cluster"``).
With ``config.twin_v2_recent`` the model also runs exact TWIN attention (own parameters) over the
recent sequence and adds ``[h_recent, v_t ⊙ h_recent]`` to the head input.

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=6, topk=2)
>>> out = TWINV2(cfg).eval()(random_batch(cfg, batch_size=2, n_clusters=5, min_len=3))
>>> out.attention.shape, out.attended_index.shape
(torch.Size([2, 5]), torch.Size([2, 2]))
"""

from __future__ import annotations

import torch

from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.twin import TwinAttention, two_stage


class TWINV2(CTRModel):
    name = "twin_v2"
    attends = "cluster"

    def __init__(self, config: ModelConfig) -> None:
        d = config.token_dim
        n_recent = 2 * d if config.twin_v2_recent else 0
        super().__init__(config, n_features=2 * d + n_recent)
        self.attn = TwinAttention(d, config.n_heads, config.dense_features)
        self.recent = (
            TwinAttention(d, config.n_heads, config.dense_features)
            if config.twin_v2_recent
            else None
        )

    def forward(self, batch: Batch) -> ModelOutput:
        return self.attend(batch, self.config.topk)

    def attend(self, batch: Batch, k: int | None) -> ModelOutput:
        """GSU top ``k`` clusters, cluster-aware ESU over them; ``k=None``: over all clusters."""
        target = self.embed_target(batch)  # (B, D)
        tokens = self.embed(batch.cluster_item, batch.cluster_category)  # (B, C, D)
        mask = batch.cluster_mask
        log_size = batch.cluster_size.clamp(min=1).log()  # (B, C) ln N, 0 on padding (masked)
        out = two_stage(self.attn, target, tokens, batch.cluster_dense, mask, k, esu_bias=log_size)
        features = [out.h, target * out.h]  # (B, D) each
        if self.recent is not None:
            features += self.attend_recent(batch, target)
        return ModelOutput(
            logits=self.predict(target, features, batch),
            attention=out.weights,
            attended_index=out.attended_index(mask),
        )

    def attend_recent(self, batch: Batch, target: torch.Tensor) -> list[torch.Tensor]:
        assert self.recent is not None
        tokens = self.embed_history(batch)  # (B, L, D)
        h = two_stage(self.recent, target, tokens, batch.hist_dense, batch.hist_mask, None).h
        return [h, target * h]
