"""A worker whose state folder is on a file system that fills up mid-replay (a 1 MiB tmpfs; the
``taobao_users`` log needs about 2 MiB) stops at the batch it could not write: ``/healthz``
answers 503 with the fault, ``twinstream_worker_healthy`` is 0, the process exits with status 74
and says why, and the group's committed offsets never pass what the local stores hold. Restarted
after space was freed, it catches up: every event is in the state, and every one made exactly one
sample. Mounting a tmpfs needs root (CAP_SYS_ADMIN): elsewhere these tests are skipped, and
tests/streaming/test_fail_stop.py covers the same path with a store that fails on demand."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from contracts.schema import Event
from contracts.settings import Settings
from feature_store import RocksDBStore, decode_samples
from streaming.admin import end_offsets, ensure_topics, read_topic
from streaming.app import APP_NAME
from streaming.failstop import EXIT_STATUS
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from tests.support.data import BehaviourLog
from tests.support.states import assert_logs_hold_the_behaviours
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FULL_DISK = "1m"  # RocksDB's write-ahead log outgrows it a third of the way into the log
HTTP_PORT, METRICS_PORT = 28_731, 28_741


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a tmpfs of ``FULL_DISK``; ``grow(folder)`` frees space (a remount)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def grow(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)


def http_get(url: str) -> tuple[int, bytes] | None:
    """Status and body, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return None


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The ingest group's committed offset of each ``events`` partition (0: none)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.topics.prefix}{APP_NAME}",
        enable_auto_commit=False,
    )
    try:
        n = settings.topics.events_partitions
        return {
            p: consumer.committed(TopicPartition(settings.topics.events, p)) or 0 for p in range(n)
        }
    finally:
        consumer.close()


def stored_offsets(state_dir: Path, settings: Settings) -> dict[int, int]:
    """The next offset after the last one each local store holds (0: none)."""
    out = {}
    for path in sorted((state_dir / settings.topics.events).glob("p*.rocksdb")):
        partition = int(path.name[1:].split(".")[0])
        store = RocksDBStore(path)
        last = store.last_offset(partition)
        store.close()
        out[partition] = 0 if last is None else last + 1
    return out


def send_log(settings: Settings, log: BehaviourLog) -> list[Event]:
    events, _ = read_events(log.path, "taobao")
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    return events


def assert_every_event_once(settings: Settings, events: list[Event]) -> None:
    """The changelog's states hold every behaviour of the log, and the samples topic one
    positive sample per behaviour: none lost, none twice."""
    assert_logs_hold_the_behaviours(wait_caught_up(settings), events)
    samples = read_topic(settings, settings.topics.samples, idle_timeout_s=5)
    positives = int((decode_samples([r.value for r in samples]).label == 1.0).sum())
    assert positives == len(events)


def test_a_full_disk_stops_the_worker_and_a_restart_with_space_loses_nothing(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog, small_disk: Path
) -> None:
    events = send_log(settings, taobao_log)
    state_dir, log = small_disk / "w", tmp_path / "w.log"
    extra = ("--http-port", str(HTTP_PORT), "--metrics-port", str(METRICS_PORT))
    worker = WorkerProcess(settings, state_dir, log, *extra)
    health = f"http://127.0.0.1:{HTTP_PORT}/healthz"

    def unhealthy() -> tuple[bytes, bytes] | None:
        answer = http_get(health)
        if answer is None or answer[0] != 503:
            return None
        metrics = http_get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
        return answer[1], b"" if metrics is None else metrics[1]

    body, metrics = wait_until(
        unhealthy, timeout_s=120, what="/healthz to answer 503", interval_s=0.05
    )
    fault = orjson.loads(body)["fault"]
    assert fault["kind"] == "state_write" and "No space left on device" in fault["detail"]
    assert b"twinstream_worker_healthy 0.0" in metrics
    assert b'twinstream_worker_fatal_errors_total{kind="state_write"} 1.0' in metrics
    assert worker.proc.wait(timeout=60) == EXIT_STATUS
    said = log.read_text()
    assert "FAIL-STOP (state_write)" in said and "No space left on device" in said
    assert "twinstream worker: fail-stop (state_write: " in said

    committed = committed_offsets(settings)
    ends = end_offsets(settings, settings.topics.events, settings.topics.events_partitions)
    assert sum(committed.values()) < sum(ends.values())  # the failed batch was not committed
    grow(small_disk)
    stored = stored_offsets(state_dir, settings)
    assert all(committed[p] <= stored.get(p, 0) for p in committed), (committed, stored)

    with WorkerProcess(settings, state_dir, log):
        assert_every_event_once(settings, events)


def test_one_failing_process_of_several_ends_the_command_with_its_status(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog, small_disk: Path
) -> None:
    events = send_log(settings, taobao_log)
    log = tmp_path / "w.log"
    command = WorkerProcess(settings, small_disk / "w", log, "--processes", "2")
    assert command.proc.wait(timeout=180) == EXIT_STATUS
    said = log.read_text()
    assert f"exited with status {EXIT_STATUS}; stopping the others" in said
    assert "twinstream worker: process " in said and "FAIL-STOP (state_write)" in said
    grow(small_disk)
    with WorkerProcess(settings, small_disk / "w", log, "--processes", "2"):
        assert_every_event_once(settings, events)
