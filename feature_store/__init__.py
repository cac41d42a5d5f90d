"""Per-user feature state for twinstream (ARCHITECTURE.md sections 3 and 4).

- :mod:`feature_store.ids`: raw string ids -> stable int64 keys.
- :mod:`feature_store.state`: :class:`UserState` (recent sequence, lifelong log, sessions, dedupe,
  clusters); :mod:`feature_store.state_format`: behaviour rows and the versioned state encoding.
- :mod:`feature_store.clustering`: TWIN-V2 hierarchical clustering, bounded and incremental (block
  layout and updates); :mod:`feature_store.cluster_leaves`: one block into leaves and cluster
  records; :mod:`feature_store.cluster_config`: the knobs and the cluster budget.
- :mod:`feature_store.store`: the :class:`StateStore` protocol, RocksDB and memory backends.
- :mod:`feature_store.samples`: point-in-time training samples and scoring requests;
  :mod:`feature_store.sample_format`: the sample message and its vectorised batch decoder;
  :mod:`feature_store.negatives`: frequency-proportional negatives;
  :mod:`feature_store.sampler_journal`: the sampler's checkpoint and per-batch deltas in the store;
  :mod:`feature_store.delayed_labels`: impressions waiting for a click (explicit feedback).
- :mod:`feature_store.ingest`: the per-partition worker the ingest agent drives.
"""

from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ClusterState, ItemEmbedder
from feature_store.delayed_labels import PendingImpressions
from feature_store.ids import stable_id, stable_ids
from feature_store.ingest import BatchResult, FeatureConfig, PartitionWorker
from feature_store.negatives import FrequencySampler
from feature_store.sample_format import SampleArrays, decode_samples, encode_sample, with_label
from feature_store.samples import SampleBuilder, SampleConfig, request_sample
from feature_store.state import Admission, LateEvent, StateConfig, UserState
from feature_store.state_format import StateFormatError, behaviour_dtype
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
