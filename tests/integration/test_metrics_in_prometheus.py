"""Worker and trainer metrics reach a real Prometheus (ARCHITECTURE.md section 8).

A real worker and a real trainer (``twinstream worker`` / ``twinstream train`` processes) are
scraped by a real Prometheus server during a replay of the ``taobao_users`` log (the real one,
or its generated stand-in) with score requests: PromQL over its HTTP API returns the attention
drift gauges and the streaming AUC; every panel query of the dashboard names a metric the two
processes export; no label carries a user or item id; the report reads Prometheus too.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from contracts.schema import Event
from contracts.settings import Settings
from ops.report import PROMETHEUS_PLOTS, PrometheusAPI, ReportConfig, build_report, read_manifests
from streaming.admin import ensure_topics
from streaming.client import ScoreClient
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from tests.support.data import BehaviourLog
from tests.support.processes import REPO, TWINSTREAM, deployment_env
from tests.support.prometheus import (
    GRAFANA_DIR,
    Prometheus,
    drift_rule,
    free_port,
    rules_with_short_for,
)
from tests.support.waiting import wait_until
from tests.support.workers import wait_caught_up, wait_until_each_owns_partitions

pytestmark = [pytest.mark.integration]
MODEL_ARGS = ["--model", "dare", "--dim", "8", "--seq-len", "50", "--topk", "5"]
CAPACITY_ARGS = ["--item-capacity", "65536", "--category-capacity", "8192"]
TRAIN_ARGS = ["--batch-size", "256", "--snapshot-every-s", "2", "--snapshot-every-steps", "10"]
# a drift baseline pinned within seconds from the 40 users scored (README "Attention drift")
QUICK_DRIFT = {
    "TWINSTREAM_DRIFT_BASELINE_S": "4",
    "TWINSTREAM_DRIFT_MIN_USERS": "20",
    "TWINSTREAM_DRIFT_MIN_STRATUM_USERS": "3",
    "TWINSTREAM_DRIFT_WINDOW_AGE_S": "600",
}
TWINSTREAM_LABELS = {"outcome", "reason", "transport", "agent", "partition", "statistic", "le"}


def spawn(settings: Settings, cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**deployment_env(settings), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env |= QUICK_DRIFT
    with open(log, "ab") as out:  # cwd: Faust's data folder goes to the test's tmp folder
        return subprocess.Popen(
            [*TWINSTREAM, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def exported_names(text: str) -> set[str]:
    """Sample names in an exposition, plus the names of declared families with no sample yet
    (a labelled counter before its first increment)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((GRAFANA_DIR / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {name for e in exprs for name in re.findall(r"\btwinstream_[a-z0-9_]+", e)}


@pytest.mark.slow
def test_worker_and_trainer_metrics_reach_prometheus(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    events = read_events(taobao_log.path, "taobao")[0][:5_000]
    ensure_topics(settings)
    snaps, worker_port, trainer_port = tmp_path / "snapshots", free_port(), free_port()
    worker = spawn(
        settings,
        tmp_path,
        tmp_path / "worker.log",
        "worker",
        *("--state-dir", str(tmp_path / "state"), "--snapshot-dir", str(snaps)),
        *("--metrics-port", str(worker_port)),
    )
    trainer = spawn(
        settings,
        tmp_path,
        tmp_path / "trainer.log",
        "train",
        *("--snapshot-dir", str(snaps), "--metrics-port", str(trainer_port)),
        *MODEL_ARGS,
        *CAPACITY_ARGS,
        *TRAIN_ARGS,
    )
    targets = {
        "twinstream-worker": f"127.0.0.1:{worker_port}",
        "twinstream-trainer": f"127.0.0.1:{trainer_port}",
    }
    prometheus = Prometheus(tmp_path / "prometheus", targets, rules_with_short_for(tmp_path))
    try:
        with prometheus.running() as prom:
            wait_until_each_owns_partitions([tmp_path / "state"], settings.topics.events_partitions)
            _drive(settings, events)
            _check_prometheus(prom)
            _check_refused_announcement(settings, prom)
            worker_text, trainer_text = scrape(worker_port), scrape(trainer_port)
            _wait_for_the_report_ranges(prom, snaps)
            report = build_report(ReportConfig(snaps, tmp_path / "report.html", prom.url))
    finally:
        stop(trainer)
        stop(worker)
    page = report.read_text()
    for title in ("Attention drift (live", "Throughput (from", "Latency (from", "references"):
        assert title in page
    empty = re.findall(r"<h2>([^<]*)</h2><p>Prometheus has no data", page)
    assert not empty and page.count("data:image/png;base64,") >= 6, empty
    exported = exported_names(worker_text) | exported_names(trainer_text)
    assert not dashboard_metrics() - exported, "dashboard reads metrics nobody exports"
    ids = {e.user_id for e in events} | {e.item_id for e in events}
    for text in (worker_text, trainer_text):
        assert_bounded_labels(text, ids)


def _drive(settings: Settings, events: list[Event]) -> None:
    """Replay, dead-letter one message, announce a bogus snapshot, then score."""
    with EventProducer(settings) as producer:
        producer.send_raw(b"u", b"{not json")  # first: the partition's marker passes it
        replay(events, producer, progress=False)
    wait_caught_up(settings)
    users = list(dict.fromkeys(e.user_id for e in reversed(events)))[:40]
    items = list(dict.fromkeys(e.item_id for e in events))[:100]
    with ScoreClient(settings) as client:
        wait_until(
            lambda: "error" not in client.score(users[0], items, timeout=30),
            timeout_s=180,
            what="the worker to serve a snapshot",
            interval_s=1.0,
        )
        for user in users:  # 32 rows of each into the drift window, which pins its baseline
            assert "error" not in client.score(user, items, timeout=30)


def _check_prometheus(prom: Prometheus) -> None:
    assert set(prom.query("up").values()) == {1.0}
    drift = wait_until(
        lambda: prom.query("twinstream_attention_drift_js"),
        timeout_s=60,
        what="the drift gauges in Prometheus",
    )
    assert len(drift) == 7 and all(0.0 <= v <= 1.0 for v in drift.values())
    assert len(prom.query("twinstream_attention_drift_psi")) == 7
    assert len(prom.query("twinstream_attention_model_drift_js")) == 7
    assert prom.query("twinstream_attention_baseline_learning == 0")
    auc = wait_until(
        lambda: [v for v in prom.query("twinstream_streaming_auc").values() if not math.isnan(v)],
        timeout_s=60,
        what="a streaming AUC in Prometheus",
    )
    assert 0.5 < auc[0] <= 1.0  # the trainer learns the replayed log
    lag = "sum by (agent) (twinstream_consumer_lag_messages)"
    agents = {"ingest", "score", "trainer"}
    wait_until(
        lambda: {k.split("=")[1] for k in prom.query(lag)} >= agents,
        timeout_s=60,
        what="the consumer lag of every agent in Prometheus (sampled on the agents' ticks)",
    )
    assert {k.split("=")[1] for k in prom.query(lag)} == agents
    assert prom.query("twinstream_model_version")
    fresh = prom.query("twinstream_sample_to_model_seconds_count")
    assert fresh and next(iter(fresh.values())) > 0
    assert prom.query('twinstream_dlq_messages_total{reason="bad_json"}')
    users = "twinstream_state_users > 0"  # counted every 30 s
    wait_until(lambda: prom.query(users), timeout_s=45, what="the users count in Prometheus")
    p99 = "histogram_quantile(0.99, sum by (le) (rate(twinstream_score_seconds_bucket[1m])))"
    wait_until(
        lambda: prom.query(p99), timeout_s=30, what="two scrapes of the scoring latency (a rate)"
    )
    print(f"run figures: {_figures(prom)}")


def _figures(prom: Prometheus) -> dict[str, float]:
    quantile = "histogram_quantile({}, sum by (le) (rate({}_bucket[5m])))"
    exprs = {
        "streaming_auc": "max(twinstream_streaming_auc)",
        "streaming_gauc": "max(twinstream_streaming_gauc)",
        "score_p50_s": quantile.format(0.5, "twinstream_score_seconds"),
        "score_p99_s": quantile.format(0.99, "twinstream_score_seconds"),
        "event_to_state_p50_s": quantile.format(0.5, "twinstream_event_to_state_seconds"),
        "sample_to_model_p50_s": quantile.format(0.5, "twinstream_sample_to_model_seconds"),
        "sample_to_model_p99_s": quantile.format(0.99, "twinstream_sample_to_model_seconds"),
    }
    exprs["traffic_drift_peak"] = f"max_over_time(({drift_rule()[0]})[1h:1s])"
    out = {k: round(max(prom.query(e).values(), default=math.nan), 4) for k, e in exprs.items()}
    js = prom.query("twinstream_attention_drift_js")
    return out | {f"js_{key.rsplit('=', 1)[1]}": round(v, 4) for key, v in js.items()}


def _check_refused_announcement(settings: Settings, prom: Prometheus) -> None:
    """A garbled model-updates message is counted as refused. The watcher acts on the newest
    announcement of each poll only, so one that a real snapshot's overtakes is sent again."""
    refused = 'twinstream_model_reload_failures_total{reason="bad_announcement"}'
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    sent_at = -math.inf
    try:

        def counted() -> bool:
            nonlocal sent_at
            if prom.query(refused):
                return True
            if time.monotonic() - sent_at > 2.0:  # > the watcher's poll and one scrape
                raw.send(settings.topics.model_updates, b"not an announcement").get(30)
                sent_at = time.monotonic()
            return False

        wait_until(counted, timeout_s=60, what="the refused announcement in Prometheus")
    finally:
        raw.close()


def _wait_for_the_report_ranges(prom: Prometheus, snaps: Path) -> None:
    """Wait until each Prometheus section of the report has data in the report's range (its
    steps reach past the drift gauges' first scrape)."""
    api, start = PrometheusAPI(prom.url), read_manifests(snaps)[0].created - 60

    def every_section_has_data() -> bool:
        end = time.time()
        return all(
            any(api.range(expr, start, end, legend) for expr, legend in queries)
            for _, _, _, queries in PROMETHEUS_PLOTS
        )

    wait_until(every_section_has_data, timeout_s=30, what="data in every section of the report")


def assert_bounded_labels(text: str, ids: set[str]) -> None:
    """twinstream_* metrics use closed label names only; no label value anywhere is a user or
    item id (small numbers aside: partitions, GC generations); a bounded number of series."""
    for family in text_string_to_metric_families(text):
        assert len(family.samples) <= 300, family.name
        for sample in family.samples:
            if family.name.startswith("twinstream_"):
                assert set(sample.labels) <= TWINSTREAM_LABELS, (family.name, sample.labels)
            leaked = set(sample.labels.values()) & ids - {str(p) for p in range(64)}
            assert not leaked, (family.name, sample.labels)
