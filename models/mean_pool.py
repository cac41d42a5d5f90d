"""Baseline: the user is the masked mean of their behaviour tokens.

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=6)
>>> MeanPool(cfg).eval()(random_batch(cfg, batch_size=3)).logits.shape
torch.Size([3])
"""

from __future__ import annotations

from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.layers import masked_mean, once_per_user


class MeanPool(CTRModel):
    name = "mean"
    attends = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, n_features=config.token_dim)

    def forward(self, batch: Batch) -> ModelOutput:
        target = self.embed_target(batch)  # (B, D)
        user = once_per_user(masked_mean, self.embed_history(batch), batch.hist_mask)  # (B, D)
        return ModelOutput(logits=self.predict(target, [user], batch))
