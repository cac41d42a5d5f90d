"""Small sequence helpers shared by the models: masking, alignment, batched gather/scatter.

Sequences arrive right-aligned (padding on the left). Recurrent layers need the real steps first,
so :func:`left_align` gives the permutation that moves them there and :func:`scatter_steps` maps
per-step values back to the original positions.

>>> mask = torch.tensor([[False, True, True], [False, False, False]])
>>> masked_softmax(torch.zeros(2, 3), mask)
tensor([[0.0000, 0.5000, 0.5000],
        [0.0000, 0.0000, 0.0000]])
>>> order, lengths = left_align(mask)
>>> order.tolist(), lengths.tolist()
([[1, 2, 0], [0, 1, 2]], [2, 0])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where ``mask`` is True; all-zero where a row has none (no NaN)."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, L) → (B, D) mean over the real steps; zeros for an empty row."""
    total = (x * mask.unsqueeze(-1)).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1)


def left_align(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) mask → (order (B, L), lengths (B,)): ``x.gather(1, order)`` puts real steps first,
    in their original order."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order, mask.sum(dim=1)


def gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) gathered at (B, K) step indices → (B, K, ...)."""
    shaped = index.reshape(*index.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, shaped.expand(*index.shape, *x.shape[2:]))


def scatter_steps(values: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """(B, K) values at (B, K) distinct step indices → (B, length), zero elsewhere."""
    out = values.new_zeros(values.shape[0], length)
    return out.scatter(1, index, values)


def steps_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) lengths → (B, length) bool, True on the first ``lengths`` steps (left-aligned)."""
    return torch.arange(length, device=lengths.device) < lengths.unsqueeze(1)


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run a batch-first RNN over left-aligned (B, T, D) steps → (B, T, H), zero past each length.

    Packing keeps padding out of the recurrence; empty rows run one (zero) step whose output is
    then masked away.
    """
    packed = pack_padded_sequence(
        x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
    )
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out * steps_mask(lengths, x.shape[1]).unsqueeze(-1)
