"""Synthetic batches for tests (models, trainer, scorer): shapes and conventions of ``Batch``.

>>> cfg = ModelConfig(n_items=100, n_categories=10, dim=4, dense_features=2)
>>> b = random_batch(cfg, batch_size=4, seq_len=7, n_clusters=3, seed=1)
>>> b.hist_item.shape, b.hist_dense.shape, b.cluster_size.shape
(torch.Size([4, 7]), torch.Size([4, 7, 2]), torch.Size([4, 3]))
>>> padded = pad_left(b, 2)
>>> padded.hist_item.shape, bool(padded.hist_mask[:, :2].any())
(torch.Size([4, 9]), False)
>>> shared = share_history(b)
>>> shared.hist_item.stride(0), torch.equal(shared.hist_item[3], b.hist_item[0])
(0, True)
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from models.base import ModelConfig
from models.batch import SEQUENCE_PREFIXES, Batch


def _right_aligned(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) lengths → (B, length) mask, True on the last ``lengths`` positions."""
    return torch.arange(length) >= (length - lengths).unsqueeze(1)


def _sessions(mask: torch.Tensor, p_break: float, g: torch.Generator) -> torch.Tensor:
    """Session index per behaviour: 0 at the oldest real one, +1 at random breaks."""
    prev_real = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    breaks = (torch.rand(mask.shape, generator=g) < p_break) & mask & prev_real
    return breaks.long().cumsum(1) * mask


def random_batch(
    config: ModelConfig,
    batch_size: int = 8,
    seq_len: int | None = None,
    n_clusters: int = 8,
    seed: int = 0,
    *,
    min_len: int = 0,
    max_len: int | None = None,
    session_break: float = 0.3,
    device: torch.device | str = "cpu",
) -> Batch:
    """A random, valid batch: right-aligned histories of lengths in [min_len, max_len].

    ``seq_len`` defaults to ``config.seq_len``, ``max_len`` to ``seq_len``; cluster sequences get
    lengths in the same range, capped at ``n_clusters``. Same arguments → same batch.
    """
    g = torch.Generator().manual_seed(seed)
    b, length = batch_size, seq_len or config.seq_len
    hi = length if max_len is None else max_len

    def ints(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=g)

    mask = _right_aligned(ints(min_len, hi + 1, b), length)
    c_lens = ints(min(min_len, n_clusters), min(hi, n_clusters) + 1, b)
    c_mask = _right_aligned(c_lens, n_clusters)
    f = config.dense_features
    batch = Batch(
        target_item=ints(1, config.n_items, b),
        target_category=ints(1, config.n_categories, b),
        hist_item=ints(1, config.n_items, b, length) * mask,
        hist_category=ints(1, config.n_categories, b, length) * mask,
        hist_mask=mask,
        hist_session=_sessions(mask, session_break, g),
        hist_age=(length - 1 - torch.arange(length)).expand(b, length) * mask,
        hist_dense=torch.randn(b, length, f, generator=g) * mask.unsqueeze(-1),
        cluster_item=ints(1, config.n_items, b, n_clusters) * c_mask,
        cluster_category=ints(1, config.n_categories, b, n_clusters) * c_mask,
        cluster_size=ints(1, 21, b, n_clusters).float() * c_mask,
        cluster_mask=c_mask,
        cluster_dense=torch.randn(b, n_clusters, f, generator=g) * c_mask.unsqueeze(-1),
        target_dense=torch.randn(b, f, generator=g),
        label=ints(0, 2, b).float(),
        user=torch.arange(b),
    )
    return batch.to(device)


def pad_left(batch: Batch, extra: int, clusters: bool = True) -> Batch:
    """The same batch with ``extra`` more padding positions on the left of every sequence."""

    def pad(x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], extra, *x.shape[2:])
        return torch.cat([x.new_zeros(shape), x], dim=1)

    prefixes = SEQUENCE_PREFIXES if clusters else ("hist_",)
    changes = {
        name: pad(value)
        for name, value in ((f.name, getattr(batch, f.name)) for f in fields(batch))
        if name.startswith(prefixes) and isinstance(value, torch.Tensor)
    }
    return replace(batch, **changes)


def share_history(batch: Batch, copy: bool = False) -> Batch:
    """Every row gets row 0's sequences (the scorer's "one user, many candidates" batch).

    By default a broadcast view (stride 0, no copy), which models exploit to do the
    target-independent work once; ``copy=True`` gives the same values in ordinary memory.
    """

    shared = batch.expand_history(batch.size)
    if not copy:
        return shared
    changes = {
        f.name: getattr(shared, f.name).contiguous()
        for f in fields(shared)
        if f.name.startswith(SEQUENCE_PREFIXES)
    }
    return replace(shared, **changes)
