"""The cluster budget: the derived base block keeps the worst case within max_clusters."""

from __future__ import annotations

import pytest

from feature_store.cluster_config import ClusterConfig, cluster_bound


def test_default_budget_guarantee() -> None:
    cfg = ClusterConfig()
    assert cfg.base > cfg.max_leaf and cluster_bound(cfg.base, cfg) <= cfg.max_clusters
    with pytest.raises(ValueError):
        ClusterConfig(max_leaf=20, max_clusters=2)
    with pytest.raises(ValueError):
        ClusterConfig(block=10_000)
