"""The budgeted background sweep: users whose TWIN-V2 clusters predate the embeddings, rebuilt
between batches.

On the ingest path a stale user is rebuilt when next touched, while the worker's
:class:`~feature_store.clustering.RebuildBudget` allows
(:func:`feature_store.clustering.recluster`); when it does not, the user stays stale and only its
growth is clustered. :func:`sweep_stale` is the other half of the policy: on the worker's timer it
rebuilds the stalest of the states the partition keeps decoded (its
:class:`~feature_store.ingest.StateCache`: the users touched lately, the ones the lazy path
deferred), oldest embedding version first, until ``seconds`` of CPU are spent. It returns a
:class:`~feature_store.ingest.BatchResult` with no events and no offset: the rebuilt states, their
changelog records and store parts, which the caller sends and commits as it does a batch's
(``streaming.ingest.IngestService.tick``), so a restore from the changelog gets the same clusters.
Users no longer decoded stay stale until touched (their embedding version is kept in their state).

>>> from feature_store.ingest import PartitionWorker
>>> from feature_store.store import MemoryStore
>>> worker = PartitionWorker(MemoryStore(), partition=0)  # no embedder: nobody is ever stale
>>> sweep_stale(worker, SweepConfig()).states
{}
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from feature_store.clustering import older_part, pinned, update
from feature_store.ingest import BatchResult, PartitionWorker
from feature_store.state_delta import changelog_state_records
from feature_store.state_layout import mark_written, state_parts


@dataclass(frozen=True)
class SweepConfig:
    seconds: float = 0.05  # CPU per sweep (per partition, per timer tick: 1% of a core at 5 s)
    max_users: int = 256  # most users rebuilt per sweep


def sweep_stale(worker: PartitionWorker, config: SweepConfig) -> BatchResult:
    """Rebuild the clusters of the worker's stalest decoded states within ``config.seconds``;
    the changed states as a batch result to send and commit (``worker.commit``)."""
    result = BatchResult()
    embedder = pinned(worker.embedder)
    if embedder is None:
        return result
    version = int(embedder.version)
    stale = [
        (state.cluster_state.version, user)
        for user, state in worker.cache.items()
        if state.cluster_state.version != version and state.cluster_state.blocks.shape[0]
    ]
    deadline = time.perf_counter() + config.seconds
    for _, user in sorted(stale)[: config.max_users]:
        if time.perf_counter() >= deadline:
            break
        state = worker.cache.take(user)
        if state is None:
            continue
        clusters = worker.config.clusters
        log = older_part(state.log, clusters, state.lo)  # as the worker cuts it
        state.cluster_state = update(state.cluster_state, log, state.lo, clusters, embedder)
        result.states[user] = state
        result.changelog += changelog_state_records(user, state)
        result.parts[user] = state_parts(user, state)
        mark_written(state)
    return result
