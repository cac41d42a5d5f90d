"""The Grafana files (ARCHITECTURE.md section 8): the dashboard is provisioned by uid with the
Prometheus datasource by uid, every panel has queries, and compose.yaml mounts the Prometheus
and Grafana files that exist."""

from __future__ import annotations

import json

import pytest

from tests.support.processes import REPO
from tests.support.prometheus import GRAFANA_DIR, yaml

pytestmark = [pytest.mark.integration]


def test_dashboard_has_uid_datasource_uid_and_panels_with_targets() -> None:
    dashboard = json.loads((GRAFANA_DIR / "dashboard.json").read_text())
    source = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert dashboard["uid"] and source["datasources"][0]["type"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]


def test_compose_mounts_the_prometheus_and_grafana_files() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            assert (REPO / volume.split(":")[0]).exists(), volume
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/twinstream.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert any(folder in v for v in services["grafana"]["volumes"])
