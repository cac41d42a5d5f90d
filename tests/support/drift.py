"""The attention drift monitor and the DARE model it watches, at test scale (shared by
tests/serving/test_drift.py and tests/integration/test_drift_alert.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from models import ModelConfig
from serving.drift import DriftConfig

SMALL_DARE = ModelConfig(n_items=200, n_categories=20, dim=8, seq_len=30, topk=5)
# claims drift from 20 users and 40 rows of a minute, with a baseline learnt over 100 s
QUICK_DRIFT = DriftConfig(
    window=5_000,
    min_rows=40,
    rows_per_request=8,
    window_age_s=60.0,
    min_users=20,
    min_stratum_users=5,
    baseline_s=100.0,
)


def small_dare(**changes: Any) -> ModelConfig:
    """:data:`SMALL_DARE` with ``changes``."""
    return replace(SMALL_DARE, **changes)


def quick_drift(**changes: Any) -> DriftConfig:
    """:data:`QUICK_DRIFT` with ``changes``."""
    return replace(QUICK_DRIFT, **changes)
