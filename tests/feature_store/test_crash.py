"""A real crash: a worker process writing to RocksDB is SIGKILLed mid-stream; the store it leaves
holds exactly the committed prefix (states, offset and negative sampler together), and a replay
completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from feature_store.cluster_config import ClusterConfig
from feature_store.ingest import PartitionWorker
from feature_store.sample_format import decode_samples
from feature_store.state import StateConfig
from feature_store.store import RocksDBStore
from tests.support.events import event
from tests.support.ingest import CONFIG, dump, run, stream
from tests.support.lifelong import applied, lifelong_state, tail_events
from tests.support.stores import open_store

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from dataclasses import replace
from feature_store.ingest import PartitionWorker
from tests.support.stores import open_store
from tests.support.ingest import CONFIG, stream
store = open_store("rocksdb", __import__("pathlib").Path(sys.argv[1]))
config = replace(CONFIG, sampler_checkpoint_every=int(sys.argv[2]))
worker, records = PartitionWorker(store, 0, config), stream(2_000)
for k in range(0, len(records), 50):
    worker.commit(worker.process(records[k : k + 50]))
    print(k, flush=True)
"""


def kill_mid_stream(path: Path, checkpoint_every: int) -> None:
    """Run the child over ``path`` and SIGKILL it once it has committed a few chunks."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(checkpoint_every)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    for _ in range(5):  # let it commit a few chunks, then kill it while it works on the next
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


def test_sigkill_leaves_a_consistent_prefix_and_replay_completes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    kill_mid_stream(path, checkpoint_every=CONFIG.sampler_checkpoint_every)

    records = stream(2_000)
    recovered = open_store("rocksdb", path)
    last = recovered.last_offset(0)
    assert last is not None and (last + 1) % 50 == 0  # a whole number of committed chunks
    assert last < 1_999, "the worker finished before the kill: nothing was tested"
    prefix = open_store("memory", tmp_path)
    run(prefix, records[: last + 1], chunk=50)
    assert dump(recovered) == dump(prefix)  # states match the offset: nothing half-written

    run(recovered, records, chunk=50)  # replay from the start: the committed part is skipped
    full = open_store("memory", tmp_path)
    run(full, records, chunk=50)
    assert dump(recovered) == dump(full) and recovered.last_offset(0) == 1_999
    recovered.close()


def test_after_a_sigkill_the_reopened_store_holds_the_sampler_of_its_offset(
    tmp_path: Path,
) -> None:
    """Sampler checkpoints every 100 batches, killed after a few: the reopened RocksDB store's
    sampler is that of an uninterrupted run up to the stored offset, so the first click after
    the restart has its K negatives, the ones the uninterrupted run draws."""
    config = replace(CONFIG, sampler_checkpoint_every=100)
    kill_mid_stream(tmp_path / "db", checkpoint_every=100)
    records = stream(2_000)
    recovered = open_store("rocksdb", tmp_path / "db")
    last = recovered.last_offset(0)
    assert last is not None and last < 1_999
    restarted = PartitionWorker(recovered, 0, config)
    reference = PartitionWorker(open_store("memory", tmp_path), 0, config)
    for k in range(0, last + 1, 50):
        reference.commit(reference.process(records[k : k + 50]))
    assert restarted.builder.sampler.encode() == reference.builder.sampler.encode()

    newcomer = event(20.0 * (last + 1), item="0", user="newcomer", event_id="newcomer")
    first, expected = (w.process([(last + 1, newcomer)]) for w in (restarted, reference))
    assert decode_samples(first.samples).size == 1 + config.samples.negatives
    assert first.samples == expected.samples
    recovered.close()


LONG_CHILD = """
import sys
from feature_store.ingest import PartitionWorker
from feature_store.store import RocksDBStore
from tests.support.lifelong import lifelong_state, tail_events, write_through
store = RocksDBStore(sys.argv[1])
write_through(store, "long", lifelong_state(10_000, seed=1))
print("written", flush=True)
worker, events = PartitionWorker(store, 0), tail_events("long", 3_000, seed=2)
for k in range(0, len(events), 10):
    worker.commit(worker.process([(k + i, e) for i, e in enumerate(events[k : k + 10])]))
    print(k, flush=True)
"""


def test_sigkill_mid_stream_of_a_10k_behaviour_user_leaves_its_state_at_the_stored_offset(
    tmp_path: Path,
) -> None:
    """Each batch rewrites some of the user's parts (head, ring block, tail chunks, clusters)
    in one RocksDB batch: killed mid-stream, the reopened store's state is the one applied in
    memory up to the stored offset, late events and duplicates included."""
    path = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", LONG_CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for _ in range(30):
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    recovered = RocksDBStore(path)
    last = recovered.last_offset(0)
    assert last is not None and (last + 1) % 10 == 0 and last < 2_999
    events = tail_events("long", 3_000, seed=2)[: last + 1]
    want = applied(lifelong_state(10_000, seed=1), events, StateConfig(), ClusterConfig())
    got = recovered.get("long")
    assert got is not None and got.total > 10_000 and got.encode() == want.encode()
    recovered.close()
