"""TWIN-V2 (Si et al., arXiv 2407.16357, KDD 2024): TWIN over the clustered lifelong sequence.

The feature store clusters a user's lifelong behaviours; each cluster arrives as one token (its
representative item and category), its mean dense features and its size N (``cluster_*``). The
GSU is TWIN's, over the clusters: top-k by the target-attention logit α. The ESU is the paper's
cluster-aware target attention: the softmax runs over ``α' = α + ln N``, i.e. a cluster weighs as
much as its N members would if each scored α (weight ∝ N·e^α). ``ModelOutput.attention`` covers
the cluster sequence (``attends = "cluster"``).
With ``config.twin_v2_recent`` the model also runs exact TWIN attention (own parameters) over the
recent sequence and adds ``[h_recent, v_t ⊙ h_recent]`` to the head input.

**Cluster age** (``config.twin_v2_age``, on by default; the paper's ESU is TWIN's, whose cross
features include the time gap, and a cluster's numeric features are its members' mean; without it
the clusters are an unordered set and old interests weigh like current ones: on 10,000-behaviour
generated users TWIN-V2 fell 0.083 AUC behind TWIN, trainer/RESULTS-offline.md): the attention adds
a learnt bias per head and age bucket, as TWIN does per relative position (the recent branch, when
on, then gets TWIN's own bias by relative position). The cluster sequence is
in order of the members' mean position, so the age of a cluster is estimated from the sizes alone,
without a new feature: the members of the clusters after it plus half its own
(:func:`cluster_age`); for the clusters of one at the end of the sequence that is the exact
relative position. Ages bucket exactly below 128, then 8 buckets per doubling
(:func:`age_bucket`).

``config.twin_values`` is TWIN's (``models.twin``): the paper's value projections or the tokens.

``config.twin_v2_log_size=False`` drops the + ln N (a departure from the paper, for diagnosis: on a
generated log whose interests drift fast, large old clusters of an abandoned interest took
weight they should not; trainer/RESULTS-offline.md).

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

EXACT_AGES = 128  # cluster ages below this have a bucket each
BUCKETS_PER_DOUBLING = 8


def cluster_age(size: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C) right-aligned sizes and mask → (B, C) estimated age in behaviours (0 = newest):
    the members of the later clusters plus ``(N - 1) / 2``, rounded down."""
    n = size * mask
    newer = n.flip(1).cumsum(1).flip(1) - n  # members of the clusters after each one
    return (newer + (n - 1).clamp(min=0) / 2).floor().long()


def age_bucket(age: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Exact below :data:`EXACT_AGES`, then :data:`BUCKETS_PER_DOUBLING` per doubling, capped."""
    over = age.clamp(min=EXACT_AGES).float() / EXACT_AGES
    log_part = EXACT_AGES + (over.log2() * BUCKETS_PER_DOUBLING).floor().long()
    return torch.where(age < EXACT_AGES, age, log_part).clamp(0, n_buckets - 1)


class TWINV2(CTRModel):
    name = "twin_v2"
    attends = "cluster"

    def __init__(self, config: ModelConfig) -> None:
        d = config.token_dim
        n_recent = 2 * d if config.twin_v2_recent else 0
        super().__init__(config, n_features=2 * d + n_recent)
        n_ages = config.seq_len if config.twin_v2_age else 0
        values = config.twin_values
        self.attn = TwinAttention(d, config.n_heads, config.dense_features, n_ages, values)
        self.recent = (
            TwinAttention(d, config.n_heads, config.dense_features, n_ages, values)
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
        log_size: torch.Tensor | None = None  # without: a departure (see the module docstring)
        if self.config.twin_v2_log_size:
            log_size = batch.cluster_size.clamp(min=1).log()  # (B, C) ln N, 0 on padding
        age = None
        if self.attn.age is not None:
            age = age_bucket(cluster_age(batch.cluster_size, mask), self.attn.age.num_embeddings)
        out = two_stage(
            self.attn, target, tokens, batch.cluster_dense, mask, k, esu_bias=log_size, age=age
        )
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
        mask, age = batch.hist_mask, batch.hist_age
        h = two_stage(self.recent, target, tokens, batch.hist_dense, mask, None, age=age).h
        return [h, target * h]
