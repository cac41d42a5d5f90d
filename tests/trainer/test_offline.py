"""Offline evaluation smoke runs: every model trains and scores, on the CPU and on CUDA."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import models
from tests.support.events import synthetic_log
from trainer.dataset import DatasetConfig, OfflineDataset, build_dataset
from trainer.offline import EvalConfig, run_evaluation

TINY = EvalConfig(seeds=1, epochs=2, dim=4, topk=4, batch_size=64, max_batches=3, progress=False)


@pytest.fixture(scope="module")
def ds() -> OfflineDataset:
    log = synthetic_log(n_users=16, n_events=900)
    return build_dataset(log, DatasetConfig(seq_len=16, min_events=5, max_clusters=6))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_trains_and_scores(ds: OfflineDataset, name: str) -> None:
    (result,) = run_evaluation(ds, replace(TINY, models=(name,)))
    assert result.test.n == len(ds.test)
    assert 0.0 <= result.test.auc <= 1.0 and math.isfinite(result.test.logloss)
    assert result.train_samples == min(len(ds.train), 3 * 64) * result.epochs_run
    assert result.samples_per_s > 0
    if name != "mean":  # every attention model reports where its attention goes
        assert result.attention_by_position and np.isfinite(result.attention_by_position).all()
    if name in ("twin", "dare"):  # two-stage over the recent sequence
        assert result.ndcg_exact is not None and 0.0 < result.ndcg_exact <= 1.0 + 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_evaluates_on_cuda(ds: OfflineDataset, name: str) -> None:
    (result,) = run_evaluation(ds, replace(TINY, models=(name,), device="cuda"))
    assert 0.0 <= result.test.auc <= 1.0 and math.isfinite(result.test.logloss)
