"""A real crash: a worker process writing to RocksDB is SIGKILLed mid-stream; the store it leaves
holds exactly the committed prefix (states and offset together), and a replay completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.ingest import dump, run, stream
from tests.support.stores import open_store

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from feature_store.ingest import PartitionWorker
from tests.support.stores import open_store
from tests.support.ingest import CONFIG, stream
store = open_store("rocksdb", __import__("pathlib").Path(sys.argv[1]))
worker, records = PartitionWorker(store, 0, CONFIG), stream(2_000)
for k in range(0, len(records), 50):
    worker.commit(worker.process(records[k : k + 50]))
    print(k, flush=True)
"""


def test_sigkill_leaves_a_consistent_prefix_and_replay_completes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for _ in range(5):  # let it commit a few chunks, then kill it while it works on the next
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)

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
