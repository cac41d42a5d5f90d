"""A partition's negative sampler in the state store: a checkpoint and the deltas written since.

Every batch that observes items writes them as a *delta* (item and category of each click, 16
bytes) under ``sampler/<partition>/d/<the batch's last offset>``, in the same store batch as the
states and the offset (and so in the state changelog with them). Every ``checkpoint_every``-th
such batch writes the whole sampler instead (:meth:`FrequencySampler.encode`, in parts of at most
``part_bytes`` under ``sampler/<partition>/c/<n>``, so that each part fits one changelog message)
and deletes the deltas. The store therefore always holds the sampler as of its last committed
offset: :meth:`SamplerJournal.restore` decodes the checkpoint and replays the deltas in offset
order, and since the sampler's folds depend only on the sequence of observations, the result is
the sampler of an uninterrupted run, byte for byte.

>>> import numpy as np
>>> from feature_store.store import MemoryStore
>>> store, journal = MemoryStore(), SamplerJournal(partition=0, checkpoint_every=2)
>>> sampler = journal.restore(store)
>>> sampler.observe_many(np.array([7, 8]), np.array([1, 1]))
>>> sorted(meta := journal.changes(sampler, offset=41)), sum(map(len, meta.values()))
(['sampler/0/d/00000000000000000041'], 32)
>>> store.write_batch({}, {0: 41}, meta)
>>> sampler.observe(7, 1)
>>> store.write_batch({}, {0: 42}, meta := journal.changes(sampler, offset=42))
>>> {key: value and value[:4] for key, value in meta.items()}  # the delta it covers: deleted
{'sampler/0/d/00000000000000000041': None, 'sampler/0/c/000000': b'FSv2'}
>>> SamplerJournal(0, checkpoint_every=2).restore(store).counts().tolist()
[2, 1]
"""

from __future__ import annotations

import numpy as np

from feature_store.negatives import FrequencySampler
from feature_store.store import StateStore

PART_BYTES = 1 << 20  # well under the largest changelog value (8 MiB, streaming.ingest)


class SamplerJournal:
    """Which sampler keys one partition's store holds, and the changes each batch makes to them.

    ``restore`` once, when the worker is built (before any event), then ``changes`` after each
    batch is processed: its result goes into that batch's :meth:`StateStore.write_batch`."""

    def __init__(self, partition: int, checkpoint_every: int, part_bytes: int = PART_BYTES) -> None:
        if checkpoint_every < 1 or part_bytes < 1:
            raise ValueError("checkpoint_every and part_bytes must be positive")
        self.partition = partition
        self.checkpoint_every, self.part_bytes = checkpoint_every, part_bytes
        self._parts: list[str] = []  # the stored checkpoint's part keys
        self._deltas: list[str] = []  # the stored deltas' keys, in offset order
        self._legacy = False  # a checkpoint in the earlier single key (read, then replaced)

    @property
    def legacy_key(self) -> str:
        """Where earlier versions kept the whole sampler (every N batches only)."""
        return f"sampler/{self.partition}"

    def _key(self, kind: str, n: int) -> str:
        width = 6 if kind == "c" else 20  # zero-padded: the store's key order is numeric order
        return f"{self.legacy_key}/{kind}/{n:0{width}d}"

    def restore(self, store: StateStore) -> FrequencySampler:
        """The sampler as of the store's last committed offset, journaling from now on."""
        parts = list(store.meta_items(f"{self.legacy_key}/c/"))
        legacy = store.get_meta(self.legacy_key)
        blob = b"".join(value for _, value in parts) or legacy
        sampler = FrequencySampler() if blob is None else FrequencySampler.decode(blob)
        self._parts, self._legacy = [key for key, _ in parts], legacy is not None
        self._deltas = []
        for key, delta in store.meta_items(f"{self.legacy_key}/d/"):
            pairs = np.frombuffer(delta, "<i8").reshape(-1, 2)
            sampler.observe_many(pairs[:, 0], pairs[:, 1])
            self._deltas.append(key)
        sampler.journal = []
        return sampler

    def changes(self, sampler: FrequencySampler, offset: int | None) -> dict[str, bytes | None]:
        """What the batch ending at ``offset`` observed, as a delta or (every
        ``checkpoint_every``-th batch that observed anything) as a new checkpoint."""
        journal = sampler.journal
        if not journal or offset is None:
            return {}
        sampler.journal = []
        if len(self._deltas) + 1 < self.checkpoint_every:
            key = self._key("d", offset)
            self._deltas.append(key)
            return {key: np.array(journal, "<i8").tobytes()}
        return self._checkpoint(sampler)

    def _checkpoint(self, sampler: FrequencySampler) -> dict[str, bytes | None]:
        """The whole sampler in parts; stale parts, the deltas and the earlier key deleted."""
        blob, size = sampler.encode(), self.part_bytes
        parts = {
            self._key("c", i): blob[k : k + size] for i, k in enumerate(range(0, len(blob), size))
        }
        stale = set(self._parts) - set(parts) | set(self._deltas)
        if self._legacy:
            stale.add(self.legacy_key)
        changes: dict[str, bytes | None] = dict.fromkeys(sorted(stale))
        changes.update(parts)
        self._parts, self._deltas, self._legacy = list(parts), [], False
        return changes
