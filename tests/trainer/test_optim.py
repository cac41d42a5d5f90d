"""LazyAdam performs exactly torch.optim.SparseAdam's update, touching only the batch's rows."""

from __future__ import annotations

import os

import pytest
import torch

from models.embedding import EmbeddingTable
from trainer.optim import LazyAdam


def test_lazy_adam_matches_sparse_adam_over_steps_with_duplicate_rows() -> None:
    torch.manual_seed(0)
    a = torch.nn.Embedding(50, 6, sparse=True)
    b = torch.nn.Embedding(50, 6, sparse=True)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SparseAdam(a.parameters(), lr=0.05)
    opt_b = LazyAdam(b.parameters(), lr=0.05)
    for step in range(6):
        rows = torch.randint(0, 20 + step, (30,))  # repeats, and rows that appear late
        target = torch.randn(30, 6)
        for table, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            ((table(rows) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-6)


def test_lazy_adam_on_presorted_table_gradients_matches_sparse_adam() -> None:
    """EmbeddingTable hands LazyAdam sorted, unique rows (no coalesce): the same update."""
    torch.manual_seed(0)
    a = torch.nn.Embedding(300, 6, padding_idx=0, sparse=True)
    b = EmbeddingTable(300, 6, sparse=True)
    a.load_state_dict(b.embedding.state_dict())
    opt_a = torch.optim.SparseAdam(a.parameters(), lr=0.05)
    opt_b = LazyAdam(b.parameters(), lr=0.05)
    for step in range(6):
        rows = torch.randint(0, 20 + 50 * step, (4, 30))  # padding, repeats, a growing range
        target = torch.randn(4, 30, 6)
        for table, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            ((table(rows) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-6)


def test_lazy_adam_rejects_dense_gradients() -> None:
    table = torch.nn.Embedding(5, 2, sparse=False)
    table(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        LazyAdam(table.parameters()).step()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_the_moments_of_a_big_table_take_memory_only_for_the_rows_updated() -> None:
    """The first step of a 2M x 32 table (256 MiB) allocates its two moments (512 MiB) without
    writing them: only the pages of the 2,000 rows the batch touched become resident (4 KiB pages:
    numpy's zeros asked for huge pages and made 492 MiB resident)."""
    table = torch.nn.Embedding(2_000_000, 32, sparse=True)
    opt = LazyAdam(table.parameters(), lr=0.1)
    rows = torch.cat([torch.tensor([5]), torch.randperm(2_000_000)[:2_000]])  # scattered
    table(rows).sum().backward()
    before = _resident_bytes()
    opt.step()
    assert _resident_bytes() - before < 64 << 20
    state = opt.state[table.weight]
    assert state["exp_avg"].shape == table.weight.shape
    assert state["exp_avg"][5].abs().sum() > 0
    assert state["exp_avg"].abs().sum(1).count_nonzero() == rows.unique().numel()
