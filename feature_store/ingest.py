"""The per-partition work of the ingest agent, without Kafka: records in, samples out, one batch.

The Faust agent owns one :class:`PartitionWorker` per assigned partition and, for each chunk of
``(offset, Event)`` records it takes from the stream (validated events only):

    result = worker.process(records)        # reads states, makes samples, applies events
    send result.samples to `samples`, result.rejected to `events-dlq` (reason `late`)
    worker.commit(result)                   # states + offset + pending impressions + sampler

Records at or below the partition's applied offset are skipped (a replay after a crash changes
nothing); the worker reads the stored offset once, when built, and advances it as it applies (it is
the partition's only writer from then on). A batch may be processed before the previous one is
committed (the ingest service overlaps the broker's acknowledgements with the next batch): the
states of batches processed and not yet committed are held in :attr:`PartitionWorker.applied`, read
before the cache and the store, and commits come in the order of processing. The negative sampler is
restored with the partition, before any event: its checkpoint and the deltas since
(:mod:`feature_store.sampler_journal`) are committed in each batch, so after a kill -9 it is the
sampler of the stored offset. If sending fails, drop the worker and build a new one from the store:
``process`` has already advanced the in-memory sampler and pending impressions. A timer calls
:meth:`tick` to close expired attribution windows (explicit mode).

>>> from feature_store.store import MemoryStore
>>> from contracts.schema import Event, EventType
>>> worker = PartitionWorker(MemoryStore(), partition=0)
>>> events = [(i, Event("u1", str(i % 3), EventType.CLICK, 1e9 + 60 * i, "9")) for i in range(5)]
>>> result = worker.process(events)
>>> worker.commit(result)
>>> len(result.samples), worker.store.last_offset(0), worker.process(events).skipped
(5, 4, 5)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts.schema import Event, InvalidEvent
from contracts.settings import Settings
from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ItemEmbedder
from feature_store.delayed_labels import PendingImpressions
from feature_store.sampler_journal import SamplerJournal
from feature_store.samples import BatchSamples, SampleBuilder, SampleConfig
from feature_store.state import Admission, LateEvent, StateConfig, UserState, maybe_seen
from feature_store.state_delta import Records, full_size
from feature_store.state_layout import Parts
from feature_store.state_writes import batch_state_writes
from feature_store.store import StateStore
from feature_store.two_means import warm_up


@dataclass(frozen=True)
class FeatureConfig:
    """Everything the feature store needs, in one place."""

    state: StateConfig = field(default_factory=StateConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    sampler_checkpoint_every: int = 100  # batches that observe items, per sampler checkpoint
    state_cache_bytes: int = 256 * 2**20  # states kept decoded between batches, per partition

    def __post_init__(self) -> None:
        if self.clusters.lifelong_cap != self.state.lifelong_cap:
            raise ValueError("clusters.lifelong_cap must equal state.lifelong_cap")

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureConfig:
        """The deployment's session gap, lateness, L, lifelong cap and raw-until length; other
        knobs default."""
        state = StateConfig(
            recent_length=settings.recent_length,
            lifelong_cap=settings.lifelong_cap,
            session_gap_s=settings.session_gap_s,
            allowed_lateness_s=settings.allowed_lateness_s,
        )
        return cls(
            state=state,
            clusters=ClusterConfig(
                lifelong_cap=settings.lifelong_cap, raw_until=settings.cluster_raw_until
            ),
            samples=SampleConfig(
                mode="explicit" if settings.sample_mode == "explicit" else "implicit",
                recent_length=settings.recent_length,
            ),
        )


MetaChanges = dict[str, bytes | None]  # metadata key -> new value, None: deleted


@dataclass
class BatchResult:
    """What one :meth:`PartitionWorker.process` call produced."""

    samples: list[bytes] = field(default_factory=list)
    rejected: list[tuple[int, InvalidEvent]] = field(default_factory=list)  # (offset, reason)
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0  # at or below the stored offset: already applied before a restart
    states: dict[str, UserState] = field(default_factory=dict)
    offset: int | None = None
    meta: MetaChanges = field(default_factory=dict)  # pending impressions, sampler
    parts: dict[str, Parts] = field(default_factory=dict)  # store writes of the changed states
    changelog: Records = field(default_factory=list)  # their deltas or checkpoints


class StateCache:
    """Committed states kept decoded between batches, least recently used out first, up to a
    budget in bytes. A batch takes its states out and gives them back once committed, so a
    batch that fails leaves nothing half-applied here: the next one reads the store."""

    def __init__(self, budget: int) -> None:
        self.budget, self.size = budget, 0
        self._states: OrderedDict[str, tuple[UserState, int]] = OrderedDict()

    def take(self, user: str) -> UserState | None:
        found = self._states.pop(user, None)
        if found is None:
            return None
        self.size -= found[1]
        return found[0]

    def items(self) -> list[tuple[str, UserState]]:
        """The decoded states, least recently used first (read by the clustering sweep)."""
        return [(user, state) for user, (state, _) in self._states.items()]

    def give(self, states: dict[str, UserState]) -> None:
        for user, state in states.items():
            self.take(user)
            size = full_size(state) + 8 * state.n_log  # and its item index
            self._states[user] = (state, size)
            self.size += size
        while self.size > self.budget and self._states:
            self.size -= self._states.popitem(last=False)[1][1]


class PartitionWorker:
    """State, samples and idempotent writes for one partition of ``events``."""

    def __init__(
        self,
        store: StateStore,
        partition: int,
        config: FeatureConfig | None = None,
        embedder: ItemEmbedder | None = None,
    ) -> None:
        self.store, self.partition = store, partition
        self.config = config or FeatureConfig()
        self.embedder = embedder
        warm_up()  # the compiled 2-means loaded now, not on some user's event
        self.cache = StateCache(self.config.state_cache_bytes)
        # user -> the last processed, uncommitted batch that holds its state (in its states)
        self.applied: dict[str, BatchResult] = {}
        self.last_offset = store.last_offset(partition)  # applied (stored, once committed)
        self.watermark: float | None = None
        self.sampler_journal = SamplerJournal(partition, self.config.sampler_checkpoint_every)
        sampler = self.sampler_journal.restore(store)
        pending = PendingImpressions(
            self.config.samples.attribution_window_s, prefix=f"pending/{partition}/"
        )
        pending.restore(value for _, value in store.meta_items(pending.prefix))
        self.builder = SampleBuilder(self.config.samples, self.config.state, sampler, pending)

    def process(self, records: Sequence[tuple[int, Event]]) -> BatchResult:
        """Apply a chunk of ``(offset, event)`` records in offset order (nothing is written)."""
        result = BatchResult()
        last = self.last_offset
        fresh = [(o, e) for o, e in records if last is None or o > last]
        result.skipped = len(records) - len(fresh)
        result.states = self._states(list(dict.fromkeys(e.user_id for _, e in fresh)))
        changed: dict[str, UserState] = {}
        samples = BatchSamples(self.builder)
        try:
            maybe = maybe_seen([e for _, e in fresh], result.states)
            for (offset, event), seen in zip(fresh, maybe, strict=True):
                state = result.states[event.user_id]
                if self._one(offset, event, state, result, samples, seen):
                    changed[event.user_id] = state
            result.samples = samples.finish()
        finally:
            samples.close()
        result.offset = max((o for o, _ in fresh), default=None)
        result.meta = self._meta_changes(result.offset)
        result.changelog, result.parts = batch_state_writes(changed)  # their next versions
        self.applied.update(dict.fromkeys(result.states, result))
        if result.offset is not None:
            self.last_offset = result.offset
        return result

    def _states(self, users: list[str]) -> dict[str, UserState]:
        """The users' states: applied by an uncommitted batch, else from the cache, else the
        store, else empty."""
        states = {u: held.states[u] for u in users if (held := self.applied.get(u)) is not None}
        states |= {u: s for u in users if u not in states and (s := self.cache.take(u)) is not None}
        missing = [u for u in users if u not in states]
        for user, state in zip(missing, self.store.get_many(missing), strict=True):
            states[user] = state or self._new_state()
        return {u: states[u] for u in users}

    def _new_state(self) -> UserState:
        """The state of a user the store has no head for: none of its parts is stored (a
        user's parts are written with its head), so its first write deletes nothing."""
        state = UserState.empty(self.config.state)
        state.changes.on_disk = False
        return state

    def _meta_changes(self, offset: int | None) -> MetaChanges:
        """Pending impressions written or closed since the last batch, and the sampler's
        observations in this batch (a delta, or every ``sampler_checkpoint_every``-th time a
        checkpoint): committed with the batch, they keep the stored sampler at its offset."""
        meta = self.builder.pending.drain_changes()
        return meta | self.sampler_journal.changes(self.builder.sampler, offset)

    def _one(
        self,
        offset: int,
        event: Event,
        state: UserState,
        result: BatchResult,
        samples: BatchSamples,
        maybe_seen: bool,
    ) -> bool:
        """Apply one event (its samples to ``samples``; ``maybe_seen``: its id may be in the
        state's dedupe ring); whether it changed the state."""
        try:
            verdict = state.check(event, self.config.state, maybe_seen=maybe_seen)
        except LateEvent as err:
            result.rejected.append((offset, err))
            return False
        if verdict is Admission.DUPLICATE:
            result.duplicates += 1
            return False
        samples.add(state, event)
        state.apply(event, self.config.state, checked=True)
        state.maybe_recluster(self.config.clusters, self.embedder)
        self.watermark = event.ts if self.watermark is None else max(self.watermark, event.ts)
        result.applied += 1
        return True

    def commit(self, result: BatchResult, extra_meta: MetaChanges | None = None) -> None:
        """Write the batch's changed states, offset and metadata (plus ``extra_meta``)
        atomically; the batch's states are kept decoded for the next batches (in the cache, but
        those a later uncommitted batch changed stay held until that one commits)."""
        meta = result.meta | (extra_meta or {})
        offsets = {} if result.offset is None else {self.partition: result.offset}
        self.store.write_batch(result.parts, offsets, meta)
        if result.offset is not None and (self.last_offset or -1) < result.offset:
            self.last_offset = result.offset  # set after processing (events routed elsewhere)
        held = {u: s for u, s in result.states.items() if self._release(u, result)}
        self.cache.give(held)

    def _release(self, user: str, result: BatchResult) -> bool:
        """Whether the user's state may go to the cache once ``result`` is committed (no
        later uncommitted batch holds it), and let go of it here."""
        held = self.applied.get(user)
        if held is not None and held is not result:
            return False
        self.applied.pop(user, None)
        return True

    def close_windows(self, now: float | None = None) -> tuple[list[bytes], MetaChanges]:
        """Close attribution windows that ended before ``now`` (default: the partition's
        watermark minus the allowed lateness): the label-0 samples and the metadata changes
        to persist (:meth:`commit_meta`) once they are safe elsewhere."""
        if now is None:
            if self.watermark is None:
                return [], {}
            now = self.watermark - self.config.state.allowed_lateness_s
        return self.builder.close_expired(now), self.builder.pending.drain_changes()

    def commit_meta(self, meta: MetaChanges) -> None:
        if meta:
            self.store.write_batch({}, {}, meta)

    def tick(self, now: float | None = None) -> list[bytes]:
        """:meth:`close_windows` and :meth:`commit_meta` in one (no changelog in between)."""
        samples, meta = self.close_windows(now)
        self.commit_meta(meta)
        return samples
