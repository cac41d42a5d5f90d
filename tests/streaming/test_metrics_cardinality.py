"""Metric cardinality stays bounded: after an in-process run of the ingest service (real RocksDB
state, the real broker for its changelog restore), the scorer with attention drift and the
trainer's telemetry, every label of every twinstream metric takes values from a closed set:
never a user id, an item id or free text, and each metric has a bounded number of series."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry

from contracts.schema import Reason
from contracts.settings import Settings
from feature_store import decode_samples
from models import ModelConfig
from serving.attention import STAT_NAMES
from serving.loading import load_snapshot
from serving.metrics import ScoringMetrics
from serving.scorer import ItemCatalog
from streaming.admin import ensure_topics
from streaming.gauges import WorkerGauges
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.scoring import ScoringService
from streaming.synthetic import GeneratorConfig, generate
from tests.support.sink import MemorySink
from trainer.config import TrainerConfig
from trainer.online import OnlineTrainer
from trainer.telemetry import TrainerTelemetry

pytestmark = [pytest.mark.integration]
PARTITIONS = 2
CFG = ModelConfig(n_items=4096, n_categories=256, dim=8, seq_len=20, topk=5)
MAX_SERIES = 200  # per metric family
REQUEST_CODES = {"bad_json", "not_object", "missing_field", "wrong_type", "no_candidates"}
REQUEST_CODES |= {"too_many_candidates", "too_large"}  # serving.requests.BadRequest codes
BOUNDED = {
    "outcome": {"applied", "duplicate", "skipped", "rejected", "ok", "no_model", "not_served"}
    | REQUEST_CODES,
    "reason": {r.value for r in Reason},
    "transport": {"kafka", "http"},
    "agent": {"ingest", "score", "trainer"},
    "partition": {str(p) for p in range(PARTITIONS)},
    "statistic": set(STAT_NAMES),
}


def partition_of(user: str) -> int:
    return zlib.crc32(user.encode()) % PARTITIONS


def messages(users: int = 150) -> tuple[list[RawMessage], list[str], list[str]]:
    """Generated events as the ingest agent receives them, plus bad ones; the user and item
    ids they use."""
    log = generate(GeneratorConfig(users=users, long_users=0, categories=40, seed=2))
    offsets = [0] * PARTITIONS
    out: list[RawMessage] = []
    rows = zip(log.user, log.item, log.category, log.behaviour, log.ts, strict=True)
    for u, i, c, b, t in rows:
        event = {"user_id": str(u), "item_id": str(i), "category_id": str(c), "type": str(b)}
        p = partition_of(str(u))
        out.append(RawMessage(p, offsets[p], orjson.dumps(event | {"ts": float(t)}), float(t)))
        offsets[p] += 1
    for bad in (b"{not json", b'{"user_id": "free text here", "type": "click"}', None):
        out.append(RawMessage(0, offsets[0], bad, 0.0))
        offsets[0] += 1
    return out, sorted(map(str, set(log.user))), sorted(map(str, set(log.item)))


def train_snapshot(blobs: list[bytes], folder: Path, registry: CollectorRegistry) -> Any:
    telemetry = TrainerTelemetry.create(registry)
    config = TrainerConfig(model_config=CFG, snapshot_dir=folder, device="cpu")
    trainer = OnlineTrainer(Settings(), config, telemetry=telemetry)
    for i in range(0, len(blobs), 256):
        trainer.learn_arrays(decode_samples(blobs[i : i + 256], CFG.seq_len))
    telemetry.consumed([1_000] * len(blobs), bad=1)
    written = trainer.snapshot()
    assert written is not None
    return load_snapshot(written.path)


async def test_no_label_takes_ids_or_free_text(settings: Settings, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ensure_topics(settings)
    worker_registry, trainer_registry = CollectorRegistry(), CollectorRegistry()
    sink, metrics, catalog = MemorySink(), IngestMetrics.create(worker_registry), ItemCatalog()
    partitions = OwnedPartitions(settings, tmp_path / "state", metrics)
    ingest = IngestService(settings, sink, partitions, catalog, metrics)
    scoring = ScoringService(partitions, catalog, ScoringMetrics.create(worker_registry))
    gauges = WorkerGauges(settings, partitions, metrics)
    await partitions.own(range(PARTITIONS))
    raw, users, all_items = messages()
    ids, items = set(users) | set(all_items), all_items[:50]
    for i in range(0, len(raw), 500):
        await ingest.handle(raw[i : i + 500])
    for user in users[:20]:  # before any model: every answer is coded no_model
        scoring.answer(request(user, items), partition_of(user), "kafka")
    snapshot = train_snapshot(
        sink.sent[settings.topics.samples], tmp_path / "snaps", trainer_registry
    )
    assert scoring.holder.swap(snapshot)
    for user in users:
        answer = scoring.answer(request(user, items), partition_of(user), "http")
        assert "error" not in answer
    for bad in (b"{", orjson.dumps({"user_id": "x" * 500, "items": ["1"]})):
        scoring.answer(bad, 0, "kafka")
    await gauges.sample()
    await partitions.close()
    gauges.close()

    walked = walk(worker_registry, ids) + walk(trainer_registry, ids)
    assert {"twinstream_attention_drift_js", "twinstream_state_users"} <= set(walked)
    assert worker_registry.get_sample_value("twinstream_state_users") == len(users)
    assert {"twinstream_sample_to_model_seconds", "twinstream_streaming_auc"} <= set(walked)


def request(user: str, items: list[str]) -> bytes:
    return orjson.dumps({"user_id": user, "items": items})


def walk(registry: CollectorRegistry, ids: set[str]) -> list[str]:
    """Check every twinstream family of ``registry``; returns their names."""
    names = []
    for family in registry.collect():
        if not family.name.startswith("twinstream_"):
            continue
        names.append(family.name)
        assert len(family.samples) <= MAX_SERIES, family.name
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    assert value == "+Inf" or math.isfinite(float(value))
                    continue
                assert label in BOUNDED, (family.name, label)
                assert value in BOUNDED[label], (family.name, label, value)
                assert label == "partition" or value not in ids, (family.name, label, value)
    return names
