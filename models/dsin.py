"""DSIN (Feng et al., IJCAI 2019): self-attention within sessions, Bi-LSTM across them.

1. :func:`session_slots` puts the behaviours of the ``max_sessions`` most recent sessions (by
   ``hist_session``) into an (S, T) grid, keeping the ``session_len`` most recent behaviours of
   each session; sessions and behaviours are right-aligned (most recent last).
2. Bias encoding (session + position + unit biases) is added, then multi-head self-attention within
   each session (residual + LayerNorm) and a masked mean give one interest I_k per session. The
   paper's extractor also has a feed-forward sublayer; with it AUC did not change on either log
   (seeds 0–2, trainer/RESULTS-offline.md) and training took 1.7 times as long, so it is left out.
3. A Bi-LSTM runs over the non-empty sessions (oldest first); H_k = forward + backward state.
4. Target attention (bilinear, softmax over sessions) over I_k and over H_k; head input
   ``[target, Σ a_k I_k, Σ b_k H_k]``, plus ``target ⊙`` each of the two (``cross_features``).
   The bilinear maps W start as the identity, so a_k starts as softmax(I_k · target), the dot
   product TWIN and DARE attend with: a session holding the target's item or category is weighted
   up from the first step, where PyTorch's default random W weighs sessions arbitrarily and one
   epoch on Taobao (150 steps) does not undo that. 5-seed test AUC, random W → W = I: Taobao
   0.7744 → 0.7878, MovieLens 0.6232 → 0.6217 (trainer/RESULTS-offline.md, round 4).

Caps: 10 sessions x 20 behaviours, a grid of as many slots as the 200-behaviour history the other
models read (the public code's 5 x 10 kept 27% of the Taobao history and 22% of MovieLens').

``ModelOutput.attention`` spreads a_k evenly over the behaviours kept for session k, so it is a
(B, L) distribution over the recent sequence like the other models' (zero on dropped behaviours).

>>> from models.testing import random_batch
>>> cfg = ModelConfig(n_items=50, n_categories=5, dim=4, seq_len=8, max_sessions=3, session_len=2)
>>> DSIN(cfg).eval()(random_batch(cfg, batch_size=3)).logits.shape
torch.Size([3])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.layers import (
    gather_steps,
    is_shared,
    left_align,
    masked_mean,
    masked_softmax,
    run_packed,
)


def session_slots(
    session: torch.Tensor, mask: torch.Tensor, n_sessions: int, session_len: int
) -> torch.Tensor:
    """(B, L) session index and mask → (B, L) slot in the flattened (S, T) grid, or -1 if dropped.

    >>> s = torch.tensor([[0, 0, 1, 1, 1, 2]])
    >>> session_slots(s, torch.ones_like(s, dtype=torch.bool), n_sessions=2, session_len=2).tolist()
    [[-1, -1, -1, 0, 1, 3]]
    """
    sess = session.masked_fill(~mask, -1)
    rel = sess.max(dim=1, keepdim=True).values - sess  # (B, L) 0 = latest session
    in_window = mask & (rel < n_sessions)
    rel = rel.clamp(0, n_sessions - 1)
    member = F.one_hot(rel, n_sessions) * in_window.unsqueeze(-1)  # (B, L, S)
    from_end = member.flip(1).cumsum(1).flip(1)  # (B, L, S) members at or after each step
    rank = from_end.gather(2, rel.unsqueeze(-1)).squeeze(-1) - 1  # (B, L) 0 = last of session
    slot = (n_sessions - 1 - rel) * session_len + (session_len - 1 - rank)
    return torch.where(in_window & (rank < session_len), slot, -1)


class DSIN(CTRModel):
    name = "dsin"
    encoder = ("session_bias", "position_bias", "unit_bias", "self_attn", "norm", "lstm")

    def __init__(self, config: ModelConfig) -> None:
        d, s, t = config.token_dim, config.max_sessions, config.session_len
        super().__init__(config, n_features=2 * d * (1 + config.cross_features))
        self.session_bias = nn.Parameter(torch.zeros(s, 1, 1))  # bias encoding w^K
        self.position_bias = nn.Parameter(torch.zeros(1, t, 1))  # w^T
        self.unit_bias = nn.Parameter(torch.zeros(1, 1, d))  # w^C
        self.self_attn = nn.MultiheadAttention(
            d, config.n_heads, dropout=config.dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(d)
        self.lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True)
        self.att_interest = nn.Linear(d, d, bias=False)  # bilinear target attention over I_k
        self.att_evolved = nn.Linear(d, d, bias=False)  # ... and over H_k
        for bilinear in (self.att_interest, self.att_evolved):
            nn.init.eye_(bilinear.weight)  # start as the dot product key · target

    def forward(self, batch: Batch) -> ModelOutput:
        target = self.embed_target(batch)  # (B, D)
        slot, grid_mask, interests, evolved = self.user_side(batch)
        sess_mask = grid_mask.any(dim=-1)  # (B, S)
        a = self.target_attention(self.att_interest, interests, target, sess_mask)  # (B, S)
        b = self.target_attention(self.att_evolved, evolved, target, sess_mask)  # (B, S)
        u_i = (a.unsqueeze(-1) * interests).sum(1)  # (B, D)
        u_h = (b.unsqueeze(-1) * evolved).sum(1)  # (B, D)
        return ModelOutput(
            logits=self.predict(target, self.interests(target, [u_i, u_h]), batch),
            attention=self.spread(a, slot, grid_mask),
        )

    def user_side(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Target-independent part, once per user when the batch shares one history (scoring)."""
        hist = (batch.hist_item, batch.hist_category, batch.hist_session, batch.hist_mask)
        if not all(is_shared(x) for x in hist):
            return self.sessions(*hist)
        one = self.sessions(*(x[:1] for x in hist))
        return tuple(x.expand(batch.size, *x.shape[1:]) for x in one)

    def sessions(
        self,
        items: torch.Tensor,
        categories: torch.Tensor,
        session: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """→ slots (B, L), grid mask (B, S, T), interests I and evolved H (B, S, D) each."""
        cfg = self.config
        slot = session_slots(session, mask, cfg.max_sessions, cfg.session_len)  # (B, L)
        grid, grid_mask = self.to_grid(self.embed(items, categories), slot)  # (B, S, T, D)
        interests = self.extract(grid, grid_mask)  # (B, S, D)
        evolved = self.across(interests, grid_mask.any(dim=-1))  # (B, S, D)
        return slot, grid_mask, interests, evolved

    def to_grid(
        self, tokens: torch.Tensor, slot: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) tokens, (B, L) slots → (B, S, T, D) session grid and its (B, S, T) mask."""
        s, t = self.config.max_sessions, self.config.session_len
        b, _, d = tokens.shape
        index = torch.where(slot >= 0, slot, s * t)  # dropped behaviours go to a spare slot
        grid = tokens.new_zeros(b, s * t + 1, d).scatter(
            1, index.unsqueeze(-1).expand_as(tokens), tokens
        )
        kept = torch.zeros(b, s * t + 1, dtype=torch.bool, device=slot.device)
        kept = kept.scatter(1, index, slot >= 0)
        return grid[:, :-1].reshape(b, s, t, d), kept[:, :-1].reshape(b, s, t)

    def extract(self, grid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Self-attention within each session, then masked mean → (B, S, D) session interests."""
        b, s, t, d = grid.shape
        x = (grid + self.session_bias + self.position_bias + self.unit_bias).reshape(b * s, t, d)
        m = mask.reshape(b * s, t)
        pad = ~m & m.any(dim=1, keepdim=True)  # empty sessions attend to all (masked out later)
        y, _ = self.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)
        y = self.norm(x + y)  # (B·S, T, D)
        return masked_mean(y, m).view(b, s, d)

    def across(self, interests: torch.Tensor, sess_mask: torch.Tensor) -> torch.Tensor:
        """Bi-LSTM over the non-empty sessions → (B, S, D), H_k = forward + backward state."""
        order, lengths = left_align(sess_mask)
        out = run_packed(self.lstm, gather_steps(interests, order), lengths)  # (B, S, 2D)
        fwd, bwd = out.chunk(2, dim=-1)
        summed = fwd + bwd  # (B, S, D), left-aligned
        return torch.zeros_like(summed).scatter(1, order.unsqueeze(-1).expand_as(summed), summed)

    @staticmethod
    def target_attention(
        bilinear: nn.Linear, keys: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """softmax_k(key_k · W target) over the non-empty sessions → (B, S)."""
        scores = (keys * bilinear(target).unsqueeze(1)).sum(-1)
        return masked_softmax(scores, mask)

    def spread(self, a: torch.Tensor, slot: torch.Tensor, grid_mask: torch.Tensor) -> torch.Tensor:
        """Session weights (B, S) → (B, L) behaviour weights, a_k split evenly in session k."""
        t = self.config.session_len
        per_behaviour = a / grid_mask.sum(-1).clamp(min=1)  # (B, S)
        session = torch.where(slot >= 0, slot // t, 0)  # (B, L)
        return per_behaviour.gather(1, session) * (slot >= 0)
