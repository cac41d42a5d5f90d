"""build_worker: one app carrying both agents, the views when a port is given, rebalance hooks
that own the partitions the scoring service reads, and every metric on one registry."""

from __future__ import annotations

from pathlib import Path

from faust.types import TP
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from streaming.metrics import IngestMetrics
from streaming.worker import build_worker


def routes(app: object) -> set[str]:
    return {r.resource.canonical for r in app.web.web_app.router.routes()}  # type: ignore[attr-defined]


async def test_the_worker_app_has_both_agents_and_the_views(
    tmp_path: Path, restored: list[int]
) -> None:
    settings = Settings()
    metrics = IngestMetrics.create(CollectorRegistry())
    app, scoring = build_worker(settings, tmp_path, http_port=28_124, metrics=metrics)
    assert set(app.agents) == {"ingest", "score"}
    assert {"/score", "/healthz"} <= routes(app)
    assert (tmp_path / "faust").is_dir() and Path(app.conf.datadir) == tmp_path / "faust"
    assert scoring.metrics.registry is metrics.registry
    assert metrics.registry.get_sample_value("twinstream_model_reloads_total") == 0
    await app.on_partitions_assigned.send({TP(settings.topics.events, 1)})
    assert set(scoring.partitions.workers) == {1} and restored == [1]
    await scoring.partitions.close()


def test_without_a_port_there_is_no_web_server(tmp_path: Path) -> None:
    metrics = IngestMetrics.create(CollectorRegistry())
    app, _ = build_worker(Settings(), tmp_path, metrics=metrics)
    assert not app.conf.web_enabled
    assert set(app.agents) == {"ingest", "score"}
