"""Shared fixtures: tiny configs so the whole suite runs in seconds on two shared cores."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig

torch.set_num_threads(1)


@pytest.fixture
def config() -> ModelConfig:
    """Small but complete: dense side features, multi-head attention, top-k below L."""
    return ModelConfig(
        n_items=60,
        n_categories=7,
        dim=4,
        attn_dim=2,
        dense_features=3,
        seq_len=12,
        topk=4,
        mlp=(16, 8),
        attention_mlp=(8, 4),
        n_heads=2,
        max_sessions=3,
        session_len=3,
    )
