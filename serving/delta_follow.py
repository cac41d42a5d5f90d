"""A worker following the trainer's delta chain (:mod:`serving.delta`) on ``model-updates``.

Each delta is applied in place on exactly the version it names (``prev``): checked and prepared
beside the serving model (id maps rebuilt), then written while no request reads the tables, so a
request sees one version. With a twin (the default) the follower keeps a second copy of the
serving model's weights off duty (left-right): a delta is written into the twin, the twin and the
serving model trade places under the model holder's lock (a reference swap, microseconds), and the
same delta is then written into the model just retired, which no request reads any more
(:mod:`serving.twin`; after a checkpoint load the twin is copied on its own thread, deltas
meanwhile written in place and replayed into the copy). Without a
twin (half the memory) the rows are written into the serving model under the lock, which the
scorer holds while it reads the model: requests wait for the write (about 11 ms for 20k rows of
two 4M-row tables).
Decoding and preparing a delta (checks, id maps) is Python beside the requests' Python: it runs
with a limited share of the interpreter lock (:class:`serving.gil_share.GilShare`) while
requests are being scored, so they keep their speed (between requests nearly at full speed);
not while the follower is *behind* (more of ``model-updates`` waits to be read, or the delta
was made more than ``catch_up_after_s`` ago by the trainer's clock: a restart, a checkpoint load
replaying deltas, a big first delta), when freshness comes first.
A delta that arrives early (a gap: one before it was lost or refused) waits in a small buffer;
the watcher then loads the chain's checkpoint and replays what follows it
(:meth:`DeltaFollower.wants_checkpoint`). A refused delta is logged and counted like a refused
snapshot and never blocks a later one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import cast

from serving.delta import Delta, DeltaAssembler, apply_prepared, prepare
from serving.gil_share import GilShare
from serving.manifest import SnapshotError
from serving.metrics import ScoringMetrics
from serving.priority import full_priority
from serving.scorer import ModelHolder, ServingModel
from serving.signing import Signer
from serving.twin import TwinKeeper

log = logging.getLogger(__name__)
BUFFERED_DELTAS = 64


class DeltaFollower:
    def __init__(
        self,
        holder: ModelHolder,
        metrics: ScoringMetrics,
        signer: Signer,
        max_bytes: int,
        refuse: Callable[[str, object, object], None],
        twin: bool = True,
        gil_share: float = 1.0,
        catch_up_after_s: float = 2.0,
    ) -> None:
        self.holder, self.metrics, self.refuse = holder, metrics, refuse
        self.twins = TwinKeeper(twin)  # an off-duty copy of the weights to write deltas into
        self.assembler = DeltaAssembler(signer, max_bytes)
        # decoding and preparing spread out while requests are being scored
        self.gil = GilShare(gil_share, busy=holder.requests.__bool__)
        self.behind = False  # set by the reader: more deltas wait than it has read
        self.catch_up_after_s = catch_up_after_s  # an older delta is applied at full speed
        self._early: dict[int, Delta] = {}  # prev → delta, waiting for its predecessor
        self.applied = 0
        self.locked_s: list[float] = []  # how long each apply held the scorer off (recent ones)
        self.on_applied: Callable[[Delta, float], None] | None = None  # delta, apply seconds

    @property
    def version(self) -> int:
        model = self.holder.model
        return 0 if model is None else int(model.version)

    def chunk(self, value: bytes, mac: bytes | None) -> None:
        """One chunk from ``model-updates``: old versions skipped unread, others assembled."""
        try:
            head = DeltaAssembler.peek(value)
            if head["version"] <= self.version:
                return
            text = None if mac is None else mac.decode(errors="replace")
            with self.paced(head.get("created")):
                delta = self.assembler.add(value, text)
        except SnapshotError as err:
            self.refuse(err.reason, "delta chunk", err)
            return
        if delta is not None:
            self.offer(delta)

    def paced(self, created: object = None) -> AbstractContextManager[None]:
        """The GIL share limit for the follower's Python, lifted while it is behind or for a
        delta ``created`` (trainer's clock; unverified in a chunk's header: it only sets the
        pace) more than ``catch_up_after_s`` ago."""
        late = isinstance(created, (int, float)) and time.time() - created > self.catch_up_after_s
        return nullcontext() if self.behind or late else self.gil.limited()

    def offer(self, delta: Delta) -> None:
        """Apply ``delta`` if it follows the serving version, else keep it for later."""
        if delta.header.version <= self.version:
            return
        self._early[delta.header.prev] = delta
        if len(self._early) > BUFFERED_DELTAS:
            self._early.pop(min(self._early))
        self.catch_up()

    def catch_up(self) -> None:
        """Apply every buffered delta that chains on the serving version."""
        for prev in [p for p in self._early if p < self.version]:
            del self._early[prev]
        while (delta := self._early.pop(self.version, None)) is not None:
            if not self._apply(delta):
                return

    def wants_checkpoint(self) -> int | None:
        """The checkpoint to load when buffered deltas cannot chain on the serving version."""
        if not self._early or self.version in self._early:
            return None
        newest = max(self._early.values(), key=lambda d: d.header.version)
        return newest.header.checkpoint if newest.header.checkpoint > self.version else None

    def _apply(self, delta: Delta) -> bool:
        model = self.holder.model
        if model is None:
            return False
        began = time.perf_counter()
        twin = self.twins.for_delta(model)
        try:
            with self.paced(delta.header.created):
                prepared = prepare(model, delta)
        except SnapshotError as err:
            self.refuse(err.reason, f"delta v{delta.header.version}", err)
            return False
        if twin is not None:
            apply_prepared(twin, prepared)  # off duty: no request reads the twin
        with full_priority(), self.holder.lock:
            if model is not self.holder.model or model.version != delta.header.prev:
                self.twins.forget()  # a checkpoint was swapped in meanwhile
                return False
            locked = time.perf_counter()
            if twin is None:
                apply_prepared(model, prepared)
            else:
                self.holder.replace(model, twin)
            self.locked_s.append(time.perf_counter() - locked)
        if twin is None:
            self.twins.wrote_in_place(model, prepared)  # replayed into a copy under way
        else:  # the retired model catches up and becomes the next twin
            apply_prepared(model, prepared)
            self.twins.swapped(twin, model)
        self._applied(delta, time.perf_counter() - began)
        return True

    def twin_of(self, model: ServingModel) -> ServingModel | None:
        """The off-duty copy of ``model``'s weights (made now when there is none: a copy of
        every tensor, seconds at full size); None without twins."""
        return cast(ServingModel | None, self.twins.of(model))

    def _applied(self, delta: Delta, seconds: float) -> None:
        self.applied += 1
        del self.locked_s[:-1000]
        self.metrics.model_version.set(delta.header.version)
        self.metrics.model_created.set(delta.header.created)
        if self.on_applied is not None:
            self.on_applied(delta, seconds)
        log.info("applied delta v%d in %.3f s", delta.header.version, seconds)
