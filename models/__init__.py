"""CTR models over long behaviour sequences (ARCHITECTURE.md section 5): one batch, one output."""

from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.embedding import EmbeddingTable, IdMap
from models.registry import MODEL_NAMES, build_model

__all__ = [
    "MODEL_NAMES",
    "Batch",
    "CTRModel",
    "EmbeddingTable",
    "IdMap",
    "ModelConfig",
    "ModelOutput",
    "build_model",
]
