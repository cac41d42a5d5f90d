"""Data-parallel online training with torch.distributed (torchrun; gloo on CPU, NCCL on GPU).

The trainer talks to its peers only through a :class:`Comm`: :class:`LocalComm` for one process
(every call a no-op), :class:`TorchComm` for ``WORLD_SIZE`` > 1. Per step, every rank:

1. polls its own partitions of ``samples`` (p % world_size == rank; no consumer group);
2. :meth:`Comm.agree`: one all-reduce of (rows, stop, snapshot due, idle) so that all ranks take
   the same steps, stop together and snapshot together, also when some have no data;
3. :meth:`Comm.gather_ids`: every rank observes the ids of *all* ranks' batches in rank order, so
   the id maps (raw id → row) stay identical everywhere;
4. :meth:`Comm.learn`: forward/backward on the local rows, then the gradients are all-reduced
   before the optimizers step. Dense gradients go in one flat all-reduce; sparse embedding
   gradients (``nn.Embedding(sparse=True)``, which DDP and NCCL do not reduce) are all-gathered as
   (rows, values) pairs, so the traffic is O(rows touched), never O(table). Each rank's gradient
   is weighted by its row count: the result is the gradient of the mean loss over the global
   batch, whatever the split. Parameters no rank touched keep ``grad=None`` (Adam skips them as
   in one process).

Rank 0 writes snapshots; before each one the ranks average their BatchNorm statistics, gather
their offsets and metrics, sum their attention histograms, and check that their weights are
bit-identical (a diverged rank is an error, not a silent drift).

>>> LocalComm().agree(rows=3, stop=False, due=True, idle=False)
Agreement(rows=3, stop=False, due=True, idle=False)
>>> assigned_partitions([0, 1, 2, 3, 4], rank=1, world_size=2)
[1, 3]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from models.base import CTRModel
from models.batch import Batch
from serving.features import RawIds
from trainer.loop import Learner


@dataclass(frozen=True)
class Agreement:
    rows: int  # target rows over all ranks this step
    stop: bool  # some rank was asked to stop
    due: bool  # a snapshot is due (rank 0's clock)
    idle: bool  # rank 0 saw no data for the idle timeout


def assigned_partitions(partitions: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The partitions rank ``rank`` consumes: p % world_size == rank."""
    return [p for p in sorted(partitions) if p % world_size == rank]


class Comm(Protocol):
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...
    def agree(self, rows: int, stop: bool, due: bool, idle: bool) -> Agreement: ...
    def gather_ids(self, ids: RawIds) -> RawIds: ...
    def learn(self, learner: Learner, batch: Batch | None) -> float | None: ...
    def broadcast_model(self, model: CTRModel) -> None: ...
    def before_snapshot(self, model: CTRModel) -> None: ...
    def gather_offsets(self, offsets: dict[int, int]) -> dict[int, int]: ...
    def sum_counts(self, counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]: ...
    def gather_floats(self, values: Sequence[float]) -> list[list[float]]: ...
    def close(self) -> None: ...


