"""The local broker's configuration, node by node (no JVM needed): the single broker's
``server.properties`` is the one it always was; a 3-node cluster is a 3-voter KRaft quorum on
ports derived from the base ports, replicated 3 ways with 2 replicas in sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops import broker
from ops.kafka_jars import BrokerError

SINGLE = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:19093
listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093
advertised.listeners=PLAINTEXT://127.0.0.1:19092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=/tmp/kafka/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
log.retention.hours=-1
"""


def parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line)
    return {key: value for key, value in pairs}


def test_a_single_broker_is_configured_as_it_always_was() -> None:
    cfg = broker.BrokerConfig(run_dir=Path("/tmp/kafka"))
    (node,) = cfg.nodes
    assert broker.server_properties(cfg, node) == SINGLE
    assert node.run_dir == cfg.run_dir and node.pid_file == Path("/tmp/kafka/broker.pid")
    assert cfg.bootstrap == "127.0.0.1:19092" and cfg.java_heap == "512m"


def test_three_nodes_form_one_quorum_on_ports_from_the_base_ports(tmp_path: Path) -> None:
    cfg = broker.BrokerConfig(port=29200, controller_port=29201, run_dir=tmp_path, brokers=3)
    props = {n.node_id: parse(broker.server_properties(cfg, n)) for n in cfg.nodes}
    voters = "1@127.0.0.1:29201,2@127.0.0.1:29203,3@127.0.0.1:29205"
    for node_id, port in ((1, 29200), (2, 29202), (3, 29204)):
        p = props[node_id]
        assert p["node.id"] == str(node_id) and p["process.roles"] == "broker,controller"
        assert p["controller.quorum.voters"] == voters
        assert p["listeners"] == f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}"
        assert p["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
        assert p["log.dirs"] == str(tmp_path / f"node{node_id}" / "data")
    assert cfg.bootstrap == "127.0.0.1:29200,127.0.0.1:29202,127.0.0.1:29204"
    assert len({n.pid_file for n in cfg.nodes}) == 3 and cfg.java_heap == "384m"


def test_a_cluster_replicates_every_topic_three_ways_with_two_in_sync(tmp_path: Path) -> None:
    cfg = broker.BrokerConfig(run_dir=tmp_path, brokers=3)
    for node in cfg.nodes:
        p = parse(broker.server_properties(cfg, node))
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["num.partitions"] == "4" and p["log.retention.hours"] == "-1"


def test_ports_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TWINSTREAM_BROKER_PORT", "30000")
    monkeypatch.setenv("TWINSTREAM_BROKER_CONTROLLER_PORT", "31000")
    monkeypatch.setenv("TWINSTREAM_BROKER_DIR", str(tmp_path))
    cfg = broker.BrokerConfig.from_env(brokers=3)
    assert [(n.port, n.controller_port) for n in cfg.nodes] == [
        (30000, 31000),
        (30002, 31002),
        (30004, 31004),
    ]
    assert cfg.node(3).run_dir == tmp_path / "node3"


def test_overlapping_ports_and_unknown_nodes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="overlap"):
        broker.BrokerConfig(port=29200, controller_port=29202, brokers=3)
    with pytest.raises(BrokerError, match="no node 4"):
        broker.BrokerConfig(brokers=3).node(4)
    with pytest.raises(BrokerError, match="at least 1"):
        broker.BrokerConfig(brokers=0)


def test_stop_and_status_find_only_a_running_cluster(tmp_path: Path) -> None:
    single = broker.BrokerConfig(run_dir=tmp_path)
    assert broker.discover(single) == single  # nothing there
    for node in broker.BrokerConfig(run_dir=tmp_path, brokers=3).nodes:
        node.run_dir.mkdir()
        node.properties.write_text("")
        node.pid_file.write_text("999999")  # a cluster that crashed: stale pid files
    assert broker.discover(single) == single
    assert broker.status(single) == "stopped" and broker.stop(single) is False
