"""A broker of a 3-node cluster killed (-9) mid-replay: nothing lost, nothing counted twice.

The test starts its own cluster (``ops.broker``, 3 KRaft nodes on ports of its own), creates the
deployment's topics with 3 replicas and 2 in sync, and runs a ``twinstream worker``, a
``twinstream train`` and a paced ``twinstream replay`` of a generated Taobao-format log as real
processes. A quarter into the replay it kills the leader of ``events`` partition 0; then it
checks that the log reached ``events`` once, that each user's state holds exactly the user's
behaviours, that ``samples`` holds one positive per behaviour and the trainer trained every
sample message exactly once, that every process carried on (the worker still answers), and that
the killed node, restarted, catches up until every replica is in sync again.

The figures it measured (events, samples, seconds to new leaders, to the end of the replay, to
full replication) are printed and recorded as the test's properties.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from contracts.schema import Event
from contracts.settings import Settings
from feature_store import decode_samples
from ops import broker
from serving.manifest import MANIFEST_FILE
from serving.snapshot import latest_snapshot
from streaming.admin import end_offsets, ensure_topics, read_topic
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate
from tests.support.brokers import deployment_on, own_broker
from tests.support.processes import spawn, tail
from tests.support.states import assert_each_behaviour_once
from tests.support.trainers import QUICK_TRAINER_ARGS, trained
from tests.support.waiting import wait_until
from tests.support.worker_http import healthz, post_score
from tests.support.workers import WorkerProcess, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT, CONTROLLER_PORT = 29_210, 29_211  # nodes on 29210/29211, 29212/29213, 29214/29215
HTTP_PORT = 28_831
REPLAY_S = 24.0  # the replay is paced to last about this long, so the kill lands inside it
LOG = GeneratorConfig(users=120, long_users=0, seed=18)  # about 10,000 behaviours


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[broker.BrokerConfig]:
    with own_broker(tmp_path / "kafka", PORT, CONTROLLER_PORT, brokers=3) as cfg:
        yield cfg


@pytest.fixture()
def settings(cluster: broker.BrokerConfig, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The deployment on the cluster; the processes it starts inherit the same environment."""
    return deployment_on(cluster, "failover-", monkeypatch)


# ---------------------------------------------------------------- the cluster's view


def partitions(settings: Settings) -> dict[tuple[str, int], tuple[int, list[int]]] | None:
    """(topic, partition) -> (leader, in-sync replicas) of every deployment topic; None while
    the metadata still sends the question to the killed node."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=5000
        )
        try:
            described = admin.describe_topics(list(settings.topics.all()))
        finally:
            admin.close()
    except (KafkaConnectionError, KafkaTimeoutError):
        return None
    return {
        (t["name"], p["partition_index"]): (p["leader_id"], sorted(p["isr_nodes"]))
        for t in described
        for p in t["partitions"]
    }


def leaders_without(settings: Settings, node_id: int) -> bool:
    seen = partitions(settings)
    return seen is not None and all(leader not in (-1, node_id) for leader, _ in seen.values())


def fully_replicated(settings: Settings, replicas: int) -> bool:
    seen = partitions(settings)
    return seen is not None and all(len(isr) == replicas for _, isr in seen.values())


def min_insync(settings: Settings) -> set[str] | None:
    """The ``min.insync.replicas`` values of the deployment's topics; None while a node that
    has not yet heard of a new topic answers without its configs."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in settings.topics.all()]
        configs = admin.describe_configs(resources)["topic"]
    finally:
        admin.close()
    if any("min.insync.replicas" not in topic for topic in configs.values()):
        return None
    return {topic["min.insync.replicas"]["value"] for topic in configs.values()}


# ---------------------------------------------------------------- the processes


@dataclass
class Pipeline:
    """The worker, the trainer and the paced replay as processes, their files in ``folder``."""

    folder: Path
    worker: WorkerProcess
    trainer: subprocess.Popen[bytes]
    replay: subprocess.Popen[bytes]

    @classmethod
    def start(cls, settings: Settings, folder: Path, log: Path, speed: float) -> Pipeline:
        snaps = ("--snapshot-dir", str(folder / "snaps"))
        worker = WorkerProcess(
            settings, folder / "state", folder / "worker.log", "--http-port", str(HTTP_PORT), *snaps
        )
        audit = ("--audit-log", str(folder / "trainer.audit"))
        trainer = spawn(folder / "trainer.log", "train", *QUICK_TRAINER_ARGS, *snaps, *audit)
        replay = spawn(
            folder / "replay.log",
            *("replay", str(log), "--format", "taobao", "--speed", f"{speed:.1f}", "--no-progress"),
        )
        return cls(folder, worker, trainer, replay)

    def trained(self) -> dict[int, list[int]]:
        """The sample offsets the trainer trained, per partition, step by step."""
        return trained(self.folder / "trainer.audit")

    def stop(self) -> None:
        for proc in (self.trainer, self.replay):
            if proc.poll() is None:
                proc.kill()
        self.worker.stop()


def seconds_until(check: Callable[[], object], what: str, since: float, timeout_s: float) -> float:
    """Seconds from ``since`` until ``check`` holds."""
    wait_until(check, timeout_s=timeout_s, what=what, interval_s=0.2)
    return time.monotonic() - since


# ---------------------------------------------------------------- the phases


