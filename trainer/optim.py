"""Lazy (row-wise sparse) Adam for embedding tables with sparse gradients.

The same update as :class:`torch.optim.SparseAdam` (moments and weights change only on the rows a
batch touched; bias correction by the parameter's step count), computed with fewer passes over the
touched rows: one gather of the two moments, in-place moment updates, one scatter back and one
``index_add_`` into the weights. ``torch.optim.SparseAdam`` makes separate masked copies and
sparse additions for each moment and for the weights.

>>> table = torch.nn.Embedding(10, 4, sparse=True)
>>> opt = LazyAdam(table.parameters(), lr=0.1)
>>> table(torch.tensor([1, 1, 3])).sum().backward()
>>> before = table.weight.detach().clone()
>>> opt.step()
>>> changed = (table.weight != before).any(1).nonzero().flatten().tolist()
>>> changed
[1, 3]
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterable
from typing import Any

import torch

UNTOUCHED_MIN_BYTES = 1 << 20  # smaller moments are plain zeros


class LazyAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, p.grad)

    def _update(self, p: torch.Tensor, group: dict[str, Any], grad: torch.Tensor) -> None:
        if not grad.is_sparse:
            raise ValueError("LazyAdam expects sparse gradients (nn.Embedding(sparse=True))")
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = untouched_zeros_like(p)
            state["exp_avg_sq"] = untouched_zeros_like(p)
        state["step"] += 1
        rows, g = coalesced_rows(grad)  # (n,), (n, D): duplicate rows summed
        if rows.numel() == 0:
            return
        m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        t = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])), alpha=-step_size)


def coalesced_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and value rows of a sparse (rows, D) gradient with duplicate rows summed.

    ``grad.coalesce()`` sorts the rows, unless the tensor is flagged coalesced. Autograd drops
    that flag when it stores a sparse gradient in ``.grad``, even when the rows are already sorted
    and unique (:func:`models.embedding.row_gradient` builds them so); a linear check then saves
    the sort.

    >>> rows = torch.tensor([[4, 1, 4]])
    >>> g = torch.sparse_coo_tensor(rows, torch.ones(3, 2), (6, 2), check_invariants=True)
    >>> rows, values = coalesced_rows(g)
    >>> rows.tolist(), values.tolist()
    ([1, 4], [[1.0, 1.0], [2.0, 2.0]])
    """
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
            grad = grad.coalesce()
        else:
            return rows, grad._values()
    return grad.indices()[0], grad.values()


def untouched_zeros_like(p: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``p`` whose memory the OS maps only when a row is first written (on the
    CPU, above ``UNTOUCHED_MIN_BYTES``: an anonymous ``mmap``, zero pages of 4 KiB). A sparse
    optimizer writes only the rows batches touch, so the moments of a 4M-row table cost nothing
    up front: ``torch.zeros_like`` writes every page (4 GiB for DARE's two 4M x 64 tables and
    their two moments: a resumed trainer's first step took 13 s in ``bench_freshness --items``),
    and numpy's ``calloc`` asks for huge pages, so 2,600 scattered rows fault in 1 GiB.

    >>> untouched_zeros_like(torch.ones(2, 3)).sum().item()
    0.0
    >>> big = untouched_zeros_like(torch.empty(1 << 20, 4))
    >>> big.shape, big.dtype, big.abs().sum().item()
    (torch.Size([1048576, 4]), torch.float32, 0.0)
    """
    nbytes = p.numel() * p.element_size()
    if p.device.type != "cpu" or nbytes < UNTOUCHED_MIN_BYTES:
        return torch.zeros_like(p)
    buffer = mmap.mmap(-1, nbytes)  # the tensor keeps it alive
    return torch.frombuffer(buffer, dtype=p.dtype).view(p.shape)
