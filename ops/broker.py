"""A real single-node Apache Kafka broker (KRaft combined mode) without Docker.

``twinstream broker start`` fetches the Kafka jars with Maven into a cache outside the repository
(once), formats KRaft storage, starts broker+controller on 127.0.0.1, waits until the port accepts
connections and writes a pid file and a log file. ``stop`` stops it by pid. Both are idempotent:
starting a running broker, stopping a stopped one and a stale pid file are all fine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "3.9.1"
CLUSTER_ID = "twinstreamKRaftCluster"[:22]

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>twinstream</groupId><artifactId>kafka-fetch</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>1.2.25</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.KafkaRaftServer=INFO
"""

SERVER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
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


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    run_dir: Path = Path("/tmp/twinstream-kafka")
    cache_dir: Path = Path.home() / ".cache" / "twinstream"
    version: str = KAFKA_VERSION
    heap: str = "512m"
    start_timeout_s: float = 90.0

    @classmethod
    def from_env(cls) -> BrokerConfig:
        env = os.environ
        run_dir = Path(env.get("TWINSTREAM_BROKER_DIR", str(cls.run_dir)))
        return cls(
            port=int(env.get("TWINSTREAM_BROKER_PORT", cls.port)),
            controller_port=int(env.get("TWINSTREAM_BROKER_CONTROLLER_PORT", cls.controller_port)),
            run_dir=run_dir,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "libs"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def fetch_jars(cfg: BrokerConfig) -> Path:
    """Download the Kafka jars with Maven into the cache, once."""
    if cfg.libs.is_dir() and any(cfg.libs.glob("kafka_2.13-*.jar")):
        return cfg.libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven is needed once to fetch Kafka: apt-get install maven")
    work = cfg.libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(POM.format(version=cfg.version))
    tmp = work / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies"]
    cmd.append(f"-DoutputDirectory={tmp}")
    print(
        f"fetching Apache Kafka {cfg.version} jars with Maven into {cfg.libs} ...", file=sys.stderr
    )
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"mvn failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    tmp.rename(cfg.libs)
    return cfg.libs


def read_pid(cfg: BrokerConfig) -> int | None:
    """The pid of *our* running broker, or None (a stale pid file is removed)."""
    try:
        pid = int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        cmdline = b""
    if b"kafka.Kafka" not in cmdline:
        cfg.pid_file.unlink(missing_ok=True)
        return None
    return pid


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "No Java found. Install a JDK 17+ and Maven (Debian/Ubuntu: "
            "apt-get install openjdk-17-jre-headless maven), or run Kafka with Docker: "
            "docker compose up -d kafka, then export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092"
        )
    return java


def _write_configs(cfg: BrokerConfig) -> Path:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    props = cfg.run_dir / "server.properties"
    props.write_text(
        SERVER_PROPERTIES.format(
            host=cfg.host,
            port=cfg.port,
            controller_port=cfg.controller_port,
            data=cfg.run_dir / "data",
        )
    )
    (cfg.run_dir / "log4j.properties").write_text(LOG4J.format(log=cfg.log_file))
    return props


def _format_storage(cfg: BrokerConfig, java: str, props: Path) -> None:
    cmd = [java, "-cp", f"{cfg.libs}/*", "kafka.tools.StorageTool", "format"]
    cmd += ["-t", CLUSTER_ID, "-c", str(props), "--ignore-formatted"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"kafka storage format failed:\n{done.stdout}{done.stderr}")


def start(cfg: BrokerConfig) -> int:
    """Start the broker (or find it running) and return its pid."""
    pid = read_pid(cfg)
    if pid is not None and port_open(cfg.host, cfg.port):
        return pid
    if port_open(cfg.host, cfg.port):
        raise BrokerError(
            f"port {cfg.port} is taken by another process; set TWINSTREAM_BROKER_PORT"
        )
    java = _java()
    fetch_jars(cfg)
    props = _write_configs(cfg)
    _format_storage(cfg, java, props)
    cmd = [java, f"-Xmx{cfg.heap}", f"-Xms{cfg.heap}", "-XX:+UseG1GC"]
    cmd += [f"-Dlog4j.configuration=file:{cfg.run_dir / 'log4j.properties'}"]
    cmd += ["-cp", f"{cfg.libs}/*", "kafka.Kafka", str(props)]
    with open(cfg.run_dir / "broker.stdout", "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cfg.pid_file.write_text(str(proc.pid))
    _wait_ready(cfg, proc)
    return proc.pid


def _wait_ready(cfg: BrokerConfig, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + cfg.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (cfg.run_dir / "broker.stdout").read_text(errors="replace")[-3000:]
            raise BrokerError(f"broker exited with {proc.returncode}; see {cfg.log_file}\n{tail}")
        if port_open(cfg.host, cfg.port):
            return
        time.sleep(0.25)
    stop(cfg)
    raise BrokerError(f"broker did not open {cfg.bootstrap} within {cfg.start_timeout_s}s")


def stop(cfg: BrokerConfig, timeout_s: float = 30.0) -> bool:
    """Stop the broker by pid; returns False when none was running."""
    pid = read_pid(cfg)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and read_pid(cfg) is not None and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    cfg.pid_file.unlink(missing_ok=True)
    return True


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
    pid = read_pid(cfg)
    if pid is None:
        return "stopped"
    ready = "accepting connections" if port_open(cfg.host, cfg.port) else "not accepting yet"
    return f"running (pid {pid}) on {cfg.bootstrap}, {ready}; log {cfg.log_file}"
