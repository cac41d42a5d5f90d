"""Observability end to end (DESIGN.md section 8).

- promtool accepts ``ops/prometheus/prometheus.yml`` and ``alerts.yml``, and ``alerts_test.yml``
  passes and covers every alert both firing and not firing.
- The Grafana dashboard is provisioned by uid with the Prometheus datasource by uid.
- A real worker and a real trainer (``twinstream worker`` / ``twinstream train`` processes) are
  scraped by a real Prometheus server during a replay with score requests: PromQL over its HTTP
  API returns the attention drift gauges and the streaming AUC; every panel query of the dashboard
  names a metric the two processes export; no label carries a user or item id.
- An abrupt interest shift (``GeneratorConfig(shift_at=0.5)``) drives the attention drift over the
  alert threshold and fires the drift alert in Prometheus (the real rules with ``for`` shortened
  to 2 s); the same stream without the shift raises no alert. The drift is computed in-process by
  the real Scorer, serving a real snapshot written by the real trainer code, and exported on a
  real /metrics endpoint that Prometheus scrapes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from contracts.schema import Event, EventType
from contracts.settings import Settings
from contracts.topics import TopicNames
from feature_store import MemoryStore, PartitionWorker, decode_samples
from models import ModelConfig
from ops.report import ReportConfig, build_report
from serving.drift import DriftConfig
from serving.loading import load_snapshot
from serving.metrics import ScoringMetrics
from serving.requests import ScoreRequest
from serving.scorer import ItemCatalog, ModelHolder, Scorer
from streaming.admin import ensure_topics
from streaming.client import ScoreClient
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate
from tests.support.data import SHARED_DATA
from tests.support.workers import wait_caught_up
from trainer.online import OnlineTrainer, TrainerConfig

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "ops" / "prometheus"
GRAFANA_DIR = REPO / "ops" / "grafana"
INTEREST_ALERT = "TwinstreamAttentionInterestShift"
T = TypeVar("T")

yaml = pytest.importorskip("yaml")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed: apt-get install prometheus (Debian's package has "
            "prometheus and promtool; .ci/run installs it)"
        )
    return path


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_config_rules_and_rule_tests(args: list[str]) -> None:
    done = subprocess.run(
        [binary("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    cases = [case for test in doc["tests"] for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in alert_rules()):
        expected = [bool(c["exp_alerts"]) for c in cases if c["alertname"] == name]
        assert True in expected, f"{name} is never tested firing"
        assert False in expected, f"{name} is never tested quiet"


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


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((GRAFANA_DIR / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {name for e in exprs for name in re.findall(r"\btwinstream_[a-z0-9_]+", e)}


def test_report_from_snapshots_alone(tmp_path: Path) -> None:
    """Three snapshots of an in-process trainer: AUC over time, references, drift between them."""
    torch.set_num_threads(1)
    events = synthetic_events(GeneratorConfig(users=60, long_users=0, categories=30, seed=3))
    worker = PartitionWorker(MemoryStore(), 0)
    blobs = worker.process(list(enumerate(events))).samples
    settings = Settings(topics=TopicNames(prefix="report-"))  # never connects
    trainer = OnlineTrainer(
        settings, TrainerConfig(model_config=DRIFT_MODEL, snapshot_dir=tmp_path / "s", device="cpu")
    )
    third = len(blobs) // 3
    for part in range(3):
        trainer.learn_arrays(decode_samples(blobs[part * third : (part + 1) * third], 20))
        trainer.snapshot()
    page = build_report(ReportConfig(tmp_path / "s", tmp_path / "r.html")).read_text()
    assert page.count("data:image/png;base64,") == 3  # quality, references, reference drift
    assert "3 snapshots on disk, v1 to v3" in page and "pass --prometheus URL" in page


# ---------------------------------------------------------------- a real Prometheus server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.5) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s}s for {what}")
        time.sleep(every_s)


def rules_with_short_for(folder: Path, for_: str = "2s") -> Path:
    """alerts.yml with every ``for`` shortened: the same expressions, seconds instead of minutes."""
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = for_
    path = folder / "alerts-short.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


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
            wait_for(self._ready, 30, "prometheus to be ready")
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


def _key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")


def interest_rule() -> tuple[str, float]:
    """The interest-shift alert's expression split at its threshold: (the drift rise, 0.04)."""
    expr = next(r["expr"] for r in alert_rules() if r["alert"] == INTEREST_ALERT).strip()
    match = re.fullmatch(r"(.*)>\s*([0-9.]+)", expr, re.S)
    assert match is not None, expr
    return match.group(1).strip(), float(match.group(2))


