"""A small scoring snapshot (an untrained DARE model whose feature mapper knows the given items
and categories) for tests that need a worker to answer scores, history lengths included."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import ModelConfig, build_model
from serving.features import FeatureMapper, MapperConfig, RawIds
from serving.scorer import ModelHolder
from serving.signing import Signer
from serving.snapshot import SnapshotContent, WrittenSnapshot, write_snapshot
from tests.support.waiting import wait_until

SCORING_CONFIG = ModelConfig(n_items=50_000, n_categories=5_000, dim=8, seq_len=50, topk=5)


def write_scoring_snapshot(
    folder: Path, version: int, items: np.ndarray, cats: np.ndarray, signer: Signer | None = None
) -> WrittenSnapshot:
    """Snapshot ``version`` under ``folder`` (``manifest.mac`` signed by ``signer``); its answers
    carry up to ``seq_len`` (50) of a user's recent behaviours as ``history_length``."""
    mapper = FeatureMapper(MapperConfig.for_model(SCORING_CONFIG))
    mapper.observe(RawIds(items=items, categories=cats))
    content = SnapshotContent(
        model_name="dare",
        model=build_model("dare", SCORING_CONFIG),
        mapper=mapper,
        topic=None,
        offsets={},
        step=version,
        samples=0,
    )
    return write_snapshot(folder, version, content, signer)


def wait_for_version(holder: ModelHolder, version: int, name: str, timeout_s: float = 60) -> None:
    """Wait until ``holder`` (the worker called ``name``) serves exactly ``version``."""
    wait_until(
        lambda: holder.model is not None and holder.model.version == version,
        timeout_s=timeout_s,
        what=f"the {name} at v{version}",
    )
