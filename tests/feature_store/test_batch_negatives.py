"""A batch's samples, negatives drawn together, are byte for byte those of one event at a time:
through long and short logs, late events, duplicates, the lifelong cap, category changes and
sampler folds in the middle of a batch."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.schema import Event, EventType
from feature_store.batch_negatives import SHORT_HISTORY
from feature_store.cluster_config import ClusterConfig
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.negatives import FrequencySampler
from feature_store.samples import BatchSamples, SampleBuilder, SampleConfig
from feature_store.state import Admission, LateEvent, StateConfig, UserState
from feature_store.store import MemoryStore
from tests.support.events import event

KINDS = [EventType.CLICK, EventType.CLICK, EventType.CART, EventType.IMPRESSION, EventType.BUY]


def stream(n: int, seed: int) -> list[Event]:
    """Three users past SHORT_HISTORY and many short ones, a few popular items (draws that hit
    the history), late events, repeated event ids and items whose category changes."""
    rng = np.random.default_rng(seed)
    clock, out = 0.0, []
    for i in range(n):
        clock += float(rng.integers(1, 120))
        long_user = rng.random() < 0.7
        user = f"long{rng.integers(0, 3)}" if long_user else f"short{rng.integers(0, 200)}"
        item = int(rng.zipf(1.3)) % 400
        late = float(rng.integers(0, 900)) if rng.random() < 0.05 else 0.0
        eid = f"e{i - 1}" if rng.random() < 0.03 else f"e{i}"  # a repeat of the previous id
        category = str(item % 17 + (100 if rng.random() < 0.01 else 0))  # now and then another
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        features = {"price": float(i % 7) + 0.5}
        out.append(event(clock - late, str(item), user=user, category=category, kind=kind,
                         event_id=eid, features=features))  # fmt: skip
    return out


def admitted(state: UserState, e: Event, config: StateConfig) -> bool:
    """Whether ``e`` is applied (as the worker does: late and duplicate events are not)."""
    try:
        if state.check(e, config) is Admission.DUPLICATE:
            return False
    except LateEvent:
        return False
    return True


@pytest.mark.parametrize(("fold_every", "dense"), [(7, ()), (1_024, ()), (7, ("price",))])
@pytest.mark.parametrize("batch", [1, 50, 700])
def test_batch_samples_equal_one_event_at_a_time(
    fold_every: int, dense: tuple[str, ...], batch: int
) -> None:
    config = StateConfig(
        dense_features=dense,
        recent_length=50,
        lifelong_cap=SHORT_HISTORY + 60,
        allowed_lateness_s=600,
    )
    clusters = ClusterConfig(lifelong_cap=config.lifelong_cap)
    sample_config = SampleConfig(negatives=3, recent_length=50)
    one = SampleBuilder(sample_config, config, FrequencySampler(fold_every=fold_every))
    many = SampleBuilder(sample_config, config, FrequencySampler(fold_every=fold_every))
    states: dict[str, tuple[UserState, UserState]] = {}
    events = stream(3_000, seed=batch + fold_every)
    expected, got = [], []
    for start in range(0, len(events), batch):
        samples = BatchSamples(many)
        for e in events[start : start + batch]:
            a, b = states.setdefault(e.user_id, (UserState.empty(config), UserState.empty(config)))
            if not admitted(a, e, config):
                continue
            expected += one.samples_for(a, e)
            samples.add(b, e)
            for state in (a, b):
                state.apply(e, config, checked=True)
                state.maybe_recluster(clusters)
        got += samples.finish()
        samples.close()
    assert len(got) == len(expected) > 1_500
    assert got == expected
    assert one.sampler.encode() == many.sampler.encode()
    long_logs = [a.log.shape[0] for user, (a, _) in states.items() if user.startswith("long")]
    assert min(long_logs) == config.lifelong_cap  # the cap dropped behaviours, mid-batch too


@pytest.mark.parametrize("batch", [50, 700])
def test_a_worker_makes_the_same_samples_and_states_in_batches_as_one_event_at_a_time(
    batch: int,
) -> None:
    """Through PartitionWorker: the batch's dedupe check (repeated ids in a batch and across
    batches), its negatives and its states equal those of batches of one event."""
    state = StateConfig(recent_length=50, lifelong_cap=SHORT_HISTORY + 60, allowed_lateness_s=600)
    config = FeatureConfig(state, ClusterConfig(lifelong_cap=state.lifelong_cap))
    records = list(enumerate(stream(3_000, seed=batch)))
    one, many = PartitionWorker(MemoryStore(), 0, config), PartitionWorker(MemoryStore(), 0, config)
    expected = [one.process(records[i : i + 1]) for i in range(len(records))]
    got = [many.process(records[i : i + batch]) for i in range(0, len(records), batch)]
    for results, worker in ((expected, one), (got, many)):
        for result in results:
            worker.commit(result)
    assert sum(r.duplicates for r in got) == sum(r.duplicates for r in expected) > 5
    assert [s for r in got for s in r.samples] == [s for r in expected for s in r.samples]
    users = {e.user_id for _, e in records}
    assert all(one.store.get(u).encode() == many.store.get(u).encode() for u in users)  # type: ignore[union-attr]
