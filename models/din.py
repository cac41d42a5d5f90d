"""DIN (Zhou et al., KDD 2018): target attention through an MLP "activation unit".

Each behaviour k gets the score ``s_k = MLP([k, q, k − q, k ⊙ q])`` for the target q (the paper's
outer product is replaced by ``k − q`` and ``k ⊙ q``, as in its public code). By default
(``config.din_softmax``) the weights are ``softmax_k(s_k / √D)`` over the real behaviours, as the
authors' public code and the DARE reference code compute them. With ``din_softmax=False`` they are
the paper's raw scores ``s_k``, so the pooled vector keeps the "intensity" of the user's interest;
but it is then a *sum* over up to L behaviours, whose scale follows the history length more than
its content (see trainer/RESULTS-offline.md). Padding gets weight 0. Head input
``[v_t, h, v_t ⊙ h]`` (``config.cross_features``, as the DARE reference runs its DIN).

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=6, activation="dice")
>>> DIN(cfg).eval()(random_batch(cfg, batch_size=3)).attention.shape
torch.Size([3, 6])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import CTRModel, ModelConfig, ModelOutput, mlp
from models.batch import Batch
from models.layers import masked_softmax, once_per_user


class ActivationUnit(nn.Module):
    """(B, D) query, (B, L, D) keys → (B, L) raw attention scores ``MLP([k, q, k − q, k ⊙ q])``.

    The first layer is applied by blocks of its weight, W·[k, q, k−q, k⊙q] = (W_k + W_d)·k +
    (W_q − W_d)·q + W_p·(k ⊙ q): the same function with a quarter of the per-pair work, no
    (B, L, 4D) concatenation, and the key part done once for a shared history.
    """

    def __init__(self, d: int, config: ModelConfig) -> None:
        super().__init__()
        layers = list(mlp(4 * d, config.attention_mlp, config.activation, dropout=0.0))
        assert isinstance(layers[0], nn.Linear)
        self.first: nn.Linear = layers[0]
        self.rest = nn.Sequential(*layers[1:])

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        w_k, w_q, w_d, w_p = self.first.weight.chunk(4, dim=1)  # (h, D) each
        key_part = once_per_user(lambda k: F.linear(k, w_k + w_d), keys)  # (B, L, h)
        query_part = F.linear(query, w_q - w_d, self.first.bias).unsqueeze(1)  # (B, 1, h)
        x = key_part + query_part + F.linear(keys * query.unsqueeze(1), w_p)  # (B, L, h)
        return self.rest(x).squeeze(-1)  # (B, L)

    def reference(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The same scores the plain way (for tests)."""
        q = query.unsqueeze(1).expand_as(keys)  # (B, L, D)
        x = self.first(torch.cat([keys, q, keys - q, keys * q], dim=-1))  # (B, L, h)
        return self.rest(x).squeeze(-1)


class DIN(CTRModel):
    name = "din"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, n_features=config.token_dim * (1 + config.cross_features))
        self.unit = ActivationUnit(config.token_dim, config)

    def forward(self, batch: Batch) -> ModelOutput:
        target = self.embed_target(batch)  # (B, D)
        keys = self.embed_history(batch)  # (B, L, D)
        scores = self.unit(target, keys)  # (B, L)
        mask = batch.hist_mask
        if self.config.din_softmax:
            weights = masked_softmax(scores / math.sqrt(keys.shape[-1]), mask)
        else:
            weights = scores * mask
        user = (weights.unsqueeze(-1) * keys).sum(dim=1)  # (B, D)
        features = self.interests(target, [user])
        return ModelOutput(logits=self.predict(target, features, batch), attention=weights)
