"""Publishing model deltas (:mod:`serving.delta`) from the online trainer, off its thread.

:class:`TouchedRows` hears of every row an optimizer step or a fresh-row reset is about to change
(``Learner.on_rows``). Every ``delta_every_s`` the training thread *cuts* a delta: the touched rows
of each table and their values (a copy of those rows only), a copy of the dense tensors, and a
reference to each id map's arrays (never changed in place). :class:`DeltaPublisher`'s thread then
diffs the id maps against the previous cut, serialises, signs and chunks the delta and sends it to
``model-updates``; the training thread only waits when two cuts are already queued.

After a failed send the chain is broken (workers would wait for a delta that never comes):
:attr:`DeltaPublisher.broken` tells the trainer to start a new chain with a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaProducer

from contracts.settings import Settings
from models.base import CTRModel
from serving.delta import Delta, DeltaHeader, IdMapChange, chunk_messages
from serving.features import FeatureMapper
from serving.signing import Signer
from trainer.checkpoint import CheckpointRun

log = logging.getLogger("twinstream.trainer")
PUBLISHED_FILE = "published.json"  # the newest version sent, beside the snapshots
QUEUED_CUTS = 2

Arrays = tuple[np.ndarray, np.ndarray]


class TouchedRows:
    """Rows of each sparse table changed since the last cut (by ``state_dict`` name)."""

    def __init__(self, model: CTRModel) -> None:
        sparse = {id(p) for p in model.sparse_parameters()}
        self.names = {id(p): n for n, p in model.named_parameters() if id(p) in sparse}
        self._rows: dict[str, list[torch.Tensor]] = {n: [] for n in self.names.values()}

    def __call__(self, table: torch.Tensor, rows: torch.Tensor) -> None:
        name = self.names.get(id(table))
        if name is not None:
            self._rows[name].append(rows.detach())

    def take(self) -> dict[str, torch.Tensor]:
        """The unique touched rows of each table since the last call."""
        out = {}
        for name, parts in self._rows.items():
            rows = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
            out[name] = torch.unique(rows.to(torch.int64))
            parts.clear()
        return out


@dataclass(frozen=True)
class Cut:
    """What the training thread copies for one delta."""

    header: DeltaHeader
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]]
    dense: dict[str, torch.Tensor]
    idmaps: dict[str, Arrays]  # the id maps' own (immutable) arrays at the cut
    pause_s: float  # how long the training thread spent cutting


def cut_delta(
    model: CTRModel, mapper: FeatureMapper, touched: TouchedRows, header: DeltaHeader
) -> Cut:
    began = time.perf_counter()
    state = model.state_dict()
    rows = {}
    for name, index in touched.take().items():
        live = state[name]
        rows[name] = (index.cpu(), live.detach().index_select(0, index.to(live.device)).cpu())
    dense = {
        k: v.detach().cpu().clone() for k, v in state.items() if k not in touched.names.values()
    }
    idmaps = {"item": mapper.items.assigned(), "category": mapper.categories.assigned()}
    return Cut(header, rows, dense, idmaps, time.perf_counter() - began)


def idmap_change(before: Arrays, after: Arrays) -> IdMapChange:
    """Ids given a (new) row between two states of an id map, and ids that lost theirs."""
    (k0, r0), (k1, r1) = before, after
    if k0 is k1 and r0 is r1:  # the map made no new arrays: nothing changed
        empty = np.zeros(0, np.int64)
        return IdMapChange(empty, empty, empty)
    pos = np.minimum(np.searchsorted(k0, k1), max(k0.size - 1, 0))
    same = (k0[pos] == k1) & (r0[pos] == r1) if k0.size else np.zeros(k1.size, bool)
    removed = np.setdiff1d(k0, k1, assume_unique=True)
    return IdMapChange(k1[~same].copy(), r1[~same].copy(), removed)


@dataclass
class DeltaStats:
    """What the publisher did (for the trainer's log and the freshness benchmark)."""

    sent: list[tuple[int, int, float, float]] = field(default_factory=list)
    # (version, bytes, cut created, sent) per delta
    failed: int = 0


class DeltaPublisher:
    """A thread that turns cuts into chunked, signed deltas on ``model-updates``."""

    def __init__(self, settings: Settings, snapshot_dir: Path, idmaps: dict[str, Arrays]):
        self.topic = settings.topics.model_updates
        self.signer = Signer.of(settings.model_hmac_key)
        self.chunk_bytes = settings.delta_chunk_bytes
        self.published_path = Path(snapshot_dir) / PUBLISHED_FILE
        self.producer = KafkaProducer(
            **settings.kafka_config(),
            acks="all",
            linger_ms=5,
            max_request_size=self.chunk_bytes + (64 << 10),
        )
        self.stats = DeltaStats()
        self.broken = False
        self.on_sent: Callable[[int, int, float], None] | None = None  # version, bytes, created
        self._idmaps = idmaps
        self._queue: queue.Queue[Cut | dict[str, Arrays] | None] = queue.Queue(QUEUED_CUTS)
        self._thread = threading.Thread(target=self._run, name="delta-publisher", daemon=True)
        self._thread.start()

    def restart_chain(self, idmaps: dict[str, Arrays]) -> None:
        """A checkpoint starts a new chain: the cuts after it diff their id maps against
        ``idmaps`` (queued behind the cuts before it)."""
        self._queue.put(idmaps)

    def submit(self, cut: Cut) -> None:
        self._queue.put(cut)

    def drain(self) -> None:
        """Wait until every submitted cut is sent (or failed)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        self.producer.close(timeout=10)

    def _run(self) -> None:
        while True:
            cut = self._queue.get()
            try:
                if cut is None:
                    return
                if isinstance(cut, dict):  # a new chain
                    self._idmaps, self.broken = cut, False
                else:
                    self._publish(cut)
            except Exception:  # the trainer goes on; workers wait for the next checkpoint
                log.exception("delta not published")
                self.broken = True
                self.stats.failed += 1
            finally:
                self._queue.task_done()

    def _publish(self, cut: Cut) -> None:
        if self.broken:
            return  # a chain with a hole: nothing after it can be applied
        changes = {n: idmap_change(self._idmaps[n], cut.idmaps[n]) for n in cut.idmaps}
        delta = Delta(cut.header, cut.rows, cut.dense, changes)
        messages = chunk_messages(delta, self.signer, self.chunk_bytes)
        key = cut.header.model.encode()
        # recorded before it is sent: a trainer restarted after a crash mid-send numbers after it
        write_published(self.published_path, cut.header.version)
        futures = [self.producer.send(self.topic, key=key, value=v, headers=h) for v, h in messages]
        for future in futures:
            future.get(30)
        self._idmaps = cut.idmaps
        size = sum(len(v) for v, _ in messages)
        self.stats.sent.append((cut.header.version, size, cut.header.created, time.time()))
        if self.on_sent is not None:
            self.on_sent(cut.header.version, size, cut.header.created)


class DeltaChain:
    """One run's chain of deltas: its publisher, the rows touched since the last cut, the
    checkpoint the chain started from (0: none yet; a chain starts with a checkpoint) and the
    checkpoint being written on its own thread (:mod:`trainer.checkpoint`)."""

    def __init__(self, publisher: DeltaPublisher, touched: TouchedRows, model_name: str):
        self.publisher, self.touched, self.model_name = publisher, touched, model_name
        self.checkpoint = 0
        self.pauses: list[float] = []  # seconds the training thread spent cutting each delta
        self.writing: CheckpointRun | None = None

    @property
    def live(self) -> bool:
        """Deltas can follow: a checkpoint started the chain and no send failed since."""
        return self.checkpoint > 0 and not self.publisher.broken

    def on_rows(self, table: torch.Tensor, rows: torch.Tensor) -> None:
        """``rows`` of ``table`` are about to change (``Learner.on_rows``)."""
        self.touched(table, rows)
        if self.writing is not None:
            self.writing.cow.before_change(table, rows)

    def cut(
        self, version: int, model: CTRModel, mapper: FeatureMapper, offsets: dict[int, int]
    ) -> None:
        """Delta ``version`` (on ``version - 1``, covering ``offsets``), sent by the publisher's
        thread."""
        header = DeltaHeader(
            version, version - 1, self.checkpoint, time.time(), self.model_name, dict(offsets)
        )
        cut = cut_delta(model, mapper, self.touched, header)
        self.pauses.append(cut.pause_s)
        self.publisher.submit(cut)
        rows = sum(r.numel() for r, _ in cut.rows.values())
        log.info("delta v%d: %d rows, training paused %.4f s", version, rows, cut.pause_s)

    def started(self, run: CheckpointRun, mapper: FeatureMapper, restart: bool) -> None:
        """Checkpoint ``run.version`` was cut; with ``restart`` it starts a new chain."""
        if restart:
            self.touched.take()  # the checkpoint holds them
            self.publisher.restart_chain(
                {"item": mapper.items.assigned(), "category": mapper.categories.assigned()}
            )
        self.checkpoint, self.writing = run.version, run

    def resume(self, checkpoint: int, mapper: FeatureMapper) -> None:
        """Chain on ``checkpoint``, which holds exactly the trainer's state (it resumed from it
        and nothing was published after it): no new checkpoint is needed to start."""
        self.touched.take()
        self.publisher.restart_chain(
            {"item": mapper.items.assigned(), "category": mapper.categories.assigned()}
        )
        self.checkpoint = checkpoint

    def busy(self) -> bool:
        return self.writing is not None and not self.writing.done()

    def finished(self, wait: bool = False) -> CheckpointRun | None:
        """The checkpoint run that ended since the last call (None while it is written); every
        delta up to its version has been sent by then (it may be announced)."""
        run = self.writing
        if run is None or (not wait and not run.done()):
            return None
        run.wait()
        self.writing = None
        self.publisher.drain()
        return run


def write_published(path: Path, version: int) -> None:
    """Record the newest version sent (atomically), so a restarted trainer numbers after it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"version": version}))
    os.replace(tmp, path)


def read_published(snapshot_dir: Path) -> int:
    """The newest version a previous run sent (0 when none or unreadable)."""
    try:
        version = json.loads((Path(snapshot_dir) / PUBLISHED_FILE).read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return version if isinstance(version, int) and version > 0 else 0
