"""A real Apache Kafka broker, or a small replicated cluster of them, without Docker.

``twinstream broker start`` fetches the Kafka jars with Maven into a cache outside the repository
(once), formats KRaft storage, starts broker+controller on 127.0.0.1, waits until the port accepts
connections and writes a pid file and a log file. ``stop`` stops it by pid. Both are idempotent:
starting a running broker, stopping a stopped one and a stale pid file are all fine.

``--brokers 3`` starts three such nodes instead, each broker and controller (a 3-voter KRaft
quorum), node ``i`` on ``PORT + 2(i-1)`` and ``CONTROLLER_PORT + 2(i-1)`` with its own folder
``RUN_DIR/node{i}``; topics get 3 replicas and writes need 2 in sync, so any one node can die.
:func:`kill_node` and :func:`restart_node` take one node down (``kill -9``) and bring it back.

``--sasl-ssl`` starts the single broker with a ``SASL_SSL`` client listener only (certificates,
users and the settings for clients: :mod:`ops.broker_security`).

>>> cfg = BrokerConfig(brokers=3)
>>> cfg.bootstrap
'127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096'
>>> [(n.node_id, n.port, n.controller_port, n.run_dir.name) for n in cfg.nodes][1]
(2, 19094, 19095, 'node2')
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contracts.security import KafkaSecurity
from ops import broker_security
from ops.kafka_jars import KAFKA_VERSION, BrokerError, fetch_jars, find_java

CLUSTER_ID = "twinstreamKRaftCluster"[:22]
PORT_STRIDE = 2  # node i listens on PORT + 2(i-1) and CONTROLLER_PORT + 2(i-1)
MAX_REPLICATION = 3
SINGLE_HEAP, NODE_HEAP = "512m", "384m"  # a cluster's three JVMs share a small machine

LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.KafkaRaftServer=INFO
"""

SERVER_PROPERTIES = """process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=4
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_insync}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
log.retention.hours=-1
"""

# only in a cluster: the single broker's topics keep Kafka's defaults (1 and 1)
REPLICATED_TOPICS = """default.replication.factor={replication}
min.insync.replicas={min_insync}
"""


@dataclass(frozen=True)
class Node:
    """One Kafka process of the deployment: its KRaft node id, its two ports and its folder."""

    node_id: int
    host: str
    port: int
    controller_port: int
    run_dir: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def properties(self) -> Path:
        return self.run_dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"

    @property
    def stdout(self) -> Path:
        return self.run_dir / "broker.stdout"


@dataclass(frozen=True)
class BrokerConfig:
    """The local deployment: one broker (the default) or ``brokers`` nodes from the base ports."""

    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    run_dir: Path = Path("/tmp/twinstream-kafka")
    cache_dir: Path = Path.home() / ".cache" / "twinstream"
    version: str = KAFKA_VERSION
    heap: str | None = None  # per JVM; default SINGLE_HEAP, or NODE_HEAP in a cluster
    start_timeout_s: float = 90.0
    brokers: int = 1
    sasl_ssl: bool = False  # the single broker's only client listener is SASL_SSL

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise BrokerError("--brokers must be at least 1")
        if self.sasl_ssl and self.brokers > 1:
            raise BrokerError("--sasl-ssl starts a single broker; leave out --brokers")
        ports = [p for n in self.nodes for p in (n.port, n.controller_port)]
        if len(set(ports)) != len(ports):
            raise BrokerError(
                f"the nodes' ports overlap ({sorted(ports)}): node i listens on "
                f"TWINSTREAM_BROKER_PORT + {PORT_STRIDE}(i-1) and TWINSTREAM_BROKER_CONTROLLER_PORT"
                f" + {PORT_STRIDE}(i-1); choose base ports further apart"
            )

    @classmethod
    def from_env(cls, brokers: int = 1, sasl_ssl: bool = False) -> BrokerConfig:
        env = os.environ
        run_dir = Path(env.get("TWINSTREAM_BROKER_DIR", str(cls.run_dir)))
        return cls(
            port=int(env.get("TWINSTREAM_BROKER_PORT", cls.port)),
            controller_port=int(env.get("TWINSTREAM_BROKER_CONTROLLER_PORT", cls.controller_port)),
            run_dir=run_dir,
            brokers=brokers,
            sasl_ssl=sasl_ssl or env.get("TWINSTREAM_BROKER_SASL_SSL", "") in ("1", "true"),
        )

    @property
    def nodes(self) -> list[Node]:
        """Node 1 of a single broker lives in ``run_dir`` itself, as it always has."""
        if self.brokers == 1:
            return [Node(1, self.host, self.port, self.controller_port, self.run_dir)]
        return [
            Node(
                i,
                self.host,
                self.port + PORT_STRIDE * (i - 1),
                self.controller_port + PORT_STRIDE * (i - 1),
                self.run_dir / f"node{i}",
            )
            for i in range(1, self.brokers + 1)
        ]

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise BrokerError(f"no node {node_id}: the nodes are 1..{self.brokers}")

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def security(self) -> KafkaSecurity:
        """How a client connects: PLAINTEXT, or as the SASL_SSL broker's user."""
        if self.sasl_ssl:
            return broker_security.client_security(self.run_dir)
        return KafkaSecurity()

    def kafka_config(self) -> dict[str, Any]:
        """Client keyword arguments (kafka-python) for this deployment."""
        return {"bootstrap_servers": self.bootstrap, **self.security.client_config()}

    @property
    def replication(self) -> int:
        """The replicas of every topic: one per node, at most three."""
        return min(self.brokers, MAX_REPLICATION)

    @property
    def min_insync(self) -> int:
        """In-sync replicas a write needs: all but one, so one node may die."""
        return max(1, self.replication - 1)

    @property
    def java_heap(self) -> str:
        return self.heap or (SINGLE_HEAP if self.brokers == 1 else NODE_HEAP)

    @property
    def libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "libs"