def interest_drift(prom: Prometheus) -> dict[str, float]:
    return prom.query('twinstream_attention_drift_js{statistic=~"same_category|recency_.*"}')


# ---------------------------------------------------------------- worker + trainer processes

MODEL_ARGS = ["--model", "dare", "--dim", "8", "--seq-len", "50", "--topk", "5"]
CAPACITY_ARGS = ["--item-capacity", "65536", "--category-capacity", "8192"]
TRAIN_ARGS = ["--batch-size", "256", "--snapshot-every-s", "2", "--snapshot-every-steps", "10"]


def spawn(settings: Settings, cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        TWINSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TWINSTREAM_TOPIC_PREFIX=settings.topics.prefix,
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    with open(log, "ab") as out:  # cwd: Faust's data folder goes to the test's tmp folder
        return subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def replay_log(limit: int = 5_000) -> list[Event]:
    """The real Taobao sample when ../shared/data has it, else a generated log."""
    path = SHARED_DATA / "taobao_users" / "UserBehavior.csv"
    if path.exists():
        return read_events(path, "taobao")[0][:limit]
    return synthetic_events(GeneratorConfig(users=120, long_users=0, seed=5))[:limit]


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


@pytest.mark.slow
def test_worker_and_trainer_metrics_reach_prometheus(settings: Settings, tmp_path: Path) -> None:
    events = replay_log()
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
            _drive(settings, events)
            _check_prometheus(prom)
            _check_refused_announcement(settings, prom)
            worker_text, trainer_text = scrape(worker_port), scrape(trainer_port)
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
    time.sleep(5)  # the worker joins its group and takes the partitions
    with EventProducer(settings) as producer:
        producer.send_raw(b"u", b"{not json")  # first: the partition's marker passes it
        replay(events, producer, progress=False)
    wait_caught_up(settings)
    users = list(dict.fromkeys(e.user_id for e in reversed(events)))[:40]
    items = list(dict.fromkeys(e.item_id for e in events))[:100]
    with ScoreClient(settings) as client:
        wait_for(
            lambda: "error" not in client.score(users[0], items, timeout=30),
            180,
            "the worker to serve a snapshot",
            every_s=1.0,
        )
        for user in users:  # 25 rows of each into the drift window (default config)
            assert "error" not in client.score(user, items, timeout=30)


def _check_prometheus(prom: Prometheus) -> None:
    assert set(prom.query("up").values()) == {1.0}
    drift = wait_for(
        lambda: prom.query("twinstream_attention_drift_js"), 60, "the drift gauges in Prometheus"
    )
    assert len(drift) == 7 and all(0.0 <= v <= 1.0 for v in drift.values())
    assert len(prom.query("twinstream_attention_drift_psi")) == 7
    auc = wait_for(
        lambda: [v for v in prom.query("twinstream_streaming_auc").values() if not math.isnan(v)],
        60,
        "a streaming AUC in Prometheus",
    )
    assert 0.5 < auc[0] <= 1.0  # the trainer learns the replayed log
    lag = prom.query("sum by (agent) (twinstream_consumer_lag_messages)")
    assert {k.split("=")[1] for k in lag} == {"ingest", "score", "trainer"}
    assert prom.query("twinstream_model_version")
    fresh = prom.query("twinstream_sample_to_model_seconds_count")
    assert fresh and next(iter(fresh.values())) > 0
    assert prom.query('twinstream_dlq_messages_total{reason="bad_json"}')
    users = "twinstream_state_users > 0"  # counted every 30 s
    wait_for(lambda: prom.query(users), 45, "the users count in Prometheus")
    p99 = "histogram_quantile(0.99, sum by (le) (rate(twinstream_score_seconds_bucket[1m])))"
    wait_for(lambda: prom.query(p99), 30, "two scrapes of the scoring latency (a rate)")
    time.sleep(2)  # the report's range steps reach past the drift gauges' first scrape
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
    exprs["interest_rise_peak"] = f"max_over_time(({interest_rule()[0]})[1h:1s])"
    out = {k: round(max(prom.query(e).values(), default=math.nan), 4) for k, e in exprs.items()}
    js = prom.query("twinstream_attention_drift_js")
    return out | {f"js_{key.rsplit('=', 1)[1]}": round(v, 4) for key, v in js.items()}


def _check_refused_announcement(settings: Settings, prom: Prometheus) -> None:
    """A garbled model-updates message is counted as refused. The watcher acts on the newest
    announcement of each poll only, so one that a real snapshot's overtakes is sent again."""
    refused = 'twinstream_model_reload_failures_total{reason="bad_announcement"}'
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    try:

        def counted() -> bool:
            if prom.query(refused):
                return True
            raw.send(settings.topics.model_updates, b"not an announcement").get(30)
            time.sleep(2)  # > the watcher's poll and one scrape
            return bool(prom.query(refused))

        wait_for(counted, 60, "the refused announcement in Prometheus")
    finally:
        raw.close()


TWINSTREAM_LABELS = {"outcome", "reason", "transport", "agent", "partition", "statistic", "le"}


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


# ---------------------------------------------------------------- the interest-shift drift test

TYPES = {"pv": EventType.CLICK, "cart": EventType.CART, "fav": EventType.FAV, "buy": EventType.BUY}
DRIFT_MODEL = ModelConfig(n_items=8192, n_categories=256, dim=8, seq_len=20, topk=5)
DRIFT_WINDOW = DriftConfig(window=3_000, min_rows=300, rows_per_request=3)


def synthetic_events(cfg: GeneratorConfig) -> list[Event]:
    log = generate(cfg)
    return [
        Event(str(u), str(i), TYPES[str(b)], float(t), str(c), f"e{n}")
        for n, (u, i, c, b, t) in enumerate(
            zip(log.user, log.item, log.category, log.behaviour, log.ts, strict=True)
        )
    ]


@dataclass
class ShiftWorld:
    """One user-state partition replaying a generated log in event time, a model trained on
    its first 45 %, and a scorer serving that snapshot with drift metrics on ``registry``."""

    events: list[Event]
    start_ts: float
    span_s: float
    worker: PartitionWorker
    scorer: Scorer
    negatives: np.ndarray
    offset: int = 0

    @classmethod
    def build(cls, shift_at: float | None, folder: Path, registry: CollectorRegistry) -> ShiftWorld:
        cfg = GeneratorConfig(
            users=400,
            long_users=0,
            categories=60,
            items_per_category=30,
            mean_sessions=10,
            revisit_prob=0.3,
            shift_at=shift_at,
            seed=1,
        )
        world = cls(
            events=synthetic_events(cfg),
            start_ts=cfg.start_ts,
            span_s=cfg.window_days * 86_400,
            worker=PartitionWorker(MemoryStore(), 0),
            scorer=Scorer(ModelHolder(), ItemCatalog()),
            negatives=np.zeros(0),
        )
        world.train(folder, registry)
        return world

    def between(self, lo: float, hi: float) -> list[Event]:
        a, b = self.start_ts + lo * self.span_s, self.start_ts + hi * self.span_s
        return [e for e in self.events if a <= e.ts < b]

    def apply(self, events: list[Event]) -> list[bytes]:
        result = self.worker.process([(self.offset + i, e) for i, e in enumerate(events)])
        self.worker.commit(result)
        self.offset += len(events)
        for e in events:
            self.scorer.catalog.learn(e.item_id, e.category_id)
        return result.samples

    def train(self, folder: Path, registry: CollectorRegistry) -> None:
        history = self.between(-10.0, 0.45)
        blobs = [b for i in range(0, len(history), 500) for b in self.apply(history[i : i + 500])]
        settings = Settings(topics=TopicNames(prefix="drift-"))  # never connects
        config = TrainerConfig(
            model_config=DRIFT_MODEL,
            snapshot_dir=folder,
            device="cpu",
            metrics_window=DRIFT_WINDOW.window,
        )
        trainer = OnlineTrainer(settings, config)
        for i in range(0, len(blobs), 128):
            trainer.learn_arrays(decode_samples(blobs[i : i + 128], DRIFT_MODEL.seq_len))
        written = trainer.snapshot()
        assert written is not None and written.manifest.attention is not None
        holder = self.scorer.holder
        holder.swap(load_snapshot(written.path))
        metrics = ScoringMetrics.create(registry, DRIFT_WINDOW)
        self.scorer = Scorer(holder, self.scorer.catalog, drift=metrics.drift)
        self.negatives = np.array([e.item_id for e in history])

    def live(self, events: list[Event], seed: int) -> int:
        """Score each click (its item + 2 random items, as the trainer's validation rows are
        built) from the state just before it, then apply it; returns the requests made."""
        rng, requests = np.random.default_rng(seed), 0
        for i in range(0, len(events), 200):
            chunk = events[i : i + 200]
            for e in chunk:
                state = self.worker.store.get(e.user_id)
                if e.type is not EventType.CLICK or state is None:
                    continue
                items = (e.item_id, *map(str, rng.choice(self.negatives, 2)))
                answer = self.scorer.score(ScoreRequest("r", e.user_id, items), state)
                assert "error" not in answer
                requests += 1
            self.apply(chunk)
        return requests


@pytest.mark.slow
@pytest.mark.parametrize("shift_at", [0.5, None], ids=["shift", "no-shift"])
def test_interest_shift_fires_the_attention_drift_alert(
    tmp_path: Path, shift_at: float | None
) -> None:
    binary("prometheus")
    torch.set_num_threads(1)
    registry = CollectorRegistry()
    world = ShiftWorld.build(shift_at, tmp_path / "snapshots", registry)
    phase = Gauge("drift_test_phase", "Phases of this test scored so far", registry=registry)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    rise, threshold = interest_rule()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {"twinstream-worker": f"127.0.0.1:{port}"},
        rules_with_short_for(tmp_path),
    )
    try:
        with prometheus.running() as prom:
            world.live(world.between(0.45, 0.5), seed=1)  # before the shift
            before = _scraped(prom, phase, 1)
            time.sleep(6)  # > for (2 s) + scrape and evaluation intervals (1 s each)
            assert peak(prom, rise) < threshold, before
            assert not prom.alerts(INTEREST_ALERT)
            world.live(world.between(0.5, 0.7), seed=2)  # after it (or not)
            after = _scraped(prom, phase, 2)
            print(
                f"shift_at={shift_at}: interest JS before {_short(before)}, after {_short(after)}"
            )
            if shift_at is None:
                time.sleep(6)
                assert peak(prom, rise) < threshold, after  # at every evaluation of the run
                assert not prom.get("/api/v1/alerts")["alerts"]  # no alert of any kind
            else:
                assert max(prom.query(rise).values()) > threshold, after
                wait_for(lambda: "firing" in prom.alerts(INTEREST_ALERT), 30, "the alert to fire")
    finally:
        server.shutdown()
        server.server_close()


def _scraped(prom: Prometheus, phase: Gauge, n: int) -> dict[str, float]:
    """Mark phase ``n`` done; once Prometheus has scraped the mark, the drift it holds is the
    drift of the finished phase."""
    phase.set(n)
    wait_for(lambda: prom.query(f"drift_test_phase == {n}"), 30, f"a scrape after phase {n}")
    return interest_drift(prom)


def peak(prom: Prometheus, expr: str) -> float:
    """The largest value ``expr`` took over the run (a subquery at 1 s resolution)."""
    return max(prom.query(f"max_over_time(({expr})[1h:1s])").values(), default=0.0)


def _short(series: dict[str, float]) -> dict[str, float]:
    return {key.rsplit("=", 1)[1]: round(value, 4) for key, value in series.items()}
