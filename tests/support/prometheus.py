"""A real Prometheus server for the observability tests, and the project's monitoring files.

The server and the rules' helpers live in :mod:`ops.prometheus.server` (bench_drift runs the
same); here: ``Prometheus`` scraping and evaluating every second with a ``running()`` context,
``binary`` (finds ``prometheus`` or ``promtool``, or skips the test), ``rules_with_short_for``
and ``drift_rule`` (read ops/prometheus/alerts.yml).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops.prometheus.server import (
    PROMETHEUS_DIR,
    PrometheusServer,
    alert_rules,
    free_port,
    rules_file,
)
from tests.support.processes import REPO

__all__ = ["PROMETHEUS_DIR", "alert_rules", "free_port"]
GRAFANA_DIR = REPO / "ops" / "grafana"
TRAFFIC_DRIFT_ALERT = "TwinstreamAttentionTrafficDrift"
SHORT_FOR_S = 2  # the alert rules' ``for`` in the tests, instead of minutes

yaml = pytest.importorskip("yaml")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed: apt-get install prometheus (Debian's package has "
            "prometheus and promtool; .ci/run installs it)"
        )
    return path


def rules_with_short_for(folder: Path) -> Path:
    """alerts.yml with every ``for`` shortened: the same expressions, seconds instead of minutes."""
    return rules_file(folder, lambda _: SHORT_FOR_S, name="alerts-short.yml")


def drift_rule() -> tuple[str, float]:
    """The traffic drift alert's expression split at its threshold: (the drift, the threshold)."""
    expr = next(r["expr"] for r in alert_rules() if r["alert"] == TRAFFIC_DRIFT_ALERT).strip()
    match = re.fullmatch(r"(.*)>\s*([0-9.]+)", expr, re.S)
    assert match is not None, expr
    return match.group(1).strip(), float(match.group(2))


class Prometheus(PrometheusServer):
    """``prometheus`` on 127.0.0.1 with ops/prometheus/prometheus.yml's jobs pointed at
    ``targets`` (job → host:port), 1 s scrape and evaluation intervals, and ``rules``."""

    def __init__(self, folder: Path, targets: dict[str, str], rules: Path) -> None:
        super().__init__(folder, targets, rules, interval_s=1.0, binary=binary("prometheus"))

    @contextmanager
    def running(self) -> Iterator[Prometheus]:
        with self:
            yield self
