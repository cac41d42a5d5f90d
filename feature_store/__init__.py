"""Per-user feature state for twinstream (DESIGN.md sections 3 and 4).

- :mod:`feature_store.ids`: raw string ids -> stable int64 keys.
- :mod:`feature_store.state`: :class:`UserState` (recent sequence, lifelong log, sessions, dedupe,
  clusters) and its versioned binary encoding.
- :mod:`feature_store.clustering`: TWIN-V2 hierarchical clustering, bounded and incremental.
- :mod:`feature_store.store`: the :class:`StateStore` protocol, RocksDB and memory backends.
- :mod:`feature_store.samples`: point-in-time training samples, negatives, delayed labels, the
  sample encoding and its vectorised batch decoder.
- :mod:`feature_store.ingest`: the per-partition worker the ingest agent drives.
"""

from feature_store.clustering import ClusterConfig, ClusterState, ItemEmbedder
from feature_store.ids import stable_id, stable_ids
from feature_store.ingest import BatchResult, FeatureConfig, PartitionWorker
from feature_store.samples import (
    FrequencySampler,
    PendingImpressions,
    SampleArrays,
    SampleBuilder,
    SampleConfig,
    decode_samples,
    encode_sample,
    request_sample,
    with_label,
)
from feature_store.state import (
    Admission,
    LateEvent,
    StateConfig,
    StateFormatError,
    UserState,
    behaviour_dtype,
)
from feature_store.store import (
    MemoryStore,
    RocksDBOptions,
    RocksDBStore,
    StaleOffset,
    StateStore,
)

__all__ = [
    "Admission",
    "BatchResult",
    "ClusterConfig",
    "ClusterState",
    "FeatureConfig",
    "FrequencySampler",
    "ItemEmbedder",
    "LateEvent",
    "MemoryStore",
    "PartitionWorker",
    "PendingImpressions",
    "RocksDBOptions",
    "RocksDBStore",
    "SampleArrays",
    "SampleBuilder",
    "SampleConfig",
    "StaleOffset",
    "StateConfig",
    "StateFormatError",
    "StateStore",
    "UserState",
    "behaviour_dtype",
    "decode_samples",
    "encode_sample",
    "request_sample",
    "stable_id",
    "stable_ids",
    "with_label",
]
