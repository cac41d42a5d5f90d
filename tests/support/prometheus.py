"""A real Prometheus server for the observability tests, and the project's monitoring files.

``Prometheus`` runs ``prometheus`` on 127.0.0.1 with ops/prometheus/prometheus.yml's jobs
pointed at the test's own targets, scraping and evaluating every second, and answers instant
queries, alerts and how far its rule evaluation has got. ``binary`` finds ``prometheus`` or
``promtool`` (or skips the test); ``alert_rules``, ``rules_with_short_for`` and ``drift_rule``
read ops/prometheus/alerts.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import REPO
from tests.support.waiting import wait_until

PROMETHEUS_DIR = REPO / "ops" / "prometheus"
GRAFANA_DIR = REPO / "ops" / "grafana"
TRAFFIC_DRIFT_ALERT = "TwinstreamAttentionTrafficDrift"
SHORT_FOR_S = 2  # the alert rules' ``for`` in the tests, instead of minutes
LAST_EVALUATION = "prometheus_rule_group_last_evaluation_timestamp_seconds"

yaml = pytest.importorskip("yaml")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed: apt-get install prometheus (Debian's package has "
            "prometheus and promtool; .ci/run installs it)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def rules_with_short_for(folder: Path) -> Path:
    """alerts.yml with every ``for`` shortened: the same expressions, seconds instead of minutes."""
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = f"{SHORT_FOR_S}s"
    path = folder / "alerts-short.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def drift_rule() -> tuple[str, float]:
    """The traffic drift alert's expression split at its threshold: (the drift, the threshold)."""
    expr = next(r["expr"] for r in alert_rules() if r["alert"] == TRAFFIC_DRIFT_ALERT).strip()
    match = re.fullmatch(r"(.*)>\s*([0-9.]+)", expr, re.S)
    assert match is not None, expr
    return match.group(1).strip(), float(match.group(2))


class Prometheus:
    """``prometheus`` on 127.0.0.1 with ops/prometheus/prometheus.yml's jobs pointed at
    ``targets`` (job → host:port), 1 s scrape and evaluation intervals, and ``rules``."""

    def __init__(self, folder: Path, targets: dict[str, str], rules: Path) -> None:
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(rules)]
        jobs = [j for j in config["scrape_configs"] if j["job_name"] in targets]
        for job in jobs:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        config["scrape_configs"] = jobs
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[Prometheus]:
        with open(self.folder / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._ready, timeout_s=30, what="prometheus to be ready")
            yield self
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: a series' labels (sorted ``k=v``, joined) → value."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return {_key(r["metric"]): float(r["value"][1]) for r in result}

    def alerts(self, name: str) -> list[str]:
        """States (pending / firing) of the alerts named ``name``."""
        alerts = self.get("/api/v1/alerts")["alerts"]
        return [a["state"] for a in alerts if a["labels"]["alertname"] == name]

    def rules_evaluated_after(self, ts: float) -> bool:
        """Whether every rule group has been evaluated at or after ``ts`` (unix seconds), as
        Prometheus's own metrics say."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        families = text_string_to_metric_families(text)
        times = [s.value for f in families if f.name == LAST_EVALUATION for s in f.samples]
        return bool(times) and min(times) >= ts


def _key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
