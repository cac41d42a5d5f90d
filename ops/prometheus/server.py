"""A Prometheus server run by the project itself, with the shipped rules (ops/prometheus/).

``ops.bench.bench_drift`` and the observability tests (``tests/support/prometheus.py``) run a
real ``prometheus`` on 127.0.0.1: :class:`PrometheusServer` writes a configuration whose jobs
are prometheus.yml's pointed at the caller's targets, starts it, answers instant queries and
alert states, and says how far rule evaluation has got. :func:`rules_file` writes alerts.yml
with every ``for`` rewritten (shortened for a test or a benchmark).

>>> seconds("90s"), seconds("2m"), seconds("1h")
(90.0, 120.0, 3600.0)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

PROMETHEUS_DIR = Path(__file__).resolve().parent
RULES = PROMETHEUS_DIR / "alerts.yml"
LAST_EVALUATION = "prometheus_rule_group_last_evaluation_timestamp_seconds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seconds(duration: str) -> float:
    """A Prometheus duration of one unit ("90s", "2m", "1h") in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules of the shipped alerts.yml."""
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def rules_file(folder: Path, for_s: Callable[[float], float], name: str = "alerts.yml") -> Path:
    """alerts.yml written into ``folder`` as ``name`` with every ``for`` (seconds) replaced by
    ``for_s(seconds)`` (at least 1 s); rules without ``for`` stay as they are."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, round(for_s(seconds(rule['for']))))}s"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 with prometheus.yml's jobs pointed at ``targets`` (job name
    → host:port), scraping and evaluating ``rules`` every ``interval_s``; a context manager
    (:meth:`start` and :meth:`close`)."""

    def __init__(
        self,
        folder: Path,
        targets: dict[str, str],
        rules: Path,
        interval_s: float = 1.0,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("prometheus is not on PATH (apt-get install prometheus)")
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        interval = f"{interval_s:g}s"
        config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
        config["rule_files"] = [str(rules)]
        jobs = [j for j in config["scrape_configs"] if j["job_name"] in targets]
        for job in jobs:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        config["scrape_configs"] = jobs
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        with open(self.folder / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"prometheus not ready in {timeout_s:g} s: {self.folder}")
            time.sleep(0.5)
        return self

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, expr: str, by: str | None = None) -> dict[str, float]:
        """Instant query: each series' ``by`` label (without ``by``: its labels as sorted
        ``k=v``, joined by commas) → value."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return {_key(r["metric"], by): float(r["value"][1]) for r in result}

    def alerts(self, name: str) -> list[str]:
        """States (pending / firing) of the alerts named ``name``."""
        alerts = self.get("/api/v1/alerts")["alerts"]
        return [a["state"] for a in alerts if a["labels"]["alertname"] == name]

    def firing(self) -> set[str]:
        """Names of the alerts firing now."""
        alerts = self.get("/api/v1/alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def rules_evaluated_after(self, ts: float) -> bool:
        """Whether every rule group has been evaluated at or after ``ts`` (unix seconds), as
        Prometheus's own metrics say."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        families = text_string_to_metric_families(text)
        times = [s.value for f in families if f.name == LAST_EVALUATION for s in f.samples]
        return bool(times) and min(times) >= ts


def _key(labels: dict[str, str], by: str | None) -> str:
    if by is not None:
        return labels.get(by, "")
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
