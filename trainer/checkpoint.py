"""Checkpoints written on another thread straight from live memory, copy-on-write by rows, so
the training loop pauses only to copy the small tensors and the id maps.

At the cut (training thread) the dense tensors (everything but the embedding tables and their Adam
moments), the optimizer scalars and the id maps are copied. The tables and their moments are not:
a writer thread streams them to disk chunk by chunk (:class:`serving.snapshot.SafetensorsWriter`).
Before an optimizer step or a fresh-row reset changes rows of a table (``Learner.on_rows``), those
rows of the table and of its moments that the writer has not copied yet are saved once, as they
were at the cut; the writer puts them back into its chunk. The files hold exactly the state at the
cut (the trainer resumes from them exactly); the memory it costs is the rows changed meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.base import CTRModel
from serving.features import FeatureMapper
from serving.manifest import IDMAPS_FILE, MODEL_FILE, OPTIMIZER_FILE
from serving.signing import Signer
from serving.snapshot import (
    FileWriter,
    SafetensorsWriter,
    SnapshotContent,
    WrittenSnapshot,
    write_files,
)

log = logging.getLogger("twinstream.trainer")
CHUNK_BYTES = 16 << 20


@dataclass
class _LiveTensor:
    """A table (or one of its moments) being written from live memory."""

    tensor: torch.Tensor
    chunk_rows: int
    source: int  # id() of the live tensor (parameter or moment) it writes
    done: int = 0  # rows [0, done) already copied by the writer
    saved: torch.Tensor = field(init=False)  # rows saved as they were at the cut
    images: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    saved_rows: int = 0

    def __post_init__(self) -> None:
        self.saved = torch.zeros(self.tensor.shape[0], dtype=torch.bool, device=self.tensor.device)


class RowCopyOnWrite:
    """The rows of live tables a checkpoint has not written yet, saved before they change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._by_param: dict[int, list[_LiveTensor]] = {}

    def track(self, param: torch.Tensor, tensors: list[torch.Tensor]) -> list[_LiveTensor]:
        lives = []
        for t in tensors:
            row_bytes = max(1, t[0].numel() * t.element_size()) if t.shape[0] else 1
            lives.append(_LiveTensor(t.detach(), max(1, CHUNK_BYTES // row_bytes), id(t)))
        self._by_param[id(param)] = lives
        return lives

    def tracked(self) -> list[_LiveTensor]:
        return [live for lives in self._by_param.values() for live in lives]

    @torch.no_grad()
    def before_change(self, param: torch.Tensor, rows: torch.Tensor) -> None:
        """``rows`` of ``param`` (and of its moments) are about to change."""
        lives = self._by_param.get(id(param))
        if not lives:
            return
        with self.lock:
            for live in lives:
                r = rows.to(live.tensor.device, torch.int64)
                r = torch.unique(r[r >= live.done])
                r = r[~live.saved[r]]
                if r.numel() == 0:
                    continue
                live.saved[r] = True
                live.saved_rows += r.numel()
                values = live.tensor.index_select(0, r)
                chunk = torch.div(r, live.chunk_rows, rounding_mode="floor")
                for c in torch.unique(chunk).tolist():
                    mine = chunk == c
                    live.images.setdefault(int(c), []).append((r[mine], values[mine]))

    def chunks(self, live: _LiveTensor) -> Iterator[torch.Tensor]:
        """The tensor as it was at the cut, chunk by chunk."""
        n = live.tensor.shape[0]
        for c, start in enumerate(range(0, n, live.chunk_rows)):
            end = min(n, start + live.chunk_rows)
            with self.lock:
                chunk = live.tensor[start:end].clone()
                live.done = end
                images = live.images.pop(c, [])
            for rows, values in images:
                chunk.index_copy_(0, rows - start, values)
            yield chunk
        if n == 0:
            yield live.tensor.clone()


@dataclass
class CheckpointRun:
    """One checkpoint being written: its thread, the pause it cost and its result."""

    version: int
    pause_s: float
    cow: RowCopyOnWrite
    thread: threading.Thread | None = None
    written: WrittenSnapshot | None = None
    error: BaseException | None = None
    write_s: float = 0.0

    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()


def start_checkpoint(
    directory: Path,
    version: int,
    content: SnapshotContent,
    signer: Signer,
    optimizers: list[torch.optim.Optimizer],
    on_done: Callable[[CheckpointRun], None] | None = None,
) -> CheckpointRun:
    """Cut checkpoint ``version`` now (training thread) and write it on a thread of its own;
    route the learner's ``on_rows`` to the returned run's ``cow.before_change`` until it is
    done."""
    began = time.perf_counter()
    created = time.time()
    cow = RowCopyOnWrite()
    writers = {
        MODEL_FILE: _model_writer(content.model, cow, optimizers),
        IDMAPS_FILE: _mapper_writer(content.mapper),
    }
    if optimizers:
        writers[OPTIMIZER_FILE] = _optimizer_writer(content.model, optimizers, cow)
    run = CheckpointRun(version, time.perf_counter() - began, cow)

    def write() -> None:
        started = time.perf_counter()
        try:
            run.written = write_files(directory, version, content, writers, signer, created)
        except BaseException as err:  # reported to the loop, which logs it
            run.error = err
        run.write_s = time.perf_counter() - started
        if on_done is not None:
            on_done(run)

    run.thread = threading.Thread(target=write, name=f"checkpoint-v{version}", daemon=True)
    run.thread.start()
    return run


def _tables(
    model: CTRModel, optimizers: list[torch.optim.Optimizer]
) -> dict[int, list[torch.Tensor]]:
    """Each sparse table (by id) with its moments of the same shape."""
    out: dict[int, list[torch.Tensor]] = {}
    for p in model.sparse_parameters():
        moments = [
            v
            for opt in optimizers
            for v in opt.state.get(p, {}).values()
            if isinstance(v, torch.Tensor) and v.shape == p.shape
        ]
        out[id(p)] = [p, *moments]
    return out


def _model_writer(
    model: CTRModel, cow: RowCopyOnWrite, optimizers: list[torch.optim.Optimizer]
) -> FileWriter:
    params = {id(p): p for p in model.sparse_parameters()}
    tracked = {}
    for pid, tensors in _tables(model, optimizers).items():
        for tensor, live in zip(tensors, cow.track(params[pid], tensors), strict=True):
            tracked[id(tensor)] = live
    entries = [
        _entry(name, tensor, cow, tracked.get(id(tensor)))
        for name, tensor in model.state_dict(keep_vars=True).items()
    ]
    return SafetensorsWriter(entries)


def _entry(
    name: str, tensor: torch.Tensor, cow: RowCopyOnWrite, live: _LiveTensor | None
) -> tuple[str, torch.dtype, tuple[int, ...], Callable[[], Iterator[torch.Tensor]]]:
    if live is not None:
        return (name, tensor.dtype, tuple(tensor.shape), lambda: cow.chunks(live))
    return _as_is(name, tensor.detach().clone())


def _mapper_writer(mapper: FeatureMapper) -> FileWriter:
    state = mapper.state_dict()  # copies
    return SafetensorsWriter([_as_is(k, v) for k, v in state.items()])


def _as_is(
    name: str, tensor: torch.Tensor
) -> tuple[str, torch.dtype, tuple[int, ...], Callable[[], Iterator[torch.Tensor]]]:
    return (name, tensor.dtype, tuple(tensor.shape), lambda: iter([tensor]))


def _optimizer_writer(
    model: CTRModel, optimizers: list[torch.optim.Optimizer], cow: RowCopyOnWrite
) -> FileWriter:
    """The layout of ``serving.snapshot._optimizer_bytes``: ``{optimizer}.{param}.{name}``."""
    live_by_tensor = {live.source: live for live in cow.tracked()}
    entries = []
    scalars: dict[str, float | int] = {}
    for i, opt in enumerate(optimizers):
        params = [p for group in opt.param_groups for p in group["params"]]
        for j, p in enumerate(params):
            for name, value in opt.state.get(p, {}).items():
                key = f"{i}.{j}.{name}"
                if isinstance(value, torch.Tensor):
                    entries.append(_entry(key, value, cow, live_by_tensor.get(id(value))))
                else:
                    scalars[key] = value
    meta = {"optimizers": str(len(optimizers)), "scalars": json.dumps(scalars)}
    return SafetensorsWriter(entries, meta)