def discover(cfg: BrokerConfig) -> BrokerConfig:
    """``cfg`` sized to the cluster in its folder when a node of that cluster runs, else ``cfg``
    (``stop`` and ``status`` find a cluster without being told its size)."""
    found = len(list(cfg.run_dir.glob("node*/server.properties")))
    if found < 2:
        return cfg
    cluster = replace(cfg, brokers=found)
    return cluster if running(cluster) else cfg


def server_properties(cfg: BrokerConfig, node: Node) -> str:
    """The ``server.properties`` of one node (of a single broker: the same as it always was)."""
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in cfg.nodes)
    text = SERVER_PROPERTIES
    if cfg.brokers > 1:
        text += REPLICATED_TOPICS
    properties = text.format(
        node_id=node.node_id,
        voters=voters,
        host=node.host,
        port=node.port,
        controller_port=node.controller_port,
        data=node.run_dir / "data",
        replication=cfg.replication,
        min_insync=cfg.min_insync,
    )
    if not cfg.sasl_ssl:
        return properties
    return broker_security.secured(properties, node.run_dir, node.port, node.controller_port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def read_pid(node: Node) -> int | None:
    """The pid of *our* running node, or None (a stale pid file is removed)."""
    try:
        pid = int(node.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        cmdline = b""
    if b"kafka.Kafka" not in cmdline:
        node.pid_file.unlink(missing_ok=True)
        return None
    return pid


def running(cfg: BrokerConfig) -> dict[int, int]:
    """The pid of each running node, by node id."""
    pids = {n.node_id: read_pid(n) for n in cfg.nodes}
    return {node_id: pid for node_id, pid in pids.items() if pid is not None}


def _write_configs(cfg: BrokerConfig, node: Node) -> None:
    node.run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.sasl_ssl:
        broker_security.prepare(node.run_dir, node.run_dir / "data")
        node.properties.touch()
        node.properties.chmod(0o600)  # before it holds the passwords of the users and stores
    node.properties.write_text(server_properties(cfg, node))
    (node.run_dir / "log4j.properties").write_text(LOG4J.format(log=node.log_file))


def _format_storage(cfg: BrokerConfig, java: str, node: Node) -> None:
    cmd = [java, "-cp", f"{cfg.libs}/*", "kafka.tools.StorageTool", "format"]
    cmd += ["-t", CLUSTER_ID, "-c", str(node.properties), "--ignore-formatted"]
    if cfg.sasl_ssl:
        cmd += broker_security.format_args(node.run_dir)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"kafka storage format failed:\n{done.stdout}{done.stderr}")


def _launch(cfg: BrokerConfig, java: str, node: Node) -> subprocess.Popen[bytes]:
    """Configure, format (once) and start one node; returns at once."""
    if port_open(node.host, node.port):
        raise BrokerError(
            f"port {node.port} is taken by another process; set TWINSTREAM_BROKER_PORT"
        )
    _write_configs(cfg, node)
    _format_storage(cfg, java, node)
    cmd = [java, f"-Xmx{cfg.java_heap}", f"-Xms{cfg.java_heap}", "-XX:+UseG1GC"]
    cmd += [f"-Dlog4j.configuration=file:{node.run_dir / 'log4j.properties'}"]
    cmd += ["-cp", f"{cfg.libs}/*", "kafka.Kafka", str(node.properties)]
    with open(node.stdout, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    node.pid_file.write_text(str(proc.pid))
    return proc


def start(cfg: BrokerConfig) -> list[int]:
    """Start every node (or find it running); returns their pids, node by node.

    A cluster's nodes start together (a broker waits for its controller quorum) and this returns
    once all of them accept connections and have registered with the quorum.
    """
    pids = {n.node_id: pid for n in cfg.nodes if (pid := read_pid(n)) and port_open(n.host, n.port)}
    if len(pids) == cfg.brokers:
        return list(pids.values())
    java = find_java()
    fetch_jars(cfg.libs, cfg.version)
    started = {n.node_id: _launch(cfg, java, n) for n in cfg.nodes if n.node_id not in pids}
    try:
        for node_id, proc in started.items():
            _wait_ready(cfg, cfg.node(node_id), proc)
        if cfg.brokers > 1:
            _wait_registered(cfg)
    except BrokerError:
        stop(cfg)
        raise
    pids |= {node_id: proc.pid for node_id, proc in started.items()}
    return [pids[n.node_id] for n in cfg.nodes]


def _wait_ready(cfg: BrokerConfig, node: Node, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + cfg.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = node.stdout.read_text(errors="replace")[-3000:]
            raise BrokerError(f"broker exited with {proc.returncode}; see {node.log_file}\n{tail}")
        if port_open(node.host, node.port):
            return
        time.sleep(0.25)
    raise BrokerError(f"broker did not open {node.address} within {cfg.start_timeout_s}s")


def _wait_registered(cfg: BrokerConfig) -> None:
    """Until the cluster's metadata lists every node as a broker (topics need all replicas)."""
    from kafka.admin import KafkaAdminClient

    deadline = time.monotonic() + cfg.start_timeout_s
    admin = KafkaAdminClient(**cfg.kafka_config())
    try:
        while len(admin.describe_cluster()["brokers"]) < cfg.brokers:
            if time.monotonic() > deadline:
                raise BrokerError(f"not every node registered within {cfg.start_timeout_s}s")
            time.sleep(0.25)
    finally:
        admin.close()


def stop(cfg: BrokerConfig, timeout_s: float = 30.0) -> bool:
    """Stop every node by pid (SIGTERM, SIGKILL after ``timeout_s``); False when none ran."""
    pids = running(cfg)
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    for node_id, pid in pids.items():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        cfg.node(node_id).pid_file.unlink(missing_ok=True)
    return bool(pids)


def kill_node(cfg: BrokerConfig, node_id: int) -> int:
    """``kill -9`` one node (a crash: no controlled shutdown); returns the pid it had."""
    node = cfg.node(node_id)
    pid = read_pid(node)
    if pid is None:
        raise BrokerError(f"node {node_id} is not running")
    os.kill(pid, signal.SIGKILL)
    _wait_gone(node, pid)
    node.pid_file.unlink(missing_ok=True)
    return pid


def _wait_gone(node: Node, pid: int, timeout_s: float = 30.0) -> None:
    """Until the process and its listeners are gone (the JVM's main thread turns zombie before
    the other threads have closed the sockets)."""
    deadline = time.monotonic() + timeout_s
    ports = (node.port, node.controller_port)
    while _alive(pid) or any(port_open(node.host, port) for port in ports):
        if time.monotonic() > deadline:
            raise BrokerError(f"node {node.node_id} (pid {pid}) still up {timeout_s}s after kill")
        time.sleep(0.05)


def restart_node(cfg: BrokerConfig, node_id: int) -> int:
    """Start one node of a running deployment again on its storage; returns its new pid."""
    node = cfg.node(node_id)
    pid = read_pid(node)
    if pid is not None:
        return pid
    proc = _launch(cfg, find_java(), node)
    _wait_ready(cfg, node, proc)
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (
        Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    )
    return state not in ("Z", "X")


def status(cfg: BrokerConfig) -> str:
    """A line per node; ``stopped`` when none runs."""
    pids = running(cfg)
    if not pids:
        return "stopped"
    lines = []
    for node in cfg.nodes:
        pid = pids.get(node.node_id)
        name = "" if cfg.brokers == 1 else f"node {node.node_id}: "
        if pid is None:
            lines.append(f"{name}stopped")
            continue
        open_ = port_open(node.host, node.port)
        ready = "accepting connections" if open_ else "not accepting yet"
        lines.append(f"{name}running (pid {pid}) on {node.address}, {ready}; log {node.log_file}")
    return "\n".join(lines)
