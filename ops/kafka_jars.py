"""Apache Kafka on this machine without Docker: its jars, fetched once with Maven into a cache
outside the repository, and the Java that runs them (:mod:`ops.broker` starts the nodes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

KAFKA_VERSION = "3.9.1"

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


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says what to do."""


def fetch_jars(libs: Path, version: str) -> Path:
    """Download the jars of Kafka ``version`` with Maven into ``libs``, once."""
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven is needed once to fetch Kafka: apt-get install maven")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(POM.format(version=version))
    tmp = work / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies"]
    cmd.append(f"-DoutputDirectory={tmp}")
    print(f"fetching Apache Kafka {version} jars with Maven into {libs} ...", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"mvn failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    tmp.rename(libs)
    return libs


def find_java() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on the path."""
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
