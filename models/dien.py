"""DIEN (Zhou et al., AAAI 2019): interest extraction with a GRU, interest evolution with AUGRU.

1. The behaviours, moved to the front of the sequence (:func:`left_align`), run through a GRU:
   one interest state h_t per behaviour.
2. Auxiliary loss: h_t must tell the next behaviour e_{t+1} from a negative. Negatives are the
   behaviours at the same step of another user in the batch (rows shuffled), so no item sampler is
   needed; a negative may occasionally equal the positive. The classifier is an MLP 100 → 50 → 1
   over ``[h_t, e]`` with PReLU (the paper's sigmoid units sit on a plateau for ~100 steps).
3. Attention a_t = softmax_t(h_t · W e_target) over the real steps.
4. AUGRU: a GRU whose update gate is scaled by a_t, ``u'_t = a_t · u_t``, run over h_t; its final
   state is the user's interest for this target. Head input ``[target, h_final]``.

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=6)
>>> out = DIEN(cfg).train()(random_batch(cfg, batch_size=3, min_len=2))
>>> out.aux_loss.shape, out.attention.shape
(torch.Size([]), torch.Size([3, 6]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import CTRModel, ModelConfig, ModelOutput, mlp
from models.batch import Batch
from models.layers import left_align, masked_softmax, run_forward, scatter_steps, steps_mask


class AUGRU(nn.Module):
    """GRU with attentional update gate: (B, T, D) inputs, (B, T) attention, (B, T) mask → (B, H).

    Steps where ``mask`` is False leave the state unchanged.
    """

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.x_gates = nn.Linear(d_in, 3 * d_hidden)
        self.h_gates = nn.Linear(d_hidden, 3 * d_hidden)
        self.d_hidden = d_hidden

    def forward(self, x: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gates_x = self.x_gates(x)  # (B, T, 3H), all steps at once
        h = x.new_zeros(x.shape[0], self.d_hidden)  # (B, H)
        # Split each sequence once: indexing step t (``gates_x[:, t]``) would make the backward
        # allocate and fill a zero gradient of the whole (B, T, 3H) input at every step.
        steps = (gates_x.unbind(1), att.unsqueeze(-1).unbind(1), mask.unsqueeze(-1).unbind(1))
        for gx, a, m in zip(*steps, strict=True):
            h = self.step(gx, h, a, m)
        return h

    def step(
        self, gx: torch.Tensor, h: torch.Tensor, a: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        xr, xu, xn = gx.chunk(3, dim=-1)  # (B, H) each
        hr, hu, hn = self.h_gates(h).chunk(3, dim=-1)
        reset = torch.sigmoid(xr + hr)
        update = a * torch.sigmoid(xu + hu)  # attention scales the update gate
        candidate = torch.tanh(xn + reset * hn)
        return torch.where(m, (1 - update) * h + update * candidate, h)


class DIEN(CTRModel):
    name = "dien"
    encoder = ("extractor", "evolution")

    def __init__(self, config: ModelConfig) -> None:
        d = config.token_dim
        super().__init__(config, n_features=d)
        self.extractor = nn.GRU(d, d, batch_first=True)
        self.bilinear = nn.Linear(d, d, bias=False)  # attention: h_t · W e_target
        self.evolution = AUGRU(d, d)
        self.aux_net = mlp(2 * d, (100, 50), "prelu", dropout=0.0)  # [h_t, e] → logit

    def forward(self, batch: Batch) -> ModelOutput:
        target = self.embed_target(batch)  # (B, D)
        order, lengths = left_align(batch.hist_mask)  # (B, L), (B,)
        order = order[:, : max(int(lengths.max()), 1)]  # (B, T): drop all-padding steps
        seq = self.embed(batch.hist_item.gather(1, order), batch.hist_category.gather(1, order))
        mask = steps_mask(lengths, order.shape[1])  # (B, T)
        states = run_forward(self.extractor, seq, lengths)  # (B, T, D)
        scores = (states * self.bilinear(target).unsqueeze(1)).sum(-1)  # (B, T)
        att = masked_softmax(scores, mask)  # (B, T)
        interest = self.evolution(states, att, mask)  # (B, D)
        return ModelOutput(
            logits=self.predict(target, [interest], batch),
            attention=scatter_steps(att, order, batch.hist_mask.shape[1]),
            aux_loss=self.aux_loss(states, seq, mask) if self.training else None,
        )

    def aux_loss(self, states: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-behaviour loss: h_t vs e_{t+1} (label 1) and vs a shuffled-row e_{t+1} (label 0)."""
        perm = torch.randperm(seq.shape[0], device=seq.device)
        h, pos, neg = states[:, :-1], seq[:, 1:], seq[perm, 1:]  # (B, T-1, D) each
        valid = (mask[:, 1:] & mask[perm, 1:]).float()  # (B, T-1)
        pos_logit = self.aux_net(torch.cat([h, pos], dim=-1)).squeeze(-1)
        neg_logit = self.aux_net(torch.cat([h, neg], dim=-1)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(
            pos_logit, torch.ones_like(pos_logit), reduction="none"
        ) + F.binary_cross_entropy_with_logits(
            neg_logit, torch.zeros_like(neg_logit), reduction="none"
        )
        mean = (loss * valid).sum() / valid.sum().clamp(min=1)
        return self.config.aux_loss_weight * mean