def kill_mid_replay(
    cluster: broker.BrokerConfig, settings: Settings, run: Pipeline, events: int
) -> dict[str, float]:
    """Kill (-9) the leader of ``events`` partition 0 a quarter into the replay; wait for the
    replay to end and the worker to catch up. Returns the node and the seconds each took."""
    n = settings.topics.events_partitions
    wait_until(
        lambda: sum(end_offsets(settings, settings.topics.events, n).values()) > events // 4,
        timeout_s=120,
        what="a quarter of the replay",
        process=run.replay,
    )
    victim = (partitions(settings) or {})[(settings.topics.events, 0)][0]
    killed = time.monotonic()
    broker.kill_node(cluster, victim)
    leaders_s = seconds_until(lambda: leaders_without(settings, victim), "leaders", killed, 60)
    assert run.replay.wait(timeout=180) == 0, tail(run.folder / "replay.log")
    replay_s = time.monotonic() - killed
    wait_caught_up(settings, timeout_s=180)
    return {
        "killed_node": victim,
        "new_leaders_s": leaders_s,
        "replay_done_after_kill_s": replay_s,
        "state_caught_up_after_kill_s": time.monotonic() - killed,
    }


def restart(cluster: broker.BrokerConfig, settings: Settings, node_id: int) -> dict[str, float]:
    """Restart the killed node; the seconds until it runs and until every replica is in sync."""
    restarting = time.monotonic()
    broker.restart_node(cluster, node_id)
    restart_s = time.monotonic() - restarting
    in_sync_s = seconds_until(
        lambda: fully_replicated(settings, cluster.replication), "full ISR", restarting, 120
    )
    return {"node_restart_s": restart_s, "restarted_node_in_sync_s": in_sync_s}


def finish(run: Pipeline, settings: Settings, events: list[Event]) -> dict[int, int]:
    """Once the trainer trained every sample message: the worker still answers, the trainer
    stops on SIGTERM (a final snapshot) and so does the worker. Returns the end of each
    partition of ``samples``."""
    ends = end_offsets(settings, settings.topics.samples, settings.topics.events_partitions)
    wait_until(
        lambda: all(max(run.trained().get(p, [-1])) == end - 1 for p, end in ends.items()),
        timeout_s=180,
        what="the trainer to train every sample message",
        process=run.trainer,
    )
    assert run.worker.proc.poll() is None, tail(run.folder / "worker.log")
    owned = sorted(healthz(HTTP_PORT)["partitions"])
    assert owned == list(range(settings.topics.events_partitions))
    items = [e.item_id for e in events[:5]]
    answer = post_score(HTTP_PORT, events[-1].user_id, items, request_id="failover")
    assert "error" not in answer and len(answer["scores"]) == 5, answer
    run.trainer.send_signal(signal.SIGTERM)
    assert run.trainer.wait(timeout=60) == 0, tail(run.folder / "trainer.log")
    run.worker.stop()
    assert run.worker.proc.returncode == 0, tail(run.folder / "worker.log")
    return ends


# ---------------------------------------------------------------- expectations from the log


def assert_each_sample_trained_once(
    settings: Settings, run: Pipeline, ends: dict[int, int], events: int
) -> int:
    """``samples`` holds one positive per behaviour; the trainer trained each message once and
    its last snapshot counts every row. Returns the rows."""
    records = read_topic(settings, settings.topics.samples, sum(ends.values()))
    rows = decode_samples([r.value for r in records], recent_length=1)
    assert int((rows.label == 1.0).sum()) == events
    trained = run.trained()
    for p, end in ends.items():
        assert Counter(trained.get(p, [])) == Counter(range(end)), p
    snaps = run.folder / "snaps"
    manifest = json.loads(((latest_snapshot(snaps) or snaps) / MANIFEST_FILE).read_bytes())
    assert manifest["offsets"] == {str(p): end - 1 for p, end in ends.items()}
    assert manifest["samples"] == rows.size
    return int(rows.size)


# ---------------------------------------------------------------- the test


def test_a_broker_killed_mid_replay_loses_nothing_and_counts_nothing_twice(
    cluster: broker.BrokerConfig,
    settings: Settings,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    ensure_topics(settings)
    assert fully_replicated(settings, replicas=3)
    insync = wait_until(lambda: min_insync(settings), timeout_s=30, what="the topics' configs")
    assert insync == {"2"}
    path = tmp_path / "UserBehavior.csv"
    generate(LOG).write(path)
    events, _ = read_events(path, "taobao")
    run = Pipeline.start(settings, tmp_path, path, (events[-1].ts - events[0].ts) / REPLAY_S)
    try:
        figures = kill_mid_replay(cluster, settings, run, len(events))
        figures |= restart(cluster, settings, int(figures["killed_node"]))
        ends = finish(run, settings, events)
    finally:
        run.stop()

    n = settings.topics.events_partitions
    assert sum(end_offsets(settings, settings.topics.events, n).values()) == len(events)
    assert_each_behaviour_once(wait_caught_up(settings), events)
    rows = assert_each_sample_trained_once(settings, run, ends, len(events))
    figures |= {"events": len(events), "sample_messages": sum(ends.values()), "rows_trained": rows}
    for key, value in figures.items():
        record_property(key, round(value, 1))
    print(f"broker failover: { {k: round(v, 1) for k, v in figures.items()} }")