class LocalComm:
    """One process: nothing to agree on, gather or reduce."""

    rank, world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return True

    def agree(self, rows: int, stop: bool, due: bool, idle: bool) -> Agreement:
        return Agreement(rows, stop, due, idle)

    def gather_ids(self, ids: RawIds) -> RawIds:
        return ids

    def learn(self, learner: Learner, batch: Batch | None) -> float | None:
        return None if batch is None else learner.learn_many(batch)

    def broadcast_model(self, model: CTRModel) -> None:
        return None

    def before_snapshot(self, model: CTRModel) -> None:
        return None

    def gather_offsets(self, offsets: dict[int, int]) -> dict[int, int]:
        return dict(offsets)

    def sum_counts(self, counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return counts

    def gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        return [list(values)]

    def close(self) -> None:
        return None


class TorchComm:
    """``torch.distributed`` over an initialised default process group."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        nccl = dist.get_backend() == "nccl"
        self.device = device if nccl else torch.device("cpu")  # where collectives run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, rows: int, stop: bool, due: bool, idle: bool) -> Agreement:
        mine = [rows, int(stop), int(due and self.is_main), int(idle and self.is_main)]
        t = torch.tensor(mine, dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        total = t.tolist()
        return Agreement(int(total[0]), total[1] > 0, total[2] > 0, total[3] > 0)

    def gather_ids(self, ids: RawIds) -> RawIds:
        parts = [torch.from_numpy(ids.items), torch.from_numpy(ids.categories)]
        per_rank = self.all_gather_rows(parts)
        items = torch.cat([r[0] for r in per_rank]).cpu().numpy()
        cats = torch.cat([r[1] for r in per_rank]).cpu().numpy()
        return RawIds(items, cats)

    def learn(self, learner: Learner, batch: Batch | None) -> float | None:
        """One synchronised step; ``batch=None`` when this rank has no rows this step."""
        learner.model.train()
        for opt in learner.optimizers:
            opt.zero_grad(set_to_none=True)
        loss = None
        if batch is not None:
            loss = learner.loss(batch.to(learner.device, non_blocking=True))
            loss.backward()
        self.sync_gradients(learner.model, 0 if batch is None else batch.size)
        learner.step_optimizers()
        learner.steps += 1
        return None if loss is None else float(loss.detach())

    def sync_gradients(self, model: CTRModel, n_local: int) -> None:
        """Replace every rank's gradients by the row-weighted mean over ranks."""
        params = list(model.parameters())
        sparse_ids = {id(p) for p in model.sparse_parameters()}
        flags = [int(p.grad is not None) for p in params]
        t = torch.tensor([*flags, n_local], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        counts = t.tolist()
        n_total = counts[-1]
        live = [p for p, c in zip(params, counts[:-1], strict=False) if c > 0]
        self._reduce_dense([p for p in live if id(p) not in sparse_ids], n_local, n_total)
        for p in live:
            if id(p) in sparse_ids:
                p.grad = self._reduce_sparse(p, n_local, n_total)

    def _reduce_dense(self, params: list[torch.nn.Parameter], n_local: int, n_total: int) -> None:
        if not params:
            return
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device) * n_local
        dist.all_reduce(flat)
        flat /= n_total
        for p, chunk in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = chunk.view_as(p).to(p.device)

    def _reduce_sparse(self, p: torch.nn.Parameter, n_local: int, n_total: int) -> torch.Tensor:
        if p.grad is None:
            rows = torch.zeros(0, dtype=torch.int64)
            values = torch.zeros(0, *p.shape[1:], dtype=p.dtype)
        else:
            g = p.grad.coalesce()
            rows, values = g.indices()[0], g.values() * n_local
        per_rank = self.all_gather_rows([rows, values])
        all_rows = torch.cat([r[0] for r in per_rank]).to(p.device)
        all_values = torch.cat([r[1] for r in per_rank]).to(p.device) / n_total
        merged = torch.sparse_coo_tensor(
            all_rows.unsqueeze(0), all_values, p.shape, check_invariants=True
        )
        return merged.coalesce()

    def all_gather_rows(self, tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """All-gather tensors whose first dimension varies by rank (the same n for every tensor
        of one rank): one gather of the sizes, one padded gather per tensor."""
        n = torch.tensor([tensors[0].shape[0]], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)
        out: list[list[torch.Tensor]] = [[] for _ in range(self.world_size)]
        for t in tensors:
            padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=self.device)
            padded[: t.shape[0]] = t.to(self.device)
            slots = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(slots, padded)
            for r, (slot, count) in enumerate(zip(slots, counts, strict=True)):
                out[r].append(slot[:count])
        return out

    def broadcast_model(self, model: CTRModel) -> None:
        """Rank 0's weights and buffers everywhere (fresh start or restored snapshot)."""
        for t in model.state_dict().values():
            buf = t.detach().to(self.device)
            dist.broadcast(buf, src=0)
            t.copy_(buf.to(t.device))

    def before_snapshot(self, model: CTRModel) -> None:
        """Average floating buffers (BatchNorm statistics); refuse diverged weights."""
        for b in model.buffers():
            if b.is_floating_point():
                x = b.detach().to(self.device).clone()
                dist.all_reduce(x)
                b.copy_((x / self.world_size).to(b.device))
        self._check_in_sync(model)

    def _check_in_sync(self, model: CTRModel) -> None:
        with torch.no_grad():
            mine = torch.stack([p.double().sum() for p in model.parameters()]).to(self.device)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        if not all(torch.equal(every[0], other) for other in every[1:]):
            raise RuntimeError("ranks diverged: model weights differ between ranks")

    def gather_offsets(self, offsets: dict[int, int]) -> dict[int, int]:
        """The union of every rank's offsets (the highest per partition)."""
        keys = torch.tensor(sorted(offsets), dtype=torch.int64)
        vals = torch.tensor([offsets[k] for k in sorted(offsets)], dtype=torch.int64)
        merged: dict[int, int] = {}
        for part, off in self.all_gather_rows([keys, vals]):
            for p, o in zip(part.tolist(), off.tolist(), strict=True):
                merged[p] = max(o, merged.get(p, o))
        return merged

    def sum_counts(self, counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        t = torch.from_numpy(np.ascontiguousarray(counts)).to(self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        t = torch.tensor([list(values)], dtype=torch.float64)
        return [r[0].reshape(-1).tolist() for r in self.all_gather_rows([t])]

    def close(self) -> None:
        """Leave together: a rank that tears gloo down while a peer still talks aborts it."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_comm(device: torch.device) -> tuple[Comm, torch.device]:
    """A :class:`TorchComm` under ``torchrun`` (``WORLD_SIZE`` > 1), else :class:`LocalComm`.

    Returns the communicator and this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    if world_size_from_env() <= 1:
        return LocalComm(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return TorchComm(device), device
