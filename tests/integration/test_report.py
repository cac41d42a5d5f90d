"""``twinstream report`` from snapshots alone (ARCHITECTURE.md section 8): three snapshots of an
in-process trainer give the AUC over time, the attention references and the drift between
them, and the page says that throughput and latency need Prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contracts.settings import Settings
from contracts.topics import TopicNames
from feature_store import MemoryStore, PartitionWorker, decode_samples
from models import ModelConfig
from ops.report import ReportConfig, build_report
from streaming.synthetic import GeneratorConfig
from tests.support.events import generated_events
from trainer.config import TrainerConfig
from trainer.online import OnlineTrainer

pytestmark = [pytest.mark.integration]
MODEL = ModelConfig(n_items=8192, n_categories=256, dim=8, seq_len=20, topk=5)


def test_report_from_snapshots_alone(tmp_path: Path) -> None:
    """Three snapshots of an in-process trainer: AUC over time, references, drift between them."""
    torch.set_num_threads(1)
    cfg = GeneratorConfig(users=60, long_users=0, categories=30, seed=3)
    events = generated_events(cfg, event_ids=True)
    worker = PartitionWorker(MemoryStore(), 0)
    blobs = worker.process(list(enumerate(events))).samples
    settings = Settings(topics=TopicNames(prefix="report-"))  # never connects
    trainer = OnlineTrainer(
        settings, TrainerConfig(model_config=MODEL, snapshot_dir=tmp_path / "s", device="cpu")
    )
    third = len(blobs) // 3
    for part in range(3):
        trainer.learn_arrays(decode_samples(blobs[part * third : (part + 1) * third], 20))
        trainer.snapshot()
    page = build_report(ReportConfig(tmp_path / "s", tmp_path / "r.html")).read_text()
    assert page.count("data:image/png;base64,") == 3  # quality, references, reference drift
    assert "3 snapshots on disk, v1 to v3" in page and "pass --prometheus URL" in page
