"""ModelConfig: derived defaults, validation, JSON round trip."""

from __future__ import annotations

import json

import pytest

from models import ModelConfig


def test_attn_dim_defaults_to_dim() -> None:
    cfg = ModelConfig(n_items=10, n_categories=3, dim=8)
    assert cfg.attn_dim == 8 and cfg.attn_token_dim == 16 and cfg.token_dim == 16
    assert ModelConfig(n_items=10, n_categories=3, dim=8, attn_dim=4).attn_token_dim == 8
    assert cfg == ModelConfig(n_items=10, n_categories=3, dim=8, attn_dim=8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_items": 1}, "n_items"),
        ({"dim": 0}, "dim"),
        ({"attn_dim": 0}, "attn_dim"),
        ({"topk": 0}, "topk"),
        ({"activation": "relu"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_heads": 3}, "n_heads"),
        ({"mlp": (200, 0)}, "mlp"),
        ({"max_sessions": 0}, "max_sessions"),
    ],
)
def test_invalid_values_are_rejected(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"n_items": 10, "n_categories": 3, "dim": 4, **change})  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    cfg = ModelConfig(n_items=10, n_categories=3, dim=4, mlp=(32, 8), activation="dice")
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.mlp == (32, 8)


def test_config_is_frozen() -> None:
    cfg = ModelConfig(n_items=10, n_categories=3)
    with pytest.raises(AttributeError):
        cfg.dim = 3  # type: ignore[misc]


def test_a_dict_written_before_cross_features_reads_as_without_them() -> None:
    cfg = ModelConfig(n_items=10, n_categories=3, dim=4)
    assert cfg.cross_features
    old = {k: v for k, v in cfg.to_dict().items() if k != "cross_features"}
    assert not ModelConfig.from_dict(old).cross_features


def test_a_dict_written_before_twin_v2_age_reads_as_without_it() -> None:
    """Snapshots saved before the cluster age existed have no age table: they load without."""
    cfg = ModelConfig(n_items=10, n_categories=4)
    assert cfg.twin_v2_age
    old = {k: v for k, v in cfg.to_dict().items() if k != "twin_v2_age"}
    assert not ModelConfig.from_dict(old).twin_v2_age
