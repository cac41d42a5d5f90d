"""Model names → classes.

>>> cfg = ModelConfig(n_items=10, n_categories=3, dim=4)
>>> type(build_model("dare", cfg)).__name__
'DARE'
"""

from __future__ import annotations

from collections.abc import Callable

from models.base import CTRModel, ModelConfig
from models.bst import BST
from models.dare import DARE
from models.dien import DIEN
from models.din import DIN
from models.dsin import DSIN
from models.mean_pool import MeanPool
from models.twin import TWIN
from models.twin_v2 import TWINV2

MODEL_NAMES = ("mean", "din", "dien", "dsin", "bst", "twin", "twin_v2", "dare")

_MODELS: dict[str, Callable[[ModelConfig], CTRModel]] = {
    cls.name: cls for cls in (MeanPool, DIN, DIEN, DSIN, BST, TWIN, TWINV2, DARE)
}
assert tuple(_MODELS) == MODEL_NAMES


def build_model(name: str, config: ModelConfig) -> CTRModel:
    """A fresh model (weights from the global torch RNG: seed it for reproducible weights)."""
    try:
        cls = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}") from None
    return cls(config)
